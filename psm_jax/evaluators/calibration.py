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

The per-batch statistics are computed in JAX (``batch_statistics``, jit-able, small outputs);
:class:`CalibrationAccumulator` sums them on the host.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from psm_jax.losses import discretized_gaussian_nll

# Reliability bins: sigma in [-1, 1] image units, log-spaced from ~1/4 grey level to 2 (the range).
BIN_EDGES = np.concatenate([[0.0], np.geomspace(2e-3, 2.0, 24), [np.inf]]).astype(np.float32)
SAMPLES_PER_BATCH = 4096


@functools.partial(jax.jit, static_argnames="samples")
def batch_statistics(target: jax.Array, mean: jax.Array, log_var: jax.Array, mask0: jax.Array,
                     key: jax.Array, samples: int = SAMPLES_PER_BATCH) -> dict[str, jax.Array]:
    """Sums over the hole elements of one batch (``[B, H, W, 3]`` arrays, ``mask0`` ``[B, H, W, 1]``)."""
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

    def add(self, t: int, stats: dict[str, jax.Array]) -> None:
        stats = {k: np.asarray(v) for k, v in jax.device_get(stats).items()}
        keep = stats.pop("sample_valid")
        s, e = stats.pop("sample_sigma")[keep], stats.pop("sample_abs_err")[keep]
        self.samples.setdefault(t, []).append((s.astype(np.float64), e.astype(np.float64)))
        acc = self.sums.setdefault(t, {k: np.zeros_like(v, np.float64) for k, v in stats.items()})
        for k, v in stats.items():
            acc[k] += v

    def iterations(self) -> list[int]:
        return sorted(self.sums)

    def result(self) -> dict[str, float]:
        """``calib/<metric>/iter<t>`` floats (NaN where a metric is undefined, e.g. no holes)."""
        import scipy.stats

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
        return out

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
        from PIL import Image, ImageDraw

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
