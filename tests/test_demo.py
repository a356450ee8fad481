"""The demo pipeline at 1/20 of its length (psm_jax/demo.py): it trains, evaluates and reports.

Only the report's existence and keys are asserted here; whether PSM beats the classical
baselines is a property of the full-length demo (README, docs), not of a 1/20 smoke run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_smoke_writes_full_report(tmp_path):
    config = load_config(str(REPO / "configs" / "demo.py"))
    steps = max(1, config.total_steps // 20)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "psm_jax.demo", "--workdir", str(tmp_path / "demo"),
           "--steps", str(steps), "--eval-images", "16"]
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["num_images"] == 16
    assert set(report["methods"]) == {"psm_t1", "psm_t2", "psm_t4", "telea", "mean_fill"}
    for scores in report["methods"].values():
        assert set(scores) >= {"l1", "psnr"}
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "report_spread.png" in html and (tmp_path / "demo" / "report_spread.png").exists()
    assert "Report:" in r.stdout
    # A second run reuses the finished run instead of training again.
    r2 = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "Reusing the finished run" in r2.stdout


def test_demo_bad_config_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "psm_jax.demo", "--workdir", str(tmp_path),
                        "--config", str(tmp_path / "missing.py")], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "missing.py" in r.stderr
