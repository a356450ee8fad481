"""Image and mask files for inference: decoding any format, pairing images with masks, writing results back.

An image keeps its format on the way out: gray stays gray, alpha and 16-bit depth are kept, and only hole pixels
change (:meth:`LoadedImage.compose`). Images pair with masks by name (``mask_io.pair_masks``, the rule
``evaluate`` and training's eval masks use); one mask file may serve every image.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from psm_jax.data import mask_io
from psm_jax.data.image_files import ImageListError, list_images


class InputError(ValueError):
    """Bad CLI input; the message is one line naming the file or flag."""


@dataclass
class LoadedImage:
    """A decoded image in network form (uint8 RGB) plus what is needed to write it back in its own format."""
    path: Path
    rgb: np.ndarray                    # uint8 [H, W, 3]: the network input
    original: np.ndarray               # the pixel data as read: uint8/uint16, [H, W] (gray) or [H, W, 3|4]
    mode: str                          # "L", "LA", "RGB", "RGBA", "I;16"

    def compose(self, result_rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
        """The original array with its hole pixels replaced by the result (alpha and bit depth kept)."""
        hole = ~known
        out = self.original.copy()
        if self.mode in ("L", "LA", "I;16"):
            # ITU-R 601 luma, as PIL's convert("L").
            lum = result_rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            if self.mode == "I;16":
                value = np.clip(np.rint(lum * 257.0), 0, 65535).astype(np.uint16)
            else:
                value = np.clip(np.rint(lum), 0, 255).astype(np.uint8)
            if self.mode == "LA":
                out[..., 0][hole] = value[hole]
            else:
                out[hole] = value[hole]
        else:
            out[..., :3][hole] = result_rgb[hole]
        return out

    def to_pil(self, array: np.ndarray) -> Image.Image:
        if self.mode == "I;16":
            return Image.fromarray(array.astype(np.uint16))
        return Image.fromarray(array)   # L, LA, RGB, RGBA follow from the shape


def load_image(path: Path) -> LoadedImage:
    """Decodes an image file (EXIF orientation applied); InputError if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: cannot read as an image ({type(e).__name__})") from None
    if img.width == 0 or img.height == 0:
        raise InputError(f"{path}: empty image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.float64)
        a16 = np.clip(a, 0, 65535).astype(np.uint16) if (img.mode != "I" or a.max() > 255) else None
        if a16 is None:   # an 8-bit gray image stored as I
            g = np.clip(a, 0, 255).astype(np.uint8)
            return LoadedImage(path, np.repeat(g[..., None], 3, -1), g, "L")
        g8 = np.clip(np.rint(a16 / 257.0), 0, 255).astype(np.uint8)
        return LoadedImage(path, np.repeat(g8[..., None], 3, -1), a16, "I;16")
    if img.mode in ("L", "1"):
        g = np.asarray(img.convert("L"))
        return LoadedImage(path, np.repeat(g[..., None], 3, -1), g, "L")
    if img.mode == "LA":
        la = np.asarray(img)
        return LoadedImage(path, np.repeat(la[..., :1], 3, -1), la, "LA")
    if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        return LoadedImage(path, np.ascontiguousarray(rgba[..., :3]), rgba, "RGBA")
    rgb = np.asarray(img.convert("RGB"))
    return LoadedImage(path, rgb, rgb, "RGB")


def load_mask_for(mask_path: Path, size: tuple[int, int], mask_is_hole: bool) -> tuple[np.ndarray, bool]:
    """(known bool [H, W], was_binary) of a mask file resized (nearest) to the image size.

    Binarised at half range (``mask_io.load_mask``). A mask of another size must have the image's aspect ratio
    (within 2%): a stretched mask is almost always the wrong file (or an EXIF-rotated image).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", mask_io.NonBinaryMaskWarning)
        try:
            known = mask_io.load_mask(mask_path, invert=mask_is_hole) > 0.5
        except mask_io.MaskFileError as e:
            raise InputError(str(e)) from None
    binary = not any(issubclass(w.category, mask_io.NonBinaryMaskWarning) for w in caught)
    H, W = size
    mh, mw = known.shape
    if (mh, mw) != (H, W):
        if abs((mh / mw) / (H / W) - 1.0) > 0.02:
            raise InputError(f"{mask_path}: mask is {mw}x{mh}, image is {W}x{H}; sizes differ after resize "
                             "(aspect ratios do not match)")
        known = np.asarray(Image.fromarray(known.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) >= 128
    return known, binary


def pair_images_and_masks(images_arg: str | Path, masks_arg: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) per image of ``--images`` (a file or a folder): the mask of the same name in the ``--masks``
    folder (``mask_io.pair_masks``), or the one ``--masks`` file for every image. InputError names the flag."""
    try:
        images = list_images(images_arg, "--images")
        masks_arg = Path(masks_arg)
        if masks_arg.is_file():
            pairs = [(p, masks_arg) for p in images]
        elif not masks_arg.is_dir():
            raise InputError(f"--masks {masks_arg}: does not exist")
        else:
            pairs = mask_io.pair_masks(images, masks_arg)
    except ImageListError as e:
        raise InputError(str(e)) from None
    except mask_io.MaskPairingError as e:
        raise InputError(f"--masks {e}") from None
    seen: dict[str, Path] = {}
    for p, _ in pairs:   # results are written as <stem>.png
        if p.stem in seen:
            raise InputError(f"{p}: two images share the name {p.stem!r} ({seen[p.stem]}); outputs would clash")
        seen[p.stem] = p
    return pairs
