"""docs/REPRODUCTION.md against the JSON files it was generated from (issue 27).

``check_report`` recomputes, from a study's ``results.json`` / ``sweep_timing.json`` copies and
independently of ``launch/repro_stats.py``, every Table 1 and Table 2 number, each verdict and the
total CPU time, and finds them in the document. ``test_committed_study`` runs it on the committed
study (docs/REPRODUCTION.md, docs/reproduction/): it fails until the real study is committed,
made by

    python -m launch.sweep configs/demo.py:repro && python -m launch.collect runs/repro

(tests/test_repro.py runs the same check on the tiny study.)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY_ITERS = [1, 2, 3, 4, 6, 8]
HELD_OUT_DIGITS = 297


def _fmt(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _rows(text: str, section: str) -> dict[str, list[str]]:
    """The Markdown table rows of ``section`` (a ``## `` heading), by first cell."""
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def _verdict(lower: list[float], higher: list[float]) -> tuple[float, str]:
    """The documented rule: d = mean(higher) - mean(lower) against the larger seed std."""
    d = float(np.mean(higher) - np.mean(lower))
    if len(lower) < 2 or len(higher) < 2:
        return d, "holds" if d > 0 else "reversed"
    noise = max(np.std(lower, ddof=1), np.std(higher, ddof=1))
    return d, "holds" if d > noise else "reversed" if d < -noise else "within noise"


def load_results(json_dir: Path) -> tuple[dict, dict, dict]:
    """({(model, seed): {T: results}}, {model: own T}, sweep.json) from a study folder."""
    sweep = json.loads((json_dir / "sweep.json").read_text())
    results, own = {}, {}
    for run in sweep["runs"]:
        if run["kind"] != "evaluate" or "study" not in run:
            continue
        data = json.loads((json_dir / run["name"] / "results.json").read_text())
        m, s = run["study"]["model"], run["study"]["seed"]
        results[(m, s)] = {int(t): r for t, r in data["results"].items()}
        own[m] = data["record"]["config"]["spread"]["train_iters"]
        assert data["record"]["inception"] is None and "fid" in data["record"]["left_out"]
    return results, own, sweep


def check_report(doc: Path, json_dir: Path) -> dict:
    """Asserts every number of ``doc`` against the JSON files in ``json_dir``; returns the results."""
    text = doc.read_text()
    results, own, sweep = load_results(json_dir)
    models = sorted(own)
    values = lambda m, t, k: [r[t][k] for (mm, _), r in sorted(results.items()) if mm == m]  # noqa: E731
    t1 = _rows(text, "Table 1")
    for m in models:
        t = own[m]
        row = t1[m]
        assert row[1] == str(t)
        assert row[8] == _fmt(values(m, t, "l1_hole")), (m, row)
        assert row[10] == _fmt(values(m, t, "psnr")) and row[11] == _fmt(values(m, t, "ssim"), 4), (m, row)
    iters = sorted({t for r in results.values() for t in r})
    t2 = _rows(text, "Table 2")
    assert t2["Model"][1:] == [f"T = {t}" for t in iters]
    for m in models:
        assert t2[m][1:] == [_fmt(values(m, t, "l1_hole")) for t in iters], (m, t2[m])
    # Verdicts of Table 1's links, by the rule the document states.
    links = [("A", "C"), ("C", "B"), ("A", "D"), ("A", "F"), ("A", "E"), ("A", "G")]
    measured = 0
    for x, y in links:
        if x in own and y in own:
            d, verdict = _verdict(values(x, own[x], "l1_hole"), values(y, own[y], "l1_hole"))
            pattern = (rf"{x} \(T={own[x]}\) [^;]*? vs {y} \(T={own[y]}\) [^;]*?\(d = {re.escape(f'{d:+.2f}')}, "
                       rf"[^)]*\): {re.escape(verdict)}")
            assert re.search(pattern, text), pattern
            measured += 1
    # Table 2's first claim per model: the largest T against its own T.
    for m in ("A", "B"):
        if m in own and max(iters) > own[m]:
            d, verdict = _verdict(values(m, max(iters), "l1_hole"), values(m, own[m], "l1_hole"))
            assert re.search(rf"T={max(iters)} [^;]*? vs T={own[m]} [^;]*?\(d = {re.escape(f'{d:+.2f}')}, "
                             rf"[^)]*\): {re.escape(verdict)}", text), (m, d, verdict)
            measured += 1
    assert measured, "no verdict could be checked"
    # The closing note's total CPU time: every run's sweep_timing.json.
    cpu = sum(json.loads((json_dir / r["name"] / "sweep_timing.json").read_text())["cpu_s"]
              for r in sweep["runs"] if (json_dir / r["name"] / "sweep_timing.json").is_file())
    total = re.search(r"Total CPU time of the study: ([\d.]+) (h|min)", text)
    assert total, "no total CPU time"
    stated = float(total.group(1)) * (3600 if total.group(2) == "h" else 60)
    assert abs(stated - cpu) <= (18 if total.group(2) == "h" else 3), (stated, cpu)
    return {"results": results, "own": own, "iters": iters}


@pytest.mark.xfail(strict=True, reason="issue 27: the study (14 demo trainings, about 3.5 h on 2 cores) has not "
                   "been run; remove the mark when docs/REPRODUCTION.md and docs/reproduction/ are committed")
def test_committed_study():
    doc, json_dir = REPO / "docs" / "REPRODUCTION.md", REPO / "docs" / "reproduction"
    assert doc.is_file() and (json_dir / "sweep.json").is_file(), (
        "the study is not committed yet: run `python -m launch.sweep configs/demo.py:repro` and "
        "`python -m launch.collect runs/repro`, then commit docs/REPRODUCTION.md and docs/reproduction/")
    study = check_report(doc, json_dir)
    results, own = study["results"], study["own"]
    # It is the full study: models A-F (and G), at least two seeds each, every T, every digit.
    assert set("ABCDEF") <= set(own) and study["iters"] == STUDY_ITERS
    for m in own:
        seeds = [s for mm, s in results if mm == m]
        assert len(seeds) >= 2, (m, seeds)
    for by_t in results.values():
        assert all(by_t[t]["num_images"] == HELD_OUT_DIGITS for t in STUDY_ITERS)
