"""The FID Inception-v3 ("2015-12-05" TF graph) in Flax: 2048-d pool features (mat_metrics.md §1).

FID, P-IDS and U-IDS in MAT/PSM (Sec. 4.1, Table 3) use NVIDIA's TorchScript port of the TF
Inception-v3 graph, ``inception-2015-12-05.pt``; pytorch-fid ships the same graph's weights as
``pt_inception-2015-12-05-*.pth``. Both are this network: the torchvision Inception-v3 topology
with the TF graph's quirks (pytorch-fid's ``FIDInception*`` blocks):

* conv (no bias) + BatchNorm (eps 1e-3) + ReLU units; the TorchScript file has no BN scale (= 1);
* the 3x3 average pools in the A, C and first E blocks do not count padding (``count_include_pad=False``);
* the last E block (Mixed_7c) pools its branch with a 3x3 **max** pool; global average pool at the end.

Input: uint8 ``[N, H, W, 3]`` RGB at any size, resized to 299x299 inside, as the reference does:

* ``resize="nvidia"`` (MAT/PSM numbers): the TorchScript ``forward``: float32 pixel values, an
  ``affine_grid``/``grid_sample(bilinear, border, align_corners=False)`` whose grid is shifted by
  ``1/W - 1/299`` (``1/H - 1/299``), which makes sample i read source position ``i * W / 299``
  (TF1's legacy ``resize_bilinear``), no antialiasing, then ``(x - 128) / 128``.
* ``resize="pytorch_fid"``: pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``:
  x / 255, ``F.interpolate(bilinear, align_corners=False)`` (half-pixel centres, source index
  clamped at 0, no antialiasing), then ``2x - 1``.

Both resizes are separable and linear, so they run as two small matrix products (exact up to
float32 rounding; the per-sample float32 grid arithmetic of torch can differ by ~1e-6 in the weights).

Note: the issue text calls the nvidia resize "TF-style half-pixel"; the TorchScript code does not
use half-pixel centres. Its in-place ``theta[:, 2] += 1/size_in - 1/299`` makes output pixel i read
source position ``i * W / 299`` (corner-aligned, TF1's default ``half_pixel_centers=False``);
pytorch-fid's resize is the half-pixel one.

Weights come only from a local ``.npz`` written by ``python -m psm_jax.evaluators.convert_inception``
(Flax parameter paths, ``/``-joined). **Unverified here:** the nvidia resize and the TorchScript
parameter names/structure are written from public transcripts of that file's ``code/`` and from
code that ports its weights (listed in ``convert_inception.py``); no copy of the file was available
to compare features against.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from psm_jax.npz_io import load_npz

SIZE = 299
BN_EPS = 1e-3
FEATURE_DIM = 2048
NUM_CLASSES = 1008
RESIZES = ("nvidia", "pytorch_fid")
NPZ_FORMAT = "psm_jax.inception.v1"


# ----------------------------------------------------------------------------- resize


def _interp_matrix(src: np.ndarray, n_in: int) -> np.ndarray:
    """[out, in] bilinear weights for sampling positions ``src`` (already clamped to [0, n_in - 1])."""
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float64)
    m = np.zeros((len(src), n_in), np.float64)
    np.add.at(m, (np.arange(len(src)), i0), 1.0 - w)
    np.add.at(m, (np.arange(len(src)), i1), w)
    return m.astype(np.float32)


def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """The 1-d resampling matrix of one axis for ``mode`` in ``RESIZES`` (see module docstring)."""
    dst = np.arange(n_out, dtype=np.float64)
    if mode == "nvidia":
        # grid_sample(align_corners=False, border) of the grid shifted by 1/n_in - 1/n_out:
        # ((2i+1)/n_out - 1 + 1/n_in - 1/n_out + 1) * n_in / 2 - 1/2 = i * n_in / n_out.
        src = np.clip(dst * n_in / n_out, 0.0, n_in - 1)
    elif mode == "pytorch_fid":
        src = np.clip((dst + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    else:
        raise ValueError(f"resize must be one of {RESIZES}, got {mode!r}")
    return _interp_matrix(src, n_in)


def preprocess(images_u8: jax.Array, mode: str, size: int = SIZE) -> jax.Array:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, size, size, 3]`` network input in [-1, 1]."""
    _, h, w, _ = images_u8.shape
    ry, rx = jnp.asarray(resize_matrix(h, size, mode)), jnp.asarray(resize_matrix(w, size, mode))
    x = images_u8.astype(jnp.float32)
    if mode == "pytorch_fid":
        x = x / 255.0
    hi = jax.lax.Precision.HIGHEST   # keep the resize in true float32 on accelerators too
    x = jnp.einsum("oh,nhwc->nowc", ry, x, precision=hi)
    x = jnp.einsum("pw,nowc->nopc", rx, x, precision=hi)
    return (x - 128.0) / 128.0 if mode == "nvidia" else 2.0 * x - 1.0


# ----------------------------------------------------------------------------- layers


class ConvBN(nn.Module):
    """conv (no bias) -> inference BatchNorm (eps 1e-3) -> ReLU; params kernel(HWIO)/scale/bias/mean/var."""
    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        k = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel, cin, self.features))
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(x, k, (self.strides, self.strides), ((ph, ph), (pw, pw)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=jax.lax.Precision.HIGHEST)
        y = (y - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias
        return jax.nn.relu(y)


def max_pool(x, window: int = 3, stride: int = 2, pad: int = 0):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def avg_pool_exclude_pad(x, window: int = 3, pad: int = 1):
    """3x3 stride-1 average pool that divides by the number of *valid* pixels (count_include_pad=False)."""
    dims, strides = (1, window, window, 1), (1, 1, 1, 1)
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, padding)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, padding)
    return total / count


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
        b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
        b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
        b7 = ConvBN(c, (1, 1), name="branch7x7_1")(x)
        b7 = ConvBN(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = ConvBN(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = ConvBN(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = ConvBN(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = ConvBN(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = ConvBN(192, (1, 1), name="branch_pool")(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
        b3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    pool: str  # "avg" (Mixed_7b) or "max" (Mixed_7c): a quirk of the TF graph

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
        b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = avg_pool_exclude_pad(x) if self.pool == "avg" else max_pool(x, 3, 1, 1)
        bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """[-1, 1] input ``[N, 299, 299, 3]`` -> pool features ``[N, 2048]`` (and 1008 logits if asked)."""

    @nn.compact
    def __call__(self, x, logits: bool = False):
        x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = max_pool(x)
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        features = jnp.mean(x, axis=(1, 2))
        if not logits:
            return features
        return features, nn.Dense(NUM_CLASSES, name="fc")(features)


@functools.lru_cache(maxsize=1)
def param_shapes() -> dict[str, tuple[int, ...]]:
    """``{"Mixed_5b/branch1x1/kernel": shape, ...}`` of the full network, fc included (no compute)."""
    abstract = jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)),
                                                         logits=True))
    flat = traverse_util.flatten_dict(abstract["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def random_params(seed: int = 0) -> dict[str, np.ndarray]:
    """Random but well-scaled flat params (BN stats non-trivial): for tests and smoke runs only."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in param_shapes().items():
        leaf = k.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            out[k] = (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif leaf in ("scale", "var"):
            out[k] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        else:
            out[k] = (0.1 * rng.normal(size=shape)).astype(np.float32)
    return out


def save_npz(path: str | Path, flat_params: dict[str, np.ndarray], source: str) -> None:
    np.savez(path, __format__=np.asarray(NPZ_FORMAT), __source__=np.asarray(source), **flat_params)


@dataclasses.dataclass
class InceptionFeatures:
    """Callable ``uint8 [N, H, W, 3] -> float32 [N, 2048]`` (numpy in, numpy out; jitted inside)."""
    params: Any
    resize: str = "nvidia"
    sha256: str = ""            # of the .npz file: keys the real-statistics cache
    source: str = ""            # "pytorch_fid" or "nvidia_torchscript" (from the converter)
    _fn: Callable | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        mode = self.resize
        self._fn = jax.jit(lambda p, x: InceptionV3().apply({"params": p}, preprocess(x, mode)))

    @classmethod
    def from_npz(cls, path: str | Path, resize: str = "nvidia") -> "InceptionFeatures":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: Inception weights not found (convert them with "
                                    "python -m psm_jax.evaluators.convert_inception IN OUT.npz)")
        z = load_npz(path, "Inception weights written by python -m psm_jax.evaluators.convert_inception")
        if "__format__" not in z or str(z["__format__"]) != NPZ_FORMAT:
            raise ValueError(f"{path}: not an Inception .npz written by psm_jax.evaluators.convert_inception")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        flat = {k: v for k, v in z.items() if not k.startswith("__")}
        source = str(z.get("__source__", ""))
        return cls.from_flat(flat, resize=resize, sha256=digest, source=source, what=str(path))

    @classmethod
    def from_flat(cls, flat: dict[str, np.ndarray], *, resize: str = "nvidia", sha256: str = "",
                  source: str = "", what: str = "params") -> "InceptionFeatures":
        shapes = {k: s for k, s in param_shapes().items() if not k.startswith("fc/")}
        missing = sorted(set(shapes) - set(flat))
        if missing:
            raise ValueError(f"{what}: missing Inception parameters, e.g. {missing[:3]}")
        for k, s in shapes.items():
            if tuple(flat[k].shape) != s:
                raise ValueError(f"{what}: {k} has shape {tuple(flat[k].shape)}, expected {s}")
        params = traverse_util.unflatten_dict({k: jnp.asarray(flat[k], jnp.float32) for k in shapes}, sep="/")
        return cls(params=params, resize=resize, sha256=sha256, source=source)

    def __call__(self, images_u8) -> np.ndarray:
        x = jnp.asarray(images_u8)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != jnp.uint8:
            raise ValueError(f"expected uint8 [N, H, W, 3] images, got {x.dtype} {tuple(x.shape)}")
        return np.asarray(self._fn(self.params, x), np.float32)

    def features_jax(self, images_u8: jax.Array) -> jax.Array:
        """The traced function (for use inside a caller's jit / sharded computation)."""
        return InceptionV3().apply({"params": self.params}, preprocess(images_u8, self.resize))
