"""model.num_down, the U-Net depth (Supp. A's H/32 at the default 5; issue 26): encoder, decoder, skips,
attention scales, style rows and ToStyle's clamp follow it, and the spread runs on 2-, 3- and 5-level U-Nets
of the tiny widths. Structure through ``jax.eval_shape`` (no compile); the spreads are marked slow."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax.models.generator import Generator, make_apply_fn, model_config
from psm_jax.spread import pixel_spread
from test_generator import FAST_COMPILE, _abstract_init, _inputs, _rngs


def _to_style_convs(gen: Generator) -> int:
    return len([k for k in _abstract_init(gen)["params"]["to_style"] if k.startswith("conv")])


def test_style_depth_is_clamped():
    """ToStyle downsamples the bottleneck min(3, log2(H) - num_down) times: at 32x32 with 5 levels the
    H/32 map is 1x1 and it takes the global mean directly; the tiny test model's 4x4 bottleneck allows 2."""
    small = model_config("tiny")
    assert _to_style_convs(Generator(**{**small, "resolution": 32, "num_down": 5,
                                        "attention_downsample": (16, 32)})) == 0
    assert (small.resolution, small.num_down) == (16, 2) and _to_style_convs(Generator(**small)) == 2
    assert _to_style_convs(Generator(**model_config("paper256"))) == 3


def _tiny_levels(num_down: int, resolution: int = 32) -> Generator:
    """Tiny widths, ``num_down`` levels, attention at the bottleneck only."""
    return Generator(**{**model_config("tiny"), "resolution": resolution, "num_down": num_down,
                        "attention_downsample": (2**num_down,)})


@pytest.mark.parametrize("num_down", [2, 3, 5])
def test_num_down_sets_the_unet_depth(num_down):
    """Encoder, decoder, skips, attention scale, style rows and the ToStyle clamp follow model.num_down."""
    gen = _tiny_levels(num_down)
    variables = _abstract_init(gen)
    p, buffers = variables["params"], variables["buffers"]
    assert [k for k in p if k.startswith("enc_res")] == [f"enc_res{d}" for d in range(1, num_down + 1)]
    assert sorted(k for k in p if k.startswith("dec_res")) == sorted(f"dec_res{d}" for d in range(num_down))
    # The bottleneck is H / 2**num_down wide: the first decoder block's noise map has its size.
    side = 32 // 2**num_down
    assert buffers["dec_first"]["conv1"]["noise_const"].shape == (side, side)
    assert p["enc_res" + str(num_down)]["main"]["conv1"]["kernel"].shape[-1] == gen.channels(num_down)
    assert {k for k in p if "attn" in k} == {f"enc_attn{num_down}_0", f"dec_attn{num_down}_0"}
    assert gen.num_ws == 2 * num_down + 2 and gen.multiple == 2**num_down
    assert _to_style_convs(gen) == min(3, 5 - num_down)
    x, m, _ = (jnp.zeros((1, 32, 32, c)) for c in (3, 1, 1))
    mean, log_var = jax.eval_shape(lambda v: gen.apply(v, x, m, m, m, 0.0, rngs=_rngs()), variables)
    assert mean.shape == log_var.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="divisible by"):   # half the multiple more than a multiple
        x, m = jnp.zeros((1, 32 + 2**(num_down - 1), 32, 3)), jnp.zeros((1, 32 + 2**(num_down - 1), 32, 1))
        jax.eval_shape(lambda: gen.init(_rngs(), x, m, m, m, 0.0))


def test_bad_unet_depth_and_attention_scales_raise():
    gen = _tiny_levels(2)
    x, m = jnp.zeros((1, 18, 16, 3)), jnp.zeros((1, 18, 16, 1))
    with pytest.raises(ValueError, match="divisible by 4"):   # the tiny model's multiple is 2**2
        jax.eval_shape(lambda: gen.init(_rngs(), x, m, m, m, 0.0))
    x, m = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 1))
    # An attention scale below the bottleneck (H/8 of a 2-level U-Net) does not exist.
    with pytest.raises(ValueError, match=r"attention_downsample \(8,\) must be powers of 2 up to 4"):
        jax.eval_shape(lambda: gen.clone(attention_downsample=(8,)).init(_rngs(), x, m, m, m, 0.0))
    with pytest.raises(ValueError, match="num_down 0 must be an integer >= 1"):
        jax.eval_shape(lambda: gen.clone(num_down=0).init(_rngs(), x, m, m, m, 0.0))


@pytest.mark.slow  # three spread compiles (~5 s each on 2 busy cores)
@pytest.mark.parametrize("num_down", [2, 3, 5])
def test_spread_runs_on_each_unet_depth(num_down):
    gen = _tiny_levels(num_down)
    x, m0, _ = _inputs(32, batch=1, seed=3)
    image = jax.random.uniform(jax.random.key(9), x.shape) * 2 - 1
    # Standard-normal variables of the right shapes (the layers scale their weights at run time, as
    # StyleGAN2's equalized learning rate does): compiling the initialisers would double the cost.
    rng = np.random.default_rng(num_down)
    variables = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), _abstract_init(gen))
    run = jax.jit(lambda v, i, m, key: pixel_spread(make_apply_fn(gen, v), i, m, key, num_iters=2,
                                                    return_trajectory=True), compiler_options=FAST_COMPILE)
    out = run(variables, image, m0, jax.random.key(0))
    known = np.asarray(m0)[..., 0] > 0.5
    np.testing.assert_array_equal(np.asarray(out["image"])[known], np.asarray(image)[known])
    assert (np.asarray(out["mask"]) == 1).all()
    assert out["trajectory"]["mean"].shape == (2, 1, 32, 32, 3)
    assert np.isfinite(np.asarray(out["image"])).all()
