"""Seed noise of the digits demo: train ``configs/demo.py`` with several seeds and compare.

Each seed s trains the demo config with ``seed = data.seed = s`` (weights, the training masks and
the data order all change; the held-out digits and their masks do not), as a fresh
``python -m psm_jax.demo`` in ``WORKDIR/seed<s>`` (a finished run is reused, an unfinished one
resumed). Seed 0 is exactly what ``make demo`` trains.

Prints one JSON line per seed (hole L1 at T = 1 / 2 / 4, the T = 4 spread's pick ratio and
Spearman(sigma, |error|) per iteration), then one line with the mean and the standard deviation
(ddof = 1) over the seeds, and with ``--markdown`` the table that docs/DEMO.md and README show.

    .venv/bin/python bench/demo_seeds.py                       # 3 seeds, the full demo each (~45 min)
    .venv/bin/python bench/demo_seeds.py --seeds 0,1 --steps 2 --num_eval_images 16 --workdir /tmp/s   # smoke
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402

METRICS = ("psm_t1", "psm_t2", "psm_t4")
ITERS = ("t1", "t2", "t3", "t4")


def run_seed(seed: int, workdir: Path, config: str, steps: int | None, eval_images: int | None) -> dict:
    cmd = [sys.executable, "-m", "psm_jax.demo", "--workdir", str(workdir), "--config", config,
           "--set", f"seed={seed}", "--set", f"data.seed={seed}"]
    if steps:
        cmd += ["--steps", str(steps)]
    if eval_images is not None:
        cmd += ["--num_eval_images", str(eval_images)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        common.fail("bench/demo_seeds.py", f"seed {seed}: python -m psm_jax.demo failed: {tail}")
    report = json.loads((workdir / "report.json").read_text())
    row = {"seed": seed, **{m: report["methods"][m]["l1"] for m in (*METRICS, "telea", "mean_fill")}}
    unc = report["uncertainty"]
    for t in ITERS:
        if t in unc:
            row[f"pick_ratio_{t}"] = unc[t]["pick_ratio"]
            row[f"spearman_open_{t}"] = unc[t]["spearman_open"]
    row["t4_minus_t1"] = row["psm_t4"] - row["psm_t1"]
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def summarize(rows: list[dict]) -> dict:
    out = {"seeds": [r["seed"] for r in rows]}
    for key in rows[0]:
        if key in ("seed", "wall_s"):
            continue
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[f"{key}_mean"] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def markdown(rows: list[dict], summary: dict) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    head = ("| seed | T = 1 | T = 2 | T = 4 | T4 - T1 | pick ratio t1 / t2 / t3 | Spearman open t1 / t2 / t3 / t4 |\n"
            "|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        picks = " / ".join(fmt(r.get(f"pick_ratio_{t}"), ".2f") for t in ITERS[:3])
        rhos = " / ".join(fmt(r.get(f"spearman_open_{t}"), "+.2f") for t in ITERS)
        body += (f"| {r['seed']} | {r['psm_t1']:.2f} | {r['psm_t2']:.2f} | {r['psm_t4']:.2f} | "
                 f"{r['t4_minus_t1']:+.2f} | {picks} | {rhos} |\n")
    s = summary
    ms = lambda k, spec=".2f": (f"{s[k + '_mean']:{spec}} ± {s[k + '_std']:.2f}"  # noqa: E731
                                if k + "_mean" in s else "-")
    body += (f"| mean ± std | {ms('psm_t1')} | {ms('psm_t2')} | {ms('psm_t4')} | {ms('t4_minus_t1', '+.2f')} | "
             + " / ".join(ms(f"pick_ratio_{t}") for t in ITERS[:3]) + " | "
             + " / ".join(ms(f"spearman_open_{t}", "+.2f") for t in ITERS) + " |\n")
    return head + body


def main(argv: list[str]) -> None:
    p = common.ArgumentParser(prog="bench/demo_seeds.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--workdir", default="runs/demo_seeds", help="one run per seed below it: seed<s>/")
    p.add_argument("--config", default=str(common.REPO / "configs" / "demo.py"))
    p.add_argument("--steps", type=int, default=None, help="override config.total_steps (smoke runs)")
    p.add_argument("--num_eval_images", type=int, default=None, help="held-out images (default: all 297)")
    p.add_argument("--markdown", action="store_true", help="also print the Markdown table")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        common.fail(p.prog, f"--seeds {args.seeds!r}: expected distinct non-negative integers, e.g. 0,1,2")
    if args.steps is not None and args.steps < 1:
        common.fail(p.prog, f"--steps {args.steps}: expected >= 1")
    if args.num_eval_images is not None and args.num_eval_images < 0:
        common.fail(p.prog, f"--num_eval_images {args.num_eval_images}: expected >= 0 (0 = all)")
    root = Path(args.workdir)
    if root.exists() and not root.is_dir():
        common.fail(p.prog, f"--workdir {root}: exists and is not a directory")
    rows = []
    for s in seeds:
        row = run_seed(s, root / f"seed{s}", args.config, args.steps, args.num_eval_images)
        row["load1"] = common.load1()
        common.emit(row)
        rows.append(row)
    summary = summarize(rows)
    summary["cpu_count"] = os.cpu_count()
    common.emit(summary)
    if args.markdown:
        print(markdown(rows, summary))


if __name__ == "__main__":
    main(sys.argv[1:])
