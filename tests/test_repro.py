"""The reproducibility study (issue 27): configs/demo.py's repro sweeps, the verdict rule of
launch/repro_stats.py, and the whole machinery on the tiny study (sweep -> evaluate -> collect)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import repro_stats as rs
from psm_jax.config_lib import load_config
from tests.test_reproduction_doc import check_report

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.py"


def _sweep(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.sweep", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _models() -> str:
    """A-F, and G when the demo's U-Net attends at two scales (what get_sweep("repro") decides)."""
    two_scales = len(load_config(str(DEMO)).model.attention_downsample) == 2
    return "ABCDEF" + ("G" if two_scales else "")


@pytest.mark.parametrize("arg, seeds", [("repro", 2), ("repro,seeds=3", 3)])
def test_repro_dry_run_lists_every_training_and_evaluation(arg, seeds):
    r = _sweep(f"configs/demo.py:{arg}", "--dry_run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    expected = []
    for s in range(seeds):
        for m in _models():
            expected += [
                f"python -m psm_jax.main --config=configs/demo.py:demo,ablation={m} --workdir=runs/repro/{m}_s{s} "
                f"--config.seed={s} --config.data.seed={s} --config.keep_ckpts=2",
                f"python -m psm_jax.evaluate --workdir runs/repro/{m}_s{s} --images from_config --masks large "
                f"--iters 1,2,3,4,6,8 --seed 12345 --batch_size 16 --calib_samples 0 --save_images 8 "
                f"--out runs/repro/{m}_s{s}_eval/results.json"]
    assert len(lines) == 2 * seeds * len(_models()) == len(expected)
    assert lines == expected


def test_table1_models_change_one_thing_each_from_a():
    demo = load_config(str(DEMO))
    a = load_config(f"{DEMO}:demo,ablation=A")
    assert a.spread.train_iters == a.spread.test_iters == 3 and a.total_steps == demo.total_steps
    assert a.model.to_dict() == demo.model.to_dict()
    changed = {
        "B": ("spread.train_iters", 1), "C": ("spread.train_iters", 2), "D": ("spread.decoupled", False),
        "E": ("spread.alpha", 0.0), "F": ("model.uncertainty_guided", False),
        "G": ("model.attention_downsample", (min(demo.model.attention_downsample),)),
    }
    flat = lambda c: {f"{k}.{f}": v for k in ("spread", "model") for f, v in c[k].items()}  # noqa: E731
    for m in _models()[1:]:
        c = flat(load_config(f"{DEMO}:demo,ablation={m}"))
        diff = {k: v for k, v in c.items() if v != flat(a)[k] and k != "spread.test_iters"}
        key, value = changed[m]
        assert diff == {key: value}, (m, diff)
        assert c["spread.test_iters"] == c["spread.train_iters"]     # each model tests with its own T


def _study(l1: dict[tuple[str, int], dict[int, float]], own: dict[str, int]) -> rs.Study:
    results = {k: {t: {"l1_hole": v} for t, v in by_t.items()} for k, by_t in l1.items()}
    return rs.Study(results, own, {}, {}, {}, {}, [], [])


def test_verdicts_follow_the_noise_rule():
    own = {"A": 3, "C": 2, "B": 1, "D": 3, "F": 3}
    l1 = {("A", 0): {3: 10.0}, ("A", 1): {3: 10.2},       # mean 10.1, std 0.141
          ("C", 0): {2: 10.5}, ("C", 1): {2: 10.7},       # 0.5 worse than A: holds
          ("B", 0): {1: 10.6}, ("B", 1): {1: 10.8},       # 0.1 worse than C: within noise
          ("D", 0): {3: 9.0}, ("D", 1): {3: 9.2},         # 1.0 better than A: reversed
          ("F", 0): {3: 10.0}, ("F", 1): {3: 11.0}}       # 0.4 worse, std 0.707: within noise
    claims = {c.title.split(" (")[0]: c for c in rs.table1_claims(_study(l1, own))}
    chain = claims["More training iterations help"]
    assert [link.verdict for link in chain.links] == ["holds", "within noise"] and chain.verdict == "within noise"
    assert claims["Decoupled probabilistic modelling helps"].verdict == "reversed"
    assert claims["Uncertainty-guided attention helps"].verdict == "within noise"
    assert claims["Continuous sampling helps"].verdict == "not measured"
    link = chain.links[0]
    assert link.difference == pytest.approx(0.5) and link.noise == pytest.approx(0.1414, abs=1e-4)
    one_seed = rs.table1_claims(_study({k: v for k, v in l1.items() if k[1] == 0}, own))
    assert one_seed[0].verdict == "holds (1 seed)" and one_seed[1].verdict == "reversed (1 seed)"


def test_table2_claims_help_then_saturate():
    own = {"A": 3}
    # Gains per iteration: 3 -> 4 about 1.0, 6 -> 8 about 0.05: more iterations help, then saturate.
    l1 = {("A", s): {1: 15.0, 2: 14.0, 3: 12.0 + s * 0.1, 4: 11.0 + s * 0.1, 6: 10.2, 8: 10.1 - s * 0.02}
          for s in (0, 1)}
    help_, saturate, missing = rs.table2_claims(_study(l1, own))
    assert help_.links[0].lower == "T=8" and help_.verdict == "holds"
    assert saturate.verdict == "holds" and "6 -> 8" in saturate.title and "3 -> 4" in saturate.title
    assert missing.verdict == "not measured" and "model B" in missing.not_measured


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    """repro_tiny (models B and C, 1 seed, 2 steps, T = 1, 2) through sweep, evaluate and collect; a
    second sweep skips every finished run; the report's numbers are the runs' own."""
    r = _sweep("configs/demo.py:repro_tiny", "--workdir_root", str(tmp_path), timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    names = ["B_s0", "B_s0_eval", "C_s0", "C_s0_eval"]
    for name in names:
        assert f"[{name}] done in " in r.stdout, r.stdout[-2000:]
        assert json.loads((tmp_path / "repro_tiny" / name / "sweep_timing.json").read_text())["cpu_s"] > 0
    assert "4 of 4 runs started (0 skipped)" in r.stdout
    record = json.loads((tmp_path / "repro_tiny" / "C_s0_eval" / "results.json").read_text())["record"]
    assert record["inception"] is None and set(record["left_out"]) >= {"fid", "p_ids", "u_ids"}
    assert record["iterations"] == [1, 2] and record["step"] == 2 and record["num_images"] == 297
    assert record["images"].startswith("from_config") and record["calib_samples"] == "all hole pixels"
    again = _sweep("configs/demo.py:repro_tiny", "--workdir_root", str(tmp_path))
    assert again.returncode == 0 and "0 of 4 runs started (4 skipped)" in again.stdout, again.stdout

    out = tmp_path / "doc" / "REPRODUCTION.md"
    c = subprocess.run([sys.executable, "-m", "launch.collect", str(tmp_path / "repro_tiny"), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    text = out.read_text()
    assert "## Table 1" in text and "## Table 2" in text
    for png in ("table2_hole_l1.png", "completions.png"):
        assert (out.parent / "reproduction" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdicts = [line for line in text.splitlines() if line.startswith("- **")]
    assert any(line.startswith("- **More training iterations help (A < C < B)**: ") for line in verdicts)
    assert any(line.startswith("- **More test iterations help (model B, T = 1 -> 2)**: ") for line in verdicts)
    assert all(any(w in line for w in ("holds", "reversed", "within noise", "not measured")) for line in verdicts)
    check_report(out, out.parent / "reproduction")
    # The check can fail: model C's Table 1 hole L1 changed in the document.
    doctored = tmp_path / "doctored.md"
    row = next(line for line in text.splitlines() if line.startswith("| C | "))
    cells = row.split("|")
    cells[9] = f" 1{cells[9].strip()} "
    doctored.write_text(text.replace(row, "|".join(cells), 1))
    with pytest.raises(AssertionError):
        check_report(doctored, out.parent / "reproduction")
    # Hand-written notes below the mark survive a second collect.
    out.write_text(out.read_text() + "A note by hand.\n")
    assert subprocess.run([sys.executable, "-m", "launch.collect", str(tmp_path / "repro_tiny"), "--out", str(out)],
                          cwd=REPO, capture_output=True, timeout=300).returncode == 0
    assert out.read_text().endswith("A note by hand.\n")
