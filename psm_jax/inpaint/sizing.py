"""Any image size for a generator that needs multiples of 32: the pad / resize / crop strategies.

The generator needs H and W divisible by 32 (five stride-2 stages, Supp. A), so each image goes through one of
three strategies (IOPaint's names), and with every one only the hole pixels of the original change (the output
is the original array with the hole pixels replaced):

* ``pad`` (default): reflect-pad image *and* mask at the bottom/right up to the next multiple of 32 (reflected
  holes stay holes, so hidden content cannot leak into the context), inpaint at full resolution, crop back.
* ``resize``: if the longer side exceeds the training resolution R, shrink to longer side R (bicubic; a pixel of
  the small mask is a hole if any pixel it covers is one, so thin holes survive), inpaint (padded as above),
  upscale the result bicubically and paste it into the hole only. Images no larger than R are padded.
* ``crop``: inpaint only a window around the hole's bounding box (the box plus a margin of R/8, at least R x R,
  clamped to the image), with ``resize`` inside the window: for images far larger than R with small holes.

:func:`plan` turns one image into a :class:`Job`: the padded network input and how to put the result back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from psm_jax.data.transforms import from_model_range, to_model_range
from psm_jax.models.generator import NUM_DOWN

MULTIPLE = 2**NUM_DOWN            # the generator's H and W must be multiples of this (32)
STRATEGIES = ("pad", "resize", "crop")


def reflect_pad(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reflect-pads [H, W, ...] at the bottom and right to [h, w, ...] (a 1-pixel side repeats)."""
    ph, pw = h - a.shape[0], w - a.shape[1]
    if ph == 0 and pw == 0:
        return a
    pads = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pads, mode="reflect" if min(a.shape[:2]) > 1 else "edge")


def padded_size(n: int) -> int:
    return max(MULTIPLE, -(-n // MULTIPLE) * MULTIPLE)


def resize(a: np.ndarray, h: int, w: int, resample: str) -> np.ndarray:
    """Resizes a float32 [H, W, C] array with PIL (per channel, mode F keeps the precision)."""
    if a.shape[:2] == (h, w):
        return a
    filt = {"bicubic": Image.BICUBIC, "box": Image.BOX, "nearest": Image.NEAREST}[resample]
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c], np.float32), mode="F")
                        .resize((w, h), filt)) for c in range(a.shape[-1])]
    return np.stack(chans, axis=-1)


@dataclass
class Job:
    """One image's network input (H, W multiples of 32) and how to put the result back."""
    image: np.ndarray        # float32 [h, w, 3] in [-1, 1], padded
    known: np.ndarray        # float32 [h, w, 1], padded
    valid: tuple[int, int]   # the unpadded work size (the trajectory is cropped to it)
    finish: Callable[[np.ndarray], np.ndarray]   # work-frame float result [h, w, 3] -> uint8 [H, W, 3]

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]


def _pad_job(work_f: np.ndarray, known_b: np.ndarray, paste: Callable[[np.ndarray], np.ndarray]) -> Job:
    h, w = work_f.shape[:2]
    H, W = padded_size(h), padded_size(w)
    return Job(reflect_pad(work_f, H, W), reflect_pad(known_b[..., None].astype(np.float32), H, W), (h, w),
                lambda res: paste(res[:h, :w]))


def hole_bbox(known: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the hole pixels (half-open), None if there is no hole."""
    ys, xs = np.nonzero(~known)
    if ys.size == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def plan_window(size: tuple[int, int], bbox: tuple[int, int, int, int] | None, strategy: str,
                resolution: int) -> tuple[int, int, int, int, int, int]:
    """(y0, x0, h, w, sh, sw): the window of the image that is inpainted and its (unpadded) network size.

    ``pad``: the whole image at full size. ``resize``: the whole image, shrunk to longer side ``resolution`` if
    larger. ``crop``: the hole's bounding box plus a margin of ``resolution / 8`` on each side, grown to at least
    ``resolution`` (clamped to the image), then as ``resize``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    H, W = size
    y0, x0, h, w = 0, 0, H, W
    if strategy == "crop" and bbox is not None:
        margin = max(MULTIPLE // 2, resolution // 8)

        def window(lo: int, hi: int, n: int) -> tuple[int, int]:
            size = min(n, max(hi - lo + 2 * margin, resolution))
            return min(max(0, (lo + hi) // 2 - size // 2), n - size), size

        (y0, h), (x0, w) = window(bbox[0], bbox[1], H), window(bbox[2], bbox[3], W)
    if strategy == "pad" or max(h, w) <= resolution:
        return y0, x0, h, w, h, w
    s = resolution / max(h, w)
    return y0, x0, h, w, max(1, round(h * s)), max(1, round(w * s))


def work_shape(size: tuple[int, int], bbox, strategy: str, resolution: int) -> tuple[int, int]:
    """The padded network input size of an image (what the compile cache is keyed by)."""
    *_, sh, sw = plan_window(size, bbox, strategy, resolution)
    return padded_size(sh), padded_size(sw)


def plan(image_u8: np.ndarray, known: np.ndarray, strategy: str, resolution: int) -> Job:
    """The network input of one image under a strategy (see the module docstring and :func:`plan_window`)."""
    y0, x0, h, w, sh, sw = plan_window(known.shape, hole_bbox(known), strategy, resolution)
    hole_win = ~known[y0:y0 + h, x0:x0 + w]
    work_f = to_model_range(image_u8[y0:y0 + h, x0:x0 + w])

    def paste(res_f: np.ndarray) -> np.ndarray:
        """Writes the (h, w) result into the hole pixels of a copy of the original."""
        res_u8 = from_model_range(res_f)
        out = image_u8.copy()
        win = out[y0:y0 + h, x0:x0 + w]
        win[hole_win] = res_u8[hole_win]
        return out

    if (sh, sw) == (h, w):
        return _pad_job(work_f, ~hole_win, paste)
    small = np.clip(resize(work_f, sh, sw, "bicubic"), -1.0, 1.0)
    # A small pixel is a hole if any original pixel under it is one (BOX coverage > 0), so thin holes survive.
    small_known = resize(hole_win[..., None].astype(np.float32), sh, sw, "box")[..., 0] <= 1e-4
    return _pad_job(small, small_known, lambda res_f: paste(resize(res_f, h, w, "bicubic")))
