"""The test-time spread with G_ema (paper Sec. 3.1.2, Eq. 4-5): the one function every inference path runs.

``Inpainter``, the exported artifact (``psm_jax.export``), ``python -m psm_jax.evaluate``, the in-training
evaluator and the demo all call :func:`run_spread`, so they run the same spread for the same config and key.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections

from psm_jax.models.generator import Generator, make_apply_fn
from psm_jax.spread import pixel_spread
from psm_jax.spread_config import inference_noise_mode, spread_kwargs


def run_spread(config: ml_collections.ConfigDict, variables: Any, image: jax.Array, mask: jax.Array,
               key: jax.Array, *, num_iters: int, return_trajectory: bool = False, noise_mode: str | None = None,
               **overrides: Any) -> dict[str, jax.Array]:
    """The whole test-time spread (T generator calls, pick, sample): ``pixel_spread`` with G_ema.

    image [B,H,W,3] in [-1, 1], mask [B,H,W,1] (1 = known), H and W multiples of 32; ``noise_mode`` defaults to
    ``spread.test_noise_mode``; ``overrides`` go to ``pixel_spread`` (e.g. the picker, which the export fixes).
    """
    mode = noise_mode or inference_noise_mode(config)
    apply_fn = make_apply_fn(Generator(**config.model), variables, noise_mode=mode)
    return pixel_spread(apply_fn, image, mask, key, num_iters=int(num_iters),
                        return_trajectory=return_trajectory, **spread_kwargs(config, **overrides))


def make_inpaint_fn(config: ml_collections.ConfigDict, *, num_iters: int | None = None,
                    noise_mode: str | None = None, return_trajectory: bool = True) -> Callable:
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
