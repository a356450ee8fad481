"""Evaluation inside training (big_vision style): the EMA generator on a fixed eval set, and the
sample figures the trainer writes every ``sample_every`` steps (:func:`save_sample_grid`).

Every ``eval.every`` steps (and at the last step) the trainer calls :class:`TrainEvaluator`:
G_ema runs the test-time spread (``spread.test_iters`` iterations, or ``eval.iters``) on the
first ``eval.num_images`` records of the eval split with fixed seeded masks (or the fixed mask
files of ``data.eval_mask_dir``), the known pixels are composited back, and it reports, under
``eval/``:

* ``l1_hole`` (mean absolute error over hole pixels, 0-255), ``l1``, ``psnr`` and ``ssim``;
* the uncertainty calibration of every iteration t on the hole pixels (paper Sec. 3.1.1: sigma
  is the picker's uncertainty): ``calib/spearman/iter<t>`` between sigma_t and |mu_t - x|, the
  NLL in bits per dimension and the coverage of the +-1/2 sigma intervals, and ``spearman``
  (the last iteration's correlation);
* ``fid`` when ``eval.inception`` names a converted Inception ``.npz`` (psm_jax.evaluators).

The eval set, masks and keys are fixed, so two runs (or a resumed run) evaluate on identical
inputs. A run preempted after the checkpoint of an eval step and before its eval finished
re-runs that eval when it resumes (``pending_step``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from psm_jax.checkpoint import ema_variables
from psm_jax.data.pipeline import make_eval_dataset
from psm_jax.evaluators.inception import InceptionFeatures
from psm_jax.evaluators.inpainting import evaluate_batches
from psm_jax.inpaint import make_inpaint_fn
from psm_jax.visualize import save_grid, spread_figure_from_output


def is_eval_step(config: ml_collections.ConfigDict, step: int) -> bool:
    every = int(config.eval.every)
    return every > 0 and step > 0 and (step % every == 0 or step == config.total_steps)


def logged_eval_steps(workdir: Path) -> set[int]:
    path = Path(workdir) / "metrics.jsonl"
    steps = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "eval/l1_hole" in rec:
                steps.add(int(rec["step"]))
    return steps


def pending_step(config: ml_collections.ConfigDict, workdir: Path, start_step: int) -> int | None:
    """The eval step a preempted run still owes (its checkpoint exists, its eval record does not)."""
    if is_eval_step(config, start_step) and start_step not in logged_eval_steps(workdir):
        return start_step
    return None


class TrainEvaluator:
    """Holds the fixed eval batches and one compiled spread; ``__call__(variables) -> metrics``.

    The numbers come from :func:`psm_jax.evaluators.inpainting.evaluate_spread`, the same code as
    ``python -m psm_jax.evaluate``, keyed ``eval/<name>``; ``eval/spearman`` repeats the last
    iteration's sigma-|error| Spearman correlation.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        ev = config.eval
        self.iters = int(ev.iters or config.spread.test_iters)
        self.seed = int(ev.seed)
        self.batches = [{k: np.asarray(v) for k, v in b.items() if k in ("image", "mask")}
                        for b in make_eval_dataset(config.data, batch_size=int(ev.batch_size),
                                                   num_images=int(ev.num_images), seed=self.seed)]
        if not self.batches:
            raise ValueError("config.eval: the eval set is empty")
        self.fn = make_inpaint_fn(config, num_iters=self.iters, return_trajectory=True)
        self.inception = None
        self.real_features = None
        if ev.inception:
            self.inception = InceptionFeatures.from_npz(ev.inception)

    def __call__(self, variables: Any) -> dict[str, float]:
        run = evaluate_batches(self.fn, variables, self.batches, key=jax.random.key(self.seed),
                               inception=self.inception, need_real_features=self.real_features is None)
        if self.inception is not None and self.real_features is None:
            self.real_features = np.concatenate(run.real_features)   # the reals never change
        values = run.summary(self.real_features, fid_method="eigh", with_ids=False)
        metrics = {f"eval/{k}": float(v) for k, v in values.items()}
        metrics["eval/num_images"] = float(run.num_images)
        last = f"eval/calib/spearman/iter{self.iters - 1}"
        if last in metrics:
            metrics["eval/spearman"] = metrics[last]
        return metrics


def gather_ema_variables(state: dict[str, Any]) -> Any:
    """G_ema's variables as host arrays on every process (any sharding, any process count)."""
    tree = ema_variables(state)
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


_SAMPLE_FNS: dict[int, Any] = {}


def save_sample_grid(config: ml_collections.ConfigDict, state: dict[str, Any], batch: dict[str, np.ndarray],
                     path: str | Path, max_images: int = 8) -> Path:
    """Runs the test-time spread with G_ema on a fixed training batch and writes the figure PNG
    (``visualize.spread_strip``: input, mu_t and sigma_t per iteration, output, ground truth)."""
    key = id(config)
    if key not in _SAMPLE_FNS:   # one compiled spread per run config
        _SAMPLE_FNS[key] = make_inpaint_fn(config)
    image = np.asarray(batch["image"][:max_images])
    mask = np.asarray(batch["mask"][:max_images])
    out = _SAMPLE_FNS[key](jax.device_get(ema_variables(state)), image, mask, jax.random.key(config.seed))
    return save_grid(spread_figure_from_output(image, mask, out, ground_truth=image), path)
