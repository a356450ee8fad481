"""Tests for psm_jax.data.synthetic (procedural source for tests and the demo)."""
from __future__ import annotations

import pickle

import grain
import numpy as np
import pytest

from psm_jax.data.synthetic import SyntheticSource


def test_record_is_pure_function_of_seed_and_index():
    a, b = SyntheticSource(50, 32, seed=7), SyntheticSource(50, 32, seed=7)
    # Access in a different order: random access must not depend on history.
    for i in (3, 0, 49, 3):
        np.testing.assert_array_equal(a[i], b[i])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], SyntheticSource(50, 32, seed=8)[0])
    # num_records does not change a record's content (it only bounds the range).
    np.testing.assert_array_equal(SyntheticSource(10, 32, seed=7)[3], a[3])


def test_shape_dtype_and_range():
    src = SyntheticSource(4, 48, seed=0)
    assert len(src) == 4
    x = src[2]
    assert x.shape == (48, 48, 3) and x.dtype == np.uint8


def test_images_are_structured_not_noise():
    """Most of the image is piecewise-smooth structure: neighbouring pixels are correlated far
    more than in noise, yet images carry real edges (texture periods, shape borders)."""
    src = SyntheticSource(32, 64, seed=1)
    imgs = np.stack([src[i] for i in range(32)]).astype(np.float32)
    diffs = np.abs(np.diff(imgs, axis=2))  # horizontal neighbour differences
    # Flat regions (noise only, sigma 3) dominate ...
    assert np.median(diffs) < 8
    # ... but nearly every image has strong edges (structure a hole can cut through); a few
    # may be a gradient with low-contrast shapes, which is fine.
    assert sum((diffs[i] > 40).mean() > 0.003 for i in range(32)) >= 28
    # Colours vary across the set (random palettes, not one fixed look).
    assert imgs.reshape(32, -1, 3).mean(1).std(0).min() > 10


def test_out_of_range_and_bad_arguments():
    src = SyntheticSource(3, 16)
    with pytest.raises(IndexError):
        src[3]
    with pytest.raises(ValueError, match="num_records"):
        SyntheticSource(0, 16)
    with pytest.raises(ValueError, match="resolution"):
        SyntheticSource(3, 4)


def test_pickles_and_feeds_grain():
    src = SyntheticSource(6, 16, seed=3)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[5], src[5])
    ds = grain.MapDataset.source(src).batch(3)
    batches = list(ds)
    assert len(batches) == 2 and batches[0].shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(batches[1][2], src[5])


def test_tiles_are_grid_aligned_two_colour_patterns():
    """"tiles": every cell of an (R/16, R/8 or R/4)-pixel grid starting at the corner is one flat
    colour (up to the sigma-3 noise), and the cells form a two-colour checker or stripes."""
    src = SyntheticSource(24, 64, seed=2, kind="tiles")
    cells_seen = set()
    for i in range(len(src)):
        img = src[i].astype(np.float32)
        for cell in (16, 8, 4):  # the coarsest flat grid is the pattern's own
            blocks = img.reshape(64 // cell, cell, 64 // cell, cell, 3)
            means = blocks.mean(axis=(1, 3))
            if np.abs(blocks - means[:, None, :, None]).max() < 20:
                break
        else:
            raise AssertionError(f"tiles record {i}: no grid of 4, 8 or 16 px cells is flat")
        cells_seen.add(cell)
        dist = np.linalg.norm(means - means[0, 0], axis=-1)  # [cells, cells]
        second = dist > dist.max() / 2
        assert np.all((dist < 15) | (dist > dist.max() - 15)), f"record {i}: more than two colours"
        iy, ix = np.indices(second.shape)
        assert any(np.array_equal(second, p % 2 == 1) for p in (iy + ix, iy, ix)), f"record {i}: {second}"
    assert cells_seen == {4, 8, 16}


def test_kind_is_validated_and_does_not_change_layered_records():
    with pytest.raises(ValueError, match="kind"):
        SyntheticSource(3, 16, kind="stripes")
    with pytest.raises(ValueError, match="multiple of 16"):
        SyntheticSource(3, 40, kind="tiles")
    layered = SyntheticSource(5, 32, seed=4)
    np.testing.assert_array_equal(layered[1], SyntheticSource(5, 32, seed=4, kind="layered")[1])
    assert not np.array_equal(layered[1], SyntheticSource(5, 32, seed=4, kind="tiles")[1])
