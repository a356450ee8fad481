"""Reliability: one job per workdir (lock), resume with an incompatible config, bad workdirs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from psm_jax import checkpoint as ckpt
from psm_jax import workdir_lock
from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'configs' / 'demo.py'}:tiny"


def _write_lock(workdir: Path, pid: int, host: str | None = None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "lock").write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                               "started_at": "then"}))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {sleeper.pid}"):
            workdir_lock.acquire(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(tmp_path, _dead_pid())
    path = workdir_lock.acquire(tmp_path)                 # stale: taken over
    assert json.loads(path.read_text())["pid"] == os.getpid()
    workdir_lock.release(path)
    assert not path.exists()


def test_lock_of_another_host_needs_force(tmp_path, monkeypatch):
    _write_lock(tmp_path, 1, host="some-other-host")
    with pytest.raises(workdir_lock.WorkdirLocked, match="some-other-host"):
        workdir_lock.acquire(tmp_path)
    monkeypatch.setenv("PSM_FORCE_LOCK", "1")
    assert json.loads(workdir_lock.acquire(tmp_path).read_text())["pid"] == os.getpid()


def _main(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "psm_jax.main", f"--config={TINY}", f"--workdir={workdir}",
                           "--config.progress_bar=False"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_main_refuses_a_workdir_held_by_a_running_job(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(tmp_path / "w", sleeper.pid)
        r = _main(tmp_path / "w")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "in use by a running job" in r.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_main_refuses_a_workdir_that_is_a_file(tmp_path):
    (tmp_path / "w").write_text("not a directory")
    r = _main(tmp_path / "w")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not a directory" in r.stderr
    assert (tmp_path / "w").read_text() == "not a directory"


def test_incompatible_resume_names_the_first_differing_field():
    saved = json.loads(load_config(TINY).to_json_best_effort())
    ckpt.check_compatible(saved, json.loads(load_config(TINY, {"optim.lr": 0.5}).to_json_best_effort()))
    wider = json.loads(load_config(TINY, {"model.channel_base": 16}).to_json_best_effort())
    with pytest.raises(ValueError, match=r"model\.channel_base is 16.*trained with 8"):
        ckpt.check_compatible(saved, wider)
    bigger = json.loads(load_config(TINY, {"data.resolution": 64}).to_json_best_effort())
    with pytest.raises(ValueError, match=r"data\.resolution"):
        ckpt.check_compatible(saved, bigger)
