"""Pod planning (psm_jax/scaling.py, bench/scaling.py, summary --mesh; issue 25).

The compiling test runs the tiny config on a 4-device simulated mesh in both layouts (and on one
device, for reference), once, and checks what the figures must satisfy whatever the compiler:
the JSON fields, the memory identity, data parallelism dividing the FLOPs and fsdp dividing the
sharded part of the parameters.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax import scaling
from psm_jax import train_step as ts
from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]
STEP_FIELDS = ("argument", "output", "temp", "alias", "constant", "total")


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_parse_mesh():
    assert scaling.parse_mesh("data=4,fsdp=2") == (4, 2)
    assert scaling.parse_mesh("fsdp=2, data=4") == (4, 2)
    assert scaling.parse_mesh("data=8") == (8, 1)
    assert scaling.parse_mesh("fsdp=8") == (1, 8)
    for bad in ("", "data", "data=0", "data=-2", "dp=4", "data=4,data=2", "data=4;fsdp=2", "data=2.5", "data=x"):
        with pytest.raises(ValueError, match="expected data=N"):
            scaling.parse_mesh(bad)


@pytest.mark.parametrize("args, needle", [
    (["--mesh", "data=4,dp=2"], "--mesh"),
    (["--mesh", "data=3"], "--batch"),            # the tiny config's batch 4 does not split over 3
    (["--configs", "places1024"], "--configs"),
    (["--steps", "g"], "--steps"),
    (["--markdown"], "--out"),
    (["--out", "bench"], "--out"),                 # a folder
    (["--configs", "places512", "--execute", "2"], "--execute"),
])
def test_bad_arguments_are_one_line_errors_before_compiling(args, needle):
    r = _run("bench/scaling.py", *args, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and needle in lines[0], r.stderr


@pytest.mark.slow
def test_tiny_on_4_devices_both_layouts(tmp_path):
    out = tmp_path / "rows.jsonl"
    r = _run("bench/scaling.py", "--configs", "tiny", "--mesh", "data=1", "data=4", "data=2,fsdp=2",
             "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    one, *rows = _rows(r.stdout)
    assert [row["mesh"] for row in rows] == ["data=4,fsdp=1", "data=2,fsdp=2"]
    assert _rows(out.read_text()) == [one, *rows]
    # Data parallelism divides the work: a device of the 4-device mesh does a quarter of the
    # 1-device step (not the whole global batch's share of any part of it, e.g. D on the fakes).
    for step in ("train", "r1"):
        assert rows[0][f"{step}_gflop"] < 1.1 * one[f"{step}_gflop"] / 4, (step, rows[0], one)
    for row in rows:
        assert (row["config"], row["devices"], row["batch"], row["per_device_batch"]) == ("tiny", 4, 4, 1)
        for step in ("train", "r1"):
            b = {k: row[f"{step}_{k}_bytes"] for k in STEP_FIELDS}
            assert b["total"] == b["argument"] + b["output"] + b["temp"] - b["alias"] + b["constant"]
            assert b["temp"] > 0 and row[f"{step}_gflop"] > 0 and row[f"{step}_compile_s"] >= 0
            # The state is donated: its outputs are written over its arguments.
            assert b["alias"] == row["state_total_bytes"]
            # Arguments are exactly this device's shard of the state plus its slice of the batch.
            assert b["argument"] == row["state_total_bytes"] + row["per_device_batch"] * row["resolution"] ** 2 * 4 * 4
        assert row["train_constant_bytes"] > 0 and row["r1_constant_bytes"] == 0   # the perceptual ResNet
        assert row["peak_bytes"] == max(row["train_total_bytes"], row["r1_total_bytes"])
        assert row["state_total_bytes"] == sum(row[f"state_{k}_bytes"] for k in ("params", "opt", "ema", "other"))
        assert all(row[f"fits_{c}gib"] for c in (16, 32, 40, 80, 141))
        assert "XLA:CPU" in row["note"] and row["platform"] == "cpu"
    data, fsdp = rows
    # fsdp=2 halves every parameter it shards; what it leaves whole stays on every device.
    sharded = data["state_params_bytes"] - fsdp["state_params_replicated_bytes"]
    assert data["state_params_replicated_bytes"] == data["state_params_bytes"]   # no fsdp: all whole
    assert sharded > 0 and sharded % 2 == 0
    assert fsdp["state_params_bytes"] == fsdp["state_params_replicated_bytes"] + sharded // 2
    assert fsdp["state_opt_bytes"] < data["state_opt_bytes"]
    assert abs(fsdp["train_gflop"] - data["train_gflop"]) < 0.05 * data["train_gflop"]   # same work per device

    # A second run with the same --out skips what is there (a long grid resumes).
    r = _run("bench/scaling.py", "--configs", "tiny", "--mesh", "data=4", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row.get("skipped", "") for row in _rows(r.stdout)] == [f"already in {out}"]
    assert len(_rows(out.read_text())) == 3

    # The summary prints the same line for the same configuration (its compile is a cache hit
    # when the suite's persistent compilation cache is on).
    r = _run("-m", "psm_jax.models.summary", "--config", "configs/psm.py:tiny", "--mesh", "data=2,fsdp=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert scaling.memory_line(fsdp) in r.stdout.splitlines()


class _StubD:
    """A 'discriminator' whose logit says which image and which mask it was given."""

    @staticmethod
    def apply(variables, images, masks):
        del variables
        return (images.mean(axis=(1, 2, 3)) + 100.0 * masks.mean(axis=(1, 2, 3)))[:, None]


def test_fakes_reach_d_in_their_iteration_with_their_own_mask():
    """The fakes are merged batch-major for ADA (so data parallelism shards them, see the
    slow test above); every logit [t, b] must still be D(fake[t, b], mask[b])."""
    config = load_config("configs/psm.py:tiny")
    T, B = 2, 3
    value_TB = jnp.arange(T * B, dtype=jnp.float32).reshape(T, B) / 10.0
    fake_TBHWC = jnp.broadcast_to(value_TB[:, :, None, None, None], (T, B, 4, 4, 3))
    mask_value_B = jnp.asarray([0.0, 0.5, 1.0])
    m0_BHW1 = jnp.broadcast_to(mask_value_B[:, None, None, None], (B, 4, 4, 1))
    models = ts.Models(None, _StubD(), None, None)
    logits_TB = ts._augmented_d_logits(config, models, {}, fake_TBHWC, m0_BHW1,
                                     jax.random.key(0), 0.0)
    np.testing.assert_allclose(logits_TB, value_TB + 100.0 * mask_value_B[None], rtol=1e-6)


@pytest.fixture
def bench_scaling(monkeypatch):
    """bench/scaling.py as a module (psm_jax.scaling is imported as `scaling` above)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import scaling as module
    return module


def test_scaling_doc_tables_are_the_scripts_rendering_of_the_committed_rows(tmp_path, monkeypatch, bench_scaling):
    """docs/SCALING.md's three tables are exactly what `bench/scaling.py --markdown` writes from
    docs/scaling.jsonl: no hand-edited cell, no row that the JSON lines do not hold."""
    doc = (REPO / "docs" / "SCALING.md").read_text()
    rows = bench_scaling._read_rows(REPO / "docs" / "scaling.jsonl")
    configs = {(r["config"], r["mesh"]) for r in rows if "peak_bytes" in r}
    for config in ("places512", "places256"):   # issue 25: real rows on at least 3 layouts each
        assert len({mesh for c, mesh in configs if c == config}) >= 3, (config, configs)
    # Empty the measured table, so that stale rows cannot survive the rewrite, then let the script rebuild it.
    begin, end = "<!-- bench:scaling:begin -->", "<!-- bench:scaling:end -->"
    i, j = doc.index(begin), doc.index(end)
    copy = tmp_path / "SCALING.md"
    copy.write_text(doc[:i + len(begin)] + "\n" + doc[j:])
    monkeypatch.setattr(bench_scaling, "SCALING_MD", copy)
    bench_scaling.write_markdown(rows)
    assert copy.read_text() == doc


def test_largest_batch_fits_both_steps_on_their_own_lines(bench_scaling):
    """With remat on, G + D sets the peak at a small batch and R1 at a large one; the largest batch must
    respect each step's own line, not one line through the two peaks."""
    gib = scaling.GIB

    def row(b, train_gib, r1_gib):
        return {"config": "c", "fsdp": 1, "dtype": "bfloat16", "remat": True, "platform": "cpu",
                "per_device_batch": b, "train_total_bytes": train_gib * gib, "r1_total_bytes": r1_gib * gib,
                "peak_bytes": max(train_gib, r1_gib) * gib}

    # G + D: 4.5 + 0.1 b GiB; R1: 2.5 + 1.0 b GiB. Peaks 4.6 GiB (b = 1, G + D) and 6.5 GiB (b = 4, R1):
    # a single line through them (0.63 GiB per image) would allow b = 16 at 16 GiB.
    (out,) = bench_scaling.largest_batches([row(1, 4.6, 3.5), row(4, 4.9, 6.5)])
    assert out["train_gib_per_image"] == 0.1 and out["r1_gib_per_image"] == 1.0
    assert out["max_per_device_batch_16gib"] == int((0.9 * 16 - 2.5) // 1.0)   # R1 limits: 11
    assert out["max_per_device_batch_141gib"] == int((0.9 * 141 - 2.5) // 1.0)
