"""Evaluation inside training (big_vision style): the EMA generator on a fixed eval set.

Every ``eval.every`` steps (and at the last step) the trainer calls :class:`TrainEvaluator`:
G_ema runs the test-time spread (``spread.test_iters`` iterations, or ``eval.iters``) on the
first ``eval.num_images`` records of the eval split with fixed seeded masks (or the fixed mask
files of ``data.eval_mask_dir``), the known pixels are composited back, and it reports, under
``eval/``:

* ``l1`` (mean absolute error over hole pixels, 0-255) and ``psnr`` (whole image, dB);
* the uncertainty calibration of every iteration t on the hole pixels (paper Sec. 3.1.1: sigma
  is the picker's uncertainty): ``spearman/iter<t>`` between sigma_t and |mu_t - x|, and the
  coverage of the +-1 sigma and +-2 sigma intervals (``cover1/iter<t>``, ``cover2/iter<t>``;
  68% and 95% for a calibrated Gaussian), and ``spearman`` of the last iteration;
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

from psm_jax.data.transforms import from_model_range


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
            if "eval/l1" in rec:
                steps.add(int(rec["step"]))
    return steps


def pending_step(config: ml_collections.ConfigDict, workdir: Path, start_step: int) -> int | None:
    """The eval step a preempted run still owes (its checkpoint exists, its eval record does not)."""
    if is_eval_step(config, start_step) and start_step not in logged_eval_steps(workdir):
        return start_step
    return None


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


class TrainEvaluator:
    """Holds the fixed eval batches and one compiled spread; ``__call__(variables) -> metrics``."""

    def __init__(self, config: ml_collections.ConfigDict):
        from psm_jax.data.pipeline import make_eval_dataset
        from psm_jax.inpaint import make_inpaint_fn

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
        if ev.inception:
            from psm_jax.evaluators.inception import InceptionFeatures

            self.inception = InceptionFeatures.from_npz(ev.inception)

    def __call__(self, variables: Any) -> dict[str, float]:
        abs_sum, n_hole, psnrs = 0.0, 0, []
        sig_T: list[list[np.ndarray]] = [[] for _ in range(self.iters)]
        err_T: list[list[np.ndarray]] = [[] for _ in range(self.iters)]
        real_feats, fake_feats = [], []
        seen = 0
        for batch in self.batches:
            image, mask = batch["image"], batch["mask"]
            key = jax.random.fold_in(jax.random.key(self.seed), seen)   # depends on the image index only
            out = jax.device_get(self.fn(variables, image, mask, key))
            hole = mask[..., 0] < 0.5
            real_u8 = from_model_range(image)
            fake_u8 = from_model_range(np.where(mask > 0.5, image, out["image"]))
            err = fake_u8.astype(np.float64) - real_u8.astype(np.float64)
            abs_sum += float(np.abs(err)[hole].sum())
            n_hole += int(hole.sum()) * 3
            for e in err:
                mse = float(np.mean(e ** 2))
                psnrs.append(99.0 if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse))
            traj = out["trajectory"]
            for t in range(self.iters):
                sig_T[t].append(np.asarray(traj["std"][t])[hole].ravel())
                err_T[t].append(np.abs(np.asarray(traj["mean"][t]) - image)[hole].ravel())
            if self.inception is not None:
                real_feats.append(self.inception(real_u8))
                fake_feats.append(self.inception(fake_u8))
            seen += len(image)
        metrics = {"eval/l1": abs_sum / max(n_hole, 1), "eval/psnr": float(np.mean(psnrs)),
                   "eval/num_images": float(seen)}
        for t in range(self.iters):
            sig, err = np.concatenate(sig_T[t]), np.concatenate(err_T[t])
            metrics[f"eval/spearman/iter{t}"] = _spearman(sig, err)
            if sig.size:
                metrics[f"eval/cover1/iter{t}"] = float(np.mean(err <= sig))
                metrics[f"eval/cover2/iter{t}"] = float(np.mean(err <= 2 * sig))
        metrics["eval/spearman"] = metrics[f"eval/spearman/iter{self.iters - 1}"]
        if self.inception is not None:
            from psm_jax.evaluators.fid import fid_from_features

            metrics["eval/fid"] = float(fid_from_features(np.concatenate(real_feats),
                                                          np.concatenate(fake_feats)))
        return metrics


def gather_ema_variables(state: dict[str, Any]) -> Any:
    """G_ema's variables as host arrays on every process (any sharding, any process count)."""
    from psm_jax.inpaint import ema_variables

    tree = ema_variables(state)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
