"""Shared test helpers.

Tests that read ``../shared`` (golden cases, reference statistics) find it through
``PSM_SHARED_DIR`` (default: ``../shared`` beside the repository). When it is missing they
skip with a reason, except under ``CI=true``, where a missing reference is a failure: CI
must never go green by skipping the parity checks.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("PSM_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_path(path: Path, what: str) -> Path:
    """Returns ``path`` if it exists; otherwise skips (locally) or fails (CI)."""
    if path.exists():
        return path
    msg = f"{what} not found at {path} (set PSM_SHARED_DIR)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def require_shared(*parts: str) -> Path:
    return require_path(shared_dir().joinpath(*parts), "/".join(parts))
