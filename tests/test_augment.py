"""Tests for psm_jax.augment (ADA, StyleGAN2-ADA Appendix B pipeline on D's image+mask input)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from psm_jax import augment as aug

FAMILIES = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
            "brightness", "contrast", "lumaflip", "hue", "saturation", "cutout")
GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


def only(*names: str):
    cfg = aug.default_ada_config()
    for f in FAMILIES:
        cfg[f] = 1.0 if f in names else 0.0
    return cfg


# Most tests share one shape (B, S, S): the pipeline compiles once per (shape, dtype, enabled stages), and
# family multipliers/strengths are traced, so single-family configs of one stage reuse a compile.
B, S = 8, 16


def data(b=B, h=S, w=S, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    mask = (rng.uniform(size=(b, h, w, 1)) > 0.5).astype(np.float32)
    return jnp.asarray(img), jnp.asarray(mask)


def unique_data(b=B, s=S):
    """Every pixel value distinct, so any exact pixel move is identifiable."""
    img = np.arange(b * s * s * 3, dtype=np.float32).reshape(b, s, s, 3) / (b * s * s * 3)
    mask = img[..., :1].copy()
    return jnp.asarray(img), jnp.asarray(mask)


KEY = jax.random.key(0)


# -- identity -------------------------------------------------------------------------------------

def test_p0_is_bit_identical_default_config():
    img, mask = data()
    out_i, out_m = aug.augment(KEY, img, mask, 0.0, aug.default_ada_config())
    assert np.asarray(out_i).tobytes() == np.asarray(img).tobytes()
    assert np.asarray(out_m).tobytes() == np.asarray(mask).tobytes()


def test_p0_identity_under_jit_with_traced_p_and_bf16():
    img, mask = data()
    img = img.astype(jnp.bfloat16)
    f = jax.jit(lambda k, i, m, p: aug.augment(k, i, m, p, aug.default_ada_config()))
    out_i, out_m = f(KEY, img, mask, jnp.float32(0.0))
    assert out_i.dtype == jnp.bfloat16 and out_m.dtype == mask.dtype
    assert np.asarray(out_i).tobytes() == np.asarray(img).tobytes()
    assert np.asarray(out_m).tobytes() == np.asarray(mask).tobytes()
    # Same compiled function, p > 0: now it must change something.
    out_i, _ = f(KEY, img, mask, jnp.float32(1.0))
    assert not np.array_equal(np.asarray(out_i, np.float32), np.asarray(img, np.float32))


def test_all_families_off_is_identity_at_p1():
    img, mask = data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only())
    assert np.asarray(out_i).tobytes() == np.asarray(img).tobytes()
    assert np.asarray(out_m).tobytes() == np.asarray(mask).tobytes()


def test_disabled_config_is_identity():
    cfg = aug.default_ada_config()
    cfg.enabled = False
    img, mask = data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, cfg)
    assert out_i is img and out_m is mask


# -- geometric ------------------------------------------------------------------------------------

def test_xflip_p1_is_per_sample_flip_of_image_and_mask():
    img, mask = data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only("xflip"))
    flipped = 0
    for b in range(B):
        if np.array_equal(out_i[b], img[b]):
            np.testing.assert_array_equal(out_m[b], mask[b])
        else:
            np.testing.assert_array_equal(out_i[b], img[b, :, ::-1])
            np.testing.assert_array_equal(out_m[b], mask[b, :, ::-1])
            flipped += 1
    assert 0 < flipped < B  # Both outcomes occur (xflip draws i ~ U{0,1} when it fires).


def test_rot90_is_exact_quarter_turn():
    img, mask = unique_data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only("rotate90"))
    seen = set()
    for b in range(B):
        ks = [k for k in range(4) if np.array_equal(out_i[b], np.rot90(img[b], k, axes=(0, 1)))]
        assert len(ks) == 1, f"sample {b} is not an exact quarter turn"
        np.testing.assert_array_equal(out_m[b], np.rot90(mask[b], ks[0], axes=(0, 1)))
        seen.add(ks[0])
    assert len(seen) >= 2


def _shift_reflect(x_HWC, dy, dx):
    """out[y, x] = x[y - dy, x - dx] with reflect (no edge repeat) padding."""
    h, w, _ = x_HWC.shape
    pad = np.pad(x_HWC, ((h, h), (w, w), (0, 0)), mode="reflect")
    return pad[h - dy:2 * h - dy, w - dx:2 * w - dx]


def test_integer_translation_is_exact_reflect_padded_shift():
    img, mask = unique_data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only("xint"))
    max_shift = round(0.125 * S)
    nonzero = 0
    for b in range(B):
        shifts = range(-max_shift, max_shift + 1)
        match = [(dy, dx) for dy in shifts for dx in shifts
                 if np.array_equal(out_i[b], _shift_reflect(np.asarray(img[b]), dy, dx))]
        assert len(match) == 1, f"sample {b}: not an exact integer shift within +-{max_shift}px"
        np.testing.assert_array_equal(out_m[b], _shift_reflect(np.asarray(mask[b]), *match[0]))
        nonzero += match[0] != (0, 0)
    assert nonzero >= B // 2


def test_blitting_composite_only_moves_pixels():
    img, mask = unique_data()
    out_i, _ = aug.augment(KEY, img, mask, 1.0, only("xflip", "rotate90", "xint"))
    for b in range(B):
        assert np.isin(np.asarray(out_i[b]), np.asarray(img[b])).all()


def test_image_and_mask_get_identical_warp():
    # Every image channel equals the mask, so after any geometric warp they must still be equal.
    rng = np.random.default_rng(1)
    mask = jnp.asarray(rng.uniform(size=(B, S, S, 1)).astype(np.float32))
    img = jnp.concatenate([mask] * 3, axis=-1)
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only(*GEOMETRIC))
    assert not np.array_equal(out_m, mask)
    for c in range(3):
        np.testing.assert_array_equal(out_i[..., c:c + 1], out_m)


def test_geometric_output_stays_in_input_range_and_shape():
    img, mask = data(b=8, h=24, w=40)  # Non-square works too.
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only(*GEOMETRIC))
    assert out_i.shape == img.shape and out_m.shape == mask.shape
    # Bilinear sampling is a convex combination: no overshoot.
    assert float(out_i.min()) >= float(img.min()) - 1e-6 and float(out_i.max()) <= float(img.max()) + 1e-6
    assert float(out_m.min()) >= 0.0 and float(out_m.max()) <= 1.0


def test_rotation_probability_is_p_overall():
    # Two rotation draws with 1 - sqrt(1 - p) each: P(sample rotated at all) == p.
    img, mask = data(b=4000, h=4, w=4)
    out_i, _ = aug.augment(KEY, img, mask, 0.5, only("rotate"))
    changed = np.any(np.asarray(out_i) != np.asarray(img), axis=(1, 2, 3)).mean()
    assert abs(changed - 0.5) < 0.04, changed


def test_xflip_rate_scales_with_p():
    img, mask = data(b=4000, h=4, w=4)
    out_i, _ = aug.augment(KEY, img, mask, 0.3, only("xflip"))
    changed = np.any(np.asarray(out_i) != np.asarray(img), axis=(1, 2, 3)).mean()
    assert abs(changed - 0.15) < 0.03, changed  # Fires with p, then flips with 1/2.


# -- colour ---------------------------------------------------------------------------------------

def _luma(x):
    return np.asarray(x).mean(-1)


def _chroma_norm(x):
    x = np.asarray(x)
    return np.linalg.norm(x - x.mean(-1, keepdims=True), axis=-1)


def test_colour_leaves_mask_untouched_and_changes_image():
    img, mask = data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only(*COLOUR))
    assert np.asarray(out_m).tobytes() == np.asarray(mask).tobytes()
    assert all(not np.allclose(out_i[b], img[b]) for b in range(B))


def test_brightness_and_contrast_are_offset_and_gain():
    img, mask = data()
    out_b, _ = aug.augment(KEY, img, mask, 1.0, only("brightness"))
    d = np.asarray(out_b - img)
    np.testing.assert_allclose(d, np.broadcast_to(d[:, :1, :1, :1], d.shape), atol=1e-6)
    assert np.std(d[:, 0, 0, 0]) > 0.02
    out_c, _ = aug.augment(KEY, img, mask, 1.0, only("contrast"))
    r = np.asarray(out_c / img)
    np.testing.assert_allclose(r, np.broadcast_to(r[:, :1, :1, :1], r.shape), rtol=1e-5)
    # Strengths are read from cfg (traced, no recompile): zero strength makes the family a no-op.
    cfg = only("brightness", "contrast")
    cfg.brightness_std, cfg.contrast_std = 0.0, 0.0
    np.testing.assert_allclose(aug.augment(KEY, img, mask, 1.0, cfg)[0], img, atol=1e-7)


def test_hue_rotation_preserves_luma_and_chroma_norm():
    img, mask = data()
    out, _ = aug.augment(KEY, img, mask, 1.0, only("hue"))
    np.testing.assert_allclose(_luma(out), _luma(img), atol=1e-5)
    np.testing.assert_allclose(_chroma_norm(out), _chroma_norm(img), atol=1e-5)
    assert not np.allclose(out, img)


def test_saturation_keeps_luma_and_scales_chroma():
    img, mask = data()
    out, _ = aug.augment(KEY, img, mask, 1.0, only("saturation"))
    np.testing.assert_allclose(_luma(out), _luma(img), atol=1e-5)
    ratio = _chroma_norm(out) / _chroma_norm(img)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1], ratio.shape), rtol=1e-3)


def test_lumaflip_negates_luma_keeps_chroma():
    img, mask = data()
    out, _ = aug.augment(KEY, img, mask, 1.0, only("lumaflip"))
    np.testing.assert_allclose(_chroma_norm(out), _chroma_norm(img), atol=1e-5)
    flipped = [not np.array_equal(out[b], img[b]) for b in range(B)]
    for b in range(B):
        sign = -1.0 if flipped[b] else 1.0
        np.testing.assert_allclose(_luma(out[b]), sign * _luma(img[b]), atol=1e-5)
    assert 0 < sum(flipped) < B


def test_colour_requires_rgb():
    img, mask = data()
    with pytest.raises(ValueError, match="C=3"):
        aug.augment(KEY, img[..., :1], mask, 1.0, aug.default_ada_config())
    out, _ = aug.augment(KEY, img[..., :1], mask, 1.0, only(*GEOMETRIC))  # Grey is fine without colour.
    assert out.shape == mask.shape


def test_bad_mask_shape_raises():
    img, mask = data()
    with pytest.raises(ValueError, match="masks must be"):
        aug.augment(KEY, img, mask[..., 0], 1.0, aug.default_ada_config())


# -- cutout ---------------------------------------------------------------------------------------

def test_cutout_marks_same_square_in_image_and_mask():
    img, _ = data()
    mask = jnp.ones((B, S, S, 1), jnp.float32)
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, only("cutout"))
    side = round(0.5 * S)
    for b in range(B):
        hole = np.asarray(out_m[b, ..., 0]) == 0.0
        ys, xs = np.nonzero(hole)
        assert hole.sum() > 0
        # A square of side 0.5 * S clipped by the border: an axis-aligned box, fully filled.
        assert ys.max() - ys.min() + 1 <= side and xs.max() - xs.min() + 1 <= side
        assert hole.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        np.testing.assert_array_equal(np.asarray(out_i[b])[hole], 0.0)
        np.testing.assert_array_equal(np.asarray(out_i[b])[~hole], np.asarray(img[b])[~hole])


# -- full pipeline --------------------------------------------------------------------------------

def test_full_pipeline_sane_ranges():
    img, mask = data()
    out_i, out_m = aug.augment(KEY, img, mask, 1.0, aug.default_ada_config())
    assert np.isfinite(out_i).all() and np.isfinite(out_m).all()
    assert float(out_m.min()) >= 0.0 and float(out_m.max()) <= 1.0
    # Colour gains are lognormal (contrast 2**N(0,.5^2), saturation 2**N(0,1)); no clipping, but bounded.
    assert float(jnp.abs(out_i).max()) < 50.0
    assert 0.05 < float(jnp.abs(out_i).mean()) < 5.0


def test_deterministic_under_fixed_key():
    img, mask = data()
    cfg = aug.default_ada_config()
    a = aug.augment(KEY, img, mask, 0.7, cfg)
    b = aug.augment(KEY, img, mask, 0.7, cfg)
    c = aug.augment(jax.random.key(1), img, mask, 0.7, cfg)
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert not np.array_equal(a[0], c[0])


def test_jit_matches_eager_with_traced_p():
    img, mask = data()
    cfg = aug.default_ada_config()
    f = jax.jit(lambda k, i, m, p: aug.augment(k, i, m, p, cfg))
    for p in (0.25, 1.0):
        eager = aug.augment(KEY, img, mask, p, cfg)
        jitted = f(KEY, img, mask, jnp.float32(p))
        for x, y in zip(eager, jitted):
            np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.slow  # Compiles two VJPs of the pipeline (~3-7 s on a shared 2-core CPU).
def test_gradients_flow_through_image():
    img, mask = data()
    w = jnp.asarray(np.random.default_rng(3).normal(size=img.shape).astype(np.float32))

    # A FrozenConfigDict is hashable, so cfg can be a static jit argument (or just close over it).
    @functools.partial(jax.jit, static_argnums=2)
    def grad(x, p, cfg):
        return jax.grad(lambda x: jnp.sum(aug.augment(KEY, x, mask, p, cfg)[0] * w))(x)

    # xflip at p=1: the gradient is the (per-sample) flipped weight map, exactly.
    cfg = ml_collections.FrozenConfigDict(only("xflip"))
    g = grad(img, jnp.float32(1.0), cfg)
    out, _ = aug.augment(KEY, img, mask, 1.0, cfg)
    for b in range(B):
        flipped = not np.array_equal(out[b], img[b])
        np.testing.assert_array_equal(g[b], w[b, :, ::-1] if flipped else w[b])
    # p = 0 (same compiled function): gradient of the identity.
    np.testing.assert_array_equal(grad(img, jnp.float32(0.0), cfg), w)
    # Full pipeline, traced p: finite, non-trivial gradient.
    g = grad(img, jnp.float32(0.8), ml_collections.FrozenConfigDict(aug.default_ada_config()))
    assert np.isfinite(g).all() and float(jnp.abs(g).sum()) > 0


# -- p controller ---------------------------------------------------------------------------------

def test_update_p_direction_step_and_clip():
    cfg = aug.default_ada_config()
    step = 32 * 4 / (500 * 1000)
    up = aug.update_p(0.3, 0.9, batch_size=32, cfg=cfg)     # D overfits (r_t > 0.6): more aug.
    down = aug.update_p(0.3, 0.1, batch_size=32, cfg=cfg)   # r_t < 0.6: less aug.
    np.testing.assert_allclose(up, 0.3 + step, rtol=1e-6)
    np.testing.assert_allclose(down, 0.3 - step, rtol=1e-6)
    assert float(aug.update_p(0.0, -1.0, batch_size=32, cfg=cfg)) == 0.0
    assert float(aug.update_p(1.0, 1.0, batch_size=32, cfg=cfg)) == 1.0
    cfg.max_p = 0.5
    assert float(aug.update_p(0.4999, 1.0, batch_size=4096, cfg=cfg)) == 0.5


def test_update_p_jits_and_reaches_one_within_speed_kimg():
    cfg = aug.default_ada_config()
    cfg.speed_kimg = 1  # 1000 images: with batch 10, interval 4 -> 25 updates from 0 to 1.
    f = jax.jit(lambda p, r: aug.update_p(p, r, batch_size=10, cfg=cfg))
    p = jnp.float32(0.0)
    for _ in range(25):
        p = f(p, jnp.float32(1.0))
    np.testing.assert_allclose(p, 1.0, atol=1e-5)
