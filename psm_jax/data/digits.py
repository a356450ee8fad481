"""Real handwritten digits for the CPU demo: scikit-learn's bundled ``load_digits()`` (paper Sec. 4.1 data).

The paper trains on Places2 and CelebA-HQ (Sec. 4.1); neither fits a few CPU minutes, and the
demo may download nothing. scikit-learn's wheel ships 1,797 real 8x8 handwritten digits (UCI
"optdigits" test set, grey levels 0-16), which is the smallest real image set a person would
actually want inpainted: the hole must be completed along the strokes of a digit the model
has to recognise from what is left, which a diffusion fill (OpenCV Telea) cannot do.

* **Images.** Each 8x8 digit is upscaled to the configured resolution with PIL's bicubic filter
  (in float, then rounded and clipped to [0, 255]) and drawn as **dark ink on light paper**:
  grey level ``v`` becomes ``255 * (1 - v / 16)`` in all three channels (RGB, so the model and
  the report are the same as for colour data). Dark on light is how handwriting looks; either
  polarity gives the same task.
* **Split.** Fixed by index and recorded in the config (``data.digits_train`` /
  ``data.digits_eval``, half-open ranges): training is digits 0-1499, held-out 1500-1796
  (297 digits). ``load_digits()`` returns the digits in a fixed order, so the split is the
  same on every machine; the ranges must be disjoint (checked in pipeline._check_config).
* **Augmentation.** The paper flips, crops and pads (Sec. 4.1). A flipped digit is no longer a
  digit (a mirrored 2, 3, 4, 7 is not a glyph of the set), so :class:`DigitsAugment` applies a
  small random shift instead: up to ``data.digits_shift`` pixels (at the configured resolution)
  in each direction, the uncovered border filled with paper colour; then the training mask.
  Evaluation images are not shifted (``transforms.EvalTransform``: the centre crop of an
  R x R image is the image).

Record ``i`` of a source is a pure function of ``(first + i, resolution)``, so the source is
random-access, identical in every process and worker, and grain's position state resumes it
exactly. It pickles without its pixel cache (rebuilt lazily in each worker).
"""
from __future__ import annotations

import functools
from typing import Any

import grain
import numpy as np
from PIL import Image

from psm_jax.data.transforms import CORRUPT, MaskFn, to_model_range

NUM_DIGITS = 1797          # len(sklearn.datasets.load_digits().images)
PAPER = 255                # background grey level (light paper)
_MAX_LEVEL = 16.0          # load_digits grey levels are 0..16


@functools.lru_cache(maxsize=1)
def _load_digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 [1797, 8, 8] in 0..16, labels int [1797]) from the wheel (no download)."""
    from sklearn.datasets import load_digits  # lazy: ~1 s import, only for this source

    d = load_digits()
    return np.asarray(d.images, np.float64), np.asarray(d.target, np.int64)


def render(digit_8x8: np.ndarray, resolution: int) -> np.ndarray:
    """One 8x8 digit (0..16, ink high) -> uint8 [R, R, 3], dark ink on light paper, bicubic."""
    paper = (1.0 - np.asarray(digit_8x8, np.float32) / _MAX_LEVEL) * 255.0
    big = Image.fromarray(paper.astype(np.float32)).resize((resolution, resolution), Image.BICUBIC)
    grey = np.clip(np.rint(np.asarray(big, np.float32)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


class DigitsSource:
    """Digits ``[first, stop)`` of ``load_digits()`` as uint8 RGB ``[R, R, 3]`` records."""

    def __init__(self, first: int, stop: int, resolution: int):
        first, stop = int(first), int(stop)
        if not 0 <= first < stop <= NUM_DIGITS:
            raise ValueError(f"DigitsSource: range [{first}, {stop}) must lie inside [0, {NUM_DIGITS}) "
                             "and be non-empty")
        if resolution < 8:
            raise ValueError(f"DigitsSource: resolution must be >= 8, got {resolution}")
        self.first, self.stop, self.resolution = first, stop, int(resolution)
        self._cache: np.ndarray | None = None

    def _images(self) -> np.ndarray:
        if self._cache is None:
            digits, _ = _load_digits_8x8()
            self._cache = np.stack([render(d, self.resolution) for d in digits[self.first:self.stop]])
        return self._cache

    def __len__(self) -> int:
        return self.stop - self.first

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"DigitsSource index {index} out of range [0, {len(self)})")
        # A copy: downstream maps must never write into the shared cache.
        return {"raw": self._images()[index].copy(), "name": f"digits[{self.first + index}]"}

    def labels(self) -> np.ndarray:
        """The digit class (0-9) of each record (for reports; training never sees it)."""
        return _load_digits_8x8()[1][self.first:self.stop].copy()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into grain workers: send the range, not the pixels.
        return {**self.__dict__, "_cache": None}

    def __repr__(self) -> str:
        return f"DigitsSource([{self.first}, {self.stop}), resolution={self.resolution})"


def shift(image: np.ndarray, dy: int, dx: int, fill: int = PAPER) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels (positive = down / right); uncovered pixels = ``fill``."""
    h, w = image.shape[:2]
    out = np.full_like(image, fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


class DigitsAugment(grain.transforms.RandomMap):
    """Training map for digits: a random shift of up to ``max_shift`` px (no flip), then a mask.

    Replaces ``transforms.TrainAugment`` (flip + crop) for this source only; same output keys.
    """

    def __init__(self, resolution: int, mask_fn: MaskFn, mask_kind: str = "large", max_shift: int = 2):
        self.resolution = int(resolution)
        self.mask_fn = mask_fn
        self.mask_kind = mask_kind
        self.max_shift = int(max_shift)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if CORRUPT in element:
            return element
        image = element["image"]
        if image.shape[:2] != (self.resolution, self.resolution):
            raise ValueError(f"DigitsAugment: image shape {image.shape} is not {self.resolution}x{self.resolution}")
        s = self.max_shift
        dy, dx = (int(v) for v in rng.integers(-s, s + 1, size=2)) if s > 0 else (0, 0)
        image = shift(image, dy, dx)
        mask = self.mask_fn(rng, self.resolution, self.mask_kind)
        return {
            "image": to_model_range(image),
            "mask": np.asarray(mask, dtype=np.float32).reshape(self.resolution, self.resolution, 1),
            "index": element["index"],
        }
