"""launch/: sweep expansion against the paper's tables, launchers, and launch.collect."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Written from the paper: Table 1 (models A-G, T as trained and tested), Table 2 (A and B
# re-tested at 4..10 iterations), Table 4 (four schedules, 3 iterations each, on model A).
TABLE1 = ["A", "B", "C", "D", "E", "F", "G"]
TABLE2 = [(m, t) for m in ("A", "B") for t in range(4, 11)]
TABLE4 = ["cubic", "cosine", "linear", "sqrt"]


def _sweep(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # The timeout only guards against a hang: a loaded 2-core CI machine runs the smoke sweep's
    # two trainings many times slower than an idle one.
    return subprocess.run([sys.executable, "-m", "launch.sweep", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _lines(*args: str) -> list[str]:
    r = _sweep(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()


def test_table1_dry_run_lists_the_seven_training_runs():
    lines = _lines("configs/psm.py:table1", "--dry_run")
    assert lines == [f"python -m psm_jax.main --config=configs/psm.py:{m} --workdir=runs/table1/{m}"
                     for m in TABLE1]


def test_table4_dry_run_lists_the_four_schedules_of_model_a():
    lines = _lines("configs/psm.py:table4", "--dry_run", "--workdir_root", "/r")
    assert lines == [f"python -m psm_jax.main --config=configs/psm.py:A,schedule={s} "
                     f"--workdir=/r/table4/A_{s}" for s in TABLE4]
    from psm_jax.config_lib import load_config
    for s in TABLE4:
        c = load_config(f"{REPO / 'configs' / 'psm.py'}:A,schedule={s}")
        assert c.spread.schedule == s and c.spread.train_iters == c.spread.test_iters == 3


def test_table2_dry_run_lists_fourteen_evaluations_on_table1_workdirs():
    lines = _lines("configs/psm.py:table2", "--dry_run", "--eval_images", "/val", "--eval_masks", "/m",
                   "--inception", "/w.npz")
    assert lines == [f"python -m psm_jax.evaluate --workdir runs/table1/{m} --images /val --masks /m "
                     f"--iters {t} --inception /w.npz --out runs/table2/{m}_T{t}/results.json"
                     for m, t in TABLE2]


def test_launchers_and_extra_flags():
    slurm = _lines("configs/psm.py:table1", "--dry_run", "--launcher", "slurm", "--",
                   "--config.data.path=/d")
    assert slurm[0] == ("sbatch --job-name=psm-A launch/gpu_slurm.sbatch configs/psm.py:A runs/table1/A "
                        "--config.data.path=/d")
    tpu = _lines("configs/psm.py:table1", "--dry_run", "--launcher", "tpu", "--tpu", "v4", "--zone", "z",
                 "--workdir_root", "gs://b/r")
    assert tpu[6] == ("launch/tpu_pod.sh --tpu v4 --zone z --config configs/psm.py:G "
                      "--workdir gs://b/r/table1/G --")
    assert len(slurm) == len(tpu) == 7


@pytest.mark.parametrize("args, message", [
    (["configs/psm.py:table9", "--dry_run"], "unknown sweep"),
    (["configs/nope.py:table1", "--dry_run"], "not found"),
    (["configs/psm.py", "--dry_run"], "CONFIG.py:SWEEP"),
    (["configs/psm.py:table1", "--launcher", "k8s"], "launcher"),
    (["configs/psm.py:table2"], "EVAL_IMAGES"),
])
def test_bad_sweep_input_is_one_line(args, message):
    r = _sweep(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("script", ["launch/tpu_pod.sh", "launch/gpu_slurm.sbatch", "launch/local.sh"])
def test_launch_scripts_have_help_and_refuse_missing_arguments(script):
    r = subprocess.run(["bash", script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "Usage:" in r.stdout and "Example" in r.stdout
    r = subprocess.run(["bash", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smoke_sweep_runs_and_collect_writes_both_rows(tmp_path):
    """Two 2-step tiny runs (two data orders) through the local launcher; each ends with an
    in-training eval."""
    r = _sweep("configs/psm.py:smoke", "--workdir_root", str(tmp_path), timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    sweep = json.loads((tmp_path / "smoke" / "sweep.json").read_text())
    assert [run["name"] for run in sweep["runs"]] == ["tiny_data0", "tiny_data1"]
    for run in sweep["runs"]:
        rec = json.loads((Path(run["workdir"]) / "run.json").read_text())
        assert rec["device_count"] >= 1 and rec["config"]["total_steps"] == 2 and "git_sha" in rec
    r = subprocess.run([sys.executable, "-m", "launch.collect", str(tmp_path / "smoke")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "smoke" / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny_")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "step 2"                       # the in-training eval at the last step
        assert float(cells[5]) > 0 and float(cells[6]) > 0  # hole L1 and PSNR are there
