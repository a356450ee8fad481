"""Tests for psm_jax.data.digits (scikit-learn's bundled digits through the grain pipeline)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from psm_jax.config_lib import load_config
from psm_jax.data import digits, pipeline
from psm_jax.data.pipeline import default_data_config, make_eval_dataset, make_train_iterator
from psm_jax.data.transforms import from_model_range


def _cfg(**kw):
    c = default_data_config()
    c.update(source="digits", resolution=32, **kw)
    return c


def test_demo_config_split_sizes_and_disjoint():
    c = load_config("configs/demo.py").data
    assert c.source == "digits"
    assert tuple(c.digits_train) == (0, 1500) and tuple(c.digits_eval) == (1500, 1797)
    train, held = pipeline.make_source(c, train=True), pipeline.make_source(c, train=False)
    assert len(train) == 1500 and len(held) == 297
    train_idx = set(range(train.first, train.stop))
    held_idx = set(range(held.first, held.stop))
    assert not train_idx & held_idx
    assert len(train_idx | held_idx) == digits.NUM_DIGITS
    # The held-out images really are other digits (not shifted copies of training records).
    assert not np.array_equal(train[0]["raw"], held[0]["raw"])


def test_value_range_polarity_and_rgb():
    src = digits.DigitsSource(0, 50, 32)
    imgs = np.stack([src[i]["raw"] for i in range(50)])
    assert imgs.shape == (50, 32, 32, 3) and imgs.dtype == np.uint8
    np.testing.assert_array_equal(imgs[..., 0], imgs[..., 2])   # grey in RGB
    assert imgs.min() < 40 and imgs.max() == 255                # dark ink reaches near black
    # Light paper: the border rows are mostly background, the centre holds the ink.
    assert np.median(imgs[:, 0]) > 240
    assert imgs[:, 12:20, 12:20].mean() < imgs[:, :2].mean()
    # Batches from the pipeline are in [-1, 1] with binary masks.
    b = next(make_train_iterator(_cfg(), global_batch_size=8, seed=0, process_index=0, process_count=1))
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0 and b["image"].dtype == np.float32
    assert set(np.unique(b["mask"])) <= {0.0, 1.0}
    assert b["image"].shape == (8, 32, 32, 3)


def test_eval_is_unshifted_and_deterministic():
    c = _cfg()
    a = list(make_eval_dataset(c, batch_size=16, num_images=None, seed=3))
    b = list(make_eval_dataset(c, batch_size=16, num_images=None, seed=3))
    assert sum(len(x["image"]) for x in a) == 297
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    src = pipeline.make_source(c, train=False)
    np.testing.assert_array_equal(from_model_range(a[0]["image"][0]), src[0]["raw"])


def test_shift_augmentation_moves_without_flipping():
    img = np.full((8, 8, 3), 255, np.uint8)
    img[1, 2] = 0
    out = digits.shift(img, 2, -1)
    assert out[3, 1, 0] == 0 and (out == 0).sum() == 3
    np.testing.assert_array_equal(digits.shift(img, 0, 0), img)
    # Training images are shifted copies of the source record (never mirrored).
    c = _cfg(digits_shift=2)
    src = pipeline.make_source(c, train=True)
    b = next(make_train_iterator(c, global_batch_size=8, seed=0, process_index=0, process_count=1))
    for image, index in zip(b["image"], b["index"]):
        u8 = np.rint((image + 1.0) * 127.5).astype(np.uint8)
        raw = src[int(index)]["raw"]
        assert any(np.array_equal(u8, digits.shift(raw, dy, dx))
                   for dy in range(-2, 3) for dx in range(-2, 3)), f"record {index} is not a shift"


def test_resumes_exactly_from_grain_state():
    c = _cfg()
    it = make_train_iterator(c, global_batch_size=4, seed=5, process_index=0, process_count=1)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    it2 = make_train_iterator(c, global_batch_size=4, seed=5, process_index=0, process_count=1)
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        for k in ("image", "mask", "index"):
            np.testing.assert_array_equal(got[k], want[k])


def test_pickles_without_pixels():
    src = digits.DigitsSource(10, 20, 16)
    _ = src[0]
    clone = pickle.loads(pickle.dumps(src))
    assert clone._cache is None
    np.testing.assert_array_equal(clone[3]["raw"], src[3]["raw"])
    assert len(pickle.dumps(src)) < 1000


def test_bad_ranges_are_config_errors():
    with pytest.raises(ValueError, match="overlap"):
        list(make_eval_dataset(_cfg(digits_train=(0, 1600)), batch_size=4, num_images=4, seed=0))
    with pytest.raises(ValueError, match="digits_eval"):
        list(make_eval_dataset(_cfg(digits_eval=(1500, 1900)), batch_size=4, num_images=4, seed=0))
    with pytest.raises(IndexError):
        digits.DigitsSource(0, 5, 16)[5]
