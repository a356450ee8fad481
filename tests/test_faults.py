"""Fault drills on configs/demo.py:tiny, each what a pod job meets: SIGKILL while an async save is
in flight, a full disk during a save, a damaged newest checkpoint, a training folder of corrupt
images. The faulty run is a fresh ``python -m psm_jax.main`` process, as a pod would start it (it
is killed, or its exit code and last line are the point); the runs that follow it, and the
uninterrupted reference run that every drill must end equal to (a module fixture), run in the test
process and share its compiled steps (conftest.train_in_process)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import train_in_process
from psm_jax import checkpoint as ckpt
from test_train import _batch_shas

REPO = Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'configs' / 'demo.py'}:tiny"


def _run(workdir: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "psm_jax.main", f"--config={TINY}", f"--workdir={workdir}",
                           "--config.progress_bar=False", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ, JAX_PLATFORMS="cpu", **env))


def _digest_cli(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "psm_jax.checkpoint", "digest", str(workdir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr[-3000:]
    return last


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted 6-step run (checkpoints at 3 and 6) that every drill must end equal to."""
    w = tmp_path_factory.mktemp("straight")
    train_in_process(TINY, w)
    assert ckpt.latest_step(w) == 6 and sorted(_batch_shas(w)) == list(range(1, 7))
    return w


@pytest.mark.slow
def test_sigkill_during_async_save_resumes_bit_identical(straight, tmp_path, capsys):
    """SIGKILL while the step-6 save is in flight: the next start resumes from step 3."""
    w = tmp_path / "w"
    r = _run(w, PSM_FAULT_KILL_DURING_CKPT="6")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert ckpt.latest_step(w) == 3            # the interrupted step never counts as written
    capsys.readouterr()
    train_in_process(TINY, w)
    out = capsys.readouterr().out
    assert "resumed" in out and "at step 3" in out, out[-2000:]
    assert ckpt.digest(w) == ckpt.digest(straight)
    assert _batch_shas(w) == _batch_shas(straight)


@pytest.mark.slow
def test_disk_full_during_save_exits_clearly_and_keeps_the_previous_checkpoint(straight, tmp_path, capsys):
    w = tmp_path / "w"
    r = _run(w, PSM_FAULT_DISK_FULL_AT="6")
    assert r.returncode == 1, r.stderr[-3000:]
    line = _one_line_error(r)
    assert "could not write step 6" in line and "No space left on device" in line, line
    assert "newest complete checkpoint is step 3" in line, line
    # The previous checkpoint reads back, and training resumes from it to the same state.
    d = _digest_cli(w)
    assert d.returncode == 0 and d.stdout.startswith("step 3 "), d.stderr[-2000:]
    capsys.readouterr()
    train_in_process(TINY, w)
    assert "at step 3" in capsys.readouterr().out
    assert ckpt.digest(w) == ckpt.digest(straight)


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
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(straight, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    train_in_process(TINY, damaged)
    assert ckpt.latest_step(damaged) == 6
    assert _damage(damaged / "checkpoints" / "6") > 0
    # The digest tool refuses the damaged step with one line, not a traceback.
    d = _digest_cli(damaged)
    assert d.returncode == 2 and "Traceback" not in d.stderr and d.stderr.startswith("error:"), d.stderr[-2000:]
    assert len(d.stderr.strip().splitlines()) == 1
    # Training again: it says step 6 is unreadable, resumes from 3 and ends bit-identical.
    capsys.readouterr()
    train_in_process(TINY, damaged)
    out = capsys.readouterr().out
    assert "checkpoint step 6" in out and "unreadable" in out and "at step 3" in out, out[-3000:]
    assert list((damaged / "checkpoints_unreadable").iterdir()), "the damaged step was not kept aside"
    assert ckpt.digest(damaged) == ckpt.digest(straight)


def _folder(root: Path, good: int, bad: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"good{i}.png")
    for i in range(bad):
        (root / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.mark.slow
def test_corrupt_training_images_are_skipped_counted_and_bounded(tmp_path, caplog):
    """A folder of 1 good and 11 corrupt images: skipped and counted in the log; with
    data.max_consecutive_corrupt=3 the run stops with one line naming the last files."""
    root = _folder(tmp_path / "img", good=1, bad=11)
    folder = ["--config.data.source=folder", f"--config.data.path={root}", "--config.total_steps=1",
              "--config.ckpt_every=1"]
    r = _run(tmp_path / "bounded", *folder, "--config.data.max_consecutive_corrupt=3")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line_error(r)
    assert "4 unreadable training records in a row" in line and "max_consecutive_corrupt=3" in line, line
    assert line.count("bad") >= 3 and line.endswith(".jpg"), line
    assert ckpt.latest_step(tmp_path / "bounded") is None
    # Without the bound (0 = two epochs' worth) the one readable image fills the batches.
    with caplog.at_level("WARNING"):
        train_in_process(TINY, tmp_path / "skips", {"data.source": "folder", "data.path": str(root),
                                                    "total_steps": 1, "ckpt_every": 1,
                                                    "data.max_consecutive_corrupt": 0})
    assert "unreadable record(s) skipped" in caplog.text and "so far in this process" in caplog.text, \
        caplog.text[-3000:]
    assert "bad0.jpg" in caplog.text
    assert ckpt.latest_step(tmp_path / "skips") == 1
