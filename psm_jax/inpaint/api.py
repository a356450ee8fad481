"""The Python API of inference: :class:`Inpainter`, a trained PSM (G_ema plus the test-time spread, Sec. 3.1.2).

Randomness. ``seed`` gives ``key = jax.random.key(seed)``; sample 0 runs the spread with ``key`` itself (the key
whose ``jax.random.key_data`` the exported function takes, so ``Inpainter`` and ``psm_jax.export`` agree for the
same seed) and sample ``s >= 1`` with ``jax.random.fold_in(key, s)`` (``run.sample_key``). The spread draws one
key's noise for the whole batch; with JAX's (default) partitionable threefry an image's noise depends on its
position in the batch but not on the batch size, so a result is reproducible from (seed, sample, batch position).

Compilation. Compiled spreads are cached per (padded shape, batch size, T, trajectory): a folder of mixed sizes
compiles once per distinct padded size (the CLI pads a short last batch to the batch size for that reason).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psm_jax import checkpoint
from psm_jax.inpaint.run import run_spread, sample_key
from psm_jax.inpaint.sizing import Job, plan


def binarize_mask(mask: np.ndarray, mask_is_hole: bool = False) -> np.ndarray:
    """Any mask array -> bool [..] with True = known.

    Bool and float masks: ``> 0.5``. Integer masks: 0/1 arrays are taken as they are; otherwise the half of
    the type's range (``>= 128`` for uint8, ``>= 32768`` for uint16) is the threshold.
    """
    m = np.asarray(mask)
    if m.dtype == bool:
        known = m
    elif np.issubdtype(m.dtype, np.integer):
        top = 1 if m.size == 0 or m.max() <= 1 else np.iinfo(m.dtype).max
        known = m >= (top + 1) // 2 if top > 1 else m >= 1
    elif np.issubdtype(m.dtype, np.floating):
        known = m > 0.5
    else:
        raise ValueError(f"mask: expected a bool, integer or float array, got {m.dtype}")
    return ~known if mask_is_hole else known


class Inpainter:
    """A trained PSM for inference: G_ema plus the test-time spread (Sec. 3.1.2).

    ``Inpainter.from_workdir(dir)(image, mask)`` inpaints one uint8 [H, W, 3] image with a [H, W] mask, a batch
    ([B, H, W, 3] with [B, H, W]) or a list of single images of any sizes. Masks: 1 = known, or
    ``mask_is_hole=True`` for 1 = hole (see :func:`binarize_mask`). Only hole pixels change.

    Compiled functions are cached per padded shape (and batch size, T and whether the trajectory is returned):
    calling on a folder of mixed sizes compiles once per distinct padded size; ``compiled_shapes`` lists them.
    Keys: see the module docstring; strategies: ``sizing``.
    """

    def __init__(self, config: ml_collections.ConfigDict, variables: Any, *, step: int | None = None):
        self.config = config
        self.variables = variables
        self.step = step
        self.resolution = int(config.model.resolution)
        self.default_iters = int(config.spread.test_iters)
        self._compiled: dict[tuple, Any] = {}

    @classmethod
    def from_workdir(cls, workdir_or_checkpoint: str | Path, step: int | None = None) -> "Inpainter":
        """Loads G_ema of the latest (or ``step``) checkpoint of a workdir, or of a ``checkpoints/<step>`` folder."""
        config, variables, step = checkpoint.load_checkpoint(workdir_or_checkpoint, step)
        return cls(config, variables, step=step)

    @property
    def compiled_shapes(self) -> list[tuple]:
        """(T, return_trajectory, B, H, W) of every compiled spread so far."""
        return sorted(self._compiled)

    def _fn(self, T: int, traj: bool, shape: tuple[int, int, int]):
        k = (T, traj) + tuple(shape)
        if k not in self._compiled:
            b, h, w = shape
            fn = jax.jit(lambda v, i, m, key: run_spread(self.config, v, i, m, key, num_iters=T,
                                                         return_trajectory=traj))
            self._compiled[k] = fn.lower(
                self.variables, jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32),
                jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32), jax.random.key(0)).compile()
        return self._compiled[k]

    def run(self, image: np.ndarray, mask: np.ndarray, key: jax.Array, *, iters: int | None = None,
            return_trajectory: bool = False) -> dict[str, Any]:
        """The raw spread on network-ready arrays: image f32 [B,H,W,3] in [-1,1], mask f32 [B,H,W,1] (1 = known),
        H and W multiples of 32 (the exported function's contract). Returns ``pixel_spread``'s dict as numpy."""
        image, mask = np.asarray(image, np.float32), np.asarray(mask, np.float32)
        T = int(iters or self.default_iters)
        out = self._fn(T, return_trajectory, image.shape[:3])(self.variables, image, mask, key)
        return jax.tree.map(np.asarray, jax.device_get(out))

    def __call__(self, image: np.ndarray | Sequence[np.ndarray], mask: np.ndarray | Sequence[np.ndarray], *,
                 iters: int | None = None, seed: int = 0, num_samples: int = 1, return_trajectory: bool = False,
                 mask_is_hole: bool = False, strategy: str = "pad", batch_size: int | None = None):
        """Inpaints; returns uint8 results shaped like the input, with a sample axis after the batch axis if
        ``num_samples > 1`` ([H,W,3] -> [N,H,W,3]; [B,H,W,3] -> [B,N,H,W,3]; a list -> a list of those).

        With ``return_trajectory`` returns ``(results, trajectories)``: per image (and sample) a dict with the
        work-frame "image", "mask" (known), "output" (all [-1, 1] floats) and "trajectory" = {"mean", "std",
        "mask"} stacked over the T iterations (mu_t, sigma_t, m_t), ready for ``visualize.spread_strip``. The work
        frame is the image itself for ``pad``, the shrunk image for ``resize``, the window for ``crop``.
        ``batch_size`` splits same-size images into batches of at most that many (default: one batch per size).
        """
        images, masks, kind = _as_lists(image, mask)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        jobs = []
        for i, (img, m) in enumerate(zip(images, masks)):
            known = binarize_mask(m, mask_is_hole)
            if known.ndim == 3 and known.shape[-1] == 1:
                known = known[..., 0]
            if known.shape != img.shape[:2]:
                raise ValueError(f"image {i}: mask is {known.shape}, image is {img.shape[:2]}")
            if not known.any():
                raise ValueError(f"image {i}: the mask has no known pixel (all hole); nothing to condition on")
            jobs.append(plan(img, known, strategy, self.resolution))
        results, trajs = self.run_jobs(jobs, iters=iters, seed=seed, num_samples=num_samples,
                                       return_trajectory=return_trajectory, batch_size=batch_size)
        squeeze = (lambda xs: xs[0]) if num_samples == 1 else (lambda xs: xs)  # noqa: E731
        stack = (lambda xs: xs[0]) if num_samples == 1 else np.stack  # noqa: E731
        out = [stack(r) for r in results]
        tr = [squeeze(t) for t in trajs] if return_trajectory else None
        if kind == "single":
            out, tr = out[0], (tr[0] if tr else None)
        elif kind == "batch":
            out = np.stack(out)
        return (out, tr) if return_trajectory else out

    def run_jobs(self, jobs: list[Job], *, iters: int | None, seed: int, num_samples: int,
                 return_trajectory: bool, batch_size: int | None = None, pad_batches: bool = False
                 ) -> tuple[list[list[np.ndarray]], list[list[dict]]]:
        """Runs planned jobs grouped by padded shape; per job, a list over samples of results (and trajectories).

        A short last batch is padded (repeating its last image) to the group's batch size (to ``batch_size``
        itself with ``pad_batches``), so each padded size compiles once; padding does not change the real
        images' noise (see the module docstring).
        """
        T = int(iters or self.default_iters)
        results: list[list] = [[None] * num_samples for _ in jobs]
        trajs: list[list] = [[None] * num_samples for _ in jobs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.shape, []).append(i)
        for shape, idx in groups.items():
            n = batch_size if (pad_batches and batch_size) else min(len(idx), batch_size or len(idx))
            for c0 in range(0, len(idx), n):
                chunk = idx[c0:c0 + n]
                full = chunk + [chunk[-1]] * (n - len(chunk))
                image = np.stack([jobs[i].image for i in full])
                known = np.stack([jobs[i].known for i in full])
                for s in range(num_samples):
                    out = self.run(image, known, sample_key(seed, s), iters=T, return_trajectory=return_trajectory)
                    for row, i in enumerate(chunk):
                        job = jobs[i]
                        results[i][s] = job.finish(out["image"][row])
                        if return_trajectory:
                            h, w = job.valid
                            tr = out["trajectory"]
                            trajs[i][s] = {"image": job.image[:h, :w], "mask": job.known[:h, :w],
                                           "output": out["image"][row, :h, :w],
                                           "trajectory": {k: tr[k][:, row, :h, :w] for k in ("mean", "std", "mask")}}
        return results, trajs


def _as_lists(image, mask) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Normalises the accepted input forms to lists of uint8 [H, W, 3] images and [H, W] masks."""
    if isinstance(image, (list, tuple)):
        if not isinstance(mask, (list, tuple)) or len(mask) != len(image):
            raise ValueError("a list of images needs a list of masks of the same length")
        images, masks, kind = [np.asarray(a) for a in image], [np.asarray(m) for m in mask], "list"
    else:
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim == 3:
            images, masks, kind = [image], [mask], "single"
        elif image.ndim == 4:
            if mask.ndim == 4 and mask.shape[-1] == 1:
                mask = mask[..., 0]
            if mask.ndim != 3 or mask.shape[0] != image.shape[0]:
                raise ValueError(f"a batch of images {image.shape} needs masks [B, H, W], got {mask.shape}")
            images, masks, kind = list(image), list(mask), "batch"
        else:
            raise ValueError(f"image: expected uint8 [H, W, 3] or [B, H, W, 3], got shape {image.shape}")
    for i, a in enumerate(images):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"image {i}: expected uint8 [H, W, 3], got {a.dtype} {a.shape}")
    return images, masks, kind
