"""Gather a sweep's results into one Markdown table, the paper's number beside ours.

    python -m launch.collect runs/table1          # writes runs/table1/results.md and prints it
    python -m launch.collect runs/repro           # the study: writes docs/REPRODUCTION.md

A study sweep (its runs carry ``study``: configs/demo.py ``repro``) gets the reproduction report
of ``launch/repro_report.py`` instead: by default ``docs/REPRODUCTION.md`` for ``repro`` and
``SWEEP_WORKDIR/REPRODUCTION.md`` for any other (``repro_tiny`` must not overwrite the real one).

Otherwise it reads ``sweep.json`` (written by ``python -m launch.sweep``) for the runs and the paper's numbers,
then each run's newest result: ``results.json`` from ``python -m psm_jax.evaluate`` if present,
else the last in-training evaluation (the ``eval/*`` metrics of ``metrics.jsonl``). A run without
either is listed as not evaluated, so a missing run is visible rather than silently dropped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from launch import repro_report
from psm_jax.cli import ArgumentParser, check_output, fail

PROG = "python -m launch.collect"
STUDY_OUT = Path(__file__).resolve().parents[1] / "docs" / "REPRODUCTION.md"   # the `repro` study's report
# (column title, result key): FID first, as in the paper's tables.
COLUMNS = (("FID", "fid"), ("P-IDS (%)", "p_ids"), ("U-IDS (%)", "u_ids"), ("hole L1", "l1_hole"),
           ("PSNR", "psnr"), ("sigma-err Spearman", "spearman"))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): tree}


def _pick(flat: dict[str, Any], key: str) -> float | None:
    """The value whose last path part is ``key`` (or starts with ``key/``: the first iteration-free one)."""
    for name, value in flat.items():
        parts = name.split("/")
        if key in parts and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def run_result(workdir: Path) -> tuple[str, dict[str, float]]:
    """(where the numbers came from, {column key: value}) for one run directory."""
    results = workdir / "results.json"
    if results.is_file():
        try:
            flat = _flatten(json.loads(results.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{results}: not valid JSON ({e})") from None
        return "evaluate", {k: v for _, k in COLUMNS if (v := _pick(flat, k)) is not None}
    metrics = workdir / "metrics.jsonl"
    if metrics.is_file():
        last = None
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue                     # a line cut by a kill: skip it, keep the rest
            if any(k.startswith("eval/") for k in rec):
                last = rec
        if last is not None:
            flat = {k[len("eval/"):]: v for k, v in last.items() if k.startswith("eval/")}
            values = {k: v for _, k in COLUMNS if (v := _pick(flat, k)) is not None}
            if "spearman" in flat:           # the last iteration's, not the first found
                values["spearman"] = float(flat["spearman"])
            return f"step {last['step']}", values
    return "not evaluated", {}


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    index = sweep_dir / "sweep.json"
    if not index.is_file():
        raise ValueError(f"{sweep_dir}: no sweep.json (was it written by python -m launch.sweep?)")
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index}: not valid JSON ({e})") from None


def collect(sweep_dir: Path) -> str:
    sweep = read_sweep(sweep_dir)
    rows = []
    for run in sweep["runs"]:
        where, values = run_result(Path(run["workdir"]) if Path(run["workdir"]).is_absolute()
                                   else sweep_dir / Path(run["workdir"]).name)
        paper = run.get("paper", {}).get("fid")
        cells = [run["name"], "" if paper is None else f"{paper:.2f}"]
        for _, key in COLUMNS:
            v = values.get(key)
            if v is not None and key in ("p_ids", "u_ids") and v <= 1.0:
                v *= 100.0                   # the paper reports IDS in percent
            cells.append("" if v is None else f"{v:.4g}")
        rows.append(cells + [where])
    head = ["run", "paper FID"] + [c for c, _ in COLUMNS] + ["source"]
    lines = [f"## {sweep['sweep']} ({sweep.get('config', '')})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("sweep_workdir", help="WORKDIR_ROOT/SWEEP, as written by python -m launch.sweep")
    ap.add_argument("--out", default=None,
                    help="Markdown file (default SWEEP_WORKDIR/results.md; a study: see above)")
    args = ap.parse_args(argv)
    sweep_dir = Path(args.sweep_workdir)
    if not sweep_dir.is_dir():
        fail(f"{PROG}: {sweep_dir}: not a directory")
    try:
        sweep = read_sweep(sweep_dir)
        study = any("study" in run for run in sweep["runs"])
        default = (STUDY_OUT if sweep["sweep"] == "repro" else sweep_dir / "REPRODUCTION.md") if study \
            else sweep_dir / "results.md"
        out = check_output(Path(args.out) if args.out else default, "--out", folder=False)
        if study:
            if out.suffix != ".md":
                raise ValueError(f"--out {out}: expected a .md file")
            text = repro_report.write(sweep_dir, sweep, out)
        else:
            text = collect(sweep_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
    except (ValueError, KeyError, OSError) as e:
        fail(f"{PROG}: {e}")
    print(text, end="")
    print(f"(written to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
