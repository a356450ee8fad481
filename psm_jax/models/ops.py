"""Resampling ops of StyleGAN2/MAT in NHWC: FIR filter, upfirdn2d, up/downsample, conv2d_resample.

Implements /work/shared/research/mat_modules.md sections 2-3 (MAT `torch_utils/ops/upfirdn2d.py` and
`conv2d_resample.py` semantics), written from those notes. Everything is NHWC; conv weights are HWIO and applied
as cross-correlations (PyTorch `conv2d` semantics).

Filters. MAT stores the 4x4 outer product of [1,3,3,1] / 64 (`fir_filter_2d`). Because that filter is separable,
the modules here use the 1-D taps [1,3,3,1] / 8 (`fir_filter_1d`) and filter each spatial axis in turn, which
is 8 instead of 16 multiply-adds per pixel. Every op also accepts an explicit 2-D filter (the MAT buffer itself);
both give the same values up to rounding (all taps are exact in float32).

The FIR is written as a sum of shifted (strided) slices instead of a depthwise convolution: XLA fuses the slices
into one elementwise loop, while grouped/depthwise convolutions are expanded into dense ones on some backends.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jnp.ndarray
Padding = int | Sequence[int]

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # MAT/StyleGAN2 resample kernel, binomial (approximately Gaussian)
_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def fir_filter_1d() -> np.ndarray:
    """Normalised separable taps [1,3,3,1] / 8 (float64; every entry is exact in float32)."""
    taps = np.asarray(FIR_TAPS, np.float64)
    return taps / taps.sum()


def fir_filter_2d() -> np.ndarray:
    """MAT's stored `resample_filter`: outer([1,3,3,1], [1,3,3,1]) / 64, shape [4, 4], float32."""
    taps = fir_filter_1d()
    return np.outer(taps, taps).astype(np.float32)


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """MAT padding convention -> (x0, x1, y0, y1): an int pads all sides, (px, py) pads each axis symmetrically."""
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return p, p, p, p
    pads = [int(p) for p in padding]
    if len(pads) == 2:
        return pads[0], pads[0], pads[1], pads[1]
    if len(pads) == 4:
        return pads[0], pads[1], pads[2], pads[3]
    raise ValueError(f"padding must be an int or have 2 or 4 entries, got {padding!r}")


def _filter_size(f: Array | np.ndarray | None) -> tuple[int, int]:
    """(fh, fw) of a 1-D (separable) or 2-D filter; None means the default [1,3,3,1] filter."""
    if f is None:
        return len(FIR_TAPS), len(FIR_TAPS)
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    if f.ndim == 2:
        return f.shape[0], f.shape[1]
    raise ValueError(f"filter must be 1-D (separable) or 2-D, got shape {f.shape}")


def _fir_valid(x_NHWC: Array, f: Array | np.ndarray | None, down: int, gain: float) -> Array:
    """Valid 2-D convolution (true convolution: the filter is flipped) of each channel, keeping every `down`-th
    output sample starting at 0. The gain enters once, split as sqrt(gain) per axis for a separable filter."""
    dtype = x_NHWC.dtype
    if f is None:
        f = fir_filter_1d()
    f = jnp.asarray(f).astype(dtype)
    if f.ndim == 1:
        # Separable: one 1-D pass per spatial axis (H is axis 1, W is axis 2).
        taps = f * jnp.asarray(np.sqrt(gain), dtype)
        y = x_NHWC
        for axis in (1, 2):
            n = taps.shape[0]
            out_len = y.shape[axis] - n + 1
            terms = [
                lax.slice_in_dim(y, t, t + out_len, stride=down, axis=axis) * taps[n - 1 - t] for t in range(n)
            ]
            y = sum(terms[1:], terms[0])
        return y
    fh, fw = f.shape
    f = f * jnp.asarray(gain, dtype)
    out_h = x_NHWC.shape[1] - fh + 1
    out_w = x_NHWC.shape[2] - fw + 1
    terms = []
    for i in range(fh):
        rows = lax.slice_in_dim(x_NHWC, i, i + out_h, stride=down, axis=1)
        for j in range(fw):
            cols = lax.slice_in_dim(rows, j, j + out_w, stride=down, axis=2)
            terms.append(cols * f[fh - 1 - i, fw - 1 - j])
    return sum(terms[1:], terms[0])


def upfirdn2d(
    x_NHWC: Array,
    f: Array | np.ndarray | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    gain: float = 1.0,
) -> Array:
    """Upsample (zero insertion), pad, FIR-filter, downsample: MAT's `upfirdn2d` per channel.

    1. insert `up - 1` zeros after every pixel along H and W (so H -> H*up);
    2. pad with zeros, or crop where a pad is negative; `padding` is MAT's [x0, x1, y0, y1] (W pads first);
    3. convolve with `f * gain` (valid); `f` is 1-D (separable) or 2-D, None = [1,3,3,1] filter;
    4. keep every `down`-th sample starting at index 0.
    """
    x0, x1, y0, y1 = parse_padding(padding)
    zero = jnp.zeros((), x_NHWC.dtype)
    # Interior padding inserts the zeros; the `up - 1` trailing zeros of MAT's zero insertion go into the high pad.
    x_NHWC = lax.pad(
        x_NHWC, zero, ((0, 0, 0), (y0, y1 + up - 1, up - 1), (x0, x1 + up - 1, up - 1), (0, 0, 0))
    )
    return _fir_valid(x_NHWC, f, down, gain)


def upsample2d(x_NHWC: Array, f: Array | np.ndarray | None = None, up: int = 2, padding: Padding = 0,
               gain: float = 1.0) -> Array:
    """x`up` upsampling: zero insertion, pad (fw+up-1)//2 before / (fw-up)//2 after (2/1 for the 4-tap filter),
    filter with gain up**2. Maps H -> H*up."""
    x0, x1, y0, y1 = parse_padding(padding)
    fh, fw = _filter_size(f)
    pads = (x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2)
    return upfirdn2d(x_NHWC, f, up=up, padding=pads, gain=gain * up * up)


def downsample2d(x_NHWC: Array, f: Array | np.ndarray | None = None, down: int = 2, padding: Padding = 0,
                 gain: float = 1.0) -> Array:
    """/`down` downsampling: pad (fw-down+1)//2 before / (fw-down)//2 after (1/1), filter, keep even pixels."""
    x0, x1, y0, y1 = parse_padding(padding)
    fh, fw = _filter_size(f)
    pads = (x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2)
    return upfirdn2d(x_NHWC, f, down=down, padding=pads, gain=gain)


# XLA:CPU runs a large strided conv far below its stride-1 rate, and faster cut into row bands of about a GFLOP
# (docs/BENCHMARKS.md, "Speed work"). Bands are bit-identical (each output row reads the same inputs and taps); CPU only.
_CPU_STRIDED_BAND_FLOPS = 1.2e9
_CPU_MAX_BANDS = 16


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _static_shape(shape) -> bool:
    """True if every dim is a Python int, False under ``jax.export``'s symbolic (shape-polymorphic) dims."""
    return all(isinstance(d, (int, np.integer)) for d in shape)


def _num_bands(x_NHWC: Array, w_HWIO: Array, stride: int, groups: int) -> int:
    """Row bands for a strided conv on CPU; 1 (one conv) when the input shape is symbolic.

    The band count is a Python int chosen from the FLOPs, which needs concrete H and W. Under shape
    polymorphism (``psm_jax.export``: symbolic batch, H = 32*h, W = 32*w) the comparisons below would ask a
    symbolic dim for a bool, so we take the one-conv path. Banding never changes the numbers (see above), so the
    exported function computes the same values as the banded in-process one; it only forgoes the CPU speed-up.
    """
    if not _static_shape(x_NHWC.shape):
        return 1
    b, h, w, _ = x_NHWC.shape
    kh, kw, cin, cout = w_HWIO.shape
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    flops = 2.0 * b * out_h * out_w * kh * kw * cin * cout
    return int(min(_CPU_MAX_BANDS, out_h, -(-flops // _CPU_STRIDED_BAND_FLOPS)))


def _conv(x_NHWC: Array, w_HWIO: Array, stride: int = 1, padding=((0, 0), (0, 0)), lhs_dilation: int = 1,
          groups: int = 1) -> Array:
    w_HWIO = w_HWIO.astype(x_NHWC.dtype)
    unpadded = all(p == 0 for pair in padding for p in pair)
    if w_HWIO.shape[:2] == (1, 1) and stride == 1 and lhs_dilation == 1 and groups == 1 and unpadded:
        # A 1x1 conv is a matmul over channels; XLA:CPU runs narrow ones (ToRGB) much faster as a dot
        # (docs/BENCHMARKS.md, "Speed work"), and GPU/TPU backends lower both alike.
        return lax.dot_general(x_NHWC, w_HWIO[0, 0], (((3,), (0,)), ((), ())))
    conv = lambda x: lax.conv_general_dilated(  # noqa: E731
        x, w_HWIO, window_strides=(stride, stride), padding=padding, lhs_dilation=(lhs_dilation, lhs_dilation),
        dimension_numbers=_CONV_DIMS, feature_group_count=groups)
    if stride > 1 and lhs_dilation == 1 and unpadded and _on_cpu():
        bands = _num_bands(x_NHWC, w_HWIO, stride, groups)
        if bands > 1:
            kh = w_HWIO.shape[0]
            out_h = (x_NHWC.shape[1] - kh) // stride + 1
            rows = -(-out_h // bands)
            # Output rows [o0, o1) read input rows [o0 * stride, (o1 - 1) * stride + kh).
            return jnp.concatenate([conv(x_NHWC[:, o0 * stride:(min(o0 + rows, out_h) - 1) * stride + kh])
                                    for o0 in range(0, out_h, rows)], axis=1)
    return conv(x_NHWC)


def conv2d_resample(
    x_NHWC: Array,
    w_HWIO: Array,
    f: Array | np.ndarray | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
) -> Array:
    """Cross-correlation of x with w (HWIO, I = channels per group) fused with FIR up/downsampling.

    Reference semantics (MAT `conv2d_resample`): `upfirdn2d(x, f, up, pad', gain=up**2)`, valid correlation with
    w, then (if down > 1) FIR + keep every `down`-th pixel, where pad' = padding plus the up/down filter pads.
    The fast forms used here, equal to that in exact arithmetic:
      * up > 1: transposed conv (correlation over the zero-inserted input, `lhs_dilation`), then a valid FIR with
        gain up**2; filtering and the conv commute, so the FIR runs once at the output (no zero multiplies).
        For k=3, p=1, up=2 this is `corr_valid(upfirdn2d(x, f, up=2, pad=(3,2,3,2), gain=4), w)`.
      * down > 1, k > 1: FIR (pad 2/2 for k=3, p=1) then a stride-`down` valid conv.
      * down > 1, k == 1: `downsample2d` (FIR with stride) then the 1x1 conv, so the conv runs at low resolution.
    """
    kh, kw = w_HWIO.shape[0], w_HWIO.shape[1]
    fh, fw = _filter_size(f)
    x0, x1, y0, y1 = parse_padding(padding)
    if up > 1:
        x0, x1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2
        y0, y1 = y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2

    if up > 1:
        # Zero insertion + padding folded into the conv; trailing zeros of the insertion go into the high pad.
        y = _conv(x_NHWC, w_HWIO, padding=((y0, y1 + up - 1), (x0, x1 + up - 1)), lhs_dilation=up, groups=groups)
        y = _fir_valid(y, f, down=1, gain=float(up * up))
        return y if down == 1 else upfirdn2d(y, f, down=down)
    if down > 1:
        if kh == 1 and kw == 1:
            y = upfirdn2d(x_NHWC, f, down=down, padding=(x0, x1, y0, y1))
            return _conv(y, w_HWIO, groups=groups)
        y = upfirdn2d(x_NHWC, f, padding=(x0, x1, y0, y1))
        return _conv(y, w_HWIO, stride=down, groups=groups)
    return _conv(x_NHWC, w_HWIO, padding=((y0, y1), (x0, x1)), groups=groups)
