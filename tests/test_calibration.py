"""Calibration metrics of sigma (psm_jax/evaluators/calibration.py) on synthetic predictions."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from PIL import Image

from psm_jax.evaluators import calibration


def _synthetic(seed=0, shuffle=False, b=4, h=48, w=48):
    rng = np.random.default_rng(seed)
    target = (rng.integers(20, 236, (b, h, w, 3)) / 127.5 - 1).astype(np.float32)
    sigma = np.exp(rng.uniform(np.log(0.02), np.log(0.5), (b, h, w, 3))).astype(np.float32)
    err = rng.normal(size=sigma.shape).astype(np.float32) * sigma       # e ~ N(0, sigma^2)
    mean = target - err
    if shuffle:
        sigma = rng.permutation(sigma.reshape(-1)).reshape(sigma.shape)
    mask = np.ones((b, h, w, 1), np.float32)
    mask[:, 4:44, 4:44] = 0                                              # the hole
    return target, mean, 2 * np.log(sigma), mask, err, sigma


def _run(*arrays, samples=20000):
    target, mean, log_var, mask = arrays
    acc = calibration.CalibrationAccumulator()
    for t in range(2):   # two identical "iterations": both must be reported
        acc.add(t, calibration.batch_statistics(target, mean, log_var, mask, jax.random.key(t), samples))
    return acc


def test_calibrated_gaussian_errors():
    target, mean, log_var, mask, err, sigma = _synthetic()
    acc = _run(target, mean, log_var, mask)
    r = acc.result()
    n = int((np.broadcast_to(mask < 0.5, err.shape)).sum())
    se = math.sqrt(0.68 * 0.32 / n)
    assert abs(r["calib/coverage_1sigma/iter0"] - 0.6827) < 4 * se + 1e-3
    assert abs(r["calib/coverage_2sigma/iter1"] - 0.9545) < 4 * math.sqrt(0.95 * 0.05 / n) + 1e-3
    assert r["calib/spearman/iter0"] > 0.3
    # NLL: bins of width 2/255 are narrow against sigma >= 0.02, so -log2(pdf * 2/255) is close.
    hole = np.broadcast_to(mask < 0.5, err.shape)
    e, s = err[hole].astype(np.float64), sigma[hole].astype(np.float64)
    approx = np.mean(0.5 * (e / s) ** 2 + np.log(s) + 0.5 * np.log(2 * np.pi) - np.log(2 / 255)) / np.log(2)
    assert r["calib/nll_bpd/iter0"] == pytest.approx(approx, rel=2e-3)
    rel = acc.reliability(0)
    # Calibrated: RMS error tracks RMS sigma in every well-populated bin.
    for rs, re_, c in zip(rel["rms_sigma"], rel["rms_error"], rel["count"]):
        if c > 2000:
            assert re_ == pytest.approx(rs, rel=0.1)


def test_shuffled_sigma_has_no_rank_correlation():
    target, mean, log_var, mask, *_ = _synthetic(1, shuffle=True)
    r = _run(target, mean, log_var, mask).result()
    assert abs(r["calib/spearman/iter0"]) < 0.05


def test_reliability_png(tmp_path):
    target, mean, log_var, mask, *_ = _synthetic(2)
    acc = _run(target, mean, log_var, mask)
    acc.reliability_png(tmp_path / "rel.png")
    assert Image.open(tmp_path / "rel.png").size == (360, 360)


def test_no_hole_gives_nan_not_crash():
    target, mean, log_var, mask, *_ = _synthetic(3)
    r = _run(target, mean, log_var, np.ones_like(mask)).result()
    assert math.isnan(r["calib/nll_bpd/iter0"]) and math.isnan(r["calib/spearman/iter0"])
