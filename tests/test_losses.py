"""Tests for psm_jax.losses: Eq. 1-3 NLL vs numerical integration, Eq. 7-8, R1 (golden), Eq. 10."""
from __future__ import annotations

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from conftest import require_shared
from psm_jax import losses

H = 1.0 / 255.0
# jit once: eager op-by-op dispatch of the NLL's many small ops is what makes tests slow
nll_fn = jax.jit(losses.discretized_gaussian_nll)


# ----------------------------------------------------------------------------- reference NLL
def reference_nll(y: float, mu: float, log_var: float) -> float:
    """-log of the integral of N(t; mu, sigma^2) over y's bin (Eq. 1-3), by scipy.integrate.quad.

    Integrated in standard units t = (y - mu)/sigma. To keep far-tail bins representable, the
    Gaussian is factored around t0, the bin point nearest the mode: the integrand is
    exp(-(t^2 - t0^2)/2), with the variable rescaled by max(1, |t0|) so that its decay length is
    O(1) for quad, and cut where it is below e^-60 of its peak.
    """
    s = math.exp(0.5 * log_var)
    lo = -math.inf if y < -1 + H else (y - H - mu) / s
    hi = math.inf if y > 1 - H else (y + H - mu) / s
    t0 = 0.0 if lo <= 0.0 <= hi else (hi if hi < 0 else lo)
    c = max(1.0, abs(t0))
    def g(u):
        return math.exp(-(u / c) * (u / c + 2.0 * t0) / 2.0) / c
    ulo, uhi = max((lo - t0) * c, -60.0), min((hi - t0) * c, 60.0)
    q = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        if ulo < 0:
            q += integrate.quad(g, ulo, 0.0, epsabs=0.0, epsrel=1e-12, limit=200)[0]
        if uhi > 0:
            q += integrate.quad(g, 0.0, uhi, epsabs=0.0, epsrel=1e-12, limit=200)[0]
    return t0 * t0 / 2.0 + 0.5 * math.log(2.0 * math.pi) - math.log(q)


def test_reference_nll_matches_closed_form():
    # Guard on the guard: the quad reference agrees with scipy's CDF where the latter is exact.
    y, mu, lv = 0.2, 0.05, math.log(0.3 ** 2)
    s = 0.3
    want = -math.log(special.ndtr((y + H - mu) / s) - special.ndtr((y - H - mu) / s))
    assert reference_nll(y, mu, lv) == pytest.approx(want, rel=1e-10)
    assert reference_nll(1.0, mu, lv) == pytest.approx(-special.log_ndtr((mu - 1 + H) / s), rel=1e-10)


def _cases(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (target, mean, log_var) covering every code path of the NLL."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 256, n) / 127.5 - 1.0                # on the 256-level grid
    mu = rng.uniform(-1.2, 1.2, n)
    lv = rng.uniform(-14.0, 6.0, n)
    y[:30] = 1.0                                             # open top bin
    y[30:60] = -1.0                                          # open bottom bin
    lv[60:80] = rng.uniform(-60.0, -25.0, 20)                # tiny sigma: targets far in the tails
    lv[80:100] = rng.uniform(15.0, 60.0, 20)                 # huge sigma: narrow bins (series path)
    mu[100:120] = rng.uniform(-40.0, 40.0, 20)               # wild means
    lv[120:130] = rng.uniform(-60.0, -25.0, 10); y[120:125] = 1.0; y[125:130] = -1.0   # far edge tails
    y[130:140] = rng.uniform(-1.0, 1.0, 10)                  # off-grid targets
    mu[140:160] = y[140:160] + rng.uniform(-H, H, 20)          # mean inside the bin ...
    lv[140:160] = rng.uniform(-16.0, -4.0, 20)               # ... and a bin wider than 0.05 sigma
    return y, mu, lv


def _paths(y, mu, lv):
    """Which branch each case takes (mirrors the implementation's thresholds)."""
    m = (y - mu) * np.exp(-0.5 * lv)
    w = 2 * H * np.exp(-0.5 * lv)
    edge = (y > 1 - H) | (y < -1 + H)
    series = ~edge & (w <= losses._SERIES_MAX_W) & (np.abs(m) * w <= losses._SERIES_MAX_MW)
    interior = ~edge & ~series
    tail = interior & (-np.abs(m) + w / 2 < 0)
    return dict(edge=edge, series=series, tail=tail, centre=interior & ~tail)


def test_cases_cover_all_paths():
    for name, sel in _paths(*_cases()).items():
        assert sel.sum() >= 10, name


def test_nll_float64_matches_numerical_integration():
    y, mu, lv = _cases()
    want = np.array([reference_nll(*a) for a in zip(y, mu, lv)])
    with jax.enable_x64(True):
        got = np.asarray(nll_fn(jnp.asarray(y), jnp.asarray(mu), jnp.asarray(lv)))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_nll_float32_matches_numerical_integration():
    y, mu, lv = (a.astype(np.float32) for a in _cases(seed=1))
    # The reference sees the same float32-rounded inputs: the NLL is ill-conditioned in mu/sigma
    # for tiny sigma, so rounding the inputs alone would move it by far more than float32 eps.
    want = np.array([reference_nll(*map(float, a)) for a in zip(y, mu, lv)])
    got = np.asarray(nll_fn(jnp.asarray(y), jnp.asarray(mu), jnp.asarray(lv)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_nll_edges_are_open_bins():
    # At y = +-1 the mass extends to +-inf: with the mean far beyond the edge it tends to 1.
    nll = nll_fn(jnp.array([1.0, -1.0]), jnp.array([5.0, -5.0]), jnp.zeros(2))
    np.testing.assert_allclose(nll, -special.log_ndtr(4.0 + H), rtol=5e-6)  # f32 input rounding
    # A target that is +-1 up to float rounding still gets the open bin.
    a = nll_fn(jnp.float32(np.nextafter(np.float32(1), np.float32(0))), 3.0, 0.0)
    assert float(a) < 0.03


def test_nll_broadcasts_one_channel_log_var():
    rng = np.random.default_rng(3)
    y = jnp.asarray(rng.integers(0, 256, (2, 4, 4, 3)) / 127.5 - 1, jnp.float32)
    mu = jnp.asarray(rng.uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
    lv1 = jnp.asarray(rng.uniform(-6, 0, (2, 4, 4, 1)), jnp.float32)
    got = nll_fn(y, mu, lv1)
    assert got.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(got, nll_fn(y, mu, jnp.broadcast_to(lv1, y.shape)))


@pytest.mark.parametrize("x64", [False, True])
def test_nll_gradients(x64):
    y, mu, lv = _cases(seed=2)
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        f = lambda m, l: jnp.sum(nll_fn(jnp.asarray(y, dt), m, l))  # noqa: E731
        g_mu, g_lv = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(mu, dt), jnp.asarray(lv, dt))
        g_mu, g_lv = np.asarray(g_mu), np.asarray(g_lv)
    assert np.all(g_mu == 0.0)                    # stop-gradient on the mean: exactly zero
    assert np.all(np.isfinite(g_lv))              # incl. targets 1e13 sigmas away
    assert np.abs(g_lv).max() > 1e20              # ... where the gradient is genuinely huge
    if x64:   # central differences of the float64 value (step relative to the scale of log_var)
        with jax.enable_x64(True):
            nll = lambda l: np.asarray(nll_fn(  # noqa: E731
                jnp.asarray(y), jnp.asarray(mu), jnp.asarray(l)))
            eps = 1e-6
            fd = (nll(lv + eps) - nll(lv - eps)) / (2 * eps)
        np.testing.assert_allclose(g_lv, fd, rtol=1e-6, atol=1e-6)


def test_nll_float32_gradient_matches_float64():
    # jax's own log_ndtr derivative loses all accuracy beyond ~1e4 sigmas in float32; ours must not.
    y, mu, lv = (a.astype(np.float32) for a in _cases(seed=4))
    grad_lv = jax.jit(jax.grad(lambda y_, m_, l_: jnp.sum(nll_fn(y_, m_, l_)), argnums=2))
    g32 = grad_lv(*(jnp.asarray(a) for a in (y, mu, lv)))
    with jax.enable_x64(True):
        g64 = grad_lv(*(jnp.asarray(a, jnp.float64) for a in (y, mu, lv)))
    np.testing.assert_allclose(np.asarray(g32, np.float64), np.asarray(g64), rtol=2e-5, atol=1e-5)


def test_erfcx_replacement_accurate():
    x = np.concatenate([np.linspace(0.0, 30.0, 3001), [9.3, 9.4], np.logspace(1, 18, 50)])
    got = np.asarray(losses._erfcx(jnp.asarray(x, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, special.erfcx(x.astype(np.float32).astype(np.float64)), rtol=2e-6)


# ----------------------------------------------------------------------------- reductions
def test_reduce_nll_regions_and_reductions():
    rng = np.random.default_rng(5)
    nll = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    mask = jnp.asarray(rng.integers(0, 2, (2, 4, 4, 1)), jnp.float32)
    hole = np.broadcast_to(1 - np.asarray(mask), nll.shape)
    n = np.asarray(nll)
    np.testing.assert_allclose(losses.reduce_nll(nll, reduction="mean"), n.mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.reduce_nll(nll), n.sum((1, 2, 3)).mean(), rtol=1e-6)  # Eq. 1
    np.testing.assert_allclose(losses.reduce_nll(nll, reduction="sum"), n.sum((1, 2, 3)).mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.reduce_nll(nll, mask, region="hole", reduction="mean"), (n * hole).sum() / hole.sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.reduce_nll(nll, mask, region="hole", reduction="sum"),
                               (n * hole).sum((1, 2, 3)).mean(), rtol=1e-6)
    assert float(losses.reduce_nll(nll, jnp.ones_like(mask), region="hole", reduction="mean")) == 0.0   # no holes: 0, not nan
    with pytest.raises(ValueError, match="nll_region"):
        losses.reduce_nll(nll, region="holes")
    with pytest.raises(ValueError, match="nll_reduction"):
        losses.reduce_nll(nll, reduction="avg")
    with pytest.raises(ValueError, match="mask"):
        losses.reduce_nll(nll, region="hole")


# ----------------------------------------------------------------------------- adversarial, L1
def test_adversarial_losses_match_formulas():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(8, 1)) * 3, rng.normal(size=(8, 1)) * 3
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(losses.g_adv_loss(jnp.asarray(fake)), -np.log(sig(fake)).mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.d_adv_loss(jnp.asarray(real), jnp.asarray(fake)),
                               -np.log(sig(real)).mean() - np.log(1 - sig(fake)).mean(), rtol=1e-5)
    # stable at extreme logits (softplus, not log(sigmoid))
    assert np.isfinite(float(losses.g_adv_loss(jnp.array([-1e4, 1e4]))))
    np.testing.assert_allclose(losses.g_adv_loss(jnp.array([-200.0])), 200.0)


def test_l1_loss():
    pred = jnp.arange(8.0).reshape(1, 2, 2, 2)
    target = jnp.zeros_like(pred)
    mask = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2, 1)
    assert float(losses.l1_loss(pred, target)) == pytest.approx(3.5)
    assert float(losses.l1_loss(pred, target, weight_mask=mask)) == pytest.approx((0 + 1 + 6 + 7) / 4)


# ----------------------------------------------------------------------------- R1
def test_lazy_reg_adam_hparams():
    lr, b1, b2 = losses.lazy_reg_adam_hparams(1e-3, 0.0, 0.99, 16)
    r = 16 / 17
    assert lr == pytest.approx(1e-3 * r) and b1 == 0.0 and b2 == pytest.approx(0.99 ** r)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError, match="r1_interval"):
            losses.lazy_reg_adam_hparams(1e-3, 0.0, 0.99, bad)


def test_r1_penalty_quadratic():
    # logits = sum(a * x^2)/2 per sample: grad = a * x, penalty = sum (a x)^2.
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
    pen = losses.r1_penalty(lambda im: 0.5 * jnp.sum(a * im * im, axis=(1, 2, 3)), x)
    np.testing.assert_allclose(pen, np.sum((np.asarray(a) * np.asarray(x)) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    assert float(losses.r1_loss(pen, gamma=10.0, interval=16)) == pytest.approx(
        float(pen.mean()) * 5.0 * 16, rel=1e-6)


@pytest.mark.slow   # double backprop through D: ~10 s of compile on 2 cores
def test_r1_matches_golden_discriminator_r1():
    from psm_jax.models.convert import ConversionSpec, torch_to_flax
    from psm_jax.models.discriminator import Discriminator

    root = require_shared("golden", "mat")
    spec = json.loads((root / "discriminator_r1.json").read_text())
    with np.load(root / "discriminator_r1.npz") as z:
        arrays = {k: z[k] for k in z.files}
    kw = spec["ctor_kwargs"]
    d = Discriminator(resolution=kw["img_resolution"], img_channels=kw["img_channels"],
                      channel_base=kw["channel_base"], channel_max=kw["channel_max"],
                      mbstd_group_size=kw["mbstd_group_size"], mbstd_num_channels=kw["mbstd_num_channels"])
    images = jnp.asarray(arrays["in/images"].transpose(0, 2, 3, 1))
    masks = jnp.asarray(arrays["in/masks"].transpose(0, 2, 3, 1))
    conv = ConversionSpec.from_module(d, images, masks)
    state = {k: v for k, v in arrays.items() if "/" not in k}
    params = jax.tree.map(jnp.asarray, torch_to_flax(conv, state))["params"]
    gamma = spec["call"]["kwargs"]["r1_gamma"]

    def loss(p):
        penalty = losses.r1_penalty(lambda im: d.apply({"params": p}, im, masks), images)
        return losses.r1_loss(penalty, gamma), penalty

    with jax.default_matmul_precision("highest"):
        (loss_mean, penalty), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    tol = spec["tolerance"]

    def check(key, got):
        np.testing.assert_allclose(got, arrays[key], rtol=tol[key]["rtol"], atol=tol[key]["atol"], err_msg=key)

    check("out/r1_penalty", np.asarray(penalty))
    check("out/loss_Dr1", np.asarray(penalty) * gamma / 2)
    assert float(loss_mean) == pytest.approx(float(arrays["out/loss_Dr1"].mean()), rel=1e-5)
    # double backprop through r1_loss == d mean(loss_Dr1) / d params (two representative tensors)
    check("grad/param/Dis.0.conv.weight", np.asarray(grads["Dis_0"]["conv"]["kernel"]).transpose(3, 2, 0, 1))
    check("grad/param/fc0.weight", np.asarray(grads["fc0"]["kernel"]).T)


# ----------------------------------------------------------------------------- Eq. 10
def test_generator_loss_sums_iterations():
    rng = np.random.default_rng(8)
    its = [dict(fake_logits=jnp.asarray(rng.normal(size=(4, 1)), jnp.float32),
                pcp=jnp.float32(rng.uniform()), nll=jnp.float32(rng.uniform() * 3),
                l1=jnp.float32(rng.uniform())) for _ in range(3)]
    total, metrics = losses.generator_loss(its)
    want = sum(float(losses.g_adv_loss(t["fake_logits"])) + 2.0 * float(t["pcp"]) + 1e-4 * float(t["nll"])
               for t in its)   # l1 weight is 0 in the paper
    assert float(total) == pytest.approx(want, rel=1e-6)
    assert float(metrics["g_total"]) == pytest.approx(want, rel=1e-6)
    assert float(metrics["g_pcp"]) == pytest.approx(sum(float(t["pcp"]) for t in its), rel=1e-6)
    assert float(metrics["g_adv/iter2"]) == pytest.approx(float(losses.g_adv_loss(its[2]["fake_logits"])))
    # stacked form gives the same, and it works under jit
    stacked = {k: jnp.stack([t[k] for t in its]) for k in its[0]}
    total_s, _ = jax.jit(lambda s: losses.generator_loss(s, {**losses.PAPER_G_WEIGHTS, "l1": 0.5}))(stacked)
    assert float(total_s) == pytest.approx(want + 0.5 * sum(float(t["l1"]) for t in its), rel=1e-6)
    with pytest.raises(ValueError, match="lacks 'pcp'"):
        losses.generator_loss([{"fake_logits": its[0]["fake_logits"]}])
    # a term with weight 0 may be left out
    total0, _ = losses.generator_loss([{"fake_logits": its[0]["fake_logits"]}],
                                      {"adv": 1.0, "pcp": 0.0, "nll": 0.0})
    assert float(total0) == pytest.approx(float(losses.g_adv_loss(its[0]["fake_logits"])))
