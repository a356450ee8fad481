"""Random-access image sources: an image folder and TFDS datasets (paper Sec. 4.1 data).

Every source returns records ``{"raw": bytes | None, "name": str}``: still-encoded bytes, so
that decoding (EXIF orientation, mode conversion, corrupt-file handling) happens in exactly one
place, ``transforms.Decode``, for every source. The synthetic source (synthetic.py) returns
decoded uint8 arrays instead; ``Decode`` accepts both.

TFDS datasets are read with ``tfds.data_source`` (ArrayRecord, random access, no TensorFlow;
``tfds.load`` and ``tfds.ImageFolder`` need TF and are not used). Places365-small, CelebA-HQ
prepared from a manual dir, or any dataset written by ``python -m psm_jax.data.build_tfds`` work
as long as they were prepared in the ``array_record`` file format.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ml_collections

from psm_jax.data import digits
from psm_jax.data.image_files import IMAGE_EXTENSIONS, find_images
from psm_jax.data.synthetic import SyntheticSource

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """A source cannot be opened (missing folder, no images, unknown dataset). One-line message."""


def list_images(root: str | os.PathLike) -> list[Path]:
    """All images under ``root`` (recursive), sorted by relative path for a stable record order."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"image folder {str(root)!r} does not exist or is not a directory")
    return find_images(root)


class FolderSource:
    """Every image file (``image_files.IMAGE_EXTENSIONS``) under ``root``, recursively, in sorted order."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        paths = list_images(self.root)
        if not paths:
            raise SourceError(
                f"image folder {str(self.root)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        # Strings, not Paths: the list is pickled into every grain worker.
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:  # vanished/unreadable file: counted as a skip downstream
            log.warning("skipping unreadable file %s: %s", path, e)
            raw = None
        return {"raw": raw, "name": path}

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, {len(self)} images)"


class TfdsSource:
    """``tfds.data_source(name, split, data_dir)`` with the image feature left encoded."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = "image"):
        import tensorflow_datasets as tfds  # lazy: 0.4 s import, only for this source

        self.name, self.split, self.image_key = name, split, image_key
        try:
            self._ds = tfds.data_source(
                name, split=split, data_dir=data_dir or None, download=False,
                decoders={image_key: tfds.decode.SkipDecoding()},
            )
        except Exception as e:  # noqa: BLE001 - tfds raises many kinds; turn into one line
            where = f" in data_dir {data_dir!r}" if data_dir else ""
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SourceError(f"cannot open TFDS dataset {name!r} split {split!r}{where}: {msg}") from e

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._ds[index]
        return {"raw": record[self.image_key], "name": f"{self.name}/{self.split}[{index}]"}

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} records)"


# Offset between the synthetic train and eval sources, so eval images are never training images.
_SYNTHETIC_EVAL_SEED_OFFSET = 1_000_003


def make_source(cfg: ml_collections.ConfigDict, *, train: bool = True):
    """The random-access source named by ``cfg.source`` (train or eval split)."""
    if cfg.source == "synthetic":
        if train:
            return SyntheticSource(cfg.synthetic_size, cfg.resolution, seed=cfg.seed, kind=cfg.synthetic_kind)
        return SyntheticSource(cfg.eval_synthetic_size, cfg.resolution, seed=cfg.seed + _SYNTHETIC_EVAL_SEED_OFFSET,
                               kind=cfg.synthetic_kind)
    if cfg.source == "digits":
        first, stop = cfg.digits_train if train else cfg.digits_eval
        return digits.DigitsSource(first, stop, cfg.resolution)
    if cfg.source == "folder":
        path = cfg.path if train else cfg.eval_path
        if not path:
            raise ValueError(f"config.data.{'path' if train else 'eval_path'} is empty; the folder source needs it")
        return FolderSource(path)
    if cfg.source == "tfds":
        if not cfg.tfds_name:
            raise ValueError("config.data.tfds_name is empty; the tfds source needs a dataset name")
        return TfdsSource(cfg.tfds_name, cfg.tfds_split if train else cfg.eval_split,
                                  cfg.tfds_data_dir or None, cfg.tfds_image_key)
    raise ValueError(f"config.data.source={cfg.source!r}: expected 'synthetic', 'digits', 'folder' or 'tfds'")
