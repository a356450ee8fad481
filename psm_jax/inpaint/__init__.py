"""Inference: inpaint your own images with a trained PSM (the pixel spread of Sec. 3.1.2, Eq. 4-5, run with G_ema).

Python::

    from psm_jax.inpaint import Inpainter
    inp = Inpainter.from_workdir("runs/places512")          # or ".../checkpoints/400000", step=...
    out = inp(image_u8_HW3, mask_HW)                         # uint8 [H, W, 3]; mask 1 = known
    outs = inp(image, hole_HW, mask_is_hole=True, num_samples=3, seed=7)   # [3, H, W, 3]
    out, traj = inp(image, mask, return_trajectory=True)     # traj: per-iteration mu, sigma, m_t

Command line (any size, folders, either mask convention; see ``--help``)::

    python -m psm_jax.inpaint --workdir runs/places512 --images photos/ --masks masks/ --out results/

One idea per file:

* ``run.py``: the test-time spread with G_ema (``run_spread``, ``make_inpaint_fn``, ``sample_key``), shared with
  ``psm_jax.export``, ``psm_jax.evaluate`` and the in-training evaluator;
* ``sizing.py``: any image size for a generator that needs multiples of 32 (the pad / resize / crop strategies);
* ``api.py``: :class:`Inpainter`, the Python API;
* ``files.py``: image and mask files (any format in, the same format out; pairing by name);
* ``command.py``: the command line (``__main__.py`` runs it).

Weights come from ``psm_jax.checkpoint`` (``load_run``); nothing here imports training code.
"""
from psm_jax.checkpoint import ema_variables, load_checkpoint, load_run, resolve_checkpoint
from psm_jax.data.image_files import IMAGE_EXTENSIONS
from psm_jax.data.transforms import from_model_range, to_model_range
from psm_jax.inpaint.api import Inpainter, binarize_mask
from psm_jax.inpaint.command import main
from psm_jax.inpaint.files import InputError, LoadedImage, load_image, load_mask_for, pair_images_and_masks
from psm_jax.inpaint.run import make_inpaint_fn, run_spread, sample_key
from psm_jax.inpaint.sizing import MULTIPLE, STRATEGIES, Job, hole_bbox, padded_size, plan, plan_window, reflect_pad
from psm_jax.spread_config import spread_kwargs

__all__ = [
    "IMAGE_EXTENSIONS", "MULTIPLE", "STRATEGIES", "Inpainter", "InputError", "Job", "LoadedImage", "binarize_mask",
    "ema_variables", "from_model_range", "hole_bbox", "load_checkpoint", "load_image", "load_mask_for", "load_run",
    "main", "make_inpaint_fn", "pair_images_and_masks", "padded_size", "plan", "plan_window", "reflect_pad",
    "resolve_checkpoint", "run_spread", "sample_key", "spread_kwargs", "to_model_range",
]
