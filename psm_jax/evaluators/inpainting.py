"""One evaluation pass of the pixel spread (PSM Sec. 3.1.2) on fixed eval batches: the single code
path shared by ``python -m psm_jax.evaluate`` and the in-training evaluator.

For every batch ``{"image": [-1, 1] f32 BHWC, "mask": BHW1 (1 = known)}``:

1. run the spread (``inpaint_fn(variables, image, mask, key)``, e.g. ``inpaint.make_inpaint_fn``;
   :func:`evaluate_batches`);
2. composite: known pixels are taken from the input, only hole pixels from the model, then uint8
   (``transforms.from_model_range``: round and clip, as MAT's ``(x + 1) * 127.5`` then ``round``);
3. per image: PSNR, SSIM, L1, hole L1 (``image_metrics``), LPIPS if given;
4. Inception features of the output (and of the ground truth, when the real statistics are not
   already known) for FID / P-IDS / U-IDS, in dataset order, so fake_i stays paired with real_i;
5. calibration statistics of every iteration's (mean, log_var) on the original holes, if the
   result has a ``"trajectory"``.

The spread key of a batch is ``fold_in(key, index of its first image)``: with a fixed batch size
the numbers are reproducible. Every batch is padded (repeating its last row) to the size of the
first batch, rounded up to a multiple of the device count with a ``mesh``, and split over the
mesh's batch axes; padding rows are dropped from every metric, so nothing is recompiled for the
short last batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from psm_jax.evaluators import calibration, fid as fid_lib, ids as ids_lib, image_metrics
from psm_jax.sharding import batch_sharding


@dataclasses.dataclass
class SpreadRun:
    """What one pass collected (host numpy); ``summary`` turns it into numbers."""
    num_images: int = 0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    psnr_finite: list[float] = dataclasses.field(default_factory=list)
    fake_features: list[np.ndarray] = dataclasses.field(default_factory=list)
    real_features: list[np.ndarray] = dataclasses.field(default_factory=list)
    calib: calibration.CalibrationAccumulator = dataclasses.field(
        default_factory=calibration.CalibrationAccumulator)
    # The first ``keep_images`` composited outputs (uint8 BHWC), for figures.
    kept_images: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, name: str, values: np.ndarray) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(np.sum(values))

    def fakes(self) -> np.ndarray:
        return np.concatenate(self.fake_features) if self.fake_features else np.zeros((0, 2048), np.float32)

    def reals(self) -> np.ndarray:
        return np.concatenate(self.real_features) if self.real_features else np.zeros((0, 2048), np.float32)

    def summary(self, real_features: np.ndarray | None = None, *, fid_method: str = "sqrtm",
                with_ids: bool = True) -> dict[str, float]:
        n = max(self.num_images, 1)
        out = {"num_images": float(self.num_images)}
        for name in ("ssim", "l1", "lpips"):
            if name in self.sums:
                out[name] = self.sums[name] / n
        # Identical images have infinite PSNR; the mean is over the finite ones (as demo.py does).
        out["psnr"] = float(np.mean(self.psnr_finite)) if self.psnr_finite else float("nan")
        if self.sums.get("hole_count"):
            out["l1_hole"] = self.sums["l1_hole_sum"] / self.sums["hole_count"]
        fakes = self.fakes()
        reals = real_features if real_features is not None else self.reals()
        if len(fakes):
            if len(reals) != len(fakes):
                raise ValueError(f"{len(reals)} real but {len(fakes)} generated feature rows: the real "
                                 "statistics do not belong to this image set")
            out["fid"] = fid_lib.fid_from_features(reals, fakes, method=fid_method) if len(fakes) > 1 else float("nan")
            if with_ids and len(fakes) > 1:
                out["p_ids"], out["u_ids"] = ids_lib.ids_from_features(reals, fakes)
        out.update(self.calib.result())
        return out


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def evaluate_batches(inpaint_fn: Callable, variables: Any, batches: Iterable[dict[str, Any]], *, key: jax.Array,
                     inception: Any = None, lpips: Any = None, need_real_features: bool = True,
                     mesh: jax.sharding.Mesh | None = None, progress: Any = None,
                     calib_samples: int | None = calibration.SAMPLES_PER_BATCH, keep_images: int = 0) -> SpreadRun:
    """Runs ``inpaint_fn`` on every batch and collects metrics, features and calibration sums
    (``calib_samples`` None: rank statistics over every hole pixel), and keeps the composited
    outputs of the first ``keep_images`` images."""
    run = SpreadRun()
    calib_key = jax.random.fold_in(key, 0x5EED)
    sharding, size = None, None
    if mesh is not None:
        sharding = batch_sharding(mesh)
    for b, batch in enumerate(batches):
        image = np.asarray(batch["image"], np.float32)
        mask = np.asarray(batch["mask"], np.float32)
        n = len(image)
        if n == 0:
            continue
        # Every batch is padded to the first one's size (and a multiple of the device count), so
        # the short last batch reuses the compiled functions; padding rows are dropped below.
        if size is None:
            size = n if sharding is None else -(-n // mesh.devices.size) * mesh.devices.size
        if n > size:
            raise ValueError(f"batch {b} holds {n} images, more than the first batch's {size}")
        image_p, mask_p = _pad_to(image, size), _pad_to(mask, size)
        image_in, mask_in = (image_p, mask_p) if sharding is None else (
            jax.device_put(image_p, sharding), jax.device_put(mask_p, sharding))
        out = inpaint_fn(variables, image_in, mask_in, jax.random.fold_in(key, run.num_images))
        generated = np.asarray(jax.device_get(out["image"]))
        composite = np.where(mask_p > 0.5, image_p, generated)     # only hole pixels are generated
        pred_u8 = np.clip(np.rint((composite + 1.0) * 127.5), 0, 255).astype(np.uint8)
        real_u8 = np.clip(np.rint((image_p + 1.0) * 127.5), 0, 255).astype(np.uint8)
        m = jax.device_get(image_metrics.all_metrics(pred_u8, real_u8, mask_p))
        for name in ("ssim", "l1", "l1_hole_sum", "hole_count"):
            run.add(name, m[name][:n])
        run.psnr_finite.extend(float(p) for p in np.asarray(m["psnr"])[:n] if np.isfinite(p))
        if run.num_images < keep_images:
            run.kept_images.append(pred_u8[:min(n, keep_images - run.num_images)])
        if lpips is not None:
            run.add("lpips", lpips(pred_u8, real_u8)[:n])
        if inception is not None:
            run.fake_features.append(inception(pred_u8)[:n])
            if need_real_features:
                run.real_features.append(inception(real_u8)[:n])
        traj = out.get("trajectory") if isinstance(out, dict) else None
        if traj is not None:
            # Padding rows get mask 1 (no hole), so they add nothing to the calibration sums.
            calib_mask = jnp.asarray(np.where(np.arange(size)[:, None, None, None] < n, mask_p, 1.0))
            means, log_vars, masks = traj["mean"], traj["log_var"], traj["mask"]
            for t in range(means.shape[0]):
                stats = calibration.batch_statistics(
                    jnp.asarray(image_p), means[t], log_vars[t], calib_mask,
                    jax.random.fold_in(jax.random.fold_in(calib_key, b), t), calib_samples,
                    mask_in=calib_mask if t == 0 else masks[t - 1], mask_out=masks[t], mean_first=means[0])
                run.calib.add(t, stats)
        run.num_images += n
        if progress is not None:
            progress.update(n)
    return run


def evaluate_spread(inpaint_fn: Callable, variables: Any, batches: Iterable[dict[str, Any]], *, key: jax.Array,
                    inception: Any = None, lpips: Any = None, real_features: np.ndarray | None = None,
                    with_ids: bool = False, fid_method: str = "eigh",
                    mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
    """Flat ``{name: float}`` for logging: ``l1``, ``l1_hole``, ``psnr``, ``ssim``, ``lpips`` (if given),
    ``fid`` (if ``inception`` is given; real features from ``real_features`` or computed on the
    batches' ground truth), ``p_ids``/``u_ids`` (if ``with_ids``) and ``calib/<metric>/iter<t>``.

    Defaults suit the training loop (fast ``eigh`` FID, no SVM); ``psm_jax.evaluate`` uses MAT's settings.
    """
    run = evaluate_batches(inpaint_fn, variables, batches, key=key, inception=inception, lpips=lpips,
                           need_real_features=real_features is None, mesh=mesh)
    return run.summary(real_features, fid_method=fid_method, with_ids=with_ids)
