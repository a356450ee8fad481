"""StyleGAN2/MAT mapping network z -> ws (Flax linen).

Implements /work/shared/research/mat_modules.md section 10 (MAT `MappingNet`, networks/basic_module.py), written
from those notes. No class conditioning (MAT's c_dim = 0 configuration).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from psm_jax.models.layers import FullyConnected

Array = jnp.ndarray


class MappingNetwork(nn.Module):
    """`__call__(z_BZ, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False) -> ws [B, num_ws, w_dim]`.

    z is RMS-normalised (eps 1e-8), then `num_layers` equalized-lr lrelu layers `fc0..fc{n-1}` (the last one
    included) with `lr_multiplier`. `w_avg` is a variable in the "buffers" collection. With `update_w_avg=True`
    (training; call `apply(..., mutable=["buffers"])`) it moves toward the batch mean of w with `w_avg_beta`
    before truncation, as MAT's train-mode forward does. Truncation `w_avg + psi (w - w_avg)` is applied to all
    rows, or to the first `truncation_cutoff` rows. `truncation_psi` and `truncation_cutoff` are static.
    """

    z_dim: int
    w_dim: int
    num_ws: int
    num_layers: int = 8
    lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995

    @nn.compact
    def __call__(self, z_BZ: Array, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                 update_w_avg: bool = False) -> Array:
        if z_BZ.shape[-1] != self.z_dim:
            raise ValueError(f"MappingNetwork expects z of {self.z_dim} features, got shape {z_BZ.shape}")
        x = z_BZ * lax.rsqrt(jnp.mean(jnp.square(z_BZ), axis=-1, keepdims=True) + 1e-8)
        for i in range(self.num_layers):
            x = FullyConnected(self.w_dim, lr_multiplier=self.lr_multiplier, activation="lrelu", name=f"fc{i}")(x)
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,))
        if update_w_avg:
            batch_mean = jnp.mean(lax.stop_gradient(x), axis=0)
            w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
        ws_BNW = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        if truncation_psi != 1:
            avg = w_avg.value.astype(ws_BNW.dtype)
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = avg + truncation_psi * (ws_BNW[:, :cutoff] - avg)
            ws_BNW = ws_BNW.at[:, :cutoff].set(truncated)
        return ws_BNW
