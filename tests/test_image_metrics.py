"""PSNR / SSIM / L1 (psm_jax/evaluators/image_metrics.py) against direct NumPy/SciPy computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from psm_jax.evaluators import image_metrics as im


def _pair(seed=0, shape=(2, 24, 20, 3)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    noise = rng.integers(-30, 31, shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    return a, b


def ref_ssim(a, b):
    """skimage-style: scipy gaussian_filter (sigma 1.5, truncate 3.5 -> 11 taps), crop 5 px, mean."""
    vals = []
    for c in range(a.shape[-1]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        f = lambda z: scipy.ndimage.gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, vxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        s = ((2 * mx * my + im.C1) * (2 * vxy + im.C2)) / ((mx ** 2 + my ** 2 + im.C1) * (vx + vy + im.C2))
        vals.append(s[5:-5, 5:-5].mean())
    return np.mean(vals)


def test_ssim_matches_reference():
    a, b = _pair()
    got = np.asarray(im.ssim(a, b))
    want = [ref_ssim(a[i], b[i]) for i in range(len(a))]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(im.ssim(a, a)), 1.0, atol=1e-6)


def test_psnr_l1_and_hole_l1():
    a, b = _pair(1)
    err = a.astype(np.float64) - b
    np.testing.assert_allclose(np.asarray(im.psnr(a, b)), 10 * np.log10(255 ** 2 / (err ** 2).mean(axis=(1, 2, 3))),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(im.l1(a, b)), np.abs(err).mean(axis=(1, 2, 3)) / 255, rtol=1e-5)
    assert np.isinf(np.asarray(im.psnr(a, a))).all()
    mask = np.ones(a.shape[:3] + (1,), np.float32)
    mask[:, 5:15, 3:9] = 0
    s, n = (np.asarray(v) for v in im.hole_l1(a, b, mask))
    hole = np.broadcast_to(mask < 0.5, a.shape)
    np.testing.assert_allclose(s, [np.abs(err[i][hole[i]]).sum() for i in range(2)], rtol=1e-5)
    assert n.tolist() == [10 * 6 * 3] * 2
    out = im.all_metrics(a, b, mask)
    assert set(out) == {"psnr", "ssim", "l1", "l1_hole_sum", "hole_count"}
