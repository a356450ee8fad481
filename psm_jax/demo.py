"""``make demo``: train a small PSM on CPU on real handwritten digits, then show what it learned.

Steps: train (or resume, or reuse a finished run) with ``configs/demo.py``; inpaint the
held-out digits (``data.digits_eval``: all 297) with fixed seeded MAT "large" masks; compare PSM
at T = 1, 2, 4 (the pixel spread, paper Sec. 3.2) with OpenCV's Telea inpainting (radius 3) and
a mean-colour fill; write ``WORKDIR/report.json``, ``WORKDIR/report.html`` (with PNG figures)
and print a table.

Metrics, on [0, 255] images after compositing the known pixels back:
  l1    mean absolute error over hole pixels (all three channels),
  psnr  PSNR over the whole image, averaged over images.
The report also holds, for the spread at T_test (pooled over the held-out digits, exact):
  uncertainty     per iteration t, on the pixels still open at its input (the ones the picker
                  ranks by sigma, Sec. 3.1.2): pick_ratio, spearman_open, ause, ause_rel,
                  refine_ratio, open_mae (psm_jax/evaluators/calibration.py defines them),
  spearman_sigma_abs_error  per iteration, Spearman(sigma, |error|) on every hole pixel ("hole")
                  and on the open ones ("open"), and the mean sigma and |error| on the hole,
  learning_curve  held-out hole L1 of the EMA generator at every checkpoint (T = 1 and T_test),
                  with the first iteration's pick ratio and Spearman on the open pixels.

Everything in the report is a function of the config and the seed (no timings, no paths), so
two fresh runs with the same seed write byte-identical reports; timings go to ``timing.json``.
"""
from __future__ import annotations

import ast
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from psm_jax import checkpoint as ckpt
from psm_jax import cli
from psm_jax.config_lib import load_config
from psm_jax.data.pipeline import make_eval_dataset
from psm_jax.data.transforms import from_model_range
from psm_jax.demo_report import print_table, write_report
from psm_jax.evaluators import calibration, image_metrics, inpainting
from psm_jax.checkpoint import load_run
from psm_jax.inpaint import make_inpaint_fn
from psm_jax.train import TrainingDiverged, train_and_evaluate
from psm_jax.visualize import method_grid, spread_strip

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(REPO / "configs" / "demo.py")
PSM_ITERS = (1, 2, 4)
EVAL_BATCH = 16
GRID_IMAGES = 8
TELEA_RADIUS = 3


def telea(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2  # deferred: OpenCV takes ~0.3 s to import and only the Telea baseline uses it

    hole = (mask[..., 0] < 0.5).astype(np.uint8) * 255
    bgr = cv2.inpaint(np.ascontiguousarray(image_u8[..., ::-1]), hole, TELEA_RADIUS, cv2.INPAINT_TELEA)
    return bgr[..., ::-1]


def mean_fill(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    known = mask[..., 0] > 0.5
    colour = image_u8[known].mean(0) if known.any() else np.full(3, 127.5)
    out = image_u8.astype(np.float32).copy()
    out[~known] = colour
    return np.rint(out).astype(np.uint8)


def _eval_batches(config, num_images: int | None, seed: int) -> list[dict[str, np.ndarray]]:
    """The held-out batches with their fixed seeded masks (the short last batch is padded by the
    evaluator, so every T compiles one shape)."""
    return [{"image": np.asarray(b["image"]), "mask": np.asarray(b["mask"])}
            for b in make_eval_dataset(config.data, batch_size=EVAL_BATCH, num_images=num_images, seed=seed)]


def _psm_fns(config, iters, trajectory: bool):
    return {t: make_inpaint_fn(config, num_iters=t, return_trajectory=trajectory) for t in iters}


def _psm_runs(fns, variables, batches, seed: int, *, exact: bool) -> dict[int, inpainting.SpreadRun]:
    """One evaluation pass per T. The spread key of a batch depends only on the index of its first
    image, so the numbers are reproducible. ``exact``: rank statistics over every hole pixel."""
    return {t: inpainting.evaluate_batches(fn, variables, batches, key=jax.random.key(seed),
                                     calib_samples=None if exact else calibration.SAMPLES_PER_BATCH)
            for t, fn in fns.items()}


def _baseline_run(method, batches) -> inpainting.SpreadRun:
    """Telea or mean fill scored with the same metrics as PSM."""
    run = inpainting.SpreadRun()
    for b in batches:
        real = from_model_range(b["image"])
        pred = np.stack([method(r, m) for r, m in zip(real, b["mask"])])
        m = jax.device_get(image_metrics.all_metrics(pred, real, b["mask"]))
        for name in ("ssim", "l1", "l1_hole_sum", "hole_count"):
            run.add(name, m[name])
        run.psnr_finite.extend(float(p) for p in np.asarray(m["psnr"]) if np.isfinite(p))
        run.num_images += len(real)
    return run


def _none_if_nan(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def uncertainty_report(calib: calibration.CalibrationAccumulator) -> dict[str, dict[str, float | None]]:
    """Per iteration ``t<i>``: spearman_open, ause, ause_rel, pick_ratio, refine_ratio, open_mae
    (calibration module docstring; null where undefined, e.g. the last iteration's pick ratio)."""
    keys = ("spearman_open", "ause", "ause_rel", "pick_ratio", "refine_ratio", "open_mae")
    return {f"t{t + 1}": {k: _none_if_nan(calib.spread_quality(t)[k]) for k in keys}
            for t in calib.iterations()}


def evaluate(config, variables, *, num_images: int | None, seed: int, grid_images: int = GRID_IMAGES,
             fns=None) -> tuple[dict[str, Any], dict[str, np.ndarray], calibration.CalibrationAccumulator]:
    """Scores PSM at each T of PSM_ITERS, Telea and mean fill; returns (report, figures, the T_max
    run's calibration)."""
    T = max(PSM_ITERS)
    fns = fns or _psm_fns(config, PSM_ITERS, trajectory=True)
    batches = _eval_batches(config, num_images, seed)
    runs = {f"psm_t{t}": run for t, run in _psm_runs(fns, variables, batches, seed, exact=True).items()}
    runs["telea"] = _baseline_run(telea, batches)
    runs["mean_fill"] = _baseline_run(mean_fill, batches)
    results = {m: {"l1": r.summary()["l1_hole"], "psnr": r.summary()["psnr"]} for m, r in runs.items()}
    calib = runs[f"psm_t{T}"].calib
    rho = {}
    for t in calib.iterations():
        q = calib.spread_quality(t)
        rho[f"t{t + 1}"] = {"hole": _none_if_nan(q["spearman_hole_px"]), "open": _none_if_nan(q["spearman_open"]),
                            "mean_sigma_hole": _none_if_nan(q["mean_sigma_hole"]),
                            "mean_abs_err_hole": _none_if_nan(q["mean_abs_err_hole"])}
    # One sigma scale for the whole spread figure: the 99th percentile over all held-out hole
    # pixels and iterations (the maximum would let one outlier wash the figure out).
    all_sig = np.concatenate([calib.pixel_samples(t, "hole")[0] for t in calib.iterations()] or [np.zeros(1)])
    sigma_max = float(np.percentile(all_sig, 99)) if all_sig.size else 1.0
    grids = _figures(fns, variables, batches[0], seed, min(grid_images, len(batches[0]["image"])), sigma_max)
    report = {"methods": results, "num_images": runs["telea"].num_images, "seed": seed,
              "spearman_sigma_abs_error": rho, "uncertainty": uncertainty_report(calib),
              "sigma_scale_max": sigma_max, "telea_radius": TELEA_RADIUS, "spread_iters": T}
    return report, grids, calib


def _figures(fns, variables, batch, seed: int, k: int, sigma_max: float) -> dict[str, np.ndarray]:
    """The spread strip of the T_max run and the method grid, on the first k held-out digits."""
    T = max(PSM_ITERS)
    image, mask = batch["image"], batch["mask"]
    real = from_model_range(image[:k])
    preds = {}
    for t, fn in fns.items():
        out = fn(variables, image, mask, jax.random.fold_in(jax.random.key(seed), 0))   # as batch 0 of evaluate_batches
        preds[f"psm_t{t}"] = from_model_range(np.where(mask > 0.5, image, np.asarray(out["image"])))[:k]
        if t == T:
            traj = jax.tree.map(lambda a: np.asarray(a)[:, :k], jax.device_get(out["trajectory"]))
            strip = spread_strip(image[:k], mask[:k], traj, np.asarray(out["image"])[:k],
                                 ground_truth=image[:k], sigma_max=sigma_max)
    preds["telea"] = np.stack([telea(r, m) for r, m in zip(real, mask[:k])])
    preds["mean_fill"] = np.stack([mean_fill(r, m) for r, m in zip(real, mask[:k])])
    masked = np.where(mask[:k] > 0.5, real, 127).astype(np.uint8)
    return {"spread": strip, "methods": method_grid({"input": masked, **preds, "ground truth": real})}


def learning_curve(config, workdir: Path, *, num_images: int | None, seed: int, fns=None
                   ) -> list[dict[str, Any]]:
    """Held-out hole L1 of G_ema at every checkpoint in ``workdir`` (T = 1 and T_test), with the
    first iteration's pick ratio and Spearman on the open pixels (is sigma being learned?).

    ``fns``: compiled inpaint functions by T to reuse (compiling is most of a short eval)."""
    iters = sorted({1, max(PSM_ITERS)})
    fns = {t: f for t, f in (fns or _psm_fns(config, iters, trajectory=True)).items() if t in iters}
    batches = _eval_batches(config, num_images, seed)
    curve = []
    for step in sorted(ckpt.make_manager(workdir, async_save=False).all_steps()):
        _, variables = load_run(workdir, step)
        runs = _psm_runs(fns, variables, batches, seed, exact=False)
        point = {"step": int(step), "images": int(step) * int(config.batch_size),
                 **{f"psm_t{t}": run.summary()["l1_hole"] for t, run in runs.items()}}
        q = runs[max(iters)].calib.spread_quality(0)
        point["pick_ratio_t1"] = _none_if_nan(q["pick_ratio"])
        point["spearman_open_t1"] = _none_if_nan(q["spearman_open"])
        curve.append(point)
    return curve


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
    parser = cli.ArgumentParser(prog="python -m psm_jax.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant]")
    parser.add_argument("--steps", type=int, default=None, help="override config.total_steps")
    parser.add_argument("--num_eval_images", type=int, default=None,
                        help="held-out images (default: config.demo.eval_images; 0 = the whole split)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set spread.resample_committed=False (repeatable)")
    args = parser.parse_args(argv)

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
    num_images = config.demo.eval_images if args.num_eval_images is None else args.num_eval_images
    num_images = num_images or None
    print(f"Evaluating on {num_images or 'all'} held-out images ...", flush=True)
    seed = config.demo.eval_seed
    fns = _psm_fns(run_config, PSM_ITERS, trajectory=True)   # compiled once, used by both
    report, grids, calib = evaluate(run_config, variables, num_images=num_images, seed=seed, fns=fns)
    report["step"] = ckpt.latest_step(workdir)
    report["learning_curve"] = learning_curve(run_config, workdir, num_images=num_images, seed=seed, fns=fns)
    d = run_config.data
    report["data"] = {"source": d.source, "resolution": int(d.resolution), "mask_kind": d.eval_mask_kind,
                      "train": list(d.get("digits_train", (0, 0))), "eval": list(d.get("digits_eval", (0, 0)))}
    write_report(workdir, report, grids, calib)
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
