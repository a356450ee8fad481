"""PSM training losses (paper Sec. 3.1.1 Eq. 1-3, Sec. 3.3 Eq. 7-10; MAT notes sec. 11 for R1).

All functions are pure jnp on NHWC arrays; images are in [-1, 1], masks are 1 = known, 0 = hole.

* :func:`discretized_gaussian_nll` -- Eq. 1-3, per element. The mean passes through a
  stop-gradient, so the NLL trains only the variance ("decoupled probabilistic modelling").
* :func:`reduce_nll` -- where and how the per-element NLL is reduced (config-visible choice).
* :func:`g_adv_loss`, :func:`d_adv_loss` -- the non-saturating GAN losses of Eq. 7-8 with
  ``D = sigmoid(logits)``.
* :func:`r1_penalty`, :func:`r1_loss`, :func:`lazy_reg_adam_hparams` -- StyleGAN2/MAT's lazy R1.
* :func:`l1_loss` -- optional L1 term (0 in the paper configs).
* :func:`generator_loss` -- Eq. 10, summed over the spread iterations.

The perceptual term (Eq. 9) lives in :mod:`psm_jax.perceptual`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc, log_ndtr, ndtr

# --------------------------------------------------------------------------------------------
# Discretised Gaussian NLL (Eq. 1-3)
# --------------------------------------------------------------------------------------------
HALF_BIN = 1.0 / 255.0          # Eq. 2-3: delta_pm(y) = y +- 1/255, i.e. bins of width 2/255
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_LOG_2 = math.log(2.0)
# Narrow bins (bin width w in std units small and the bin not far in the tail) use a Taylor
# series of the bin mass around its centre. There the CDF difference would cancel
# catastrophically (error ~ eps / w), while the series' first neglected term is
# w^6 He6(m) / 322560 <= ~1e-13 relative inside these bounds.
_SERIES_MAX_W = 0.05
_SERIES_MAX_MW = 0.05
# Standardised quantities are clipped so that their squares stay finite in float32. This only
# bites when |target - mean| / sigma > 1e15 or log_var is outside about [-79, 128], where the
# loss saturates (and its gradient is 0) instead of overflowing.
_Z_MAX = 1e15
_W_MIN = 1e-30


_ERFCX_CF_FROM = 3.0      # below: exp(x^2) erfc(x) (relative error ~ x^2 eps); above: continued fraction
_ERFCX_CF_TERMS = 40      # converged to float64 round-off for x >= 3


def _erfcx(x: jax.Array) -> jax.Array:
    """Scaled complementary error function exp(x^2) erfc(x) for x >= 0.

    Not ``jax.scipy.special.erfcx``: in jax 0.10.2 it returns 0 in float32 for x in about
    [9.19, 9.42] (and in float64 for x in about [26.54, 26.64]), exactly where we need it. For x >= 3
    we evaluate Laplace's continued fraction erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x +
    (3/2)/(x + ...)))) bottom-up.
    """
    small = x < _ERFCX_CF_FROM
    xs = jnp.where(small, x, 0.0)
    xl = jnp.where(small, _ERFCX_CF_FROM, x)
    f = xl
    for k in range(_ERFCX_CF_TERMS, 0, -1):
        f = xl + (0.5 * k) / f
    return jnp.where(small, jnp.exp(xs * xs) * erfc(xs), 1.0 / (math.sqrt(math.pi) * f))


def _inv_mills(x: jax.Array) -> jax.Array:
    """phi(x) / Phi(x), accurate for all x (the derivative of log Phi).

    ``jax.scipy.special.log_ndtr``'s own derivative computes exp(log phi - log Phi), which
    cancels catastrophically in the lower tail (float32: 80% off at x = -1.4e4). For x < 0 we use
    phi(x)/Phi(x) = sqrt(2/pi) / erfcx(-x/sqrt(2)) (see :func:`_erfcx`) instead, which has no cancellation.
    """
    neg = x < 0
    t = jnp.where(neg, -x, 0.0) / math.sqrt(2.0)
    x_pos = jnp.where(neg, 0.0, x)
    r_pos = jnp.exp(-0.5 * x_pos * x_pos - _LOG_SQRT_2PI) / ndtr(x_pos)   # Phi >= 1/2 here
    return jnp.where(neg, _SQRT_2_OVER_PI / _erfcx(t), r_pos)


def _log_ndtr_value(x: jax.Array) -> jax.Array:
    """log Phi(x), relatively accurate also for x > 0 where it is tiny.

    jax's float32 ``log_ndtr`` takes log(ndtr(x)) up to x = 5, which loses the relative accuracy
    of a tiny log Phi (0.07% off at x = 4). log1p(-Phi(-x)) does not.
    """
    pos = x > 0
    return jnp.where(pos, jnp.log1p(-ndtr(-jnp.where(pos, x, 0.0))), log_ndtr(jnp.where(pos, 0.0, x)))


@jax.custom_jvp
def _log_ndtr(x: jax.Array) -> jax.Array:
    """log Phi(x) with a tail-accurate derivative (see :func:`_inv_mills`)."""
    return _log_ndtr_value(x)


@_log_ndtr.defjvp
def _log_ndtr_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _log_ndtr(x), t * _inv_mills(x)


def _bin_mass_terms(m_r: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log P, phi(a)/P, phi(b)/P for P = Phi(b) - Phi(a), a = m_r - w/2, b = m_r + w/2, m_r <= 0.

    The caller reflects the bin to the lower half (m_r = -|m|): Phi(b) - Phi(a) is then never a
    difference of two numbers close to 1. Two cases:

    * b < 0 (the whole bin below the mean): write Phi(x) = erfcx(-x/sqrt2) exp(-x^2/2) / 2. The
      huge -x^2/2 terms then cancel *analytically*: log Phi(a) - log Phi(b) =
      w*m_r + log erfcx(-a/sqrt2) - log erfcx(-b/sqrt2), exact even for |m| ~ 1e15.
    * b >= 0 (the bin contains the mean): log Phi(b) = O(1) and plain log-CDFs are fine.

    Then log P = log Phi(b) + log(-expm1(log Phi(a) - log Phi(b))).
    """
    a, b = m_r - 0.5 * w, m_r + 0.5 * w
    tail = b < 0
    # --- b < 0: erfcx form (arguments sanitised so the unused branch stays finite)
    ta = jnp.where(tail, -a, 1.0) / math.sqrt(2.0)
    tb = jnp.where(tail, -b, 1.0) / math.sqrt(2.0)
    b_t = jnp.where(tail, b, 0.0)
    log_eb = jnp.log(_erfcx(tb))
    d_tail = w * m_r + jnp.log(_erfcx(ta)) - log_eb
    lb_tail = -0.5 * b_t * b_t + log_eb - _LOG_2
    # --- b >= 0: plain log-CDFs
    a_c, b_c = jnp.where(tail, -2.0, a), jnp.where(tail, -1.0, b)
    lb_c = _log_ndtr_value(b_c)
    d_c = log_ndtr(a_c) - lb_c                          # a < 0 here
    d = jnp.where(tail, d_tail, d_c)                    # log Phi(a) - log Phi(b) < 0
    lb = jnp.where(tail, lb_tail, lb_c)
    log1m = jnp.log(-jnp.expm1(d))                      # log(1 - Phi(a)/Phi(b))
    log_p = lb + log1m
    # log(phi(b)/P): in the tail, log phi(b) - log Phi(b) = log 2 - log erfcx - log sqrt(2 pi).
    log_gb = jnp.where(tail, _LOG_2 - _LOG_SQRT_2PI - log_eb - log1m,
                       -0.5 * b_c * b_c - _LOG_SQRT_2PI - log_p)
    g_b = jnp.exp(log_gb)
    g_a = jnp.exp(log_gb + w * m_r)                     # phi(a)/phi(b) = exp(-(a^2-b^2)/2) = exp(w m_r)
    return log_p, g_a, g_b


@jax.custom_jvp
def _log_bin_mass(m_r: jax.Array, w: jax.Array) -> jax.Array:
    """log(Phi(m_r + w/2) - Phi(m_r - w/2)) for m_r <= 0, with a stable hand-written derivative."""
    return _bin_mass_terms(m_r, w)[0]


@_log_bin_mass.defjvp
def _log_bin_mass_jvp(primals, tangents):
    (m_r, w), (dm, dw) = primals, tangents
    log_p, g_a, g_b = _bin_mass_terms(m_r, w)
    # dlogP/dm_r = (phi(b) - phi(a))/P ; dlogP/dw = (phi(b) + phi(a)) / (2P)
    # g_b - g_a = g_b (1 - exp(w m_r)), written with expm1 to avoid cancelling for small w|m|
    return log_p, g_b * -jnp.expm1(w * m_r) * dm + 0.5 * (g_a + g_b) * dw


EDGE_BINS = ("open", "closed")


def discretized_gaussian_nll(target: jax.Array, mean: jax.Array, log_var: jax.Array,
                             edge_bins: str = "open") -> jax.Array:
    """Per-element NLL of Eq. 1: -log of the N(sg[mean], exp(log_var)) mass of target's bin.

    Bins (Eq. 2-3): ``[y - 1/255, y + 1/255]``, i.e. width 2/255 centred on the target value ``y``;
    the bins at the edges are open: ``[y - 1/255, inf)`` at y = 1 and ``(-inf, y + 1/255]`` at y = -1.

    Off-grid targets: targets normally lie on the 256-level grid ``k/127.5 - 1``, but nothing here
    rounds them; an interior bin is evaluated centred at the given ``y``. A target counts as an
    edge when its *nearest* grid level is +-1, i.e. ``y > 1 - 1/255`` (or ``y < -1 + 1/255``); this
    makes the edge test robust to float rounding of +-1 (and puts targets outside [-1, 1] in
    the open edge bins).

    ``mean`` goes through ``jax.lax.stop_gradient``: its gradient is exactly zero. The mass is
    computed from log-CDF differences that stay accurate from tiny to huge ``log_var`` and for
    targets far in the tails, and so do the gradients w.r.t. ``log_var`` (hand-written, see
    ``_bin_mass_terms``). Inputs broadcast against each other (e.g. a 1-channel log_var).

    ``edge_bins`` (config ``loss.nll_edge_bins``): "open" is Eq. 2-3 as written. "closed" gives
    the targets at +-1 the same bin of width 2/255 as every other target. Why it matters: with an
    open edge bin and a mean inside the range, the bin's mass grows with sigma towards 1/2, so the
    NLL drives sigma to its upper clamp exactly where the target is saturated (paper-white or
    black pixels), however small the error; sigma then stops ranking the error (docs/FIDELITY.md).

    Returns the broadcast shape, float; reduce it with :func:`reduce_nll`.
    """
    if edge_bins not in EDGE_BINS:
        raise ValueError(f"loss.nll_edge_bins must be one of {EDGE_BINS}, got {edge_bins!r}")
    mean = jax.lax.stop_gradient(mean)
    inv_std = jnp.exp(-0.5 * log_var)
    m = jnp.clip((target - mean) * inv_std, -_Z_MAX, _Z_MAX)     # bin centre, std units
    w = jnp.clip(2.0 * HALF_BIN * inv_std, _W_MIN, _Z_MAX)       # bin width, std units
    m, w = jnp.broadcast_arrays(m, w)
    top = jnp.broadcast_to(target > 1.0 - HALF_BIN, m.shape)
    bottom = jnp.broadcast_to(target < -1.0 + HALF_BIN, m.shape)
    edge = top | bottom
    if edge_bins == "closed":
        top, bottom, edge = (jnp.zeros_like(top),) * 3
    m_abs = jnp.abs(m)

    # Open edge bins: P = 1 - Phi(m - w/2) = Phi(w/2 - m) at the top, Phi(m + w/2) at the bottom.
    edge_arg = jnp.where(top, 0.5 * w - m, 0.5 * w + m)
    log_p_edge = _log_ndtr(jnp.where(edge, edge_arg, 0.0))

    # Narrow interior bins: log(w phi(m) [1 + (m^2-1) w^2/24 + (m^4-6m^2+3) w^4/1920]), i.e. the
    # midpoint rule plus its two exact Taylor corrections (phi'' = He2 phi, phi'''' = He4 phi).
    series = ~edge & (w <= _SERIES_MAX_W) & (m_abs * w <= _SERIES_MAX_MW)
    ms = jnp.where(series, m_abs, 0.0)
    ws = jnp.where(series, w, 0.01)
    m2, w2 = ms * ms, ws * ws
    log_p_series = (jnp.log(ws) - 0.5 * m2 - _LOG_SQRT_2PI
                    + jnp.log1p((m2 - 1.0) * w2 / 24.0 + (m2 * m2 - 6.0 * m2 + 3.0) * w2 * w2 / 1920.0))

    # Other interior bins: reflect to the lower half (the mass is symmetric in m).
    interior = ~edge & ~series
    log_p_int = _log_bin_mass(jnp.where(interior, -m_abs, -1.0), jnp.where(interior, w, 1.0))

    return -jnp.where(edge, log_p_edge, jnp.where(series, log_p_series, log_p_int))


NLL_REGIONS = ("all", "hole")
NLL_REDUCTIONS = ("mean", "sum")


def reduce_nll(nll: jax.Array, mask: jax.Array | None = None, *, region: str = "all",
               reduction: str = "sum") -> jax.Array:
    """Reduces a per-element NLL ``[B,H,W,C]`` to a scalar (config ``loss.nll_region`` / ``nll_reduction``).

    region:
      * ``"all"`` (default): every pixel, as Eq. 1 (a sum over all D data dimensions).
      * ``"hole"``: only pixels with ``mask == 0`` (``mask`` [B,H,W,1], 1 = known). Known pixels
        are pasted back from the input, so their variance is never used by the pick step.
    reduction:
      * ``"sum"`` (default, the paper's): Eq. 1 sums over the D = H*W*C data dimensions of an
        image, and Eq. 10's lambda_3 = 1e-4 weighs that sum: per-image sum over the selected
        elements, then the batch mean.
      * ``"mean"``: mean over the selected elements of the whole batch, ~H*W*C times weaker
        (the CPU demo's choice, where the NLL is reweighted on its own).
    """
    if region not in NLL_REGIONS:
        raise ValueError(f"loss.nll_region must be one of {NLL_REGIONS}, got {region!r}")
    if reduction not in NLL_REDUCTIONS:
        raise ValueError(f"loss.nll_reduction must be one of {NLL_REDUCTIONS}, got {reduction!r}")
    if region == "all":
        weight = jnp.ones_like(nll)
    else:
        if mask is None:
            raise ValueError("reduce_nll(region='hole') needs the mask (1 = known, 0 = hole)")
        weight = jnp.broadcast_to(1.0 - mask, nll.shape).astype(nll.dtype)
    weighted = weight * nll
    if reduction == "mean":
        # at least 1: a batch without holes gives 0, not 0/0
        return jnp.sum(weighted) / jnp.maximum(jnp.sum(weight), 1.0)
    return jnp.mean(jnp.sum(weighted.reshape(nll.shape[0], -1), axis=1))


# --------------------------------------------------------------------------------------------
# Adversarial losses (Eq. 7-8) and R1
# --------------------------------------------------------------------------------------------
def g_adv_loss(fake_logits: jax.Array) -> jax.Array:
    """Eq. 7: -E log sigmoid(l_fake) = mean softplus(-l_fake) (non-saturating)."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def d_adv_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Eq. 8: -E log sigmoid(l_real) - E log(1 - sigmoid(l_fake))."""
    return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def r1_penalty(logits_fn: Callable[[jnp.ndarray], jnp.ndarray], images: jnp.ndarray) -> jnp.ndarray:
    """R1 gradient penalty per sample: sum over H, W, C of (d sum(logits) / d images)^2 -> [B].

    `logits_fn(images_BHWC) -> logits` closes over the discriminator parameters (and the masks, which get no
    gradient). Differentiable again w.r.t. those parameters (double backprop), as MAT's R1 uses create_graph.
    The loss term is `r1_penalty * r1_gamma / 2` (gamma 10 in MAT), averaged over the batch by the caller.
    """
    grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(images)
    return jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))


def r1_loss(penalty: jax.Array, gamma: float, interval: int = 1) -> jax.Array:
    """The lazy R1 loss: ``mean(penalty) * gamma / 2 * interval`` (StyleGAN2 scales by the interval)."""
    return jnp.mean(penalty) * (gamma / 2.0) * interval


def lazy_reg_adam_hparams(lr: float, b1: float, b2: float, interval: int) -> tuple[float, float, float]:
    """StyleGAN2's Adam rescaling for lazy regularisation every ``interval`` steps.

    With ratio = interval / (interval + 1): ``(lr * ratio, b1 ** ratio, b2 ** ratio)``.
    """
    if interval is None or int(interval) != interval or interval < 1:
        raise ValueError(f"loss.r1_interval must be a positive integer, got {interval!r}")
    ratio = interval / (interval + 1)
    return lr * ratio, b1 ** ratio, b2 ** ratio


# --------------------------------------------------------------------------------------------
# L1 and the total generator loss (Eq. 10)
# --------------------------------------------------------------------------------------------
def l1_loss(pred: jax.Array, target: jax.Array, weight_mask: jax.Array | None = None) -> jax.Array:
    """Mean |pred - target|; with ``weight_mask`` (broadcastable, e.g. [B,H,W,1] holes = 1) the
    weighted mean over the elements it selects (normalised by their count, at least 1)."""
    diff = jnp.abs(pred - target)
    if weight_mask is None:
        return jnp.mean(diff)
    weight = jnp.broadcast_to(weight_mask, diff.shape).astype(diff.dtype)
    return jnp.sum(weight * diff) / jnp.maximum(jnp.sum(weight), 1.0)


# lambda1, lambda2, lambda3 of Eq. 10 (Sec. 3.3); the L1 term is not in the paper.
PAPER_G_WEIGHTS: dict[str, float] = {"adv": 1.0, "pcp": 2.0, "nll": 1e-4, "l1": 0.0}
_G_TERMS = ("adv", "pcp", "nll", "l1")


def generator_loss_weights(loss_cfg: Any) -> dict[str, float]:
    """``{adv, pcp, nll, l1}`` weights from ``config.loss`` (``*_weight`` fields)."""
    return {k: float(loss_cfg[f"{k}_weight"]) for k in _G_TERMS}


def generator_loss(per_iteration: Sequence[Mapping[str, jax.Array]] | Mapping[str, jax.Array],
                   weights: Mapping[str, float] = PAPER_G_WEIGHTS
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eq. 10: ``sum_j lambda1 L_ag^j + lambda2 L_pcp^j + lambda3 L_nll^j (+ lambda_l1 L_l1^j)``.

    ``per_iteration`` is either a list with one dict per spread iteration j, or one dict of
    arrays stacked on a leading iteration axis J. Keys:

    * ``fake_logits``: D's logits on iteration j's prediction ([B] or [B,1]); L_ag is computed
      here with :func:`g_adv_loss`;
    * ``pcp``, ``nll``, ``l1``: the scalar loss values of iteration j (already reduced).

    A term whose weight is 0 may be left out; a term with a nonzero weight must be present.
    Returns ``(total, metrics)``; metrics hold each term summed over iterations (unweighted,
    keys ``g_adv``, ``g_pcp``, ``g_nll``, ``g_l1``), the per-iteration values
    (``g_adv/iter0`` ...) and ``g_total``.
    """
    if isinstance(per_iteration, Mapping):
        n_iter = per_iteration["fake_logits"].shape[0]
        per_iteration = [{k: v[j] for k, v in per_iteration.items()} for j in range(n_iter)]
    if not per_iteration:
        raise ValueError("generator_loss: no spread iterations given")
    unknown = set(weights) - set(_G_TERMS)
    if unknown:
        raise ValueError(f"generator_loss: unknown weight names {sorted(unknown)}; expected {_G_TERMS}")
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for j, terms in enumerate(per_iteration):
        values = {"adv": g_adv_loss(terms["fake_logits"])}
        for k in ("pcp", "nll", "l1"):
            if k in terms:
                values[k] = jnp.asarray(terms[k])
            elif weights.get(k, 0.0):
                raise ValueError(f"generator_loss: iteration {j} lacks {k!r}, whose weight is "
                                 f"{weights[k]}")
        for k, v in values.items():
            total = total + weights.get(k, 0.0) * v
            metrics[f"g_{k}"] = metrics.get(f"g_{k}", 0.0) + v
            metrics[f"g_{k}/iter{j}"] = v
    metrics["g_total"] = total
    return total, metrics
