"""Sample grids of the pixel spread (Fig. 3): one row per image.

Columns: masked input | mean of each iteration | sigma heatmap of each iteration | output |
ground truth. Sigma is shown per image on a fixed scale (0 .. max over that row's holes), so the
heatmaps of one row are comparable across iterations (Fig. 3's "gradual uncertainty reduction").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from psm_jax.data.transforms import from_model_range


def _heat(v: np.ndarray, vmax: float) -> np.ndarray:
    """A small blue-yellow-red colour map for a [H,W] map in [0, vmax]."""
    t = np.clip(v / max(vmax, 1e-8), 0.0, 1.0)[..., None]
    low, mid, high = np.array([20, 30, 120]), np.array([250, 220, 50]), np.array([200, 20, 20])
    rgb = np.where(t < 0.5, low + (mid - low) * (t / 0.5), mid + (high - mid) * ((t - 0.5) / 0.5))
    return rgb.astype(np.uint8)


def grid_rows(image: np.ndarray, mask: np.ndarray, out: dict[str, Any]) -> np.ndarray:
    """[B*H, (T*2+3)*W, 3] uint8 grid from a spread result with a trajectory."""
    traj = jax.device_get(out["trajectory"])
    final = np.asarray(jax.device_get(out["image"]))
    mean_T, std_T = np.asarray(traj["mean"]), np.asarray(traj["std"])
    rows = []
    for b in range(image.shape[0]):
        hole = mask[b, ..., 0] < 0.5
        sig = std_T[:, b].mean(-1)                       # [T,H,W]
        vmax = float(sig[:, hole].max()) if hole.any() else float(sig.max())
        masked = np.where(mask[b] > 0.5, image[b], 0.0)  # holes shown as mid-grey
        cells = [from_model_range(masked)]
        cells += [from_model_range(m) for m in mean_T[:, b]]
        cells += [_heat(s, vmax) for s in sig]
        cells += [from_model_range(final[b]), from_model_range(image[b])]
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def save_grid(grid: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def save_sample_grid(config, models, state, batch: dict[str, np.ndarray], path: str | Path,
                     max_images: int = 8) -> Path:
    """Runs the test-time spread with G_ema on a fixed batch and writes the grid PNG."""
    from psm_jax.inpaint import ema_variables, make_inpaint_fn

    fn = _cached_fn(config)
    image = np.asarray(batch["image"][:max_images])
    mask = np.asarray(batch["mask"][:max_images])
    out = fn(jax.device_get(ema_variables(state)), image, mask, jax.random.key(config.seed))
    return save_grid(grid_rows(image, mask, out), path)


_FNS: dict[int, Any] = {}


def _cached_fn(config):
    from psm_jax.inpaint import make_inpaint_fn

    key = id(config)
    if key not in _FNS:
        _FNS[key] = make_inpaint_fn(config)
    return _FNS[key]
