"""Fixed evaluation masks on disk: loading, saving and pairing with images (notes mat_masks.md §1-§2).

MAT validates and tests on fixed mask PNGs, not on generated ones. Its convention (notes §2): 8-bit
images with **255 = known, 0 = hole**, read as grayscale (one of MAT's shipped masks is RGB). We
return ``float32 [H, W]`` with 1 = known, 0 = hole, like ``psm_jax.data.masks``.

* ``load_mask`` accepts grayscale (8/16-bit, 1-bit, palette), RGB and RGBA files. Colour is turned
  into luma as a grayscale read would; an alpha channel is ignored, as ``cv2.IMREAD_GRAYSCALE``
  (MAT's loader) ignores it. Non-binary values (anti-aliased or JPEG masks) are thresholded at half
  range with a warning. ``invert=True`` reads the other convention (255 = hole).
* ``pair_masks`` pairs images with masks by file name (the one pairing rule of training's eval
  masks, ``inpaint`` and ``evaluate``) and refuses anything ambiguous with a one-line
  ``MaskPairingError``.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from psm_jax.data.image_files import is_image_file

__all__ = [
    "MaskPairingError",
    "MaskFileError",
    "NonBinaryMaskWarning",
    "list_mask_files",
    "load_mask",
    "save_mask",
    "pair_masks",
    "mask_stem",
]

MASK_SUFFIX = "_mask"   # a mask may be named like its image plus this: x.jpg <-> x_mask.png


class MaskPairingError(ValueError):
    """Images and masks cannot be paired one-to-one; the message is one line."""


class MaskFileError(ValueError):
    """A mask file cannot be read or has an unsupported format; the message names the file."""


class NonBinaryMaskWarning(UserWarning):
    """A mask had values other than 0 and the maximum and was thresholded."""


def list_mask_files(mask_dir: str | Path) -> list[Path]:
    """Mask image files (``IMAGE_EXTENSIONS``) directly inside ``mask_dir``, sorted by file name."""
    root = Path(mask_dir)
    if not root.is_dir():
        raise MaskPairingError(f"mask directory {root} does not exist or is not a directory")
    return sorted((p for p in root.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _gray(image: Image.Image, path: Path) -> tuple[np.ndarray, float]:
    """(grayscale array, the value meaning 'full') for any supported PIL mode."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNGs (PIL opens them as I;16 or I): full range is 65535, unless the
        # values never exceed 255 (an 8-bit mask stored in a wider type).
        values = np.asarray(image, dtype=np.float64)
        return values, 65535.0 if values.size and values.max() > 255 else 255.0
    if mode == "F":
        return np.asarray(image, dtype=np.float64), 1.0 if float(np.max(image)) <= 1.0 else 255.0
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8), 255.0
    if mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.uint8), 255.0
    if mode in ("RGB", "RGBA", "P", "PA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("RGBA", "PA", "P"):
            image = image.convert("RGBA").convert("RGB")  # drop alpha, like a grayscale read
        return np.asarray(image.convert("L"), dtype=np.uint8), 255.0
    raise MaskFileError(f"{path}: unsupported image mode {mode!r} for a mask")


def load_mask(path: str | Path, invert: bool = False) -> np.ndarray:
    """Reads one mask file as ``float32 [H, W]``, 1 = known, 0 = hole.

    Args:
      path: an image file in MAT's convention (255 = known, 0 = hole).
      invert: the file uses the opposite convention (255 = hole).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            gray, full = _gray(image, path)
    except MaskFileError:
        raise
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise MaskFileError(f"{path}: cannot read as an image ({e})") from None
    binary = (gray == 0) | (gray == full)
    if not binary.all():
        frac = 1.0 - float(binary.mean())
        warnings.warn(
            f"{path}: {frac:.2%} of pixels are neither 0 nor {full:g}; thresholded at {full / 2:g}",
            NonBinaryMaskWarning,
            stacklevel=2,
        )
    known = gray >= full / 2
    if invert:
        known = ~known
    return known.astype(np.float32)


def save_mask(path: str | Path, mask_HW: np.ndarray) -> None:
    """Writes a {0, 1} mask (1 = known) as an 8-bit grayscale PNG in MAT's convention (255 = known)."""
    mask_HW = np.asarray(mask_HW)
    if mask_HW.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask_HW.shape}")
    Image.fromarray(np.where(mask_HW > 0.5, 255, 0).astype(np.uint8), mode="L").save(
        path, compress_level=1  # binary masks compress well even at level 1, and it is ~5x faster
    )


_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")


def _number_key(stem: str) -> int | None:
    m = _TRAILING_NUMBER.search(stem)
    return int(m.group(1)) if m else None


def mask_stem(stem: str) -> str:
    """The image stem a mask file's stem names: ``x_mask`` -> ``x``, anything else itself."""
    return stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) and len(stem) > len(MASK_SUFFIX) else stem


def _match(
    images: list[Path], masks: list[Path], key, what: str, mask_key=None
) -> list[tuple[Path, Path]] | str:
    """Pairs by ``key(stem)`` (``mask_key`` for masks); returns the pairs or why that key fails."""
    image_keys = [key(p.stem) for p in images]
    mask_keys = [(mask_key or key)(p.stem) for p in masks]
    if None in image_keys or None in mask_keys:
        return f"not every file name has a {what}"
    by_key: dict = {}
    for p, k in zip(masks, mask_keys):
        if k in by_key:
            return f"masks {by_key[k].name} and {p.name} share the {what} {k!r}"
        by_key[k] = p
    seen: set = set()
    pairs, lonely = [], []
    for p, k in zip(images, image_keys):
        if k in seen:
            return f"two images share the {what} {k!r} (e.g. {p.name})"
        seen.add(k)
        if k in by_key:
            pairs.append((p, by_key[k]))
        else:
            lonely.append(p)
    if lonely:
        spare = [m.name for m, k in zip(masks, mask_keys) if k not in seen]
        return (f"image {lonely[0]} has no mask with the same {what}"
                + (f" ({len(lonely)} images in all)" if len(lonely) > 1 else "")
                + (f", masks without an image: {', '.join(spare[:5])}" if spare else ""))
    return pairs


def pair_masks(
    image_paths: Iterable[str | Path],
    mask_dir: str | Path,
    by: Literal["name", "order"] = "name",
) -> list[tuple[Path, Path]]:
    """Pairs every image with one mask file in ``mask_dir``, in sorted image-name order.

    Args:
      image_paths: the images to evaluate.
      mask_dir: a folder of mask files (see ``image_files.IMAGE_EXTENSIONS``).
      by: "name": the i-th sorted image goes with the mask of the same file stem, or the stem plus
        ``_mask`` (``0001.jpg`` <-> ``0001.png`` or ``0001_mask.png``); if that fails for some
        file, every file by its trailing number (``img_0001.jpg`` <-> ``mask_1.png``); anything
        else is refused. "order": MAT's own convention for unrelated names: the i-th image by
        sorted name with the i-th mask.

    Raises:
      MaskPairingError: counts differ, or names do not correspond one-to-one (one-line message).
    """
    images = sorted((Path(p) for p in image_paths), key=lambda p: p.name)
    masks = list_mask_files(mask_dir)
    if by not in ("name", "order"):
        raise ValueError(f"by must be 'name' or 'order', got {by!r}")
    if not images:
        raise MaskPairingError("no images given to pair with masks")
    if len(images) != len(masks):
        raise MaskPairingError(
            f"{len(images)} images but {len(masks)} mask files in {mask_dir}; each image needs exactly one mask"
        )
    if by == "order":
        return list(zip(images, masks))
    result = _match(images, masks, lambda s: s, "file stem", mask_key=mask_stem)
    if isinstance(result, list):
        return result
    by_number = _match(images, masks, _number_key, "trailing number")
    if isinstance(by_number, list):
        return by_number
    raise MaskPairingError(
        f"cannot pair images with masks in {mask_dir} by name: {result}, and {by_number}; "
        "name each mask like its image (x.jpg <-> x.png or x_mask.png)"
    )


def load_masks(paths: Sequence[str | Path], invert: bool = False) -> np.ndarray:
    """Loads equally sized masks into ``float32 [N, H, W]``."""
    masks = [load_mask(p, invert) for p in paths]
    shapes = {m.shape for m in masks}
    if len(shapes) > 1:
        raise MaskFileError(f"masks have different sizes {sorted(shapes)}; expected one size")
    return np.stack(masks) if masks else np.zeros((0, 0, 0), np.float32)
