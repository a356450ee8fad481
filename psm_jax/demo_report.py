"""The demo's report: ``report.json``, ``report.html`` with its PNG figures, and the printed table.

Everything written here is a function of the report dict and the figures (no timings, no paths),
so two runs with the same config and seed write byte-identical files.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from psm_jax.evaluators import calibration
from psm_jax.visualize import save_grid

REPORT_FILES = ("report.json", "report.html", "report_methods.png", "report_spread.png",
                "report_learning_curve.png", "report_sparsification.png")


def plot_learning_curve(curve: list[dict[str, Any]], baselines: dict[str, float], t_max: int, path: Path) -> None:
    # Deferred: matplotlib costs ~0.5 s to import, and only the figures need it.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred with matplotlib, above

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    steps = [c["step"] for c in curve]
    for key, style in (("psm_t1", "o-"), (f"psm_t{t_max}", "s-")):
        if curve and key in curve[0]:
            ax.plot(steps, [c[key] for c in curve], style, label=f"PSM {key[4:].upper()} (EMA)")
    for name, value in baselines.items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey" if name == "mean_fill" else "tab:red")
        ax.text(steps[-1] if steps else 0, value, f" {name} {value:.1f}", va="bottom", ha="right", fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out hole L1 (0-255)")
    ax.set_title("Learning curve on the held-out digits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    # No metadata: the PNG must be byte-identical across runs (and matplotlib versions' tags).
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = lambda r, tag: "".join(f"<{tag}>{c}</{tag}>" for c in r)  # noqa: E731
    return (f"<table><tr>{cells([html.escape(h) for h in head], 'th')}</tr>"
            + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows) + "</table>")


def write_report(workdir: Path, report: dict[str, Any], grids: dict[str, np.ndarray],
                 calib: calibration.CalibrationAccumulator) -> None:
    """Writes every file of :data:`REPORT_FILES` into ``workdir``."""
    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    save_grid(grids["spread"], workdir / "report_spread.png")
    save_grid(grids["methods"], workdir / "report_methods.png")
    T = report["spread_iters"]
    baselines = {m: report["methods"][m]["l1"] for m in ("telea", "mean_fill")}
    plot_learning_curve(report["learning_curve"], baselines, T, workdir / "report_learning_curve.png")
    calib.sparsification_png(workdir / "report_sparsification.png")
    methods = _table(["method", "hole L1 ↓", "PSNR ↑"],
                     [[html.escape(m), f"{v['l1']:.2f}", f"{v['psnr']:.2f}"] for m, v in report["methods"].items()])
    unc = report["uncertainty"]
    rho = report["spearman_sigma_abs_error"]
    uncertainty = _table(
        ["iteration", "pick ratio ↓", "ρ open ↑", "AUSE ↓", "AUSE / random ↓", "refine ratio ↓", "ρ hole",
         "mean σ (hole)", "mean |err| (hole)"],
        [[t, _fmt(u["pick_ratio"]), _fmt(u["spearman_open"]), _fmt(u["ause"], ".4f"), _fmt(u["ause_rel"]),
          _fmt(u["refine_ratio"]), _fmt(rho[t]["hole"]), _fmt(rho[t]["mean_sigma_hole"]),
          _fmt(rho[t]["mean_abs_err_hole"])] for t, u in unc.items()])
    curve = report["learning_curve"]
    curve_table = _table(list(curve[0]) if curve else [],
                         [[_fmt(v, ".2f") if isinstance(v, float) else _fmt(v, "") for v in c.values()]
                          for c in curve])
    d = report["data"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PSM demo report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}td,th{{padding:3px 10px;text-align:right}}
img{{image-rendering:pixelated;max-width:100%}}</style></head><body>
<h1>PSM demo report</h1>
<p>{report['num_images']} held-out digits (scikit-learn <code>load_digits()</code> records
{d['eval'][0]}-{d['eval'][1] - 1}, {d['resolution']}x{d['resolution']}; trained on {d['train'][0]}-{d['train'][1] - 1}),
fixed seeded MAT "{d['mask_kind']}" masks (seed {report['seed']}), EMA generator at step {report.get('step')}.
L1: mean absolute error over hole pixels in [0, 255]. PSNR: whole image. Telea: OpenCV, radius {report['telea_radius']}.</p>
{methods}
<h2>Methods</h2>
<p>Columns: input (hole grey) | {html.escape(" | ".join(report["methods"]))} | ground truth.</p>
<img src="report_methods.png">
<h2>Pixel spread at T = {T}</h2>
<p>Columns: input (hole grey) | &mu; and &sigma; of each iteration | output | ground truth.
&sigma; (in [-1, 1] units) on one fixed scale for the whole figure, [0, {report['sigma_scale_max']:.3g}]
(the 99th percentile of &sigma; over all held-out hole pixels and iterations); colour bar on the right.</p>
<img src="report_spread.png">
<h2>Does &sigma; order the spread?</h2>
<p>Per iteration of the T = {T} spread, on the pixels still open at its input (the ones the picker ranks by &sigma;),
pooled over the held-out digits. <b>Pick ratio</b>: mean |error| of the pixels committed at that iteration over that
of all open pixels (below 1: &sigma; picks better than chance; the last iteration commits everything).
<b>&rho; open</b>: Spearman's rank correlation of &sigma; and |error|. <b>AUSE</b>: area between the sparsification
curve in &sigma; order and the oracle's ([-1, 1] units); divided by the random order's area (0 = oracle, 1 = random).
<b>Refine ratio</b>: mean |error| of &mu;<sub>t</sub> over that of &mu;<sub>1</sub> on the same open pixels (below 1:
the iteration used the committed pixels). &rho; hole: every pixel of the initial hole.</p>
{uncertainty}
<img src="report_sparsification.png">
<h2>Learning curve</h2>
<p>Held-out hole L1 of the EMA generator at each checkpoint, and the first iteration's pick ratio and &rho; open.</p>
<img src="report_learning_curve.png">
{curve_table}
</body></html>"""
    (workdir / "report.html").write_text(page)


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'method':<10} {'hole L1':>9} {'PSNR':>8}   ({report['num_images']} held-out digits)")
    for m, v in report["methods"].items():
        print(f"{m:<10} {v['l1']:>9.2f} {v['psnr']:>8.2f}")
    fmt = lambda v: "  n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    print("per iteration (pixels open at its input):  pick ratio | Spearman(sigma, |error|) | AUSE/random")
    for t, u in report["uncertainty"].items():
        print(f"  {t}: {fmt(u['pick_ratio'])} | {fmt(u['spearman_open'])} | {fmt(u['ause_rel'])}")
