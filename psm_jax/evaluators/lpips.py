"""LPIPS (Zhang et al. 2018), AlexNet backbone, linear layers version 0.1: MAT's ``cal_lpips.py`` metric.

Equal, for the same weights, to ``lpips.LPIPS(net="alex", version="0.1")`` on inputs in [-1, 1]
(MAT scales uint8 images with ``x / 127.5 - 1`` and averages the per-pair scores over images):

1. scaling layer: ``(x - shift) / scale`` with shift (-.030, -.088, -.188), scale (.458, .448, .450);
2. torchvision AlexNet ``features``: conv11/4 pad 2 (64) - ReLU - maxpool 3/2 - conv5 pad 2 (192) -
   ReLU - maxpool 3/2 - conv3 pad 1 (384) - ReLU - conv3 (256) - ReLU - conv3 (256) - ReLU; the five
   ReLU outputs are the LPIPS taps;
3. per tap: unit-normalise each feature vector over channels (``x / (||x|| + 1e-10)``), squared
   difference, a non-negative 1x1 linear layer (``lin{k}``, no bias), spatial mean; sum over taps.

Weights: a ``.npz`` written by ``python -m psm_jax.evaluators.convert_lpips`` from torchvision's
AlexNet state dict and the lpips package's ``weights/v0.1/alex.pth``.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psm_jax.npz_io import load_npz

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# (torchvision features index, out channels, kernel, stride, padding, max-pool before this conv)
ALEX_CONVS = ((0, 64, 11, 4, 2, False), (3, 192, 5, 1, 2, True), (6, 384, 3, 1, 1, True),
              (8, 256, 3, 1, 1, False), (10, 256, 3, 1, 1, False))
EPS = 1e-10
NPZ_FORMAT = "psm_jax.lpips_alex.v0.1"


def _max_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def lpips_distance(params: dict[str, Any], x0: jax.Array, x1: jax.Array) -> jax.Array:
    """[-1, 1] images ``[N, H, W, 3]`` (two batches) -> LPIPS ``[N]``."""
    hi = jax.lax.Precision.HIGHEST

    def taps(x):
        x = (x - SHIFT) / SCALE
        out = []
        for i, (_, _, _, stride, pad, pool) in enumerate(ALEX_CONVS):
            if pool:
                x = _max_pool(x)
            x = jax.lax.conv_general_dilated(x, params[f"conv{i}/kernel"], (stride, stride),
                                             ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             precision=hi) + params[f"conv{i}/bias"]
            x = jax.nn.relu(x)
            out.append(x)
        return out

    total = 0.0
    for k, (f0, f1) in enumerate(zip(taps(x0), taps(x1))):
        n0 = f0 / (jnp.sqrt(jnp.sum(f0 * f0, axis=-1, keepdims=True)) + EPS)
        n1 = f1 / (jnp.sqrt(jnp.sum(f1 * f1, axis=-1, keepdims=True)) + EPS)
        total = total + jnp.mean(jnp.einsum("nhwc,c->nhw", (n0 - n1) ** 2, params[f"lin{k}"], precision=hi),
                                 axis=(1, 2))
    return total


def save_npz(path: str | Path, flat: dict[str, np.ndarray]) -> None:
    np.savez(path, __format__=np.asarray(NPZ_FORMAT), **flat)


@dataclasses.dataclass
class LPIPS:
    """Callable ``(uint8 [N,H,W,3], uint8 [N,H,W,3]) -> float32 [N]``."""
    params: dict[str, Any]
    sha256: str = ""
    _fn: Callable | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        self._fn = jax.jit(lambda p, a, b: lpips_distance(p, to_unit_range(a), to_unit_range(b)))

    @classmethod
    def from_npz(cls, path: str | Path) -> "LPIPS":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LPIPS weights not found (build them with "
                                    "python -m psm_jax.evaluators.convert_lpips)")
        z = load_npz(path, "LPIPS weights written by python -m psm_jax.evaluators.convert_lpips")
        if "__format__" not in z or str(z["__format__"]) != NPZ_FORMAT:
            raise ValueError(f"{path}: not an LPIPS .npz written by psm_jax.evaluators.convert_lpips")
        flat = {k: jnp.asarray(v, jnp.float32) for k, v in z.items() if not k.startswith("__")}
        return cls(params=flat, sha256=hashlib.sha256(path.read_bytes()).hexdigest())

    def __call__(self, a_u8, b_u8) -> np.ndarray:
        a, b = jnp.asarray(a_u8), jnp.asarray(b_u8)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"expected two uint8 [N, H, W, 3] batches of one shape, got {a.shape} and {b.shape}")
        return np.asarray(self._fn(self.params, a, b), np.float32)

    def distance_jax(self, a_u8: jax.Array, b_u8: jax.Array) -> jax.Array:
        return lpips_distance(self.params, to_unit_range(a_u8), to_unit_range(b_u8))


def to_unit_range(x_u8: jax.Array) -> jax.Array:
    return jnp.asarray(x_u8, jnp.float32) / 127.5 - 1.0
