"""bench/accelerator_check.sh (issue 25): the prepared accelerator-day run, end to end on CPU with --quick."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "accelerator_check.sh"
STAGES = ["train_step", "digits", "inference", "peak", "generator", "spread"]


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, needle", [(["--bogus"], "--bogus"), (["--budget", "ten"], "--budget"),
                                          (["--out"], "--out")])
def test_bad_options_are_one_line_errors(args, needle, tmp_path):
    r = _run(*args, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert r.stderr.startswith("error: bench/accelerator_check.sh:")


@pytest.mark.slow
def test_quick_run_writes_one_json_file_with_every_stage(tmp_path):
    out = tmp_path / "check.json"
    r = _run("--quick", "--out", str(out), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [out]          # one file, nothing else left behind
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["device"] and report["wall_s"] <= report["budget_s"] + 60
    assert [s["stage"] for s in report["stages"]] == STAGES
    for stage in report["stages"]:
        assert stage["rc"] == 0, (stage["stage"], stage["stderr_tail"])
        assert stage["rows"], stage["stage"]
    rows = {s["stage"]: s["rows"] for s in report["stages"]}
    assert any("step_s" in row and "mem_est_gib" in row for row in rows["train_step"])
    assert {row["path"] for row in rows["inference"]} == {"inprocess", "exported"}
    assert rows["digits"][-1]["step"] == 2                 # the training run's last logged step
