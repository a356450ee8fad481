"""Tests for psm_jax.data.sources (image folder, TFDS data_source)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from psm_jax.data import sources


def _img(path, seed=0, size=(6, 5), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(x).save(path, format=fmt)
    return x


def test_folder_is_recursive_sorted_and_filters_extensions(tmp_path):
    _img(tmp_path / "b.png")
    _img(tmp_path / "a" / "z.JPG", fmt="JPEG")  # upper-case extension counts
    _img(tmp_path / "a" / "deep" / "c.webp", fmt="WEBP")
    _img(tmp_path / "d.bmp", fmt="BMP")
    _img(tmp_path / "e.jpeg", fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")  # not a supported extension
    (tmp_path / "dir.png").mkdir()  # a directory named like an image is not a file
    src = sources.FolderSource(tmp_path)
    rel = [p[len(str(tmp_path)) + 1:] for p in src.paths]
    assert rel == ["a/deep/c.webp", "a/z.JPG", "b.png", "d.bmp", "e.jpeg"]
    rec = src[2]
    assert rec["name"].endswith("b.png") and rec["raw"] == (tmp_path / "b.png").read_bytes()
    assert len(pickle.loads(pickle.dumps(src))) == 5


def test_folder_vanished_file_gives_none(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    src = sources.FolderSource(tmp_path)
    (tmp_path / "a.png").unlink()
    assert src[0]["raw"] is None and src[1]["raw"] is not None


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(sources.SourceError, match="does not exist") as e:
        sources.FolderSource(tmp_path / "missing")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match="holds no images"):
        sources.FolderSource(tmp_path / "empty")


def test_tfds_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(sources.SourceError, match="cannot open TFDS dataset 'no_such_dataset_xyz'") as e:
        sources.TfdsSource("no_such_dataset_xyz", "train", str(tmp_path))
    assert "\n" not in str(e.value)
