"""Bit-exact parity of psm_jax.data.masks with MAT's RandomMask (golden `mat_masks` cases).

Each case (golden/README.md, "The mask cases") seeds one legacy RandomState with `numpy_seed` and
calls the generator `count` times; our generator must consume the stream in MAT's order and
rasterise like Pillow, so the masks must match exactly. The directory can be overridden with
$PSM_GOLDEN_MASKS_DIR; every `*.json` case with runner "mask_gen" in it gets its own test id.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import require_path, shared_dir
from psm_jax.data.masks import random_masks


def _golden_dir() -> Path:
    env = os.environ.get("PSM_GOLDEN_MASKS_DIR")
    return Path(env) if env else shared_dir() / "golden" / "mat_masks"


def _case_files() -> list[Path]:
    root = _golden_dir()
    if not root.is_dir():
        return []
    cases = []
    for path in sorted(root.glob("*.json")):
        if path.name == "index.json":
            continue
        if json.loads(path.read_text()).get("runner") == "mask_gen":
            cases.append(path)
    return cases


_CASES = _case_files()


def _kind_and_resolution(case: dict) -> tuple[str, int]:
    """`datasets.mask_generator_512_small.RandomMask` -> ("small", 512); s comes from the call."""
    m = re.search(r"mask_generator_(\d+)(_small)?\.RandomMask$", case["function"])
    assert m, f"unknown mask generator {case['function']!r} in {case['case']}"
    resolution = int(case["call"]["kwargs"].get("s", m.group(1)))
    return ("small" if m.group(2) else "large"), resolution


def test_golden_masks_present():
    """The directory must hold cases (a missing ../shared skips locally and fails in CI)."""
    require_path(_golden_dir(), "golden/mat_masks")
    assert _CASES, f"no mask_gen cases in {_golden_dir()}"
    index = json.loads((_golden_dir() / "index.json").read_text())
    assert {c["case"] for c in index["cases"]} <= {p.stem for p in _CASES}


@pytest.mark.parametrize("case_path", _CASES, ids=[p.stem for p in _CASES])
def test_mask_golden(case_path: Path):
    case = json.loads(case_path.read_text())
    kind, resolution = _kind_and_resolution(case)
    kwargs = case["call"]["kwargs"]
    expected_N1HW = np.load(case_path.with_name(case["npz"]))["out/masks"]
    rng = np.random.RandomState(case["numpy_seed"])
    got_NHW = random_masks(rng, kwargs["count"], resolution, kind, tuple(kwargs.get("hole_range", (0, 1))))
    assert got_NHW.dtype == np.float32
    assert got_NHW.shape == expected_N1HW[:, 0].shape
    for i, (got, want) in enumerate(zip(got_NHW, expected_N1HW[:, 0])):
        diff = int((got != want).sum())
        assert diff == 0, (
            f"{case['case']}: mask {i} differs from MAT in {diff} pixels (hole ratio ours "
            f"{1 - got.mean():.4f}, MAT {1 - want.mean():.4f}); check the draw order and rasterisation"
        )
