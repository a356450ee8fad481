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


# ---- does sigma order the spread? (open pixels, sparsification, pick and refine ratios)

def _spread_case(seed=0, b=3, h=16, w=16):
    """A hole, a sigma that ranks the error perfectly, and a mask_out that commits the half of the
    open pixels with the lowest sigma."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    abs_err = rng.uniform(0.01, 0.5, (b, h, w, 1)).astype(np.float32)
    mean = target - np.broadcast_to(abs_err, target.shape) * rng.choice([-1, 1], target.shape)
    log_var = np.broadcast_to(2 * np.log(abs_err), target.shape).astype(np.float32)
    mask0 = np.ones((b, h, w, 1), np.float32)
    mask0[:, 2:14, 3:13] = 0
    open_err = np.where(mask0 < 0.5, abs_err, np.inf)
    thresh = np.median(abs_err[mask0 < 0.5])
    mask_out = np.where((mask0 > 0.5) | (open_err <= thresh), 1.0, 0.0).astype(np.float32)
    return target, mean.astype(np.float32), log_var, mask0, mask_out, abs_err


def _spread_acc(target, mean, log_var, mask0, mask_out, samples=None, mean_first=None):
    acc = calibration.CalibrationAccumulator()
    acc.add(0, calibration.batch_statistics(target, mean, log_var, mask0, jax.random.key(0), samples,
                                            mask_in=mask0, mask_out=mask_out, mean_first=mean_first))
    return acc


def test_pick_ratio_is_the_error_of_the_picked_over_the_open_pixels():
    target, mean, log_var, mask0, mask_out, abs_err = _spread_case()
    q = _spread_acc(target, mean, log_var, mask0, mask_out).spread_quality(0)
    hole = mask0[..., 0] < 0.5
    picked = hole & (mask_out[..., 0] > 0.5)
    want = abs_err[..., 0][picked].mean() / abs_err[..., 0][hole].mean()
    assert q["pick_ratio"] == pytest.approx(want, rel=1e-5)
    assert q["pick_ratio"] < 0.6            # the lower half of U(0.01, 0.5) errors
    assert q["spearman_open"] == pytest.approx(1.0, abs=1e-9)
    assert q["ause"] == pytest.approx(0.0, abs=1e-7) and q["ause_rel"] == pytest.approx(0.0, abs=1e-6)
    assert q["refine_ratio"] == pytest.approx(1.0)     # mean_first defaults to mean


def test_everything_committed_leaves_the_pick_ratio_undefined():
    target, mean, log_var, mask0, _, _ = _spread_case(1)
    q = _spread_acc(target, mean, log_var, mask0, np.ones_like(mask0)).spread_quality(0)
    assert math.isnan(q["pick_ratio"])


def test_sparsification_of_random_and_reversed_sigma():
    rng = np.random.default_rng(3)
    err = rng.uniform(0, 1, 20000)
    assert calibration.sparsification_curves(err, err)["ause_rel"] == pytest.approx(0.0, abs=1e-12)
    shuffled = calibration.sparsification_curves(rng.permutation(err), err)
    assert shuffled["ause_rel"] == pytest.approx(1.0, abs=0.05)
    reversed_ = calibration.sparsification_curves(-err, err)
    assert reversed_["ause_rel"] > 1.5
    curve = calibration.sparsification_curves(err, err)
    assert curve["fraction"][0] == 0.0 and curve["sigma"][0] == pytest.approx(err.mean())
    assert np.all(np.diff(curve["oracle"]) <= 1e-12)    # the oracle curve never rises


def test_open_pixels_only_and_refine_ratio():
    target, mean, log_var, mask0, mask_out, abs_err = _spread_case(2)
    # Iteration 2: the pixels committed by iteration 1 are no longer open; mu_1 was twice as wrong.
    mean_first = target - 2 * (target - mean)
    acc = calibration.CalibrationAccumulator()
    acc.add(1, calibration.batch_statistics(target, mean, log_var, mask0, jax.random.key(0), None,
                                            mask_in=mask_out, mask_out=np.ones_like(mask0),
                                            mean_first=mean_first))
    q = acc.spread_quality(1)
    still_open = (mask0[..., 0] < 0.5) & (mask_out[..., 0] < 0.5)
    assert q["open_mae"] == pytest.approx(abs_err[..., 0][still_open].mean(), rel=1e-5)
    assert q["refine_ratio"] == pytest.approx(0.5, rel=1e-5)
    assert acc.sparsification(1)["ause"] == pytest.approx(0.0, abs=1e-7)


def test_sampled_rank_statistics_match_the_exact_ones():
    target, mean, log_var, mask0, mask_out, _ = _spread_case(4, b=8, h=32, w=32)
    rng = np.random.default_rng(0)
    log_var = log_var + rng.normal(0, 1.0, log_var.shape[:3] + (1,)).astype(np.float32)   # a noisy ranking
    exact = _spread_acc(target, mean, log_var, mask0, mask_out).spread_quality(0)
    sampled = _spread_acc(target, mean, log_var, mask0, mask_out, samples=6000).spread_quality(0)
    assert 0.2 < exact["spearman_open"] < 0.95
    assert sampled["spearman_open"] == pytest.approx(exact["spearman_open"], abs=0.06)
    assert sampled["pick_ratio"] == pytest.approx(exact["pick_ratio"], rel=1e-6)   # sums, never sampled


def test_sparsification_png(tmp_path):
    target, mean, log_var, mask0, mask_out, _ = _spread_case(5)
    acc = _spread_acc(target, mean, log_var, mask0, mask_out)
    acc.sparsification_png(tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size[0] > 100
