"""docs/REPRODUCTION.md from a study sweep: PSM's Table 1 and Table 2 at small scale (issue 27).

``write(sweep_dir, out)`` writes ``out`` (Markdown), and beside it in ``<out stem, lower case>/``:
the Table 2 plot (``table2_hole_l1.png``), the completions figure (``completions.png``), and a
copy of every JSON file the numbers came from (``sweep.json``, ``RUN/results.json``,
``RUN/sweep_timing.json``), so the document can be checked against them
(tests/test_reproduction_doc.py). Text after NOTES_MARK in an existing ``out`` is kept.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.stats

from launch import repro_stats as rs
from psm_jax.visualize import method_grid, save_grid

NOTES_MARK = "<!-- Notes below this line are written by hand; launch.collect keeps them. -->"
FIGURE_MODELS = ("A", "B", "D", "F")
PLOT, FIGURE = "table2_hole_l1.png", "completions.png"


def _yes(flag: bool) -> str:
    return "✓" if flag else "-"


def table1(study: rs.Study) -> str:
    lpips = any(study.values(m, study.own_iters[m], "lpips") for m in study.models)
    head = ["Model", "T", "DPM", "CS", "UGA", "Att. (H/x)", "paper FID ↓", "paper rank", "hole L1 ↓", "rank",
            "PSNR ↑", "SSIM ↑"] + (["LPIPS ↓"] if lpips else [])
    paper_rank = {m: i + 1 for i, m in enumerate(sorted(study.models, key=lambda m: study.paper_fid[m]))}
    l1 = {m: float(np.mean(study.values(m, study.own_iters[m], "l1_hole"))) for m in study.models}
    our_rank = {m: i + 1 for i, m in enumerate(sorted(study.models, key=lambda m: l1[m]))}
    rows = []
    for m in study.models:
        t, d = study.own_iters[m], study.design[m]
        cells = [m, str(t), _yes(d["dpm"]), _yes(d["cs"]), _yes(d["uga"]), ",".join(map(str, d["att"])),
                 f"{study.paper_fid[m]:.2f}", str(paper_rank[m]), rs.fmt(study.values(m, t, "l1_hole")),
                 str(our_rank[m]), rs.fmt(study.values(m, t, "psnr")), rs.fmt(study.values(m, t, "ssim"), 4)]
        if lpips:
            cells.append(rs.fmt(study.values(m, t, "lpips"), 4))
        rows.append(cells)
    text = _table(head, rows)
    if len(study.models) >= 3:
        tau = scipy.stats.kendalltau([study.paper_fid[m] for m in study.models], [l1[m] for m in study.models])
        text += (f"\nRank agreement between the paper's FID and our hole L1 over these {len(study.models)} "
                 f"models: Kendall τ = {tau.statistic:+.2f} (1 = same order, -1 = reversed).\n")
    return text


def uncertainty_table(study: rs.Study) -> str:
    head = ["Model", "T", "iteration", "pick ratio ↓", "AUSE ↓", "Spearman ρ open ↑"]
    rows = []
    for m in study.models:
        t = study.own_iters[m]
        for i in range(t):
            vals = [study.values(m, t, f"calib/{k}/iter{i}") for k in rs.SPREAD_METRICS]
            rows.append([m, str(t), str(i + 1), rs.fmt(vals[0], 3), rs.fmt(vals[1], 4), rs.fmt(vals[2], 3)])
    return _table(head, rows)


def table2(study: rs.Study) -> str:
    head = ["Model"] + [f"T = {t}" for t in study.iters]
    rows = []
    for m in study.models:
        cells = [rs.fmt(study.values(m, t, "l1_hole")) for t in study.iters]
        rows.append([m] + [f"**{c}**" if t == study.own_iters[m] else c for t, c in zip(study.iters, cells)])
    for m in rs.TABLE2_MODELS:
        if m in study.own_iters:
            paper = {study.own_iters[m]: study.paper_fid[m], **study.paper_by_iters.get(m, {})}
            rows.append([f"paper FID, {m}"] + [f"{paper[t]:.2f}" if t in paper else "" for t in study.iters])
    return _table(head, rows)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def plot_table2(study: rs.Study, path: Path) -> None:
    """Hole L1 against test T per model, error bars = seed std; the model's own T is a filled dot."""
    # Deferred: matplotlib costs ~0.5 s to import, and only this plot needs it.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred with matplotlib, above

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for i, m in enumerate(study.models):
        ts = [t for t in study.iters if study.values(m, t, "l1_hole")]
        stats = [rs.mean_std(study.values(m, t, "l1_hole")) for t in ts]
        err = [s or 0.0 for _, s in stats]
        ax.errorbar(ts, [mu for mu, _ in stats], yerr=err, color=f"C{i}", marker="o", markerfacecolor="white",
                    capsize=3, label=f"{m} (trained T={study.own_iters[m]})")
        own = study.own_iters[m]
        if own in ts:
            ax.plot([own], [stats[ts.index(own)][0]], "o", color=f"C{i}", zorder=5)
    ax.set_xticks(study.iters)
    ax.set_xlabel("test iterations T (filled: the model's own T)")
    ax.set_ylabel("hole L1 (grey levels) ↓")
    ax.set_title(f"Table 2 at 32 px: held-out digits, mean ± std over {len(study.seeds)} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})   # no metadata: byte-stable
    plt.close(fig)


def completions_figure(study: rs.Study, sweep_dir: Path, runs: list[dict], path: Path) -> str:
    """The same held-out digits completed by A, B, D and F (first seed, own T): its caption, or why
    it was not drawn."""
    seed = study.seeds[0]
    columns, reference = {}, None
    for m in FIGURE_MODELS:
        run = next((r for r in runs if r.get("study") == {"model": m, "seed": seed} and r["kind"] == "evaluate"), None)
        npz = rs.run_dir(sweep_dir, run) / "results_images.npz" if run else None
        if npz is None or not npz.is_file():
            continue
        with np.load(npz) as f:
            data = {k: f[k] for k in f.files}
        key = f"T{study.own_iters[m]}"
        if key not in data:
            continue
        if reference is None:
            reference = data
            masked = np.where(data["mask"] > 0, data["ground_truth"], 127).astype(np.uint8)
            columns["input"] = masked
        elif not (np.array_equal(data["mask"], reference["mask"])
                  and np.array_equal(data["ground_truth"], reference["ground_truth"])):
            return f"Figure not drawn: model {m} was evaluated on other digits or masks than the first model."
        columns[f"{m} (T={study.own_iters[m]})"] = data[key]
    if reference is None:
        return "Figure not drawn: no evaluation saved images (psm_jax.evaluate --save_images)."
    columns["ground truth"] = reference["ground_truth"]
    save_grid(method_grid(columns, min_cell=96), path)
    return (f"![completions]({path.parent.name}/{path.name})\n\nThe first {len(reference['mask'])} held-out "
            f"digits with their seeded masks (grey: the hole); training seed {seed}, each model at its own T.")


def _copy_sources(sweep_dir: Path, runs: list[dict], assets: Path) -> None:
    """The JSON files the numbers came from, laid out as a sweep folder."""
    files = [(sweep_dir / "sweep.json", assets / "sweep.json")]
    for run in runs:
        for name in ("results.json", "sweep_timing.json"):
            src = rs.run_dir(sweep_dir, run) / name
            if src.is_file():
                files.append((src, assets / run["name"] / name))
    for src, dst in files:
        if src.resolve() != dst.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def markdown(study: rs.Study, assets_name: str, figure_note: str, sweep: dict) -> str:
    claims = rs.table1_claims(study) + rs.table2_claims(study)
    a = study.models[0] if "A" not in study.models else "A"
    pick = rs.fmt(study.values(a, study.own_iters[a], "calib/pick_ratio/iter0"), 3)
    rho = rs.fmt(study.values(a, study.own_iters[a], "calib/spearman_open/iter0"), 3)
    steps = sorted({d["steps"] for d in study.design.values()})
    t = study.timing
    cpu, wall = sum(v["cpu_s"] for v in t.values()), sum(v["wall_s"] for v in t.values())
    loads = f"{min(study.load_avg):.1f}-{max(study.load_avg):.1f}" if study.load_avg else "not recorded"
    lines = [
        "# Reproduction at small scale: PSM's Table 1 and Table 2 on 32 px digits", "",
        f"Generated by `python -m launch.collect` from the sweep `{sweep['config']}:{sweep.get('argument', sweep['sweep'])}` "
        f"(`python -m launch.sweep`). Models {', '.join(study.models)}, training seeds "
        f"{', '.join(map(str, study.seeds))} (seed = data.seed), {', '.join(map(str, steps))} training steps each; "
        f"each evaluated by `python -m psm_jax.evaluate --images from_config` on the held-out digits with fixed "
        f"seeded masks. Hole L1 is in grey levels (0-255) over the hole pixels, lower is better. FID is not "
        f"used: it means little on 32 px digits, so the paper's FID and our hole L1 are compared by order only. "
        f"The JSON files behind every number are in [`{assets_name}/`]({assets_name}/).", ""]
    if study.missing:
        lines += [f"> Not evaluated (left out of every number): {', '.join(study.missing)}.", ""]
    lines += ["## Table 1: each model at its own T", "",
              f"Mean ± std over {len(study.seeds)} seed(s). Rank among these models: 1 = best (paper: by FID; "
              "ours: by mean hole L1). Att.: attention at H/x for each listed x.", "", table1(study), "",
              "Does σ order the spread? Per iteration at the model's own T, on the pixels still open "
              "(`psm_jax/evaluators/calibration.py`: pick ratio < 1 and Spearman > 0 mean σ ranks the error; "
              "the last iteration's pick ratio is 1 by construction and left out):", "", uncertainty_table(study), "",
              "## Table 2: hole L1 against the test iterations T", "",
              "Bold: the model's own T. The paper's rows are FID (Table 1 at its own T, Table 2 at 4-10).", "",
              table2(study), "", f"![hole L1 against T]({assets_name}/{PLOT})", "",
              "## The same held-out digits, completed by A, B, D and F", ""]
    lines += [figure_note, ""]
    lines += ["## Verdicts", "", rs.NOISE_RULE, ""]
    for c in claims:
        links = "; ".join(link.text() for link in c.links)
        note = f" ({c.not_measured})" if c.not_measured else ""
        lines.append(f"- **{c.title}**: {c.verdict}{note}." + (f" {links}." if links else ""))
    lines += ["", f"What σ says: model {a}'s first-iteration pick ratio is {pick} and its Spearman ρ(σ, |error|) on "
              f"the open pixels {rho}. Designs that act through σ (DPM feeds the picker, UGA the attention, more "
              "test iterations its ordering) can only help where σ ranks the error (pick ratio < 1).", "",
              "## Closing note", "",
              f"Total CPU time of the study: {_hours(cpu)} ({_hours(t['train']['cpu_s'])} training over "
              f"{t['train']['runs']} runs, {_hours(t['evaluate']['cpu_s'])} evaluation over {t['evaluate']['runs']} "
              f"runs); wall time {_hours(wall)}, 1-minute load average {loads} at the runs' starts and ends, on "
              "the machine `launch.sweep` ran on (other jobs may have been running).", "",
              "Verdicts:", ""] + [f"- {c.title}: {c.verdict}" for c in claims] + [""]
    return "\n".join(lines)


def write(sweep_dir: Path, sweep: dict, out: Path) -> str:
    study = rs.load_study(sweep_dir)
    if not study.results:
        raise ValueError(f"{sweep_dir}: no evaluation of the study has results.json yet "
                         f"(not evaluated: {', '.join(study.missing) or 'none listed'})")
    assets = out.parent / out.stem.lower()
    notes = ""
    if out.is_file() and NOTES_MARK in out.read_text():
        notes = out.read_text().split(NOTES_MARK, 1)[1]
    assets.mkdir(parents=True, exist_ok=True)      # out's folder too
    plot_table2(study, assets / PLOT)
    figure_note = completions_figure(study, sweep_dir, sweep["runs"], assets / FIGURE)
    _copy_sources(sweep_dir, sweep["runs"], assets)
    text = markdown(study, assets.name, figure_note, sweep) + "\n" + NOTES_MARK + (notes or "\n")
    out.write_text(text)
    return text
