"""PSNR, SSIM and L1 of composited inpaintings (MAT's ``evaluatoin`` PSNR/SSIM/L1 protocol, PSM Table 3).

All metrics take uint8-valued images ``[N, H, W, 3]`` (the composited output, i.e. known pixels
pasted back, and the ground truth) and return one value per image; callers average over images.

* ``psnr``: ``10 log10(255^2 / MSE)`` over the whole image and all channels (inf when identical).
* ``ssim``: Wang et al. (2004) SSIM with an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 * 255)^2,
  C2 = (0.03 * 255)^2, population (1/N-weighted) local statistics, averaged over the "valid"
  region (5 px border dropped) of each channel, then over channels. This is what the MATLAB
  reference, ``cv2``-based copies and skimage's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)`` compute (skimage
  filters the whole image and crops the same 5 px border before the mean).
* ``l1``: mean |a - b| / 255 over the whole image (in [0, 1]).
* ``l1_hole_sum``: sum of |a - b| (in grey levels) over hole elements, with ``hole_count``,
  so that the hole L1 of a data set is a ratio of totals (as ``demo.py`` reports it).

Everything is jit-able JAX in float32 (inputs are integers <= 255, so the sums are exact enough).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
C1 = (0.01 * 255.0) ** 2
C2 = (0.03 * 255.0) ** 2


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x_NHWC: jax.Array, g: jax.Array) -> jax.Array:
    """Separable 'valid' Gaussian filter per channel (depthwise)."""
    c = x_NHWC.shape[-1]
    k = len(g)
    hi = jax.lax.Precision.HIGHEST
    ky = jnp.tile(g.reshape(k, 1, 1, 1), (1, 1, 1, c))
    kx = jnp.tile(g.reshape(1, k, 1, 1), (1, 1, 1, c))
    dn = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x_NHWC, ky, (1, 1), "VALID", dimension_numbers=dn,
                                     feature_group_count=c, precision=hi)
    return jax.lax.conv_general_dilated(y, kx, (1, 1), "VALID", dimension_numbers=dn,
                                        feature_group_count=c, precision=hi)


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image SSIM ``[N]`` of two uint8-valued ``[N, H, W, C]`` batches (H, W >= 11)."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    g = jnp.asarray(gaussian_window())
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    # Second moments around the local means (subtracting the mean first keeps float32 accurate).
    saa = _filter_valid(a * a, g) - mu_a * mu_a
    sbb = _filter_valid(b * b, g) - mu_b * mu_b
    sab = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + C1) * (2 * sab + C2)
    den = (mu_a ** 2 + mu_b ** 2 + C1) * (saa + sbb + C2)
    return jnp.mean(num / den, axis=(1, 2, 3))


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    err = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
    mse = jnp.mean(err * err, axis=(1, 2, 3))
    return jnp.where(mse > 0, 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-20)), jnp.inf)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)), axis=(1, 2, 3)) / 255.0


def hole_l1(a: jax.Array, b: jax.Array, mask_NHW1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of |a - b| over hole elements, number of hole elements), per image."""
    hole = jnp.broadcast_to(mask_NHW1 < 0.5, a.shape)
    err = jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))
    return jnp.sum(jnp.where(hole, err, 0.0), axis=(1, 2, 3)), jnp.sum(hole, axis=(1, 2, 3)).astype(jnp.float32)


@jax.jit
def all_metrics(pred_u8: jax.Array, real_u8: jax.Array, mask_NHW1: jax.Array) -> dict[str, jax.Array]:
    """Per-image ``psnr``, ``ssim``, ``l1``, ``l1_hole_sum``, ``hole_count`` (see module docstring)."""
    s, n = hole_l1(pred_u8, real_u8, mask_NHW1)
    return {"psnr": psnr(pred_u8, real_u8), "ssim": ssim(pred_u8, real_u8), "l1": l1(pred_u8, real_u8),
            "l1_hole_sum": s, "hole_count": n}
