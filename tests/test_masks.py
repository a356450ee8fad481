"""psm_jax.data.masks: MAT's statistics (notes §6), Generator determinism, scaling, hole_range."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared
from psm_jax.data import mask_stats
from psm_jax.data.masks import mask_config, random_mask, random_masks


def _reference(generator: str) -> dict:
    return mask_stats.load_reference(require_shared("reference", "mat_mask_stats.json"), generator)


# ---------------------------------------------------------------- statistics vs MAT (acceptance)

@pytest.mark.slow
@pytest.mark.parametrize("generator", sorted(mask_stats.MAT_GENERATORS))
def test_statistics_match_mat(generator: str):
    """5000 masks from a numpy Generator (grain's path) vs MAT's reference sample.

    Mean hole ratio within 0.015, 20-bin histogram TV <= 0.05, plus std/quantiles, component
    counts, border fraction and the anisotropic mean hole map (tolerances in mask_stats.TOLERANCES).
    """
    ref = _reference(generator)
    kind, resolution = mask_stats.MAT_GENERATORS[generator]
    stats = mask_stats.generated_mask_stats(kind, resolution, 5000, seed=0)
    checks = mask_stats.compare_stats(stats, ref)
    names = {c.name for c in checks}
    assert {"hole_ratio_mean", "hole_ratio_hist_tv", "components_8_mean", "border_fraction",
            "spatial_anisotropy"} <= names
    if generator == "512":
        assert {"spatial_mid_left_right", "spatial_mid_top_bottom", "spatial_centre"} <= names
    failed = [str(c) for c in checks if not c.ok]
    assert not failed, f"{generator}: " + "; ".join(failed)


@pytest.mark.slow
def test_legacy_stream_replays_mat_reference_sample():
    """RandomState(3) is how the notes drew the 256_small reference: same 5000 hole ratios."""
    ref = _reference("256_small")
    stats = mask_stats.generated_mask_stats("small", 256, 5000, seed=3, legacy=True, components=False)
    assert stats["hole_ratio_hist_counts"] == ref["hole_ratio_hist_counts"]
    assert stats["hole_ratio_mean"] == pytest.approx(ref["hole_ratio_mean"], abs=1e-12)


def test_isotropic_masks_fail_the_spatial_check():
    """The anisotropy check must catch a generator whose strokes run the wrong way (transposed)."""
    rng = np.random.default_rng(0)
    masks = [random_mask(rng, 256).T for _ in range(1500)]
    stats = mask_stats.mask_stats(masks, components=False)
    check = [c for c in mask_stats.compare_stats(stats, {}) if c.name == "spatial_anisotropy"][0]
    assert not check.ok and check.ours < 0


# ---------------------------------------------------------------- API, determinism, RNG adapter

@pytest.mark.parametrize("kind", ["large", "small"])
def test_output_format(kind: str):
    m = random_mask(np.random.default_rng(1), 256, kind)
    assert m.shape == (256, 256) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert 0.0 < 1.0 - m.mean() < 1.0


def test_generator_path_is_deterministic():
    a = random_masks(np.random.default_rng(123), 4, 256)
    b = random_masks(np.random.default_rng(123), 4, 256)
    c = random_masks(np.random.default_rng(124), 4, 256)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({m.tobytes() for m in a}) == 4  # successive masks differ


def test_grain_style_per_record_rngs_are_independent():
    """grain hands each record its own Generator; equal seeds give equal masks, per record."""
    masks = [random_mask(np.random.default_rng([7, i]), 128) for i in range(3)]
    again = [random_mask(np.random.default_rng([7, i]), 128) for i in range(3)]
    for m, n in zip(masks, again):
        np.testing.assert_array_equal(m, n)
    assert not np.array_equal(masks[0], masks[1])


def test_legacy_stream_matches_sequential_draws():
    """random_masks(RandomState) is the same stream as successive random_mask calls."""
    a = random_masks(np.random.RandomState(5), 3, 256)
    rs = np.random.RandomState(5)
    b = np.stack([random_mask(rs, 256) for _ in range(3)])
    np.testing.assert_array_equal(a, b)


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="Generator or numpy.random.RandomState"):
        random_mask(np.random, 256)  # the global RNG module is not accepted
    with pytest.raises(ValueError, match="kind"):
        random_mask(np.random.default_rng(0), 256, "huge")
    with pytest.raises(ValueError, match="resolution"):
        random_mask(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="hole_range"):
        random_mask(np.random.default_rng(0), 256, hole_range=(0.5, 0.5))
    with pytest.raises(ValueError, match="to zero"):  # MAT would crash on randint(0) here
        random_mask(np.random.default_rng(0), 256, "small", hole_range=(0.0, 0.3))


# ---------------------------------------------------------------- hole_range

def test_hole_range_is_respected():
    rng = np.random.default_rng(0)
    ratios = [1.0 - random_mask(rng, 128, hole_range=(0.3, 0.5)).mean() for _ in range(40)]
    assert all(0.3 < r < 0.5 for r in ratios)


def test_default_range_excludes_empty_masks():
    """MAT retries masks with no hole at all (frequent for 'small' at 256)."""
    rng = np.random.default_rng(0)
    assert all(random_mask(rng, 64, "small").min() == 0.0 for _ in range(300))


# ---------------------------------------------------------------- other resolutions

def test_presets_keep_mat_constants():
    for res in (256, 512):
        cfg = mask_config(res)
        assert (cfg.min_width, cfg.max_width) == (12.0, 48.0)
    assert (mask_config(512).box_count_a, mask_config(512).stroke_count) == (5, 9)
    assert (mask_config(256, "small").box_count_a, mask_config(256, "small").stroke_count) == (2, 3)
    assert mask_config(128).min_width == 6.0 and mask_config(1024).max_width == 96.0
    assert mask_config(1024).stroke_count == 9 and mask_config(300).stroke_count == 8


@pytest.mark.parametrize("resolution", [64, 128])
@pytest.mark.parametrize("kind,mat_mean", [("large", 0.40), ("small", 0.22)])
def test_other_resolutions_give_sensible_hole_ratios(resolution: int, kind: str, mat_mean: float):
    """Scaled masks keep MAT's hole-ratio level (about 0.40 large, 0.22 small at 256/512)."""
    rng = np.random.default_rng(resolution)
    ratios = np.array([1.0 - random_mask(rng, resolution, kind).mean() for _ in range(600)])
    assert abs(ratios.mean() - mat_mean) < 0.04, ratios.mean()
    assert np.quantile(ratios, 0.95) < 0.85  # not saturated: strokes did not swallow the image


# ---------------------------------------------------------------- mask_stats CLI

def test_mask_stats_cli(capsys):
    rc = mask_stats.main(["--generate", "--resolution", "64", "--num", "30", "--no_components"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["n"] == 30 and len(out["stats"]["hole_ratio_hist_counts"]) == 20


def test_mask_stats_cli_bad_input(tmp_path, capsys):
    assert mask_stats.main(["--masks", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--masks" in err and "missing" in err and "\n" not in err
    assert mask_stats.main(["--masks", str(tmp_path)]) == 2  # empty folder
    assert "no mask files" in capsys.readouterr().err
