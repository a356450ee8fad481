"""Per-record decoding and augmentation (paper Sec. 4.1; MAT's evaluation protocol).

Paper Sec. 4.1: "During training, images undergo random flipping, cropping, and padding, while
testing images are centrally cropped to the 512 x 512 size." Concretely:

* training: random horizontal flip, then a random ``R x R`` crop; a side shorter than ``R`` is
  first reflect-padded up to ``R`` at a random offset (so small images are not always centred);
* evaluation: a side shorter than ``R`` is reflect-padded symmetrically, then the centre
  ``R x R`` crop is taken (MAT's protocol).

Decoding respects EXIF orientation and turns grayscale, palette, RGBA, CMYK and 16-bit images
into 8-bit RGB. A file that cannot be decoded is not an error: :func:`decode_image` returns
``None`` and the pipeline drops the record *before* batching and counts it (see pipeline.py).

The random ops are grain ``RandomMapTransform``s and take all randomness from the per-record
``np.random.Generator`` grain derives from (seed, position), which is what makes the output
independent of the number of worker processes.
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Callable

import grain
import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# mask_fn(rng, resolution, kind) -> float32 [H, W], 1 = known (psm_jax.data.masks.random_mask).
MaskFn = Callable[[np.random.Generator, int, str], np.ndarray]

# Key that marks a record whose image could not be read; its value is the record's name, and
# CORRUPT_REASON's value says why (reported once by corrupt.py, not per record here).
CORRUPT = "corrupt"
CORRUPT_REASON = "corrupt_reason"


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 ``[H, W, 3]``."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit-depth grayscale: PIL's convert("RGB") clips instead of rescaling, which would
        # turn a 16-bit PNG white. Rescale by the type's range instead.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's "palette with transparency" warning
    if img.mode != "RGB":
        # RGBA/LA: the alpha channel is dropped (the colour under it is kept), which matches how
        # MAT's loaders read such files; L/1/P/CMYK/YCbCr convert with PIL's standard matrices.
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def try_decode_image(data: bytes | None) -> tuple[np.ndarray | None, str]:
    """Encoded bytes -> (uint8 ``[H, W, 3]`` RGB with EXIF orientation applied, ""), or (None, why not)."""
    if data is None:
        return None, "no data"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's EXIF/ICC chatter on odd files
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # force the full decode here so truncated files fail inside the try
                img = ImageOps.exif_transpose(img)
                out = _pil_to_rgb(img)
    except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ValueError, ...)
        # PIL's messages name an in-memory buffer ("<_io.BytesIO object at 0x...>"): keep the words only.
        return None, " ".join(str(e).split(" <_io")[0].split()) or "not an image"
    if out.ndim != 3 or out.shape[0] == 0 or out.shape[1] == 0:
        return None, f"empty image (shape {out.shape})"
    return out, ""


def decode_image(data: bytes | None, name: str = "<bytes>") -> np.ndarray | None:
    """Encoded bytes -> uint8 ``[H, W, 3]`` RGB, EXIF orientation applied; ``None`` (and a warning
    naming ``name``) if unreadable."""
    image, why = try_decode_image(data)
    if image is None and data is not None:
        log.warning("skipping unreadable image %s: %s", name, why)
    return image


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """An already-decoded array (tfds/synthetic: [H,W], [H,W,1|3|4]) -> uint8 ``[H, W, 3]``."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def _reflect_pad(image: np.ndarray, pad_y: tuple[int, int], pad_x: tuple[int, int]) -> np.ndarray:
    if pad_y == (0, 0) and pad_x == (0, 0):
        return image
    # numpy's "reflect" needs at least 2 pixels along a padded axis; a 1-pixel side can only be
    # repeated ("edge"), which is what reflection degenerates to anyway.
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
    return np.pad(image, (pad_y, pad_x, (0, 0)), mode=mode)


def pad_to_min_size(image: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Reflect-pads each side shorter than ``size`` up to ``size``.

    With ``rng`` the padding is split at a random point (training); without it, symmetrically
    (evaluation, odd remainder at the bottom/right).
    """
    h, w = image.shape[:2]

    def split(deficit: int) -> tuple[int, int]:
        if deficit <= 0:
            return 0, 0
        before = int(rng.integers(0, deficit + 1)) if rng is not None else deficit // 2
        return before, deficit - before

    return _reflect_pad(image, split(size - h), split(size - w))


def random_crop_flip(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: random h-flip, then a random ``size x size`` crop (reflect pad if small)."""
    if rng.uniform() < 0.5:
        image = image[:, ::-1]
    image = pad_to_min_size(image, size, rng)
    h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Evaluation: symmetric reflect pad if small, then the centre ``size x size`` crop."""
    image = pad_to_min_size(image, size)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def to_model_range(image_u8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return image_u8.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)


def from_model_range(image: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clipped): the inverse of ``to_model_range``."""
    return np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resizes so the shorter side is ``short_side`` (0 = leave as is). Bicubic, antialiased."""
    if short_side <= 0:
        return image
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    scale = short_side / min(h, w)
    new_hw = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    return np.asarray(Image.fromarray(image).resize((new_hw[1], new_hw[0]), Image.BICUBIC))


# ----------------------------------------------------------------------------- grain transforms


class Decode(grain.transforms.Map):
    """``{"raw", "name", "index"}`` -> ``{"image": uint8 HWC, "index"}`` or a corrupt marker.

    ``raw`` is encoded bytes (folder, tfds) or an already decoded array (synthetic source).
    An unreadable record becomes ``{"index": i, CORRUPT: name, CORRUPT_REASON: why}``; it still
    flows through the per-record maps (one element in, one out, so grain's worker slicing stays
    aligned) and is dropped, counted and reported in the main process before batching (corrupt.py).
    """

    def __init__(self, resize_short: int = 0):
        self.resize_short = int(resize_short)

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        raw, name, index = element["raw"], element.get("name", "?"), element["index"]
        image, why = (to_uint8_rgb(raw), "") if isinstance(raw, np.ndarray) else try_decode_image(raw)
        if image is None:
            return {"index": np.int64(index), CORRUPT: name, CORRUPT_REASON: why}
        return {"image": resize_short_side(image, self.resize_short), "index": np.int64(index)}


class TrainAugment(grain.transforms.RandomMap):
    """Flip + random crop (reflect pad) + a free-form mask drawn from the same record RNG."""

    def __init__(self, resolution: int, mask_fn: MaskFn, mask_kind: str = "large"):
        self.resolution = int(resolution)
        self.mask_fn = mask_fn
        self.mask_kind = mask_kind

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if CORRUPT in element:
            return element
        image = random_crop_flip(element["image"], self.resolution, rng)
        mask = self.mask_fn(rng, self.resolution, self.mask_kind)
        return {
            "image": to_model_range(image),
            "mask": np.asarray(mask, dtype=np.float32).reshape(self.resolution, self.resolution, 1),
            "index": element["index"],
        }


class EvalTransform(grain.transforms.Map):
    """Centre crop + a fixed mask chosen by the record's index (never by its position)."""

    def __init__(self, resolution: int, mask_for_index: Callable[[int], np.ndarray]):
        self.resolution = int(resolution)
        self.mask_for_index = mask_for_index

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        if CORRUPT in element:
            return element
        r = self.resolution
        mask = self.mask_for_index(int(element["index"]))
        if mask.shape[:2] != (r, r):
            raise ValueError(f"eval mask for record {int(element['index'])} has shape {mask.shape}, expected ({r}, {r})")
        return {
            "image": to_model_range(center_crop(element["image"], r)),
            "mask": np.asarray(mask, dtype=np.float32).reshape(r, r, 1),
            "index": element["index"],
        }
