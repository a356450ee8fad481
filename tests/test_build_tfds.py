"""Tests for psm_jax.data.build_tfds (image folder -> ArrayRecord TFDS) and the tfds source."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from psm_jax.data import build_tfds, pipeline, sources, transforms


def _mixed_folder(root):
    """6 good images (RGB, grayscale, RGBA, tiny, jpeg in a subfolder) and one corrupt file."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    imgs = {
        "rgb0.png": Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)),
        "rgb1.png": Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA"),
        "tiny.png": Image.fromarray(rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)),
        "sub/photo.jpg": Image.fromarray(rng.integers(0, 256, (16, 30, 3), dtype=np.uint8)),
    }
    for name, img in imgs.items():
        img.save(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return imgs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfds")
    imgs = _mixed_folder(tmp / "images")
    (tmp / "eval").mkdir()
    Image.fromarray(np.full((12, 12, 3), 9, np.uint8)).save(tmp / "eval" / "e.png")
    stats = build_tfds.build(tmp / "images", tmp / "data", "tiny_inpaint_test", eval_images=tmp / "eval")
    return tmp, imgs, stats


def test_build_writes_array_record_and_counts_skips(built):
    tmp, imgs, stats = built
    assert stats == {"written": 7, "skipped": 1}  # 6 train + 1 eval; the corrupt file skipped
    files = sorted(p.name for p in (tmp / "data" / "tiny_inpaint_test" / "1.0.0").iterdir())
    assert "dataset_info.json" in files
    assert any(f.startswith("tiny_inpaint_test-train.array_record") for f in files)
    assert any(f.startswith("tiny_inpaint_test-validation.array_record") for f in files)


def test_records_decode_to_the_same_rgb_as_the_files(built):
    tmp, imgs, _ = built
    src = sources.TfdsSource("tiny_inpaint_test", "train", str(tmp / "data"))
    assert len(src) == 6
    import tensorflow_datasets as tfds

    raw_ds = tfds.data_source("tiny_inpaint_test", split="train", data_dir=str(tmp / "data"),
                              decoders={"image": tfds.decode.SkipDecoding()})
    by_name = {raw_ds[i]["filename"].decode() if isinstance(raw_ds[i]["filename"], bytes)
               else raw_ds[i]["filename"]: i for i in range(len(raw_ds))}
    assert set(by_name) == set(imgs)
    for name, img in imgs.items():
        rec = src[by_name[name]]
        got = transforms.decode_image(rec["raw"], rec["name"])
        want = transforms.decode_image((tmp / "images" / name).read_bytes())
        np.testing.assert_array_equal(got, want, err_msg=name)
    # "auto" keeps an RGB PNG's original bytes; a grayscale file is re-encoded as RGB PNG.
    assert src[by_name["rgb0.png"]]["raw"] == (tmp / "images" / "rgb0.png").read_bytes()
    with Image.open(io.BytesIO(src[by_name["gray.png"]]["raw"])) as g:
        assert g.format == "PNG" and g.mode == "RGB"


def test_tfds_dataset_feeds_the_pipeline(built):
    tmp, _, _ = built
    cfg = pipeline.default_data_config()
    cfg.update(source="tfds", tfds_name="tiny_inpaint_test", tfds_data_dir=str(tmp / "data"),
               resolution=16, eval_split="validation")
    fake_mask = lambda rng, res, kind: np.ones((res, res), np.float32)  # noqa: E731
    it = pipeline.make_train_iterator(cfg, global_batch_size=3, seed=0, mask_fn=fake_mask,
                                      process_index=0, process_count=1)
    batches = [next(it) for _ in range(4)]
    assert batches[0]["image"].shape == (3, 16, 16, 3) and batches[0]["mask"].shape == (3, 16, 16, 1)
    assert sorted(np.concatenate([b["index"] for b in batches[:2]]).tolist()) == list(range(6))
    ev = list(pipeline.make_eval_dataset(cfg, batch_size=4, num_images=1, seed=0, mask_fn=fake_mask))
    assert len(ev) == 1 and ev[0]["image"].shape == (1, 16, 16, 3)
    np.testing.assert_allclose(ev[0]["image"], 9 / 127.5 - 1, atol=1e-6)


def test_bad_arguments_are_rejected(tmp_path):
    _mixed_folder(tmp_path / "img")
    with pytest.raises(ValueError, match="snake_case"):
        build_tfds.build(tmp_path / "img", tmp_path / "out", "Bad-Name")
    with pytest.raises(sources.SourceError, match="does not exist"):
        build_tfds.build(tmp_path / "nope", tmp_path / "out", "ok_name")
    with pytest.raises(ValueError, match="encoding"):
        build_tfds.build(tmp_path / "img", tmp_path / "out", "ok_name", encoding="gif")


def test_cli_errors_exit_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "psm_jax.data.build_tfds", "--images", str(tmp_path / "missing"),
                        "--out", str(tmp_path / "out"), "--name", "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in r.stderr


def test_cli_builds_and_refuses_to_overwrite(tmp_path):
    _mixed_folder(tmp_path / "img")
    args = ["--images", str(tmp_path / "img"), "--out", str(tmp_path / "out"), "--name", "cli_set"]
    assert build_tfds.main(args) == 0
    assert len(sources.TfdsSource("cli_set", "train", str(tmp_path / "out"))) == 6
    assert build_tfds.main(args) == 2  # existing dataset: refused, not silently reused
