"""Is PSM's sigma a usable uncertainty? Calibration of each spread iteration on the hole pixels.

PSM (Sec. 3.1, Eq. 1) predicts a per-pixel Gaussian N(mean_t, sigma_t^2) at every iteration t
and claims sigma is a meaningful uncertainty; none of the reference metrics (FID, P-IDS/U-IDS,
LPIPS) tests that. Per iteration, over the elements (pixel x channel) of the *original* holes
(m_0 = 0), in the [-1, 1] image range, with error e = target - mean_t:

* ``spearman``: Spearman rank correlation between sigma_t and |e| (> 0: sigma ranks the error).
  Computed on a fixed-size random sample of hole elements per batch (``samples_per_batch``,
  seeded), because the full set (~10^10 elements at Places2 scale) cannot be ranked in memory.
* ``nll_bpd``: the discretised-Gaussian NLL of Eq. 1 (``psm_jax.losses.discretized_gaussian_nll``,
  256 bins of width 2/255) in bits per dimension, averaged over all hole elements.
* ``coverage_1sigma`` / ``coverage_2sigma``: fraction of hole elements with |e| <= sigma (2 sigma);
  68.27% / 95.45% for a calibrated Gaussian.
* reliability: hole elements binned by sigma (fixed log-spaced edges), RMS error against RMS sigma
  per bin; a calibrated model lies on the diagonal. ``reliability_png`` draws it (PIL, no matplotlib).

Does sigma order the spread? Per iteration t, on the pixels still *open* at its input (m_{t-1} = 0,
the ones the picker ranks, Sec. 3.1.2 step 2), with a pixel's sigma and |error| the means over its
channels (the picker ranks pixels):

* ``spearman_open``: Spearman rank correlation between sigma_t and |e| on those pixels.
* sparsification (the uncertainty-quality measure of optical flow and depth estimation): remove
  the open pixels in order of decreasing sigma and track the mean |e| of the rest; the oracle
  removes them in order of decreasing |e|. ``ause`` is the area between the two curves (in [-1, 1]
  units, fractions 0, 1/K, ..., (K-1)/K); ``ause_rel`` divides it by the area between a random
  order (a flat curve) and the oracle: 0 = oracle order, 1 = no better than random.
* ``pick_ratio``: mean |e| of the pixels the picker commits at t over that of all pixels open at t.
  Below 1, sigma picks better than chance. At the last iteration every open pixel is committed,
  so the ratio is 1 by construction and is left out (NaN).
* ``refine_ratio``: mean |e| of mu_t over mean |e| of mu_1 on the same open pixels: below 1, the
  later iteration predicts the pixels still open better than the first one did (it used the
  committed pixels).

The per-batch statistics are computed in JAX (``batch_statistics``, jit-able, small outputs);
:class:`CalibrationAccumulator` sums them on the host.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from psm_jax.losses import discretized_gaussian_nll

# Reliability bins: sigma in [-1, 1] image units, log-spaced from ~1/4 grey level to 2 (the range).
BIN_EDGES = np.concatenate([[0.0], np.geomspace(2e-3, 2.0, 24), [np.inf]]).astype(np.float32)
SAMPLES_PER_BATCH = 4096
SPARSIFICATION_STEPS = 20        # removal fractions 0, 0.05, ..., 0.95


@functools.partial(jax.jit, static_argnames="samples")
def batch_statistics(target: jax.Array, mean: jax.Array, log_var: jax.Array, mask0: jax.Array,
                     key: jax.Array, samples: int | None = SAMPLES_PER_BATCH, *,
                     mask_in: jax.Array | None = None, mask_out: jax.Array | None = None,
                     mean_first: jax.Array | None = None) -> dict[str, jax.Array]:
    """Sums over the hole elements of one batch (``[B, H, W, 3]`` arrays, ``mask0`` ``[B, H, W, 1]``).

    ``mask_in`` / ``mask_out`` (``[B, H, W, 1]``): the spread's mask at this iteration's input and
    output (m_{t-1}, m_t); they default to ``mask0`` (nothing committed). ``mean_first``: mu_1, for
    ``refine_ratio`` (defaults to ``mean``). ``samples``: per-element and per-pixel samples drawn
    uniformly for the rank statistics; None takes every pixel (exact, for small evaluations).
    """
    px = _pixel_statistics(target, mean, log_var, mask0,
                           mask0 if mask_in is None else mask_in, mask0 if mask_out is None else mask_out,
                           mean if mean_first is None else mean_first, key, samples)
    return {**_element_statistics(target, mean, log_var, mask0, key, samples or SAMPLES_PER_BATCH), **px}


def _pixel_statistics(target, mean, log_var, mask0, mask_in, mask_out, mean_first, key, samples):
    """Per-pixel sums and samples on the open pixels (module docstring)."""
    abs_err_BHW = jnp.mean(jnp.abs(target - mean), axis=-1)
    sigma_BHW = jnp.mean(jnp.exp(0.5 * jnp.broadcast_to(log_var, mean.shape)), axis=-1)
    hole_BHW = mask0[..., 0] < 0.5
    open_BHW = hole_BHW & (mask_in[..., 0] < 0.5)
    picked_BHW = open_BHW & (mask_out[..., 0] > 0.5)
    first_err_BHW = jnp.mean(jnp.abs(target - mean_first), axis=-1)
    if samples is None:
        sel = jnp.arange(abs_err_BHW.size)
    else:
        sel = jax.random.randint(jax.random.fold_in(key, 1), (samples,), 0, abs_err_BHW.size)
    f = lambda a: a.astype(jnp.float32)  # noqa: E731
    return {
        "open_count": jnp.sum(f(open_BHW)),
        "open_abs_err": jnp.sum(jnp.where(open_BHW, abs_err_BHW, 0.0)),
        "open_abs_err_first": jnp.sum(jnp.where(open_BHW, first_err_BHW, 0.0)),
        "picked_count": jnp.sum(f(picked_BHW)),
        "picked_abs_err": jnp.sum(jnp.where(picked_BHW, abs_err_BHW, 0.0)),
        "hole_px_count": jnp.sum(f(hole_BHW)),
        "hole_px_sigma": jnp.sum(jnp.where(hole_BHW, sigma_BHW, 0.0)),
        "hole_px_abs_err": jnp.sum(jnp.where(hole_BHW, abs_err_BHW, 0.0)),
        "px_sigma": sigma_BHW.reshape(-1)[sel],
        "px_abs_err": abs_err_BHW.reshape(-1)[sel],
        "px_hole": hole_BHW.reshape(-1)[sel],
        "px_open": open_BHW.reshape(-1)[sel],
    }


def _element_statistics(target, mean, log_var, mask0, key, samples):
    """Per-element sums over the original holes (NLL, coverage, reliability) and the element samples."""
    hole = jnp.broadcast_to(mask0 < 0.5, mean.shape)
    log_var = jnp.broadcast_to(log_var, mean.shape)
    sigma = jnp.exp(0.5 * log_var)
    err = target - mean
    abs_err = jnp.abs(err)
    nll = discretized_gaussian_nll(target, mean, log_var)
    w = hole.astype(jnp.float32)
    idx = jnp.clip(jnp.searchsorted(jnp.asarray(BIN_EDGES), sigma, side="right") - 1, 0, len(BIN_EDGES) - 2)
    nbins = len(BIN_EDGES) - 1

    def per_bin(values):
        return jax.ops.segment_sum((values * w).reshape(-1), idx.reshape(-1), num_segments=nbins)

    flat = jax.random.randint(key, (samples,), 0, hole.size)
    return {
        "count": jnp.sum(w),
        "nll_sum": jnp.sum(jnp.where(hole, nll, 0.0)),
        "cover1": jnp.sum(w * (abs_err <= sigma)),
        "cover2": jnp.sum(w * (abs_err <= 2.0 * sigma)),
        "bin_count": per_bin(jnp.ones_like(sigma)),
        "bin_err2": per_bin(err * err),
        "bin_sigma2": per_bin(sigma * sigma),
        "sample_sigma": sigma.reshape(-1)[flat],
        "sample_abs_err": abs_err.reshape(-1)[flat],
        "sample_valid": hole.reshape(-1)[flat],
    }


class CalibrationAccumulator:
    """Host-side sums of ``batch_statistics`` for each iteration ``t`` (0-based)."""

    def __init__(self):
        self.sums: dict[int, dict[str, np.ndarray]] = {}
        self.samples: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.pixels: dict[int, list[dict[str, np.ndarray]]] = {}

    def add(self, t: int, stats: dict[str, jax.Array]) -> None:
        stats = {k: np.asarray(v) for k, v in jax.device_get(stats).items()}
        keep = stats.pop("sample_valid")
        s, e = stats.pop("sample_sigma")[keep], stats.pop("sample_abs_err")[keep]
        self.samples.setdefault(t, []).append((s.astype(np.float64), e.astype(np.float64)))
        px = {k: stats.pop(k) for k in ("px_sigma", "px_abs_err", "px_hole", "px_open")}
        self.pixels.setdefault(t, []).append(px)
        acc = self.sums.setdefault(t, {k: np.zeros_like(v, np.float64) for k, v in stats.items()})
        for k, v in stats.items():
            acc[k] += v

    def iterations(self) -> list[int]:
        return sorted(self.sums)

    def result(self) -> dict[str, float]:
        """``calib/<metric>/iter<t>`` floats (NaN where a metric is undefined, e.g. no holes)."""
        out: dict[str, float] = {}
        for t in self.iterations():
            s = self.sums[t]
            n = float(s["count"])
            sig = np.concatenate([a for a, _ in self.samples[t]])
            err = np.concatenate([b for _, b in self.samples[t]])
            rho = float("nan")
            if len(sig) > 2 and np.ptp(sig) > 0 and np.ptp(err) > 0:
                rho = float(scipy.stats.spearmanr(sig, err).statistic)
            out[f"calib/spearman/iter{t}"] = rho
            out[f"calib/nll_bpd/iter{t}"] = float(s["nll_sum"]) / n / math.log(2) if n else float("nan")
            out[f"calib/coverage_1sigma/iter{t}"] = float(s["cover1"]) / n if n else float("nan")
            out[f"calib/coverage_2sigma/iter{t}"] = float(s["cover2"]) / n if n else float("nan")
            out[f"calib/spearman_samples/iter{t}"] = float(len(sig))
            out.update({f"calib/{k}/iter{t}": v for k, v in self.spread_quality(t).items()})
        return out

    def pixel_samples(self, t: int, region: str) -> tuple[np.ndarray, np.ndarray]:
        """(sigma, |error|) of the sampled pixels of ``region`` ("hole" or "open") at iteration t."""
        chunks = self.pixels.get(t, [])
        if not chunks:
            return np.zeros(0), np.zeros(0)
        keep = np.concatenate([c[f"px_{region}"] for c in chunks])
        sig = np.concatenate([c["px_sigma"] for c in chunks])[keep].astype(np.float64)
        err = np.concatenate([c["px_abs_err"] for c in chunks])[keep].astype(np.float64)
        return sig, err

    def sparsification(self, t: int, steps: int = SPARSIFICATION_STEPS) -> dict[str, list[float]]:
        """Sparsification curves on the pixels open at iteration t (module docstring)."""
        sig, err = self.pixel_samples(t, "open")
        return sparsification_curves(sig, err, steps)

    def spread_quality(self, t: int) -> dict[str, float]:
        """``spearman_open``, ``ause``, ``ause_rel``, ``pick_ratio``, ``refine_ratio`` and the per-pixel
        means on the hole (NaN where undefined)."""
        s = self.sums[t]
        nan = float("nan")
        ratio = lambda a, b: float(a) / float(b) if float(b) > 0 else nan  # noqa: E731
        sig, err = self.pixel_samples(t, "open")
        curves = sparsification_curves(sig, err)
        open_mae = ratio(s["open_abs_err"], s["open_count"])
        # Every open pixel committed (the last iteration): the ratio is 1 by construction.
        all_picked = float(s["picked_count"]) >= float(s["open_count"])
        return {
            "spearman_open": spearman(sig, err),
            "ause": curves["ause"], "ause_rel": curves["ause_rel"],
            "pick_ratio": nan if all_picked else ratio(ratio(s["picked_abs_err"], s["picked_count"]), open_mae),
            "refine_ratio": ratio(s["open_abs_err"], s["open_abs_err_first"]),
            "open_mae": open_mae,
            "spearman_hole_px": spearman(*self.pixel_samples(t, "hole")),
            "mean_sigma_hole": ratio(s["hole_px_sigma"], s["hole_px_count"]),
            "mean_abs_err_hole": ratio(s["hole_px_abs_err"], s["hole_px_count"]),
        }

    def sparsification_png(self, path: str | Path) -> None:
        """Sparsification curves of every iteration: sigma order (solid) against the oracle (dashed)."""
        # Deferred: matplotlib costs ~0.5 s to import, and only the plots need it.
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # deferred with matplotlib, above

        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
        for i, t in enumerate(self.iterations()):
            c = self.sparsification(t)
            if not c["fraction"]:
                continue
            colour = f"C{i}"
            ax.plot(c["fraction"], c["sigma"], "-", color=colour,
                    label=f"iteration {t + 1} (AUSE {c['ause']:.3f})")
            ax.plot(c["fraction"], c["oracle"], "--", color=colour, linewidth=1)
        ax.set_xlabel("fraction of open pixels removed (highest sigma first; dashed: highest error first)")
        ax.set_ylabel("mean |error| of the rest ([-1, 1])")
        ax.set_title("Sparsification on the pixels open at each iteration", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        # No metadata: the PNG stays byte-identical across runs.
        fig.savefig(path, format="png", metadata={"Software": None})
        plt.close(fig)


    def reliability(self, t: int) -> dict[str, list[float]]:
        """Per non-empty bin: RMS sigma, RMS error, element count (and the bin edges)."""
        s = self.sums[t]
        nz = s["bin_count"] > 0
        return {"bin_lo": BIN_EDGES[:-1][nz].tolist(), "bin_hi": BIN_EDGES[1:][nz].tolist(),
                "rms_sigma": np.sqrt(s["bin_sigma2"][nz] / s["bin_count"][nz]).tolist(),
                "rms_error": np.sqrt(s["bin_err2"][nz] / s["bin_count"][nz]).tolist(),
                "count": s["bin_count"][nz].tolist()}

    def reliability_png(self, path: str | Path, size: int = 360) -> None:
        """Log-log plot of RMS error against RMS sigma per bin, one colour per iteration."""
        from PIL import Image, ImageDraw  # deferred: only the plot needs PIL

        img = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(img)
        pad, lo, hi = 40, math.log10(1e-3), math.log10(2.0)

        def xy(sigma: float, error: float) -> tuple[float, float]:
            fx = (math.log10(max(sigma, 1e-3)) - lo) / (hi - lo)
            fy = (math.log10(max(error, 1e-3)) - lo) / (hi - lo)
            return pad + fx * (size - 2 * pad), size - pad - fy * (size - 2 * pad)

        d.rectangle([pad, pad, size - pad, size - pad], outline="black")
        d.line([xy(1e-3, 1e-3), xy(2.0, 2.0)], fill=(160, 160, 160))   # perfect calibration
        d.text((pad, size - pad + 8), "RMS sigma (log, 1e-3..2)", fill="black")
        d.text((4, 4), "RMS |error| vs sigma, hole pixels", fill="black")
        colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                   (140, 86, 75), (227, 119, 194), (127, 127, 127)]
        for i, t in enumerate(self.iterations()):
            r = self.reliability(t)
            pts = [xy(s, e) for s, e in zip(r["rms_sigma"], r["rms_error"])]
            c = colours[i % len(colours)]
            if len(pts) > 1:
                d.line(pts, fill=c, width=2)
            for x, y in pts:
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
            d.text((size - pad - 60, pad + 4 + 12 * i), f"iter {t}", fill=c)
        img.save(path)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN when undefined (fewer than 3 values or constant)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


def sparsification_curves(sigma: np.ndarray, abs_err: np.ndarray,
                          steps: int = SPARSIFICATION_STEPS) -> dict[str, Any]:
    """Mean |error| of the pixels left after removing a fraction f of them, for f = k / steps.

    ``sigma``: removal in order of decreasing sigma (ties: the earlier index first); ``oracle``: in
    order of decreasing error. ``ause`` = mean over f of (sigma - oracle); ``ause_rel`` = ause over
    the same area for a random order (the flat curve at the overall mean).
    """
    n = len(abs_err)
    fractions = [k / steps for k in range(steps)]
    if n == 0:
        return {"fraction": [], "sigma": [], "oracle": [], "ause": float("nan"), "ause_rel": float("nan")}
    err = np.asarray(abs_err, np.float64)

    def curve(order: np.ndarray) -> np.ndarray:
        tail = np.concatenate([[0.0], np.cumsum(err[order])])     # error removed after j pixels
        removed = np.array([int(np.floor(f * n)) for f in fractions])
        return (tail[-1] - tail[removed]) / (n - removed)

    by_sigma = curve(np.argsort(-np.asarray(sigma, np.float64), kind="stable"))
    oracle = curve(np.argsort(-err, kind="stable"))
    ause = float(np.mean(by_sigma - oracle))
    random_area = float(np.mean(err.mean() - oracle))
    return {"fraction": fractions, "sigma": by_sigma.tolist(), "oracle": oracle.tolist(), "ause": ause,
            "ause_rel": ause / random_area if random_area > 0 else float("nan")}
