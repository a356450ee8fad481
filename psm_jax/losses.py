"""GAN losses (paper Sec. 3.2 adversarial training; MAT note /work/shared/research/mat_modules.md section 11, R1)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def r1_penalty(logits_fn: Callable[[jnp.ndarray], jnp.ndarray], images: jnp.ndarray) -> jnp.ndarray:
    """R1 gradient penalty per sample: sum over H, W, C of (d sum(logits) / d images)^2 -> [B].

    `logits_fn(images_BHWC) -> logits` closes over the discriminator parameters (and the masks, which get no
    gradient). Differentiable again w.r.t. those parameters (double backprop), as MAT's R1 uses create_graph.
    The loss term is `r1_penalty * r1_gamma / 2` (gamma 10 in MAT), averaged over the batch by the caller.
    """
    grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(images)
    return jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))
