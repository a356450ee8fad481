"""``make demo``: train a small PSM on CPU on real handwritten digits, then show what it learned.

Steps: train (or resume, or reuse a finished run) with ``configs/demo.py``; inpaint the
held-out digits (``data.digits_eval``: all 297) with fixed seeded MAT "large" masks; compare PSM
at T = 1, 2, 4 (the pixel spread, paper Sec. 3.2) with OpenCV's Telea inpainting (radius 3) and
a mean-colour fill; write ``WORKDIR/report.json``, ``WORKDIR/report.html`` (with PNG figures)
and print a table.

Metrics, on [0, 255] images after compositing the known pixels back:
  l1    mean absolute error over hole pixels (all three channels),
  psnr  PSNR over the whole image, averaged over images.
The report also holds:
  learning_curve  held-out hole L1 of the EMA generator at every checkpoint (T = 1 and T_test),
  spearman        per spread iteration t of the T_test run, Spearman's rank correlation
                  between sigma_t (mean over channels) and |mu_t - ground truth| (mean over
                  channels), pooled over the hole pixels of all held-out images: "hole" = every
                  pixel of the initial hole, "open" = the pixels still unknown at iteration t's
                  input, i.e. the ones the picker ranks by sigma (Sec. 3.2). Positive means
                  the uncertainty that orders the spread is learned.

Everything in the report is a function of the config and the seed (no timings, no paths), so
two fresh runs with the same seed write byte-identical reports; timings go to ``timing.json``.
"""
from __future__ import annotations

import argparse
import ast
import html
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from psm_jax import cli
from psm_jax.data.transforms import from_model_range

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(REPO / "configs" / "demo.py")
PSM_ITERS = (1, 2, 4)
EVAL_BATCH = 16
GRID_IMAGES = 8
TELEA_RADIUS = 3


def telea(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    hole = (mask[..., 0] < 0.5).astype(np.uint8) * 255
    bgr = cv2.inpaint(np.ascontiguousarray(image_u8[..., ::-1]), hole, TELEA_RADIUS, cv2.INPAINT_TELEA)
    return bgr[..., ::-1]


def mean_fill(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    known = mask[..., 0] > 0.5
    colour = image_u8[known].mean(0) if known.any() else np.full(3, 127.5)
    out = image_u8.astype(np.float32).copy()
    out[~known] = colour
    return np.rint(out).astype(np.uint8)


def scores(pred_u8: np.ndarray, real_u8: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
    """(sum of |err| over hole pixels*channels, PSNR of the image, hole element count)."""
    err = pred_u8.astype(np.float64) - real_u8.astype(np.float64)
    hole = np.broadcast_to(mask < 0.5, err.shape)
    mse = float(np.mean(err ** 2))
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
    return float(np.abs(err[hole]).sum()), psnr, int(hole.sum())


# ----------------------------------------------------------------------------- evaluation


def _eval_batches(config, num_images: int | None, seed: int):
    """Held-out batches, the last one padded to EVAL_BATCH (one compiled shape per T); yields
    (image, mask, number of real rows)."""
    from psm_jax.data.pipeline import make_eval_dataset

    for batch in make_eval_dataset(config.data, batch_size=EVAL_BATCH, num_images=num_images, seed=seed):
        image, mask = np.asarray(batch["image"]), np.asarray(batch["mask"])
        n = len(image)
        if n < EVAL_BATCH:
            pad = [(0, EVAL_BATCH - n)] + [(0, 0)] * 3
            image, mask = np.pad(image, pad, mode="edge"), np.pad(mask, pad, mode="edge")
        yield image, mask, n


def _psm_fns(config, iters, trajectory: bool):
    from psm_jax.inpaint import make_inpaint_fn

    return {t: make_inpaint_fn(config, num_iters=t, return_trajectory=trajectory) for t in iters}


def _psm_pred(fn, variables, image, mask, seed: int, seen: int) -> tuple[np.ndarray, dict]:
    # The eval key depends only on the image index, so the numbers are reproducible.
    out = fn(variables, image, mask, jax.random.fold_in(jax.random.key(seed), seen))
    pred = from_model_range(np.where(mask > 0.5, image, np.asarray(out["image"])))
    return pred, out


def hole_l1(config, variables, *, num_images: int | None, seed: int, iters=(1,), fns=None) -> dict[str, float]:
    """Held-out hole L1 of PSM at each T in ``iters`` (the learning curve's fast path)."""
    fns = fns or _psm_fns(config, iters, trajectory=False)
    acc = {t: [0.0, 0] for t in iters}
    seen = 0
    for image, mask, n in _eval_batches(config, num_images, seed):
        real = from_model_range(image)
        for t in iters:
            pred, _ = _psm_pred(fns[t], variables, image, mask, seed, seen)
            for b in range(n):
                s_abs, _, cnt = scores(pred[b], real[b], mask[b])
                acc[t][0] += s_abs
                acc[t][1] += cnt
        seen += n
    return {f"psm_t{t}": acc[t][0] / max(acc[t][1], 1) for t in iters}


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho (average ranks for ties); None when undefined (too few or constant)."""
    from scipy.stats import spearmanr

    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(spearmanr(x, y).statistic)


def evaluate(config, variables, *, num_images: int | None, seed: int, grid_images: int = GRID_IMAGES,
             fns=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from psm_jax.visualize import method_grid, spread_strip

    T = max(PSM_ITERS)
    fns = fns or _psm_fns(config, PSM_ITERS, trajectory=True)
    methods = [f"psm_t{t}" for t in PSM_ITERS] + ["telea", "mean_fill"]
    acc = {m: {"abs": 0.0, "n": 0, "psnr": []} for m in methods}
    grids: dict[str, np.ndarray] = {}
    # Per iteration of the T run: (sigma, |error|) of every hole pixel, and "open at input".
    sig = [[] for _ in range(T)]
    err = [[] for _ in range(T)]
    opn = [[] for _ in range(T)]
    seen = 0
    for image, mask, n in _eval_batches(config, num_images, seed):
        real = from_model_range(image)
        preds = {}
        for t, fn in fns.items():
            preds[f"psm_t{t}"], out = _psm_pred(fn, variables, image, mask, seed, seen)
            if t == T:
                traj = jax.device_get(out["trajectory"])
                hole_BHW = mask[:n, ..., 0] < 0.5
                m_in_TBHW = np.concatenate([mask[None, :n, ..., 0], traj["mask"][:-1, :n, ..., 0]], 0)
                for i in range(T):
                    s_BHW = traj["std"][i, :n].mean(-1)
                    e_BHW = np.abs(traj["mean"][i, :n] - image[:n]).mean(-1)
                    sig[i].append(s_BHW[hole_BHW])
                    err[i].append(e_BHW[hole_BHW])
                    opn[i].append((m_in_TBHW[i] < 0.5)[hole_BHW])
                if "spread" not in grids:
                    k = min(grid_images, n)
                    grids["spread"] = (image[:k], mask[:k], jax.tree.map(lambda a: a[:, :k], traj),
                                       np.asarray(out["image"])[:k])
        preds["telea"] = np.stack([telea(r, m) for r, m in zip(real, mask)])
        preds["mean_fill"] = np.stack([mean_fill(r, m) for r, m in zip(real, mask)])
        for m in methods:
            for b in range(n):
                s_abs, psnr, cnt = scores(preds[m][b], real[b], mask[b])
                acc[m]["abs"] += s_abs
                acc[m]["n"] += cnt
                acc[m]["psnr"].append(psnr)
        if "methods" not in grids:
            k = min(grid_images, n)
            masked = np.where(mask[:k] > 0.5, real[:k], 127).astype(np.uint8)
            grids["methods"] = method_grid({"input": masked, **{m: preds[m][:k] for m in methods},
                                            "ground truth": real[:k]})
        seen += n
    results = {m: {"l1": acc[m]["abs"] / max(acc[m]["n"], 1),
                   "psnr": float(np.mean([p for p in acc[m]["psnr"] if np.isfinite(p)]))}
               for m in methods}
    rho = {}
    sigma_mean = []
    for i in range(T):
        s, e, o = np.concatenate(sig[i]), np.concatenate(err[i]), np.concatenate(opn[i])
        rho[f"t{i + 1}"] = {"hole": spearman(s, e), "open": spearman(s[o], e[o]),
                            "mean_sigma_hole": float(s.mean()) if s.size else None,
                            "mean_abs_err_hole": float(e.mean()) if e.size else None}
        sigma_mean.append(s)
    # One sigma scale for the whole spread figure: the 99th percentile over all held-out hole
    # pixels and iterations (the maximum would let one outlier wash the figure out).
    all_sig = np.concatenate(sigma_mean) if sigma_mean else np.zeros(1)
    sigma_max = float(np.percentile(all_sig, 99)) if all_sig.size else 1.0
    image_k, mask_k, traj_k, out_k = grids["spread"]
    grids["spread"] = spread_strip(image_k, mask_k, traj_k, out_k, ground_truth=image_k, sigma_max=sigma_max)
    report = {"methods": results, "num_images": seen, "seed": seed, "spearman_sigma_abs_error": rho,
              "sigma_scale_max": sigma_max, "telea_radius": TELEA_RADIUS, "spread_iters": T}
    return report, grids


def learning_curve(config, workdir: Path, *, num_images: int | None, seed: int, fns=None
                   ) -> list[dict[str, Any]]:
    """Held-out hole L1 of G_ema at every checkpoint in ``workdir`` (T = 1 and T_test).

    ``fns``: compiled inpaint functions by T to reuse (compiling is most of a short eval)."""
    from psm_jax import checkpoint as ckpt
    from psm_jax.inpaint import load_run

    iters = sorted({1, max(PSM_ITERS)})
    fns = fns or _psm_fns(config, iters, trajectory=False)
    curve = []
    for step in sorted(ckpt.make_manager(workdir, async_save=False).all_steps()):
        _, variables = load_run(workdir, step)
        l1 = hole_l1(config, variables, num_images=num_images, seed=seed, iters=iters, fns=fns)
        curve.append({"step": int(step), "images": int(step) * int(config.batch_size), **l1})
    return curve


def plot_learning_curve(curve: list[dict[str, Any]], baselines: dict[str, float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    steps = [c["step"] for c in curve]
    for key, style in (("psm_t1", "o-"), (f"psm_t{max(PSM_ITERS)}", "s-")):
        if curve and key in curve[0]:
            ax.plot(steps, [c[key] for c in curve], style, label=f"PSM {key[4:].upper()} (EMA)")
    for name, value in baselines.items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey" if name == "mean_fill" else "tab:red")
        ax.text(steps[-1] if steps else 0, value, f" {name} {value:.1f}", va="bottom", ha="right", fontsize=8)
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylabel("held-out hole L1 (0-255)")
    ax.set_title("Learning curve on the held-out digits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    # No metadata: the PNG must be byte-identical across runs (and matplotlib versions' tags).
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def write_report(workdir: Path, report: dict[str, Any], grids: dict[str, np.ndarray]) -> None:
    from psm_jax.visualize import save_grid

    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    save_grid(grids["spread"], workdir / "report_spread.png")
    save_grid(grids["methods"], workdir / "report_methods.png")
    baselines = {m: report["methods"][m]["l1"] for m in ("telea", "mean_fill")}
    plot_learning_curve(report["learning_curve"], baselines, workdir / "report_learning_curve.png")
    rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{v['l1']:.2f}</td><td>{v['psnr']:.2f}</td></tr>"
                   for m, v in report["methods"].items())
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rho_rows = "".join(f"<tr><td>{t}</td><td>{fmt(v['hole'])}</td><td>{fmt(v['open'])}</td>"
                       f"<td>{fmt(v['mean_sigma_hole'])}</td><td>{fmt(v['mean_abs_err_hole'])}</td></tr>"
                       for t, v in report["spearman_sigma_abs_error"].items())
    curve_rows = "".join("<tr>" + "".join(f"<td>{c[k]:.2f}</td>" if isinstance(c[k], float) else f"<td>{c[k]}</td>"
                                          for k in c) + "</tr>" for c in report["learning_curve"])
    curve_head = "".join(f"<th>{html.escape(k)}</th>" for k in (report["learning_curve"][0] if report["learning_curve"] else []))
    T = report["spread_iters"]
    d = report["data"]
    method_cols = " | ".join(report["methods"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PSM demo report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}td,th{{padding:3px 10px;text-align:right}}
img{{image-rendering:pixelated;max-width:100%}}</style></head><body>
<h1>PSM demo report</h1>
<p>{report['num_images']} held-out digits (scikit-learn <code>load_digits()</code> records
{d['eval'][0]}-{d['eval'][1] - 1}, {d['resolution']}x{d['resolution']}; trained on {d['train'][0]}-{d['train'][1] - 1}),
fixed seeded MAT "{d['mask_kind']}" masks (seed {report['seed']}), EMA generator at step {report.get('step')}.
L1: mean absolute error over hole pixels in [0, 255]. PSNR: whole image. Telea: OpenCV, radius {report['telea_radius']}.</p>
<table><tr><th>method</th><th>hole L1 &darr;</th><th>PSNR &uarr;</th></tr>{rows}</table>
<h2>Methods</h2>
<p>Columns: input (hole grey) | {html.escape(method_cols)} | ground truth.</p>
<img src="report_methods.png">
<h2>Pixel spread at T = {T}</h2>
<p>Columns: input (hole grey) | &mu; and &sigma; of each iteration | output | ground truth.
&sigma; (in [-1, 1] units) on one fixed scale for the whole figure, [0, {report['sigma_scale_max']:.3g}]
(the 99th percentile of &sigma; over all held-out hole pixels and iterations); colour bar on the right.</p>
<img src="report_spread.png">
<h2>Is the uncertainty learned?</h2>
<p>Spearman's rank correlation between &sigma;<sub>t</sub> and |&mu;<sub>t</sub> &minus; ground truth| per iteration of
the T = {T} spread, pooled over the held-out hole pixels ("hole": every pixel of the initial hole; "open": the pixels
still unknown at the iteration's input, which the picker ranks by &sigma;).</p>
<table><tr><th>iteration</th><th>&rho; hole</th><th>&rho; open</th><th>mean &sigma; (hole)</th><th>mean |err| (hole, [-1,1])</th></tr>{rho_rows}</table>
<h2>Learning curve</h2>
<p>Held-out hole L1 of the EMA generator at each checkpoint.</p>
<img src="report_learning_curve.png">
<table><tr>{curve_head}</tr>{curve_rows}</table>
</body></html>"""
    (workdir / "report.html").write_text(page)


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'method':<10} {'hole L1':>9} {'PSNR':>8}   ({report['num_images']} held-out digits)")
    for m, v in report["methods"].items():
        print(f"{m:<10} {v['l1']:>9.2f} {v['psnr']:>8.2f}")
    rho = report["spearman_sigma_abs_error"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    print("Spearman(sigma, |error|) on hole pixels, per iteration: "
          + "  ".join(f"{t} {fmt(v['hole'])}" for t, v in rho.items()))


# ----------------------------------------------------------------------------- main


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psm_jax.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant]")
    parser.add_argument("--steps", type=int, default=None, help="override config.total_steps")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="held-out images (default: config.demo.eval_images; 0 = the whole split)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set spread.resample_committed=False (repeatable)")
    args = parser.parse_args(argv)

    from psm_jax import checkpoint as ckpt
    from psm_jax.config_lib import load_config
    from psm_jax.inpaint import load_run
    from psm_jax.train import TrainingDiverged, train_and_evaluate

    try:
        overrides = _parse_set(args.set)
        if args.steps:
            overrides["total_steps"] = args.steps
            # Keep every checkpoint of a shortened run too (the learning curve reads them).
        config = load_config(args.config, overrides)
        if args.steps and args.steps < config.ckpt_every:
            config.ckpt_every = max(1, args.steps // 2)
    except (FileNotFoundError, ValueError, AttributeError, KeyError, TypeError) as e:
        print(f"error: --config {args.config}: {e}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    timing: dict[str, Any] = {"load_avg_start": list(os.getloadavg()), "cpu_count": os.cpu_count()}
    try:
        step = ckpt.latest_step(workdir)
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds on a foreign directory
        print(f"error: --workdir {workdir}: cannot read checkpoints: {e}", file=sys.stderr)
        return 2
    if step is not None and step >= config.total_steps:
        print(f"Reusing the finished run in {workdir} (step {step}).")
    else:
        print(f"{'Resuming' if step else 'Training'} the demo model in {workdir}"
              f"{f' from step {step}' if step else ''} to step {config.total_steps} "
              f"({config.data.source} {config.model.resolution}px, batch {config.batch_size}, "
              f"T_train={config.spread.train_iters}).", flush=True)
        try:
            train_and_evaluate(config, workdir)
        except TrainingDiverged as e:
            return cli.error(str(e), code=1, last_words=True)
        except ValueError as e:   # bad config values, corrupt data (pipeline/model checks): one line
            return cli.error(str(e), last_words=True)
        done = ckpt.latest_step(workdir)
        if done is None or done < config.total_steps:   # SIGTERM: checkpoint saved, not finished
            print(f"Training stopped at step {done} of {config.total_steps}; run the demo again to resume.",
                  file=sys.stderr)
            return 1
        timing["train_wall_s"] = time.perf_counter() - t_start
        timing["train_cpu_s"] = _cpu_seconds() - cpu_start
        print(f"Training took {timing['train_wall_s']:.0f} s wall, {timing['train_cpu_s']:.0f} s CPU.")
    t_eval, cpu_eval = time.perf_counter(), _cpu_seconds()
    run_config, variables = load_run(workdir)
    num_images = config.demo.eval_images if args.eval_images is None else args.eval_images
    num_images = num_images or None
    print(f"Evaluating on {num_images or 'all'} held-out images ...", flush=True)
    seed = config.demo.eval_seed
    fns = _psm_fns(run_config, PSM_ITERS, trajectory=True)   # compiled once, used by both
    report, grids = evaluate(run_config, variables, num_images=num_images, seed=seed, fns=fns)
    report["step"] = ckpt.latest_step(workdir)
    report["learning_curve"] = learning_curve(run_config, workdir, num_images=num_images, seed=seed, fns=fns)
    d = run_config.data
    report["data"] = {"source": d.source, "resolution": int(d.resolution), "mask_kind": d.eval_mask_kind,
                      "train": list(d.get("digits_train", (0, 0))), "eval": list(d.get("digits_eval", (0, 0)))}
    write_report(workdir, report, grids)
    timing["eval_wall_s"] = time.perf_counter() - t_eval
    timing["eval_cpu_s"] = _cpu_seconds() - cpu_eval
    timing["load_avg_end"] = list(os.getloadavg())
    (workdir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print_table(report)
    print(f"Evaluation took {timing['eval_wall_s']:.0f} s wall, {timing['eval_cpu_s']:.0f} s CPU "
          f"(load average {timing['load_avg_end'][0]:.1f} on {os.cpu_count()} cores).")
    print(f"\nReport: {workdir / 'report.html'} (numbers in {workdir / 'report.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
