"""``POST /api/inpaint`` input: the multipart fields, decoded and checked before anything reaches the model.

Every request is treated as hostile: sizes are checked from the image header before the pixels are decoded, a
file that is not a complete PNG/JPEG is refused, and every number must lie in its range. Each refusal is a
:class:`BadRequest` with an HTTP status and a one-line message naming the field. The client's file names are
never read (uploads are parsed from memory), so nothing a client sends can name a path.

Masks follow the IOPaint/LaMa convention for painted masks: white (>= 128) = hole, black = known, at the
image's size.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps

from psm_jax.data.transforms import decode_image

FILE_FIELDS = ("image", "mask")
VALUE_FIELDS = ("iters", "seed", "samples", "strategy", "trajectory")
MAX_SEED = 2**32 - 1               # jax.random.key takes a uint32 seed
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I")


class BadRequest(Exception):
    """A refused request: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())


@dataclass(frozen=True)
class Limits:
    """The server's caps (``python -m psm_jax.serve`` flags)."""
    max_upload_bytes: int = 8 * 2**20
    max_pixels: int = 2**20            # 1024 x 1024
    max_samples: int = 4


@dataclass
class InpaintRequest:
    image: np.ndarray       # uint8 [H, W, 3]
    known: np.ndarray       # bool [H, W], True = known
    iters: int
    seed: int
    samples: int
    strategy: str
    trajectory: bool


def _short(value: object, n: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _open(data: bytes, field: str, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    """Opens and fully decodes ``data``; refuses other formats, too many pixels and truncated files."""
    if not data:
        raise BadRequest(400, f"{field}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadRequest(413, f"{field}: too many pixels (at most {max_pixels})") from None
    except Exception:  # noqa: BLE001 - PIL raises UnidentifiedImageError, SyntaxError, ValueError, ...
        raise BadRequest(400, f"{field}: not an image (expected {' or '.join(formats)})") from None
    if img.format not in formats:
        raise BadRequest(400, f"{field}: expected {' or '.join(formats)}, got {img.format}")
    w, h = img.size
    if w < 1 or h < 1:
        raise BadRequest(400, f"{field}: empty image ({w}x{h})")
    if w * h > max_pixels:
        raise BadRequest(413, f"{field}: {w}x{h} is {w * h} pixels; this server takes at most {max_pixels} "
                              "(--max_pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            return ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - truncated data: OSError, SyntaxError, struct.error, ...
        raise BadRequest(400, f"{field}: truncated or corrupt {img.format} ({type(e).__name__})") from None


def decode_upload_image(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [H, W, 3] RGB (EXIF orientation applied, alpha dropped)."""
    _open(data, "image", ("PNG", "JPEG"), max_pixels)     # format, size and completeness first
    rgb = decode_image(data, "upload")
    if rgb is None:   # pragma: no cover - _open decoded the same bytes
        raise BadRequest(400, "image: cannot decode")
    return rgb


def decode_upload_mask(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG bytes -> bool [H, W], True = hole (white, >= half the range)."""
    img = _open(data, "mask", ("PNG",), max_pixels)
    if img.mode in _HIGH_DEPTH:
        a = np.asarray(img)
        return a >= (32768 if a.max() > 255 else 128)
    return np.asarray(img.convert("L")) >= 128


def _int(fields: Mapping[str, str], name: str, default: int, lo: int, hi: int, hint: str = "") -> int:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(400, f"{name}: expected an integer, got {_short(raw)}") from None
    if not lo <= value <= hi:
        raise BadRequest(400, hint or f"{name}: must be in [{lo}, {hi}], got {value}")
    return value


def parse(fields: Mapping[str, str], files: Mapping[str, bytes], *, limits: Limits, iters_range: tuple[int, int],
          default_iters: int, strategies: tuple[str, ...] | list[str]) -> InpaintRequest:
    """The checked request; :class:`BadRequest` on the first problem found."""
    for name in (*fields, *files):
        if name not in FILE_FIELDS + VALUE_FIELDS:
            raise BadRequest(400, f"unknown field {_short(name)} (expected {', '.join(FILE_FIELDS + VALUE_FIELDS)})")
    for name in FILE_FIELDS:
        if name in fields:
            raise BadRequest(400, f"{name}: expected a file upload, got a text field")
        if name not in files:
            raise BadRequest(400, f"{name}: missing (multipart file field; mask: PNG, white = hole)")
    lo, hi = iters_range
    only = f"iters: this model runs T = {lo} only (fixed when it was exported), got {fields.get('iters')}"
    iters = _int(fields, "iters", default_iters, lo, hi, only if lo == hi else "")
    seed = _int(fields, "seed", 0, 0, MAX_SEED)
    samples = _int(fields, "samples", 1, 1, limits.max_samples)
    strategy = (fields.get("strategy") or "pad").strip()
    if strategy not in strategies:
        raise BadRequest(400, f"strategy: expected one of {', '.join(strategies)}, got {_short(strategy)}")
    traj = (fields.get("trajectory") or "0").strip().lower()
    if traj not in ("0", "1", "true", "false"):
        raise BadRequest(400, f"trajectory: expected 0 or 1, got {_short(traj)}")

    image = decode_upload_image(files["image"], limits.max_pixels)
    hole = decode_upload_mask(files["mask"], limits.max_pixels)
    if hole.shape != image.shape[:2]:
        raise BadRequest(400, f"mask: is {hole.shape[1]}x{hole.shape[0]}, the image is "
                              f"{image.shape[1]}x{image.shape[0]}; draw the mask at the image's size")
    if not hole.any():
        raise BadRequest(400, "mask: has no hole (paint the hole white, >= 128)")
    if hole.all():
        raise BadRequest(400, "mask: is all hole (keep some known pixels to condition on)")
    return InpaintRequest(image, ~hole, iters, seed, samples, strategy, traj in ("1", "true"))
