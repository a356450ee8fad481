"""Adaptive discriminator augmentation (ADA) for the image+mask input of D.

PSM paper Sec. 4.2 trains with ADA "following [24, 34]" (StyleGAN2-ADA, MAT). This is a clean-room JAX
implementation written from the StyleGAN2-ADA paper (Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data", Sec. 2-3 and Appendix B); no NVIDIA or MAT code was consulted or copied.

Pipeline, in the paper's order (each transform drawn per sample with probability ``p * <family multiplier>``):

1. Geometric (applied to image AND mask, one warp): xflip, rotate90, integer translation, isotropic scaling,
   arbitrary rotation, anisotropic scaling, arbitrary rotation again, optional fractional translation. All are
   composed into one 3x3 affine per sample and applied ONCE with reflect padding and bilinear sampling to the
   concatenation ``[image, mask]``, so both channels get the identical warp. Pixel-blitting transforms (xflip,
   rot90, integer translation) map pixel centres onto pixel centres, so they are exact pixel moves.
   Other warps leave soft (bilinear) mask edges in [0, 1]; D takes the mask as a continuous channel.
   (The paper oversamples 2x with a wavelet filter around the warp to limit aliasing; we sample bilinearly
   at the native resolution, which is cheaper and is exact for the blitting transforms.)
2. Colour (image only): brightness, contrast, luma flip, hue rotation, saturation, composed into one 4x4
   matrix per sample acting on homogeneous RGB in [-1, 1] (so "mid grey" is 0, the fixed point of contrast).
3. Cutout (image AND mask): a square of side ``cutout_size`` (fraction of the image side) with a uniformly
   random centre. The image is set to ``cutout_fill`` (0 = mid grey, i.e. StyleGAN2-ADA's "multiply the
   [-1, 1] image by 0"), and the mask D sees is set to ``cutout_mask_value`` (default 0 = hole). Why hole:
   it keeps the invariant "mask == 1 means genuine image content"; since the same aug is applied to reals
   and fakes it cannot leak which is which either way.

Strengths (StyleGAN2-ADA Appendix B defaults; ``lnN(0, (s ln 2)^2)`` is written as ``2 ** N(0, s^2)``):
  integer translation t ~ U(-0.125, 0.125) of the image size, rounded to whole pixels;
  isotropic scale 2**N(0, 0.2^2); rotation theta ~ U(-pi, pi), drawn twice each with probability
  1 - sqrt(1 - p) so that "any rotation" has probability p; anisotropic scale 2**N(0, 0.2^2) on x and its
  inverse on y; fractional translation N(0, 0.125^2) of the image size (off by default, see below);
  brightness + N(0, 0.2^2); contrast x 2**N(0, 0.5^2); luma flip with probability 1/2; hue rotation by
  U(-pi, pi) about the luma axis; saturation 2**N(0, 1^2) of the chroma component; cutout side 0.5.
Default families: StyleGAN2-ADA's "bgc" preset, which MAT's train.py selects (blit + geometric with
fractional translation + colour; no cutout). Cutout stays available (``cutout = 1``), see docs/FIDELITY.md.

Images are not clipped after colour ops (as in StyleGAN2-ADA). With p == 0 the output is bit-identical to
the input (``lax.cond`` skips the whole pipeline); samples for which no transform was drawn are also passed
through unchanged (``jnp.where``), so that the identity never costs resampling error.
"""
from __future__ import annotations

import functools
import math
import types

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

Array = jax.Array

_HIGHEST = lax.Precision.HIGHEST  # TPU/GPU default f32 matmuls drop to bf16/tf32; our 3x3/4x4 maps must not.

# Columns of the per-sample random draws (see _Draws). Each name owns a fixed column, so switching one
# family on/off leaves every other family's draws unchanged.
_GATES = ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac",
          "brightness", "contrast", "lumaflip", "hue", "saturation", "cutout")
_UNIFORMS = ("xflip", "rotate90", "xint_x", "xint_y", "rotate_pre", "rotate_post", "lumaflip", "hue",
             "cutout_x", "cutout_y")
_NORMALS = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation")

_GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
_COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
# Config fields read inside the pipeline (traced, see augment()).
_NUMERIC = (*_GEOMETRIC, "xint_max", "scale_std", "rotate_max", "aniso_std", "xfrac_std",
            *_COLOUR, "brightness_std", "contrast_std", "hue_max", "saturation_std",
            "cutout", "cutout_size", "cutout_fill", "cutout_mask_value")


def default_ada_config() -> ml_collections.ConfigDict:
    """ADA settings; family fields are probability multipliers (0 disables the family)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.target = 0.6       # Target E[sign(D(real))] (StyleGAN2-ADA heuristic r_t).
    c.interval = 4       # Adjust p every this many D steps.
    c.speed_kimg = 500   # p can move 0 -> 1 within this many thousand real images.
    c.p_init = 0.0
    c.max_p = 1.0
    # Pixel blitting.
    c.xflip = 1.0
    c.rotate90 = 1.0
    c.xint = 1.0
    c.xint_max = 0.125        # Uniform, fraction of image size, rounded to whole pixels.
    # General geometric.
    c.scale = 1.0
    c.scale_std = 0.2         # log2 units.
    c.rotate = 1.0
    c.rotate_max = 1.0        # Fraction of pi.
    c.aniso = 1.0
    c.aniso_std = 0.2         # log2 units.
    c.xfrac = 1.0             # MAT trains with StyleGAN2-ADA's "bgc" pipe, which includes it.
    c.xfrac_std = 0.125       # Fraction of image size.
    # Colour (image only).
    c.brightness = 1.0
    c.brightness_std = 0.2
    c.contrast = 1.0
    c.contrast_std = 0.5      # log2 units.
    c.lumaflip = 1.0
    c.hue = 1.0
    c.hue_max = 1.0           # Fraction of pi.
    c.saturation = 1.0
    c.saturation_std = 1.0    # log2 units.
    # Corruption.
    c.cutout = 0.0            # Not in "bgc" (MAT's default augpipe); 1.0 adds the "c" of "bgcfnc".
    c.cutout_size = 0.5       # Side of the square, fraction of image side.
    c.cutout_fill = 0.0       # Image value inside the square (0 = mid grey in [-1, 1]).
    c.cutout_mask_value = 0.0  # Mask value inside the square as seen by D (0 = hole).
    return c


# --- p controller ---------------------------------------------------------------------------------

def update_p(p: Array | float, sign_real_mean: Array | float, *, batch_size: int,
             cfg: ml_collections.ConfigDict) -> Array:
    """One ADA step: ``p += sign(r_t - target) * batch*interval / (speed_kimg*1000)``, clipped to [0, max_p].

    ``sign_real_mean`` is r_t = E[sign(D(real))] accumulated over the last ``cfg.interval`` D steps (the
    trainer keeps the running sum/count and calls this every ``interval`` steps, e.g. under ``lax.cond``).
    ``batch_size`` is the global number of real images per D step. Pure and jit-safe.
    """
    step = batch_size * cfg.interval / (cfg.speed_kimg * 1000.0)
    p = jnp.asarray(p, jnp.float32)
    delta = jnp.sign(jnp.asarray(sign_real_mean, jnp.float32) - cfg.target) * step
    return jnp.clip(p + delta, 0.0, cfg.max_p)


# --- Per-sample parameter draws -------------------------------------------------------------------

class _Params(types.SimpleNamespace):
    """The _NUMERIC config fields as traced scalars (attribute access like the ConfigDict)."""


class _Draws:
    """All per-sample random numbers of one call, from ONE uniform draw of [B, gates+uniforms+normals].

    Why not one key per family: every jax.random call inlines its own threefry, which is slow to compile
    on CPU (~30 calls took ~4 s); one draw compiles in a fraction of that. Normals come from the same
    uniforms through the inverse normal CDF (as jax.random.normal does internally).
    """

    def __init__(self, key: Array, b: int):
        ng, nu = len(_GATES), len(_UNIFORMS)
        u_BK = jax.random.uniform(key, (b, ng + nu + len(_NORMALS)))
        self._gate_BG = u_BK[:, :ng]
        self._unif_BU = u_BK[:, ng:ng + nu]
        # u in [0, 1) -> 2u - 1 in [-1, 1); clip the -1 end so erf_inv stays finite.
        z = jnp.clip(2.0 * u_BK[:, ng + nu:] - 1.0, -1.0 + 1e-7, None)
        self._norm_BN = math.sqrt(2.0) * lax.erf_inv(z)

    def fires(self, name: str, prob: Array) -> Array:
        """Bernoulli(prob) per sample; U[0,1) < 1 so prob == 1 always fires and prob == 0 never does."""
        return self._gate_BG[:, _GATES.index(name)] < prob

    def uniform(self, name: str, lo: float = 0.0, hi: float = 1.0) -> Array:
        return lo + (hi - lo) * self._unif_BU[:, _UNIFORMS.index(name)]

    def coin(self, name: str) -> Array:
        return self._unif_BU[:, _UNIFORMS.index(name)] < 0.5

    def normal(self, name: str) -> Array:
        return self._norm_BN[:, _NORMALS.index(name)]


def _mat3(rows: list[list[Array | float]], b: int) -> Array:
    """Builds [B,3,3] from a nested list of per-sample [B] arrays or scalars."""
    return jnp.stack([jnp.stack([jnp.broadcast_to(jnp.asarray(e, jnp.float32), (b,)) for e in r], -1)
                      for r in rows], -2)


def _translate(tx: Array, ty: Array, b: int) -> Array:
    return _mat3([[1, 0, tx], [0, 1, ty], [0, 0, 1]], b)


def _scale(sx: Array, sy: Array, b: int) -> Array:
    return _mat3([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], b)


def _rotate(cos: Array, sin: Array, b: int) -> Array:
    return _mat3([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], b)


def _geometry(rnd: _Draws, b: int, h: int, w: int, p: Array, cfg: _Params) -> tuple[Array, Array]:
    """Returns (G_B33, any_applied_B): G maps centred OUTPUT pixel coords to centred INPUT pixel coords.

    We build the sampling (inverse) matrix directly: the inverse of the forward chain T1..Tn is
    T1^-1 @ ... @ Tn^-1, and every family's distribution is symmetric under inversion (flip, rot90 by a
    uniform quarter, symmetric translations, log-symmetric scales, symmetric angles), so drawing the
    inverses is the same as drawing the forward transforms.
    """
    g = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (b, 3, 3))
    any_on = jnp.zeros((b,), bool)

    def chain(g, t):
        return jnp.einsum("bij,bjk->bik", g, t, precision=_HIGHEST)

    on = rnd.fires("xflip", p * cfg.xflip) & rnd.coin("xflip")
    g = chain(g, _scale(jnp.where(on, -1.0, 1.0), 1.0, b))
    any_on |= on

    on = rnd.fires("rotate90", p * cfg.rotate90)
    quarter = jnp.where(on, jnp.minimum(jnp.floor(rnd.uniform("rotate90", 0.0, 4.0)), 3.0), 0.0)
    quarter = quarter.astype(jnp.int32)
    # Exact table instead of cos(pi/2) = -4.4e-8, so rot90 stays a pure pixel permutation.
    cos = jnp.array([1.0, 0.0, -1.0, 0.0])[quarter]
    sin = jnp.array([0.0, 1.0, 0.0, -1.0])[quarter]
    g = chain(g, _rotate(cos, sin, b))
    any_on |= quarter != 0

    on = rnd.fires("xint", p * cfg.xint)
    t = jnp.stack([rnd.uniform(f"xint_{a}", -cfg.xint_max, cfg.xint_max) for a in "xy"], -1)
    t = jnp.where(on[:, None], jnp.round(t * jnp.array([[w, h]], jnp.float32)), 0.0)
    g = chain(g, _translate(t[:, 0], t[:, 1], b))
    any_on |= on

    on = rnd.fires("scale", p * cfg.scale)
    s = jnp.where(on, jnp.exp2(rnd.normal("scale") * cfg.scale_std), 1.0)
    g = chain(g, _scale(s, s, b))
    any_on |= on

    def rotation(g, any_on, name):
        # Two independent draws each with 1 - sqrt(1 - p): P(at least one rotation) == p.
        p_rot = 1.0 - jnp.sqrt(1.0 - jnp.clip(p * cfg.rotate, 0.0, 1.0))
        on = rnd.fires(name, p_rot)
        theta = jnp.where(on, rnd.uniform(name, -1.0, 1.0) * (math.pi * cfg.rotate_max), 0.0)
        return chain(g, _rotate(jnp.cos(theta), jnp.sin(theta), b)), any_on | on

    g, any_on = rotation(g, any_on, "rotate_pre")

    on = rnd.fires("aniso", p * cfg.aniso)
    s = jnp.where(on, jnp.exp2(rnd.normal("aniso") * cfg.aniso_std), 1.0)
    g = chain(g, _scale(s, 1.0 / s, b))
    any_on |= on

    g, any_on = rotation(g, any_on, "rotate_post")

    on = rnd.fires("xfrac", p * cfg.xfrac)
    t = jnp.stack([rnd.normal(f"xfrac_{a}") for a in "xy"], -1)
    t = t * cfg.xfrac_std * jnp.array([[w, h]], jnp.float32)
    t = jnp.where(on[:, None], t, 0.0)
    g = chain(g, _translate(t[:, 0], t[:, 1], b))
    any_on |= on
    return g, any_on


def _colour(rnd: _Draws, b: int, p: Array, cfg: _Params) -> tuple[Array, Array]:
    """Returns (C_B44, any_applied_B): C acts on homogeneous [r, g, b, 1] in [-1, 1]."""
    c = jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (b, 4, 4))
    any_on = jnp.zeros((b,), bool)
    v = jnp.array([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3.0)  # Luma axis.
    vvt = jnp.outer(v, v)[None]                           # [1,4,4], broadcasts against [B,4,4].
    eye = jnp.eye(4, dtype=jnp.float32)[None]
    e3 = jnp.diag(jnp.array([1.0, 1.0, 1.0, 0.0]))[None]  # RGB block only.
    homog = eye - e3                                      # Keeps the homogeneous 1.

    def then(c, t_B44):  # Forward composition: later ops act on the output of earlier ones.
        return jnp.einsum("bij,bjk->bik", t_B44, c, precision=_HIGHEST)

    on = rnd.fires("brightness", p * cfg.brightness)
    d = jnp.where(on, rnd.normal("brightness") * cfg.brightness_std, 0.0)
    t = jnp.broadcast_to(eye, (b, 4, 4)).at[:, :3, 3].set(d[:, None])
    c, any_on = then(c, t), any_on | on

    on = rnd.fires("contrast", p * cfg.contrast)
    s = jnp.where(on, jnp.exp2(rnd.normal("contrast") * cfg.contrast_std), 1.0)
    t = jnp.broadcast_to(eye, (b, 4, 4)).at[:, :3, :3].multiply(s[:, None, None])
    c, any_on = then(c, t), any_on | on

    on = rnd.fires("lumaflip", p * cfg.lumaflip) & rnd.coin("lumaflip")
    i = on.astype(jnp.float32)[:, None, None]
    c, any_on = then(c, eye - 2.0 * vvt * i), any_on | on  # Householder reflection of the luma.

    on = rnd.fires("hue", p * cfg.hue)
    theta = jnp.where(on, rnd.uniform("hue", -1.0, 1.0) * (math.pi * cfg.hue_max), 0.0)
    cos, sin = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
    # Rodrigues rotation about the luma axis v (3x3 block), homogeneous row/col untouched.
    vx = jnp.array([[[0.0, -v[2], v[1], 0.0], [v[2], 0.0, -v[0], 0.0],
                     [-v[1], v[0], 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    rot = cos * e3 + sin * vx + (1.0 - cos) * vvt + homog
    c, any_on = then(c, rot), any_on | on

    on = rnd.fires("saturation", p * cfg.saturation)
    s = jnp.where(on, jnp.exp2(rnd.normal("saturation") * cfg.saturation_std), 1.0)
    t = vvt + (e3 - vvt) * s[:, None, None] + homog  # Scale the chroma, keep the luma.
    c, any_on = then(c, t), any_on | on
    return c, any_on


# --- Resampling -----------------------------------------------------------------------------------

def _reflect(coord: Array, size: int) -> Array:
    """Mirror continuous pixel coords into [0, size-1] (reflect without edge repeat, any distance)."""
    if size == 1:
        return jnp.zeros_like(coord)
    period = 2.0 * (size - 1)
    coord = jnp.mod(coord, period)
    return jnp.where(coord > size - 1, period - coord, coord)


def _warp(x_BHWC: Array, g_B33: Array) -> Array:
    """Bilinear, reflect-padded resampling: out[y, x] = in[G @ (x, y, 1)] in centred pixel coords."""
    b, h, w, c = x_BHWC.shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    v_HW, u_HW = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                              jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    u_1HW, v_1HW = u_HW[None], v_HW[None]
    gb = g_B33[:, :, :, None, None]  # [B,3,3,1,1]: gb[:, i, j] is [B,1,1] against [1,H,W].
    # Elementwise (not a matmul) so integer matrices give exact integer coords on every backend.
    xs_BHW = gb[:, 0, 0] * u_1HW + gb[:, 0, 1] * v_1HW + gb[:, 0, 2] + cx
    ys_BHW = gb[:, 1, 0] * u_1HW + gb[:, 1, 1] * v_1HW + gb[:, 1, 2] + cy
    # Snap coords within 1e-3 px of a pixel centre: keeps blitting transforms exact despite float
    # round-off in composed matrices; moves any other sample by < 1e-3 px.
    snap = lambda z: jnp.where(jnp.abs(z - jnp.round(z)) < 1e-3, jnp.round(z), z)
    xs_BHW, ys_BHW = _reflect(snap(xs_BHW), w), _reflect(snap(ys_BHW), h)

    x0f, y0f = jnp.floor(xs_BHW), jnp.floor(ys_BHW)
    fx, fy = (xs_BHW - x0f)[..., None], (ys_BHW - y0f)[..., None]
    x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    flat_BNC = x_BHWC.reshape(b, h * w, c)

    def gather(yi, xi):
        idx_BN1 = (yi * w + xi).reshape(b, h * w, 1)
        return jnp.take_along_axis(flat_BNC, idx_BN1, axis=1).reshape(b, h, w, c)

    top = gather(y0, x0) * (1.0 - fx) + gather(y0, x1) * fx
    bot = gather(y1, x0) * (1.0 - fx) + gather(y1, x1) * fx
    return top * (1.0 - fy) + bot * fy


def _apply_colour(img_BHWC: Array, c_B44: Array) -> Array:
    out = jnp.einsum("bij,bhwj->bhwi", c_B44[:, :3, :3], img_BHWC, precision=_HIGHEST)
    return out + c_B44[:, None, None, :3, 3]


def _cutout(rnd: _Draws, img_BHWC: Array, mask_BHW1: Array, p: Array,
            cfg: _Params) -> tuple[Array, Array]:
    b, h, w, _ = img_BHWC.shape
    on = rnd.fires("cutout", p * cfg.cutout)
    centre_B2 = jnp.stack([rnd.uniform("cutout_x"), rnd.uniform("cutout_y")], -1)
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    half = cfg.cutout_size / 2.0
    in_y_BH = jnp.abs(ys[None, :] - centre_B2[:, 1:2]) < half
    in_x_BW = jnp.abs(xs[None, :] - centre_B2[:, 0:1]) < half
    hole_BHW1 = (in_y_BH[:, :, None] & in_x_BW[:, None, :] & on[:, None, None])[..., None]
    img = jnp.where(hole_BHW1, jnp.asarray(cfg.cutout_fill, img_BHWC.dtype), img_BHWC)
    mask = jnp.where(hole_BHW1, jnp.asarray(cfg.cutout_mask_value, mask_BHW1.dtype), mask_BHW1)
    return img, mask


# --- Public entry point ---------------------------------------------------------------------------

def augment(key: Array, images_BHWC: Array, masks_BHW1: Array, p: Array | float,
            cfg: ml_collections.ConfigDict) -> tuple[Array, Array]:
    """Augments what D sees. ``p`` may be traced; ``cfg`` (ConfigDict or FrozenConfigDict) is read in Python.

    Geometric families warp image and mask identically; colour touches the image only; cutout edits both
    (see module docstring). Returns arrays of the input shapes and dtypes. With p == 0 (or
    ``cfg.enabled`` False) the inputs are returned bit-identically. Differentiable w.r.t. ``images_BHWC``.
    """
    b, h, w, ch = images_BHWC.shape
    if masks_BHW1.shape != (b, h, w, 1):
        raise ValueError(f"augment: masks must be {(b, h, w, 1)}, got {masks_BHW1.shape}")
    colour_on = any(cfg[f] > 0 for f in _COLOUR)
    if colour_on and ch != 3:
        raise ValueError(f"augment: colour families need RGB images (C=3), got C={ch}; "
                         "set cfg.brightness/contrast/lumaflip/hue/saturation to 0")
    if not cfg.enabled:
        return images_BHWC, masks_BHW1
    stages = (any(cfg[f] > 0 for f in _GEOMETRIC), colour_on, cfg.cutout > 0)
    # Numeric settings travel as one traced vector and only the stage switches are static: changing a
    # strength or a family multiplier never recompiles, and eager callers hit _augment_jit's cache.
    # Inside an outer jit the vector is a constant and the inner jit simply inlines.
    values = jnp.asarray([float(cfg[f]) for f in _NUMERIC], jnp.float32)
    return _augment_jit(key, images_BHWC, masks_BHW1, jnp.asarray(p, jnp.float32), values, stages)


@functools.partial(jax.jit, static_argnums=5)
def _augment_jit(key: Array, images_BHWC: Array, masks_BHW1: Array, p: Array, values: Array,
                 stages: tuple[bool, bool, bool]) -> tuple[Array, Array]:
    b, h, w, ch = images_BHWC.shape
    geom_on, colour_on, cutout_on = stages
    cfg = _Params(**{f: values[i] for i, f in enumerate(_NUMERIC)})

    def run(operands):
        img, mask = operands
        img32, mask32 = img.astype(jnp.float32), mask.astype(jnp.float32)
        rnd = _Draws(key, b)
        if geom_on:
            g_B33, on_B = _geometry(rnd, b, h, w, p, cfg)
            both_BHWC1 = _warp(jnp.concatenate([img32, mask32], axis=-1), g_B33)
            keep = on_B[:, None, None, None]
            img32 = jnp.where(keep, both_BHWC1[..., :ch], img32)
            mask32 = jnp.where(keep, both_BHWC1[..., ch:], mask32)
        if colour_on:
            c_B44, on_B = _colour(rnd, b, p, cfg)
            img32 = jnp.where(on_B[:, None, None, None], _apply_colour(img32, c_B44), img32)
        if cutout_on:
            img32, mask32 = _cutout(rnd, img32, mask32, p, cfg)
        return img32.astype(img.dtype), mask32.astype(mask.dtype)

    # p == 0 skips everything (not just "draws nothing"): exact identity at no resampling cost.
    return lax.cond(p > 0, run, lambda operands: operands, (images_BHWC, masks_BHW1))
