"""Inference: inpaint your own images with a trained PSM (the pixel spread of Sec. 3.1.2, Eq. 4-5, run with G_ema).

Python::

    from psm_jax.inpaint import Inpainter
    inp = Inpainter.from_workdir("runs/places512")          # or ".../checkpoints/400000", step=...
    out = inp(image_u8_HW3, mask_HW)                         # uint8 [H, W, 3]; mask 1 = known
    outs = inp(image, hole_HW, mask_is_hole=True, num_samples=3, seed=7)   # [3, H, W, 3]
    out, traj = inp(image, mask, return_trajectory=True)     # traj: per-iteration mu, sigma, m_t

Command line (any size, folders, either mask convention; see ``--help``)::

    python -m psm_jax.inpaint --workdir runs/places512 --image photos/ --mask masks/ --out results/ \
        [--iters 4] [--seed 0] [--num_samples 1] [--mask_is_hole] [--save_steps] \
        [--strategy pad|resize|crop] [--batch 4]

Any image size. The generator needs H and W divisible by 32 (five stride-2 stages, Supp. A), so each image goes
through one of three strategies (IOPaint's names), and with every one only the hole pixels of the original change
(the output is the original array with the hole pixels replaced):

* ``pad`` (default): reflect-pad image *and* mask at the bottom/right up to the next multiple of 32 (reflected
  holes stay holes, so hidden content cannot leak into the context), inpaint at full resolution, crop back.
* ``resize``: if the longer side exceeds the training resolution R, shrink to longer side R (bicubic; a pixel of
  the small mask is a hole if any pixel it covers is one, so thin holes survive), inpaint (padded as above),
  upscale the result bicubically and paste it into the hole only. Images no larger than R are padded.
* ``crop``: inpaint only a window around the hole's bounding box (the box plus a margin of R/8, at least R x R,
  clamped to the image), with ``resize`` inside the window: for images far larger than R with small holes.

Randomness. ``seed`` gives ``key = jax.random.key(seed)``; sample 0 runs the spread with ``key`` itself (the key
whose ``jax.random.key_data`` the exported function takes, so ``Inpainter`` and ``psm_jax.export`` agree for the
same seed) and sample ``s >= 1`` with ``jax.random.fold_in(key, s)`` (:func:`sample_key`). The spread draws one
key's noise for the whole batch; with JAX's (default) partitionable threefry an image's noise depends on its
position in the batch but not on the batch size, so a result is reproducible from (seed, sample, batch position).

Compilation. Compiled spreads are cached per (padded shape, batch size, T, trajectory): a folder of mixed sizes
compiles once per distinct padded size (the CLI pads a short last batch to the batch size for that reason).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psm_jax.data.transforms import from_model_range, to_model_range
from psm_jax.models.generator import NUM_DOWN, Generator, make_apply_fn
from psm_jax.spread import pixel_spread

MULTIPLE = 2**NUM_DOWN            # the generator's H and W must be multiples of this (32)
STRATEGIES = ("pad", "resize", "crop")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _tuples(x: Any) -> Any:
    """JSON turns tuples into lists; module fields want the tuples back."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


# ----------------------------------------------------------------------------------------------- the spread


def spread_kwargs(config: ml_collections.ConfigDict, **overrides: Any) -> dict[str, Any]:
    """``pixel_spread`` keyword arguments of a run's config (the test-time spread), plus ``overrides``.

    One place for the in-process and the exported spread, so they cannot drift apart.
    """
    sp = config.spread
    kw = dict(schedule=sp.schedule, alpha=sp.alpha,
              # Configs saved before these fields existed ran Eq. 5 as written, fed the network the
              # "exp" uncertainty map (the only one then) and ranked with the stable sort (both pickers
              # pick the same pixels).
              resample_committed=sp.get("resample_committed", True),
              uncertainty_map=sp.get("uncertainty_map", "exp"),
              picker=sp.get("picker", "sort"))
    kw.update(overrides)
    return kw


def run_spread(config: ml_collections.ConfigDict, variables: Any, image: jax.Array, mask: jax.Array,
               key: jax.Array, *, num_iters: int, return_trajectory: bool = False, noise_mode: str = "random",
               **overrides: Any) -> dict[str, jax.Array]:
    """The whole test-time spread (T generator calls, pick, sample): ``pixel_spread`` with G_ema.

    image [B,H,W,3] in [-1, 1], mask [B,H,W,1] (1 = known), H and W multiples of 32; ``overrides`` go to
    ``pixel_spread`` (e.g. the picker, which the exported function fixes).
    """
    apply_fn = make_apply_fn(Generator(**config.model), variables, noise_mode=noise_mode)
    return pixel_spread(apply_fn, image, mask, key, num_iters=int(num_iters),
                        return_trajectory=return_trajectory, **spread_kwargs(config, **overrides))


def make_inpaint_fn(config: ml_collections.ConfigDict, *, num_iters: int | None = None,
                    noise_mode: str = "random", return_trajectory: bool = True) -> Callable:
    """A jitted ``fn(variables, image, mask, key) -> dict`` running the full spread (see :func:`run_spread`)."""
    T = int(num_iters or config.spread.test_iters)

    @jax.jit
    def fn(variables, image, mask, key):
        return run_spread(config, variables, image, mask, key, num_iters=T,
                          return_trajectory=return_trajectory, noise_mode=noise_mode)
    return fn


def sample_key(seed: int, sample: int = 0) -> jax.Array:
    """The spread key of sample ``sample`` for ``seed``: ``key(seed)`` for sample 0, else ``fold_in(key, s)``."""
    key = jax.random.key(int(seed))
    return key if sample == 0 else jax.random.fold_in(key, int(sample))


# ----------------------------------------------------------------------------------------------- checkpoints


def ema_variables(state: dict[str, Any]) -> dict[str, Any]:
    """Generator variables for inference: the EMA weights plus the (untrained) buffers."""
    return {"params": state["g_ema_params"], **state["g_buffers"]}


def resolve_checkpoint(workdir_or_checkpoint: str | Path, step: int | None = None) -> tuple[Path, int | None]:
    """(workdir, step) from a workdir, its ``checkpoints/`` folder or one ``checkpoints/<step>`` folder.

    Raises FileNotFoundError (one line) if the path does not exist or holds no checkpoints folder.
    """
    path = Path(workdir_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint or workdir does not exist")
    if path.name.isdigit() and path.parent.name == "checkpoints":
        if step is not None and step != int(path.name):
            raise ValueError(f"{path}: is step {path.name}, but step={step} was asked for")
        return path.parent.parent, int(path.name)
    if path.name == "checkpoints" and path.is_dir():
        path = path.parent
    if not (path / "checkpoints").is_dir():
        raise FileNotFoundError(f"{path}: not a training workdir (no checkpoints/ folder)")
    return path, step


def load_run(workdir: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, G_ema variables) of the latest (or given) checkpoint in a workdir (or a checkpoint folder)."""
    config, variables, _ = load_checkpoint(workdir, step)
    return config, variables


def load_checkpoint(workdir_or_checkpoint: str | Path, step: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(config, G_ema variables, step); FileNotFoundError (one line) when there is no such checkpoint."""
    from psm_jax import checkpoint as ckpt

    workdir, step = resolve_checkpoint(workdir_or_checkpoint, step)
    mngr = ckpt.make_manager(workdir, async_save=False)
    steps = list(mngr.all_steps())
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{workdir}: no finished checkpoint")
    elif step not in steps:
        raise FileNotFoundError(f"{workdir}: no checkpoint at step {step} (have {sorted(steps)})")
    meta = mngr.restore(step, args=ckpt.ocp.args.Composite(meta=ckpt.ocp.args.JsonRestore()))["meta"]
    state = ckpt._restore_numpy(mngr, step)
    return config_from_json(meta["config"]), jax.tree.map(jnp.asarray, ema_variables(state)), int(step)


# ----------------------------------------------------------------------------------------------- host-side prep


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


def reflect_pad(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reflect-pads [H, W, ...] at the bottom and right to [h, w, ...] (a 1-pixel side repeats)."""
    ph, pw = h - a.shape[0], w - a.shape[1]
    if ph == 0 and pw == 0:
        return a
    pads = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pads, mode="reflect" if min(a.shape[:2]) > 1 else "edge")


def padded_size(n: int) -> int:
    return max(MULTIPLE, -(-n // MULTIPLE) * MULTIPLE)


def _resize(a: np.ndarray, h: int, w: int, resample: str) -> np.ndarray:
    """Resizes a float32 [H, W, C] array with PIL (per channel, mode F keeps the precision)."""
    from PIL import Image

    if a.shape[:2] == (h, w):
        return a
    filt = {"bicubic": Image.BICUBIC, "box": Image.BOX, "nearest": Image.NEAREST}[resample]
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c], np.float32), mode="F")
                        .resize((w, h), filt)) for c in range(a.shape[-1])]
    return np.stack(chans, axis=-1)


@dataclass
class _Job:
    """One image's network input (H, W multiples of 32) and how to put the result back."""
    image: np.ndarray        # float32 [h, w, 3] in [-1, 1], padded
    known: np.ndarray        # float32 [h, w, 1], padded
    valid: tuple[int, int]   # the unpadded work size (the trajectory is cropped to it)
    finish: Callable[[np.ndarray], np.ndarray]   # work-frame float result [h, w, 3] -> uint8 [H, W, 3]

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]


def _pad_job(work_f: np.ndarray, known_b: np.ndarray, paste: Callable[[np.ndarray], np.ndarray]) -> _Job:
    h, w = work_f.shape[:2]
    H, W = padded_size(h), padded_size(w)
    return _Job(reflect_pad(work_f, H, W), reflect_pad(known_b[..., None].astype(np.float32), H, W), (h, w),
                lambda res: paste(res[:h, :w]))


def hole_bbox(known: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the hole pixels (half-open), None if there is no hole."""
    ys, xs = np.nonzero(~known)
    if ys.size == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def plan_window(size: tuple[int, int], bbox: tuple[int, int, int, int] | None, strategy: str,
                resolution: int) -> tuple[int, int, int, int, int, int]:
    """(y0, x0, h, w, sh, sw): the window of the image that is inpainted and its (unpadded) network size.

    ``pad``: the whole image at full size. ``resize``: the whole image, shrunk to longer side ``resolution`` if
    larger. ``crop``: the hole's bounding box plus a margin of ``resolution / 8`` on each side, grown to at least
    ``resolution`` (clamped to the image), then as ``resize``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    H, W = size
    y0, x0, h, w = 0, 0, H, W
    if strategy == "crop" and bbox is not None:
        margin = max(MULTIPLE // 2, resolution // 8)

        def window(lo: int, hi: int, n: int) -> tuple[int, int]:
            size = min(n, max(hi - lo + 2 * margin, resolution))
            return min(max(0, (lo + hi) // 2 - size // 2), n - size), size

        (y0, h), (x0, w) = window(bbox[0], bbox[1], H), window(bbox[2], bbox[3], W)
    if strategy == "pad" or max(h, w) <= resolution:
        return y0, x0, h, w, h, w
    s = resolution / max(h, w)
    return y0, x0, h, w, max(1, round(h * s)), max(1, round(w * s))


def work_shape(size: tuple[int, int], bbox, strategy: str, resolution: int) -> tuple[int, int]:
    """The padded network input size of an image (what the compile cache is keyed by)."""
    *_, sh, sw = plan_window(size, bbox, strategy, resolution)
    return padded_size(sh), padded_size(sw)


def plan(image_u8: np.ndarray, known: np.ndarray, strategy: str, resolution: int) -> _Job:
    """The network input of one image under a strategy (see the module docstring and :func:`plan_window`)."""
    y0, x0, h, w, sh, sw = plan_window(known.shape, hole_bbox(known), strategy, resolution)
    hole_win = ~known[y0:y0 + h, x0:x0 + w]
    work_f = to_model_range(image_u8[y0:y0 + h, x0:x0 + w])

    def paste(res_f: np.ndarray) -> np.ndarray:
        """Writes the (h, w) result into the hole pixels of a copy of the original."""
        res_u8 = from_model_range(res_f)
        out = image_u8.copy()
        win = out[y0:y0 + h, x0:x0 + w]
        win[hole_win] = res_u8[hole_win]
        return out

    if (sh, sw) == (h, w):
        return _pad_job(work_f, ~hole_win, paste)
    small = np.clip(_resize(work_f, sh, sw, "bicubic"), -1.0, 1.0)
    # A small pixel is a hole if any original pixel under it is one (BOX coverage > 0), so thin holes survive.
    small_known = _resize(hole_win[..., None].astype(np.float32), sh, sw, "box")[..., 0] <= 1e-4
    return _pad_job(small, small_known, lambda res_f: paste(_resize(res_f, h, w, "bicubic")))


# ----------------------------------------------------------------------------------------------- Python API


class Inpainter:
    """A trained PSM for inference: G_ema plus the test-time spread (Sec. 3.1.2).

    ``Inpainter.from_workdir(dir)(image, mask)`` inpaints one uint8 [H, W, 3] image with a [H, W] mask, a batch
    ([B, H, W, 3] with [B, H, W]) or a list of single images of any sizes. Masks: 1 = known, or
    ``mask_is_hole=True`` for 1 = hole (see :func:`binarize_mask`). Only hole pixels change.

    Compiled functions are cached per padded shape (and batch size, T and whether the trajectory is returned):
    calling on a folder of mixed sizes compiles once per distinct padded size; ``compiled_shapes`` lists them.
    Keys and strategies: see the module docstring.
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
        config, variables, step = load_checkpoint(workdir_or_checkpoint, step)
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

    def run_jobs(self, jobs: list[_Job], *, iters: int | None, seed: int, num_samples: int,
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


# ----------------------------------------------------------------------------------------------- files (CLI)


class InputError(ValueError):
    """Bad CLI input; the message is one line naming the file or flag."""


@dataclass
class LoadedImage:
    """A decoded image in network form (uint8 RGB) plus what is needed to write it back in its own format."""
    path: Path
    rgb: np.ndarray                    # uint8 [H, W, 3]: the network input
    original: np.ndarray               # the pixel data as read: uint8/uint16, [H, W] (gray) or [H, W, 3|4]
    mode: str                          # "L", "LA", "RGB", "RGBA", "I;16"

    def compose(self, result_rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
        """The original array with its hole pixels replaced by the result (alpha and bit depth kept)."""
        hole = ~known
        out = self.original.copy()
        if self.mode in ("L", "LA", "I;16"):
            # ITU-R 601 luma, as PIL's convert("L").
            lum = result_rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            if self.mode == "I;16":
                value = np.clip(np.rint(lum * 257.0), 0, 65535).astype(np.uint16)
            else:
                value = np.clip(np.rint(lum), 0, 255).astype(np.uint8)
            if self.mode == "LA":
                out[..., 0][hole] = value[hole]
            else:
                out[hole] = value[hole]
        else:
            out[..., :3][hole] = result_rgb[hole]
        return out

    def to_pil(self, array: np.ndarray):
        from PIL import Image

        if self.mode == "I;16":
            return Image.fromarray(array.astype(np.uint16))
        return Image.fromarray(array)   # L, LA, RGB, RGBA follow from the shape


def load_image(path: Path) -> LoadedImage:
    """Decodes an image file (EXIF orientation applied); InputError if it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: cannot read as an image ({type(e).__name__})") from None
    if img.width == 0 or img.height == 0:
        raise InputError(f"{path}: empty image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.float64)
        a16 = np.clip(a, 0, 65535).astype(np.uint16) if (img.mode != "I" or a.max() > 255) else None
        if a16 is None:   # an 8-bit gray image stored as I
            g = np.clip(a, 0, 255).astype(np.uint8)
            return LoadedImage(path, np.repeat(g[..., None], 3, -1), g, "L")
        g8 = np.clip(np.rint(a16 / 257.0), 0, 255).astype(np.uint8)
        return LoadedImage(path, np.repeat(g8[..., None], 3, -1), a16, "I;16")
    if img.mode in ("L", "1"):
        g = np.asarray(img.convert("L"))
        return LoadedImage(path, np.repeat(g[..., None], 3, -1), g, "L")
    if img.mode == "LA":
        la = np.asarray(img)
        return LoadedImage(path, np.repeat(la[..., :1], 3, -1), la, "LA")
    if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        return LoadedImage(path, np.ascontiguousarray(rgba[..., :3]), rgba, "RGBA")
    rgb = np.asarray(img.convert("RGB"))
    return LoadedImage(path, rgb, rgb, "RGB")


def load_mask_for(mask_path: Path, size: tuple[int, int], mask_is_hole: bool) -> tuple[np.ndarray, bool]:
    """(known bool [H, W], was_binary) of a mask file resized (nearest) to the image size.

    Binarised at half range (``mask_io.load_mask``). A mask of another size must have the image's aspect ratio
    (within 2%): a stretched mask is almost always the wrong file (or an EXIF-rotated image).
    """
    from psm_jax.data import mask_io

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", mask_io.NonBinaryMaskWarning)
        try:
            known = mask_io.load_mask(mask_path, invert=mask_is_hole) > 0.5
        except mask_io.MaskFileError as e:
            raise InputError(str(e)) from None
    binary = not any(issubclass(w.category, mask_io.NonBinaryMaskWarning) for w in caught)
    H, W = size
    mh, mw = known.shape
    if (mh, mw) != (H, W):
        if abs((mh / mw) / (H / W) - 1.0) > 0.02:
            raise InputError(f"{mask_path}: mask is {mw}x{mh}, image is {W}x{H}; sizes differ after resize "
                             "(aspect ratios do not match)")
        from PIL import Image
        known = np.asarray(Image.fromarray(known.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) >= 128
    return known, binary


def _list_images(path: Path, what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: {what} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def pair_by_stem(images: list[Path], mask_arg: Path) -> list[tuple[Path, Path]]:
    """Each image with the mask of the same stem (or ``<stem>_mask``); one mask file serves all images."""
    masks = _list_images(mask_arg, "--mask")
    if mask_arg.is_file():
        return [(p, mask_arg) for p in images]
    by_stem: dict[str, Path] = {}
    for m in masks:
        stem = m.stem[:-5] if m.stem.endswith("_mask") and len(m.stem) > 5 else m.stem
        if stem in by_stem:
            raise InputError(f"{m}: two masks for the name {stem!r} ({by_stem[stem].name} and {m.name})")
        by_stem[stem] = m
    seen: dict[str, Path] = {}
    pairs = []
    for p in images:
        if p.stem in seen:
            raise InputError(f"{p}: two images share the name {p.stem!r} ({seen[p.stem].name}); outputs would clash")
        seen[p.stem] = p
        if p.stem not in by_stem:
            raise InputError(f"{p}: no mask named {p.stem}.* or {p.stem}_mask.* in {mask_arg}")
        pairs.append((p, by_stem.pop(p.stem)))
    if by_stem:
        extra = sorted(by_stem.values())[0]
        raise InputError(f"{extra}: mask has no image of the same name in the --image folder")
    return pairs


def _progress(total: int, desc: str):
    """A tqdm bar on stderr for folders (None for a single image or without tqdm)."""
    if total <= 1:
        return None
    try:
        from tqdm import tqdm
    except ImportError:   # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, unit="img")


def _log(bar, text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _strip_arrays(t: dict, max_side: int = 256) -> dict:
    """Subsamples a work-frame trajectory so a figure cell is at most ``max_side`` pixels (big images)."""
    h, w = t["image"].shape[:2]
    s = max(1, math.ceil(max(h, w) / max_side))
    if s == 1:
        return t
    sub = lambda a: a[..., ::s, ::s, :]  # noqa: E731
    return {"image": sub(t["image"]), "mask": sub(t["mask"]), "output": sub(t["output"]),
            "trajectory": {k: sub(v) for k, v in t["trajectory"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m psm_jax.inpaint", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir (or a checkpoints/<step> folder)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--image", required=True, help="an image file or a folder of images")
    parser.add_argument("--mask", required=True,
                        help="a mask file (serves every image) or a folder of masks named like the images")
    parser.add_argument("--out", required=True, help="output folder, or a file name for a single image")
    parser.add_argument("--iters", type=int, default=None, help="spread iterations T (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=1, help="results per image (different noise)")
    parser.add_argument("--mask_is_hole", action="store_true", help="masks are white (255) = hole")
    parser.add_argument("--save_steps", action="store_true",
                        help="also write <name>_steps.png: input, mu_t, sigma_t, m_t per iteration, output")
    parser.add_argument("--strategy", choices=STRATEGIES, default="pad", help="how any image size is handled")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (same padded size)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # a bad flag (one line, see _Parser) or --help
        return int(e.code or 0)
    try:
        return _run_cli(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _run_cli(args: argparse.Namespace) -> int:
    for flag, v, lo in (("--iters", args.iters, 1), ("--num_samples", args.num_samples, 1), ("--batch", args.batch, 1)):
        if v is not None and v < lo:
            raise InputError(f"{flag} must be >= {lo}, got {v}")
    try:   # cheap existence check first; the weights are loaded after the inputs are validated
        resolve_checkpoint(args.workdir, args.step)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--workdir {e}") from None
    from psm_jax.visualize import save_grid, spread_strip

    image_arg, mask_arg, out_arg = Path(args.image), Path(args.mask), Path(args.out)
    images = _list_images(image_arg, "--image")
    pairs = pair_by_stem(images, mask_arg)
    single_file_out = image_arg.is_file() and out_arg.suffix.lower() in IMAGE_EXTENSIONS
    if single_file_out and args.num_samples > 1:
        raise InputError(f"{out_arg}: --num_samples > 1 writes several files; give a folder as --out")

    # Validate everything (decode every image, read every mask) before loading the model or writing anything.
    checked = []
    for img_path, mask_path in pairs:
        loaded = load_image(img_path)
        known, binary = load_mask_for(mask_path, loaded.rgb.shape[:2], args.mask_is_hole)
        if known.all():
            raise InputError(f"{mask_path}: mask has no hole (nothing to inpaint)")
        if not known.any():
            raise InputError(f"{mask_path}: mask is all hole (no known pixel to condition on)")
        if not binary:
            print(f"warning: {mask_path}: mask is not binary; thresholded at 50%", file=sys.stderr)
        checked.append((img_path, mask_path, float(1.0 - known.mean()), known.shape, hole_bbox(known)))
    try:
        inp = Inpainter.from_workdir(args.workdir, args.step)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--workdir {e}") from None

    def out_path(img_path: Path, suffix: str = "") -> Path:
        if single_file_out:
            return out_arg if not suffix else out_arg.with_name(out_arg.stem + suffix + ".png")
        return out_arg / f"{img_path.stem}{suffix}.png"

    if not single_file_out:
        out_arg.mkdir(parents=True, exist_ok=True)
    else:
        out_arg.parent.mkdir(parents=True, exist_ok=True)
    # Batches hold images of one padded size; each size's batch size is fixed (a short last batch is padded),
    # so each distinct size compiles once. Images are decoded again per batch: a folder is never held in memory.
    groups: dict[tuple[int, int], list] = {}
    for item in checked:
        groups.setdefault(work_shape(item[3], item[4], args.strategy, inp.resolution), []).append(item)
    done = 0
    bar = _progress(len(checked), "inpaint")
    for items in groups.values():
        n = min(len(items), args.batch)
        for c0 in range(0, len(items), n):
            block = items[c0:c0 + n]
            loaded, knowns, jobs = [], [], []
            for img_path, mask_path, ratio, (H, W), _ in block:
                li = load_image(img_path)
                known, _ = load_mask_for(mask_path, (H, W), args.mask_is_hole)
                _log(bar, f"{img_path.name}: {W}x{H}, hole ratio {ratio:.1%}")
                loaded.append(li)
                knowns.append(known)
                jobs.append(plan(li.rgb, known, args.strategy, inp.resolution))
            results, trajs = inp.run_jobs(jobs, iters=args.iters, seed=args.seed, num_samples=args.num_samples,
                                          return_trajectory=args.save_steps, batch_size=n, pad_batches=True)
            for li, known, res, tr in zip(loaded, knowns, results, trajs):
                for s, r in enumerate(res):
                    suffix = f"_s{s}" if args.num_samples > 1 else ""
                    li.to_pil(li.compose(r, known)).save(out_path(li.path, suffix))
                    if args.save_steps:
                        t = _strip_arrays(tr[s])
                        save_grid(spread_strip(t["image"], t["mask"], t["trajectory"], t["output"],
                                               show_masks=True), out_path(li.path, suffix + "_steps"))
                done += 1
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    where = out_arg if single_file_out else f"{out_arg}/"
    print(f"wrote {done} image(s) to {where} (T = {args.iters or inp.default_iters}, strategy {args.strategy})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
