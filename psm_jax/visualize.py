"""Figures of the pixel spread (paper Fig. 3): labelled panel grids with a sigma colour bar.

One function draws every spread figure in the project (training samples, the demo report,
``inpaint --save_steps``): :func:`spread_strip`. This module only draws: it imports no model and
runs nothing (the training sample hook is ``train_eval.save_sample_grid``). One row per image; columns, each labelled:

    input (masked) | mu_1 | sigma_1 | [m_1] | ... | mu_T | sigma_T | [m_T] | output | [ground truth]

Sigma is drawn on ONE fixed colour scale for the whole figure, ``[0, sigma_max]`` in units of
the [-1, 1] image range (default: the largest sigma over all hole pixels of the figure), with a
colour bar on the right. A per-panel scale would make every panel look alike and hide Fig. 3's
"gradual uncertainty reduction". Small images are upscaled by nearest neighbour (pixels stay
visible as pixels) so that a cell is at least ``min_cell`` pixels wide.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from psm_jax.data.transforms import from_model_range

# Anchor points of matplotlib's viridis (perceptually uniform, readable in greyscale); linear
# interpolation between them is visually indistinguishable from the full 256-entry table.
_VIRIDIS = np.array([[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                     [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]],
                    np.float64)
LABEL_HEIGHT = 16
_HOLE_GREY = 0.0          # holes in the masked input are shown as mid-grey ([-1, 1] value 0)


def heatmap(values: np.ndarray, vmax: float, vmin: float = 0.0) -> np.ndarray:
    """[H,W] values -> [H,W,3] uint8 viridis, clipped to [vmin, vmax] (a fixed scale)."""
    t = np.clip((np.asarray(values, np.float64) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    pos = t * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1.0 - frac) + _VIRIDIS[lo + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def upscale(image_u8: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale of [H,W,C] by an integer factor."""
    if factor <= 1:
        return image_u8
    return np.repeat(np.repeat(image_u8, factor, axis=0), factor, axis=1)


def _font():
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=12)
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _text_band(width: int, texts: Sequence[str], cell_w: int, height: int = LABEL_HEIGHT) -> np.ndarray:
    """A white band with one centred label per cell."""
    band = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = _font()
    for i, text in enumerate(texts):
        w = draw.textlength(text, font=font)
        draw.text((i * cell_w + max(0.0, (cell_w - w) / 2), 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(band)


def colorbar(height: int, vmax: float, vmin: float = 0.0, label: str = "sigma", width: int = 64) -> np.ndarray:
    """A vertical viridis bar [height, width, 3] with its top/middle/bottom values written beside it."""
    bar_w = 14
    ramp = np.linspace(vmax, vmin, max(height - 2 * LABEL_HEIGHT, 8))[:, None]
    bar = heatmap(np.repeat(ramp, bar_w, axis=1), vmax, vmin)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (4, LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((2, 1), label, fill=(0, 0, 0), font=font)
    top, bottom = LABEL_HEIGHT, LABEL_HEIGHT + bar.shape[0] - 1
    for frac in (0.0, 0.5, 1.0):
        y = int(round(top + frac * (bottom - top)))
        value = vmax - frac * (vmax - vmin)
        draw.text((bar_w + 8, min(max(y - 6, 0), height - 13)), f"{value:.3g}", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def spread_strip(image: np.ndarray, mask: np.ndarray, trajectory: dict[str, Any], output: np.ndarray,
                 *, ground_truth: np.ndarray | None = None, show_masks: bool = False,
                 sigma_max: float | None = None, min_cell: int = 128) -> np.ndarray:
    """The labelled spread figure as one uint8 [rows, cols, 3] image (see the module docstring).

    Args:
      image: [B,H,W,3] (or [H,W,3]) in [-1, 1]: the input; its holes are drawn mid-grey.
      mask: [B,H,W,1] (or [H,W,1] / [H,W]), 1 = known.
      trajectory: ``pixel_spread``'s per-iteration stacks with leading T: "mean" [T,B,H,W,3],
        "std" [T,B,H,W,3] (sigma, [-1, 1] units), and "mask" [T,B,H,W,1] if ``show_masks``.
      output: [B,H,W,3] in [-1, 1], the final image.
      ground_truth: optional [B,H,W,3] in [-1, 1], drawn as the last column.
      show_masks: add an m_t panel after each sigma_t (Fig. 3 / ``inpaint --save_steps``).
      sigma_max: top of the fixed sigma scale; default the largest sigma over the hole pixels.
      min_cell: upscale (nearest, integer factor) until a cell is at least this many pixels wide.
    """
    single = np.ndim(image) == 3
    image, output = np.asarray(image, np.float32), np.asarray(output, np.float32)
    mask = np.asarray(mask, np.float32)
    if single:
        image, output = image[None], output[None]
        mask = mask[None]
        ground_truth = None if ground_truth is None else np.asarray(ground_truth)[None]
        trajectory = jax.tree.map(lambda a: np.asarray(a)[:, None], dict(trajectory))
    if mask.ndim == 3:
        mask = mask[..., None]
    traj = jax.tree.map(np.asarray, jax.device_get(dict(trajectory)))
    mean_TBHW3, std_TBHW3 = traj["mean"], traj["std"]
    T, B, H, W = mean_TBHW3.shape[:4]
    sig_TBHW = std_TBHW3.mean(-1)
    hole_BHW = mask[..., 0] < 0.5
    if sigma_max is None:
        vals = sig_TBHW[:, hole_BHW] if hole_BHW.any() else sig_TBHW
        finite = vals[np.isfinite(vals)]
        sigma_max = float(finite.max()) if finite.size else 1.0
    sigma_max = max(float(sigma_max), 1e-6)
    factor = max(1, math.ceil(min_cell / W))

    labels = ["input"]
    for t in range(1, T + 1):
        labels += [f"mu {t}", f"sigma {t}"] + ([f"m {t}"] if show_masks else [])
    labels += ["output"] + (["ground truth"] if ground_truth is not None else [])

    rows = []
    for b in range(B):
        masked = np.where(mask[b] > 0.5, image[b], _HOLE_GREY)
        cells = [from_model_range(masked)]
        for t in range(T):
            cells.append(from_model_range(mean_TBHW3[t, b]))
            cells.append(heatmap(sig_TBHW[t, b], sigma_max))
            if show_masks:
                cells.append(np.repeat(from_model_range(traj["mask"][t, b] * 2.0 - 1.0), 3, axis=-1))
        cells.append(from_model_range(output[b]))
        if ground_truth is not None:
            cells.append(from_model_range(np.asarray(ground_truth)[b]))
        rows.append(upscale(np.concatenate(cells, axis=1), factor))
    body = np.concatenate(rows, axis=0)
    cell_w = W * factor
    figure = np.concatenate([_text_band(body.shape[1], labels, cell_w), body], axis=0)
    bar = colorbar(figure.shape[0], sigma_max)
    return np.concatenate([figure, bar], axis=1)


def method_grid(columns: dict[str, np.ndarray], min_cell: int = 128) -> np.ndarray:
    """Side-by-side uint8 [B,H,W,3] columns (e.g. input, methods, ground truth), labelled."""
    names = list(columns)
    stacked = [np.concatenate(list(columns[n]), axis=0) for n in names]   # each [B*H, W, 3]
    W = next(iter(columns.values())).shape[2]
    factor = max(1, math.ceil(min_cell / W))
    body = upscale(np.concatenate(stacked, axis=1), factor)
    return np.concatenate([_text_band(body.shape[1], names, W * factor), body], axis=0)


def save_grid(grid: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def spread_figure_from_output(image: np.ndarray, mask: np.ndarray, out: dict[str, Any], **kw) -> np.ndarray:
    """:func:`spread_strip` from a ``pixel_spread(..., return_trajectory=True)`` result."""
    out = jax.device_get(out)
    return spread_strip(image, mask, out["trajectory"], np.asarray(out["image"]), **kw)
