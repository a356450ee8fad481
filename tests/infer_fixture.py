"""A tiny trained-looking workdir for the inference tests (test_inpaint, test_export, test_serving).

Training the tiny demo config takes 30 s to 10 min on the shared CPU, so the tests write a checkpoint of a
*randomly initialised* tiny generator in the real checkpoint layout instead (``psm_jax.checkpoint.save``; the
state holds only what inference restores: G_ema params and the buffers). Latent and StyleConv noise are on, so
different seeds give different results. T = 2 keeps compiles short.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from psm_jax.models.generator import model_config

# The test model's training resolution (16 px). Inference pads every image to a multiple of 32, so the
# network itself runs at 32 x 32 and up.
RESOLUTION = model_config("tiny").resolution
ITERS = 2


def tiny_config(resolution: int = RESOLUTION):
    from psm_jax.config_lib import base_config

    c = base_config()
    c.model = model_config("tiny")
    c.model.resolution = resolution
    # The demo's gains on both heads (MAT's decoder starts with an output std of ~4).
    c.model.update(output_gain=0.1, var_gain=0.1, use_latent=True, use_noise=True)
    c.spread.update(train_iters=2, test_iters=ITERS)
    return c


def make_workdir(path: Path, step: int = 3, resolution: int = RESOLUTION) -> Path:
    """The workdir of the test model; ``resolution`` another training resolution (LPIPS needs >= 32 px)."""
    from psm_jax import checkpoint as ckpt
    from psm_jax.models.generator import Generator

    config = tiny_config(resolution)
    gen = Generator(**config.model)
    k = jax.random.key(1)
    x = jnp.zeros((1, resolution, resolution, 3))
    m = jnp.ones((1, resolution, resolution, 1))
    variables = jax.jit(lambda: gen.init({"params": k, "latent": k, "noise": k}, x, m, m, 1 - m, 0.0))()
    variables = jax.tree.map(np.asarray, variables)
    state = {"g_ema_params": variables["params"],
             "g_buffers": {n: v for n, v in variables.items() if n != "params"}}
    mngr = ckpt.make_manager(path, async_save=False)
    ckpt.save(mngr, step, state, None, ckpt.run_metadata(config.to_json()), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth-ish uint8 RGB image (blocks of colour plus noise) so inpainting is not of pure noise."""
    base = rng.integers(0, 256, (max(1, h // 8) + 1, max(1, w // 8) + 1, 3)).astype(np.float64)
    img = np.repeat(np.repeat(base, 8, 0), 8, 1)[:h, :w] + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def box_mask(h: int, w: int, y0: float = 0.25, y1: float = 0.6, x0: float = 0.3, x1: float = 0.7) -> np.ndarray:
    """float32 [h, w], 1 = known, with one rectangular hole (fractions of the size)."""
    m = np.ones((h, w), np.float32)
    m[int(h * y0):max(int(h * y1), int(h * y0) + 1), int(w * x0):max(int(w * x1), int(w * x0) + 1)] = 0
    return m
