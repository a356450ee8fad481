"""Image files on disk: the one list of extensions, and how a file-or-folder argument is listed.

Training folders (``data.path``), inference (``inpaint --images``), evaluation (``evaluate --images``),
dataset building and mask folders all read the same kinds of files in the same order. Images pair
with their masks by name through ``mask_io.pair_masks``.
"""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageListError(ValueError):
    """A file-or-folder argument holds no images; the message is one line naming it."""


def is_image_file(path: Path) -> bool:
    """A visible regular file with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def find_images(root: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """The image files under ``root``, sorted by relative path (a stable order on every machine)."""
    root = Path(root)
    files = [p for p in (root.rglob("*") if recursive else root.iterdir()) if is_image_file(p)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def list_images(path: str | os.PathLike, what: str) -> list[Path]:
    """``[path]`` for a file, else the images under the folder ``path`` (:func:`find_images`).

    ``what`` names the argument in the one-line :class:`ImageListError` (e.g. ``"--images"``).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageListError(f"{what} {path}: does not exist")
    files = find_images(path)
    if not files:
        raise ImageListError(f"{what} {path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files
