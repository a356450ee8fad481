"""The bench/ scripts' command-line contract (issue 7): JSON lines with the documented keys.

The speed targets themselves are measured by the scripts, never asserted here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_generator_json_lines_have_the_documented_keys():
    r = _bench("generator.py", "--resolution", "32", "--batch_size", "1", "2", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(row["resolution"], row["batch"]) for row in rows] == [(32, 1), (32, 2)]
    for row in rows:
        assert {"resolution", "batch", "median_s", "gflop", "gflop_per_s"} <= row.keys()
        assert row["median_s"] > 0 and row["gflop"] > 0
        assert abs(row["gflop_per_s"] - row["gflop"] / row["median_s"]) <= 0.01 * row["gflop_per_s"] + 0.01
    # Twice the batch is about twice the work (XLA's FLOP count, not a timing).
    assert 1.8 < rows[1]["gflop"] / rows[0]["gflop"] < 2.2


def test_bad_arguments_are_one_line_errors():
    r = _bench("train_step.py", "--configs", "bogus")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--configs" in r.stderr.strip().splitlines()[-1]
    for args, flag in ((("--configs", "configs/nope.py:tiny"), "--configs"), (("--repeats", "0"), "--repeats")):
        r = _bench("compile_time.py", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert flag in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_demo_learning_scores_the_demo_eval_set():
    r = _bench("demo_learning.py", "--model", "unet", "--kind", "tiles", "--steps", "10", "--num_eval_images", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert {"model", "kind", "steps", "hole_l1", "telea", "mean_fill", "train_l1_last100", "img_per_s"} <= row.keys()
    assert (row["model"], row["kind"], row["steps"]) == ("unet", "tiles", 10)
    # All three are hole L1 in 0-255 over the same images: positive, finite, and not all equal.
    scores = [row["hole_l1"], row["telea"], row["mean_fill"]]
    assert all(0 < s < 255 for s in scores) and len(set(scores)) == 3
    r = _bench("demo_learning.py", "--model", "unet", "--nll_weight", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--nll_weight" in r.stderr.strip().splitlines()[-1]
    # argparse's own errors are one line too (bench/common.ArgumentParser), not the usage block.
    r = _bench("demo_learning.py", "--model", "foo")
    assert r.returncode == 2 and "--model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
