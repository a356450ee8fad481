"""Fidelity checks of one training step (psm_jax/train_step.py; docs/FIDELITY.md).

Small enough to run in seconds on CPU: configs/psm.py:tiny (the 16 px, 2-level test model).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax import train, train_step as ts
from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'configs' / 'psm.py'}:tiny"


def _setup(**overrides):
    # The random-weight ResNet-50 of the perceptual loss only costs compile time here.
    cfg = load_config(TINY, {"loss.pcp_weight": 0.0, **overrides})
    models = train.build_models(cfg)
    state = jax.jit(lambda k: train.init_state(cfg, models, k))(jax.random.key(0))
    return cfg, models, state


def _batch(cfg, seed=0):
    R = cfg.model.resolution
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(-1, 1, (cfg.batch_size, R, R, 3)), jnp.float32),
            "mask": jnp.asarray(rng.uniform(size=(cfg.batch_size, R, R, 1)) > 0.5, jnp.float32)}


@pytest.mark.slow
def test_discriminator_sees_each_iteration_in_its_own_minibatch_std_groups():
    """Fakes that are T copies of the real images must get exactly the real images' logits.

    D's minibatch-std groups are strided (sample i in group i mod N/G). One D call on the
    iteration-major T x B stack puts the same image at both iterations into one group, whose
    std then differs from a real group's: the old single call fails this test.
    """
    cfg, models, state = _setup(**{"batch_size": 8, "discriminator.mbstd_group_size": 4})
    batch = _batch(cfg)
    real, m0 = batch["image"], batch["mask"]
    T = 2
    fakes_TBHWC = jnp.stack([real] * T)
    masks_TBHW1 = jnp.stack([m0] * T)
    per_iter = ts.d_logits_per_iteration(models, state["d_params"], fakes_TBHWC, masks_TBHW1)
    real_logits = ts._d_logits(models, state["d_params"], real, m0)
    assert per_iter.shape == (T, cfg.batch_size)
    for t in range(T):
        np.testing.assert_allclose(per_iter[t], real_logits, rtol=1e-5, atol=1e-6)
    # The old ordering: one call on the stacked 2B fakes. Its groups hold duplicated images.
    flat_img = fakes_TBHWC.reshape((-1,) + real.shape[1:])
    flat_mask = masks_TBHW1.reshape((-1,) + m0.shape[1:])
    stacked = ts._d_logits(models, state["d_params"], flat_img, flat_mask).reshape(T, -1)
    # At init D barely uses the std channel, so the logit gap is small but far above rounding.
    assert np.abs(np.asarray(stacked - real_logits[None])).max() > 1e-5

    # The statistic itself, read at D's minibatch-std layer: the stacked call's fakes get a
    # clearly lower std than the reals (groups of 2 images seen twice instead of 4 distinct).
    from psm_jax.models.discriminator import MinibatchStd

    def mbstd_stat(images, masks):
        _, inter = models.discriminator.apply(
            {"params": state["d_params"]}, images, masks,
            capture_intermediates=lambda mdl, _: isinstance(mdl, MinibatchStd))
        (out,) = jax.tree.leaves(inter["intermediates"])
        return np.asarray(out[..., -1]).mean(axis=(1, 2))

    real_stat = mbstd_stat(real, m0)
    assert mbstd_stat(flat_img, flat_mask).mean() < 0.95 * real_stat.mean()
    np.testing.assert_array_equal(mbstd_stat(fakes_TBHWC[0], masks_TBHW1[0]), real_stat)


def test_minibatch_std_of_duplicated_batch_differs_from_real_batch():
    """The statistic itself: a group of 4 distinct images vs 2 images twice each."""
    from psm_jax.models.discriminator import MinibatchStd

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 4, 4, 6)), jnp.float32)
    layer = MinibatchStd(group_size=4)
    real_stat = layer.apply({}, x)[..., -1]
    dup = jnp.concatenate([x[:4], x[:4]])             # iteration-major stack of T=2 copies, B=4
    dup_stat = layer.apply({}, dup)[..., -1]
    assert float(dup_stat.mean()) < 0.9 * float(real_stat.mean())


@pytest.mark.slow
def test_style_mixing_is_training_only_and_changes_the_output():
    from psm_jax.models.generator import Generator, make_apply_fn

    cfg, models, state = _setup()
    variables = {"params": state["g_params"], **state["g_buffers"]}
    batch = _batch(cfg)
    x, m = batch["image"], batch["mask"]
    key = jax.random.key(3)
    run = lambda p, g=models.generator: make_apply_fn(g, variables, style_mixing_prob=p)(  # noqa: E731
        x, m, m, 1.0 - m, jnp.zeros((x.shape[0],)), key)
    plain = make_apply_fn(models.generator, variables)(x, m, m, 1.0 - m, jnp.zeros((x.shape[0],)), key)
    jax.tree.map(np.testing.assert_array_equal, run(0.0), plain)
    mixed = run(1.0)
    assert not np.allclose(np.asarray(mixed[0]), np.asarray(plain[0]))
    # Without a random latent there is nothing to mix.
    det = Generator(**{**cfg.model, "use_latent": False})
    jax.tree.map(np.testing.assert_array_equal, run(1.0, det), run(0.0, det))


def test_g_adam_is_rescaled_for_the_lazy_regularisation_interval():
    from psm_jax import losses

    cfg = load_config(TINY, {"optim.lr": 1e-3})
    assert cfg.loss.g_reg_interval == 4
    g_tx, _ = ts.make_optimizers(cfg)
    params = {"w": jnp.zeros((4,))}
    step = g_tx.update({"w": jnp.ones((4,))}, g_tx.init(params), params)[0]["w"]
    lr = losses.lazy_reg_adam_hparams(1e-3, cfg.optim.b1, cfg.optim.b2, 4)[0]
    np.testing.assert_allclose(step, -lr, rtol=1e-4)
    assert lr == pytest.approx(0.8e-3)


@pytest.mark.slow
def test_fresh_fakes_change_only_the_discriminator_update():
    """d_fresh_fakes: D trains on the updated G's re-generated fakes; G's update is unchanged."""
    results = {}
    for fresh in (True, False):
        cfg, models, state = _setup(**{"loss.d_fresh_fakes": fresh})
        state, metrics = jax.jit(ts.make_train_step(cfg, models))(state, _batch(cfg))
        results[fresh] = jax.tree.map(np.asarray, (state["g_params"], state["d_params"], metrics))
    (g_a, d_a, m_a), (g_b, d_b, m_b) = results[True], results[False]
    jax.tree.map(np.testing.assert_array_equal, g_a, g_b)
    assert m_a["g_loss"] == m_b["g_loss"]
    diffs = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(d_a), jax.tree.leaves(d_b))]
    assert max(diffs) > 0
    assert all(np.isfinite(v) for v in m_a.values())
