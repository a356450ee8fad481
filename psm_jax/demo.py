"""``make demo``: train a small PSM on CPU on the built-in synthetic data, then show that it learned.

Steps: train (or resume, or reuse a finished run) with ``configs/demo.py``; inpaint a fixed
held-out set (a data seed different from training) with fixed seeded masks; compare PSM at
T = 1, 2, 4 with OpenCV's Telea inpainting (radius 3) and a mean-colour fill; write
``WORKDIR/report.json``, ``WORKDIR/report.html`` (with PNG grids) and print a table.

Metrics, on [0, 255] images after compositing the known pixels back:
  l1    mean absolute error over hole pixels (all three channels),
  psnr  PSNR over the whole image, averaged over images.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from psm_jax.data.transforms import from_model_range

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(REPO / "configs" / "demo.py")
PSM_ITERS = (1, 2, 4)


def telea(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    hole = (mask[..., 0] < 0.5).astype(np.uint8) * 255
    bgr = cv2.inpaint(np.ascontiguousarray(image_u8[..., ::-1]), hole, 3, cv2.INPAINT_TELEA)
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


def evaluate(config, variables, *, num_images: int, seed: int, grid_images: int = 8
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from psm_jax.data.pipeline import make_eval_dataset
    from psm_jax.inpaint import make_inpaint_fn
    from psm_jax.visualize import method_grid, spread_figure_from_output

    fns = {t: make_inpaint_fn(config, num_iters=t) for t in PSM_ITERS}
    methods = [f"psm_t{t}" for t in PSM_ITERS] + ["telea", "mean_fill"]
    acc = {m: {"abs": 0.0, "n": 0, "psnr": []} for m in methods}
    grids: dict[str, np.ndarray] = {}
    seen = 0
    for batch in make_eval_dataset(config.data, batch_size=16, num_images=num_images, seed=seed):
        image, mask = np.asarray(batch["image"]), np.asarray(batch["mask"])
        real = from_model_range(image)
        preds = {}
        for t, fn in fns.items():
            # The eval key depends only on the image index, so the numbers are reproducible.
            out = fn(variables, image, mask, jax.random.fold_in(jax.random.key(seed), seen))
            preds[f"psm_t{t}"] = from_model_range(np.where(mask > 0.5, image, np.asarray(out["image"])))
            if t == max(PSM_ITERS) and "psm" not in grids:
                grids["psm"] = spread_figure_from_output(
                    image[:grid_images], mask[:grid_images], jax.tree.map(
                        lambda a: a[:, :grid_images] if a.ndim == 5 else a[:grid_images], out),
                    ground_truth=image[:grid_images])
        preds["telea"] = np.stack([telea(r, m) for r, m in zip(real, mask)])
        preds["mean_fill"] = np.stack([mean_fill(r, m) for r, m in zip(real, mask)])
        for m in methods:
            for b in range(len(real)):
                s_abs, psnr, n = scores(preds[m][b], real[b], mask[b])
                acc[m]["abs"] += s_abs
                acc[m]["n"] += n
                acc[m]["psnr"].append(psnr)
        if "methods" not in grids:
            k = min(grid_images, len(real))
            masked = np.where(mask[:k] > 0.5, real[:k], 0).astype(np.uint8)
            grids["methods"] = method_grid({"input": masked, **{m: preds[m][:k] for m in methods},
                                            "ground truth": real[:k]})
        seen += len(real)
    results = {m: {"l1": acc[m]["abs"] / max(acc[m]["n"], 1),
                   "psnr": float(np.mean([p for p in acc[m]["psnr"] if np.isfinite(p)]))}
               for m in methods}
    return {"methods": results, "num_images": seen, "seed": seed}, grids


def write_report(workdir: Path, report: dict[str, Any], grids: dict[str, np.ndarray]) -> None:
    from psm_jax.visualize import save_grid

    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    save_grid(grids["psm"], workdir / "report_spread.png")
    save_grid(grids["methods"], workdir / "report_methods.png")
    rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{v['l1']:.2f}</td><td>{v['psnr']:.2f}</td></tr>"
                   for m, v in report["methods"].items())
    T = max(PSM_ITERS)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PSM demo report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;text-align:right}}
img{{image-rendering:pixelated;max-width:100%}}</style></head><body>
<h1>PSM demo report</h1>
<p>{report['num_images']} held-out synthetic images (data seed {report['seed']}), fixed seeded masks,
step {report.get('step')}. L1: mean absolute error over hole pixels in [0, 255]. PSNR: whole image.</p>
<table><tr><th>method</th><th>hole L1 &darr;</th><th>PSNR &uarr;</th></tr>{rows}</table>
<h2>Pixel spread at T = {T}</h2>
<p>Columns: masked input | mean of each iteration | &sigma; heatmap of each iteration | output | ground truth.</p>
<img src="report_spread.png">
<h2>Methods</h2>
<p>Columns: masked input | {' | '.join(report['methods'])} | ground truth.</p>
<img src="report_methods.png">
</body></html>"""
    (workdir / "report.html").write_text(page)


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'method':<10} {'hole L1':>9} {'PSNR':>8}   ({report['num_images']} held-out images)")
    for m, v in report["methods"].items():
        print(f"{m:<10} {v['l1']:>9.2f} {v['psnr']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psm_jax.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant]")
    parser.add_argument("--steps", type=int, default=None, help="override config.total_steps")
    parser.add_argument("--eval-images", type=int, default=None, help="held-out images (default: config)")
    args = parser.parse_args(argv)

    from psm_jax import checkpoint as ckpt
    from psm_jax.config_lib import load_config
    from psm_jax.inpaint import load_run
    from psm_jax.train import TrainingDiverged, train_and_evaluate

    overrides = {"total_steps": args.steps} if args.steps else {}
    try:
        config = load_config(args.config, overrides)
    except (FileNotFoundError, ValueError, AttributeError, KeyError) as e:
        print(f"error: --config {args.config}: {e}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    step = ckpt.latest_step(workdir)
    if step is not None and step >= config.total_steps:
        print(f"Reusing the finished run in {workdir} (step {step}).")
    else:
        print(f"{'Resuming' if step else 'Training'} the demo model in {workdir}"
              f"{f' from step {step}' if step else ''} to step {config.total_steps} "
              f"({config.model.resolution}px, batch {config.batch_size}, T_train={config.spread.train_iters}).",
              flush=True)
        t0 = time.perf_counter()
        try:
            train_and_evaluate(config, workdir)
        except TrainingDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"Training took {time.perf_counter() - t0:.0f} s.")
    run_config, variables = load_run(workdir)
    num_images = args.eval_images or config.demo.eval_images
    print(f"Evaluating on {num_images} held-out images ...", flush=True)
    report, grids = evaluate(run_config, variables, num_images=num_images, seed=config.demo.eval_seed)
    report["step"] = ckpt.latest_step(workdir)
    write_report(workdir, report, grids)
    print_table(report)
    print(f"\nReport: {workdir / 'report.html'} (numbers in {workdir / 'report.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
