"""Fault drills on configs/demo.py:tiny: a damaged newest checkpoint, and a corrupt checkpoint for
the digest tool. Each run is a fresh ``python -m psm_jax.main`` process, as a pod would start it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from psm_jax import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'configs' / 'demo.py'}:tiny"


def _run(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "psm_jax.main", f"--config={TINY}", f"--workdir={workdir}",
                           "--config.progress_bar=False", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _damage(step_dir: Path) -> int:
    """Overwrites the middle of every array data file of a step with garbage; returns the count."""
    n = 0
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 64 and "metadata" not in f.name:
            data = bytearray(f.read_bytes())
            mid = len(data) // 2
            data[mid:mid + 32] = os.urandom(32)
            f.write_bytes(bytes(data[: len(data) * 3 // 4]))   # and truncate
            n += 1
    return n


@pytest.mark.slow
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    r = _run(straight)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(damaged)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt.latest_step(damaged) == 6
    assert _damage(damaged / "checkpoints" / "6") > 0
    # The digest tool refuses the damaged step with one line, not a traceback.
    d = subprocess.run([sys.executable, "-m", "psm_jax.checkpoint", "digest", str(damaged)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert d.returncode == 2 and "Traceback" not in d.stderr and d.stderr.startswith("error:"), d.stderr[-2000:]
    assert len(d.stderr.strip().splitlines()) == 1
    # Training again: it says step 6 is unreadable, resumes from 3 and ends bit-identical.
    r = _run(damaged)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "checkpoint step 6" in out and "unreadable" in out and "at step 3" in out, out[-3000:]
    assert list((damaged / "checkpoints_unreadable").iterdir()), "the damaged step was not kept aside"
    assert ckpt.digest(damaged) == ckpt.digest(straight)
