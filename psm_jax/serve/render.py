"""Responses of ``POST /api/inpaint``: PNG bytes, and the spread (paper Fig. 3) as per-iteration panels.

Per iteration t the panels are m_t (the committed mask after iteration t: white = known), mu_t (the mean) and
sigma_t (the channel mean of the standard deviation, viridis). Sigma is drawn on ONE fixed scale for the whole
response, [0, sigma_max] with sigma_max the largest sigma over the hole pixels of every iteration and sample, as
in ``visualize.spread_strip``: a per-panel scale would hide how the uncertainty falls as the hole closes.
Panels are in the work frame of the size strategy (the image for ``pad``; the shrunk image or the window for
``resize`` / ``crop``), at their own pixel size; the page upscales them.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from psm_jax.data.transforms import from_model_range
from psm_jax.serve.forms import InpaintRequest
from psm_jax.serve.model import PANEL_NAMES, Result
from psm_jax.visualize import colorbar, heatmap

COLORBAR_HEIGHT = 192


def png_bytes(image_u8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_u8)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def b64png(image_u8: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image_u8)).decode("ascii")


def sigma_max(result: Result) -> float:
    """Top of the fixed sigma scale: the largest sigma over the hole pixels of all iterations and samples."""
    top = 0.0
    for tr in result.trajectories or ():
        sig_THW = np.asarray(tr["trajectory"]["std"], np.float32).mean(-1)
        hole_HW = np.asarray(tr["mask"])[..., 0] < 0.5
        vals = sig_THW[:, hole_HW] if hole_HW.any() else sig_THW
        vals = vals[np.isfinite(vals)]
        if vals.size:
            top = max(top, float(vals.max()))
    return max(top, 1e-6)


def panels(trajectory: dict[str, Any], fields: tuple[str, ...], vmax: float) -> dict[str, list[str]]:
    """Base64 PNGs per iteration for each real trajectory field (see the module docstring)."""
    tr = trajectory["trajectory"]
    out: dict[str, list[str]] = {}
    T = np.asarray(tr["std"]).shape[0]
    for key in fields:
        a = np.asarray(tr[key], np.float32)
        if key == "mask":
            imgs = [np.repeat(from_model_range(a[t] * 2.0 - 1.0), 3, axis=-1) for t in range(T)]
        elif key == "mean":
            imgs = [from_model_range(a[t]) for t in range(T)]
        else:
            imgs = [heatmap(a[t].mean(-1), vmax) for t in range(T)]
        out[PANEL_NAMES[key]] = [b64png(im) for im in imgs]
    return out


def inpaint_json(req: InpaintRequest, result: Result, *, with_trajectory: bool) -> dict[str, Any]:
    """The JSON body: outputs (base64 PNGs, one per sample) and, if asked and available, the spread."""
    h, w = req.image.shape[:2]
    body: dict[str, Any] = {"width": w, "height": h, "iters": req.iters, "seed": req.seed, "samples": req.samples,
                            "strategy": req.strategy, "outputs": [b64png(o) for o in result.outputs],
                            "trajectory": None}
    if with_trajectory and result.trajectories:
        vmax = sigma_max(result) if "std" in result.fields else 1.0
        first = result.trajectories[0]
        wh, ww = np.asarray(first["mask"]).shape[:2]
        body["trajectory"] = {
            "fields": [PANEL_NAMES[k] for k in result.fields],
            "work_size": [int(wh), int(ww)],
            "sigma_max": vmax,
            "colorbar": b64png(colorbar(COLORBAR_HEIGHT, vmax, label="sigma")),
            "samples": [panels(tr, result.fields, vmax) for tr in result.trajectories],
        }
    return body
