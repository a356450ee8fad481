"""psm_jax.data.mask_io and the make_masks CLI: fixed evaluation masks in MAT's file convention."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psm_jax.data import make_masks
from psm_jax.data.mask_io import (
    MaskFileError,
    MaskPairingError,
    NonBinaryMaskWarning,
    load_mask,
    pair_masks,
    save_mask,
)


@pytest.fixture
def known_HW() -> np.ndarray:
    """1 = known, 0 = hole: a hole in the top-left quarter and a one-pixel hole."""
    m = np.ones((16, 24), np.float32)
    m[:8, :12] = 0
    m[12, 20] = 0
    return m


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------- load_mask

def test_load_grayscale_mat_convention(tmp_path, known_HW):
    path = _write(tmp_path / "m.png", (known_HW * 255).astype(np.uint8))
    got = load_mask(path)
    assert got.dtype == np.float32 and got.shape == (16, 24)
    np.testing.assert_array_equal(got, known_HW)
    np.testing.assert_array_equal(load_mask(path, invert=True), 1 - known_HW)


def test_load_rgb_and_rgba(tmp_path, known_HW):
    u8 = (known_HW * 255).astype(np.uint8)
    rgb = _write(tmp_path / "rgb.png", np.stack([u8] * 3, -1))
    # Alpha is ignored (as cv2.IMREAD_GRAYSCALE does): a half-transparent alpha must not matter.
    rgba = _write(tmp_path / "rgba.png", np.stack([u8] * 3 + [np.full_like(u8, 128)], -1))
    np.testing.assert_array_equal(load_mask(rgb), known_HW)
    np.testing.assert_array_equal(load_mask(rgba), known_HW)


def test_load_other_grayscale_encodings(tmp_path, known_HW):
    bits = tmp_path / "bits.png"
    Image.fromarray(known_HW > 0.5).save(bits)  # mode "1"
    wide = tmp_path / "wide.png"
    Image.fromarray((known_HW * 65535).astype(np.uint16)).save(wide)  # 16-bit grayscale
    pal = tmp_path / "pal.png"
    Image.fromarray((known_HW * 255).astype(np.uint8)).convert("P").save(pal)
    for path in (bits, wide, pal):
        np.testing.assert_array_equal(load_mask(path), known_HW, err_msg=path.name)


def test_non_binary_values_are_thresholded_with_a_warning(tmp_path, known_HW):
    u8 = (known_HW * 255).astype(np.uint8)
    u8[0, 0], u8[15, 0] = 100, 200  # 100 -> hole, 200 -> known
    path = _write(tmp_path / "soft.png", u8)
    with pytest.warns(NonBinaryMaskWarning, match="soft.png"):
        got = load_mask(path)
    expected = known_HW.copy()
    expected[15, 0] = 1
    np.testing.assert_array_equal(got, expected)


def test_binary_masks_do_not_warn(tmp_path, known_HW):
    path = _write(tmp_path / "m.png", (known_HW * 255).astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mask(path)


def test_unreadable_mask_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MaskFileError, match="broken.png"):
        load_mask(bad)


def test_save_mask_writes_mat_convention(tmp_path, known_HW):
    path = tmp_path / "out.png"
    save_mask(path, known_HW)
    with Image.open(path) as im:
        assert im.mode == "L"
        raw = np.asarray(im)
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(raw == 255, known_HW == 1)
    np.testing.assert_array_equal(load_mask(path), known_HW)


# ---------------------------------------------------------------- pair_masks

def _touch(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return [folder / n for n in names]


def test_pair_by_stem_in_sorted_order(tmp_path):
    images = _touch(tmp_path / "img", ["b.jpg", "a.jpg", "c.jpg"])
    _touch(tmp_path / "mask", ["c.png", "a.png", "b.png", "notes.txt"])  # non-images ignored
    pairs = pair_masks(images, tmp_path / "mask")
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpg", "a.png"), ("b.jpg", "b.png"), ("c.jpg", "c.png")]


def test_pair_by_trailing_number(tmp_path):
    images = _touch(tmp_path / "img", ["Places_val_00000002.jpg", "Places_val_00000010.jpg"])
    _touch(tmp_path / "mask", ["mask_10.png", "mask_2.png"])
    pairs = pair_masks(images, tmp_path / "mask")
    assert [(i.name, m.name) for i, m in pairs] == [
        ("Places_val_00000002.jpg", "mask_2.png"), ("Places_val_00000010.jpg", "mask_10.png")]


def test_count_mismatch_is_refused(tmp_path):
    images = _touch(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    _touch(tmp_path / "mask", ["a.png", "b.png"])
    with pytest.raises(MaskPairingError, match="3 images but 2 mask files") as e:
        pair_masks(images, tmp_path / "mask")
    assert "\n" not in str(e.value)


def test_name_mismatch_is_refused(tmp_path):
    images = _touch(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    _touch(tmp_path / "mask", ["a.png", "b.png", "d.png"])
    with pytest.raises(MaskPairingError, match="c.jpg has no mask") as e:
        pair_masks(images, tmp_path / "mask")
    assert "\n" not in str(e.value) and "x_mask.png" in str(e.value)


def test_mask_stem_may_carry_a_mask_suffix(tmp_path):
    images = _touch(tmp_path / "img", ["a.jpg", "b.jpg"])
    _touch(tmp_path / "mask", ["a_mask.png", "b.png"])
    pairs = pair_masks(images, tmp_path / "mask")
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpg", "a_mask.png"), ("b.jpg", "b.png")]
    _touch(tmp_path / "mask", ["a.png"])                   # a.png and a_mask.png: which one?
    _touch(tmp_path / "img", ["c.jpg"])
    with pytest.raises(MaskPairingError, match="share the file stem 'a'"):
        pair_masks(images + [tmp_path / "img" / "c.jpg"], tmp_path / "mask")


def test_unrelated_names_need_explicit_order_pairing(tmp_path):
    images = _touch(tmp_path / "img", ["sunset.jpg", "beach.jpg"])
    _touch(tmp_path / "mask", ["x.png", "y.png"])
    with pytest.raises(MaskPairingError):
        pair_masks(images, tmp_path / "mask")
    pairs = pair_masks(images, tmp_path / "mask", by="order")  # MAT's positional convention
    assert [(i.name, m.name) for i, m in pairs] == [("beach.jpg", "x.png"), ("sunset.jpg", "y.png")]


def test_missing_mask_dir_is_refused(tmp_path):
    with pytest.raises(MaskPairingError, match="does not exist"):
        pair_masks([tmp_path / "a.jpg"], tmp_path / "nope")


# ---------------------------------------------------------------- make_masks CLI

def test_make_masks_writes_a_seeded_set(tmp_path):
    out = tmp_path / "set"
    argv = ["--kind", "small", "--resolution", "64", "--num", "5", "--seed", "3", "--no_progress"]
    assert make_masks.main(argv + ["--out", str(out)]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    masks = [load_mask(f) for f in files]
    assert all(m.shape == (64, 64) and 0 < m.mean() < 1 for m in masks)
    assert json.loads((out / "make_masks.json").read_text())["seed"] == 3
    # Same seed -> same files; mask i does not depend on how many are made.
    assert make_masks.main(argv[:5] + ["2", "--seed", "3", "--no_progress", "--out", str(tmp_path / "b")]) == 0
    for i in range(2):
        assert (tmp_path / "b" / f"{i:06d}.png").read_bytes() == files[i].read_bytes()


def test_make_masks_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert make_masks.main(["--num", "1", "--resolution", "32", "--out", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and "--overwrite" in err and "\n" not in err
    assert make_masks.main(["--num", "1", "--resolution", "32", "--out", str(out), "--no_progress",
                            "--overwrite"]) == 0
    assert (out / "keep.txt").exists() and (out / "000000.png").exists()


@pytest.mark.parametrize("bad", [["--num", "0"], ["--resolution", "4"], ["--hole_range", "0.6", "0.2"],
                                 ["--workers", "0"], ["--rng", "legacy", "--workers", "2"]])
def test_make_masks_bad_flags_exit_2(tmp_path, capsys, bad):
    argv = ["--num", "2", "--resolution", "32", "--out", str(tmp_path / "o"), "--no_progress"]
    assert make_masks.main(argv + bad) == 2
    assert capsys.readouterr().err.startswith("error: python -m psm_jax.data.make_masks:")


def test_make_masks_legacy_stream_is_mats(tmp_path):
    """--rng legacy writes the masks MAT would draw after np.random.seed(seed)."""
    from psm_jax.data.masks import random_masks

    out = tmp_path / "legacy"
    assert make_masks.main(["--rng", "legacy", "--num", "3", "--resolution", "64", "--seed", "9",
                            "--out", str(out), "--no_progress"]) == 0
    expected = random_masks(np.random.RandomState(9), 3, 64)
    got = np.stack([load_mask(out / f"{i:06d}.png") for i in range(3)])
    np.testing.assert_array_equal(got, expected)


def test_make_masks_workers_give_the_same_set(tmp_path):
    argv = ["--num", "3", "--resolution", "32", "--seed", "1", "--no_progress"]
    assert make_masks.main(argv + ["--out", str(tmp_path / "one")]) == 0
    assert make_masks.main(argv + ["--workers", "2", "--out", str(tmp_path / "two")]) == 0
    for i in range(3):
        name = f"{i:06d}.png"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
