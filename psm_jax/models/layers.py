"""Equalized-learning-rate layers of StyleGAN2/MAT (Flax linen, NHWC).

Implements /work/shared/research/mat_modules.md sections 1 and 4-8 (MAT `networks/basic_module.py`:
bias_act, FullyConnectedLayer, Conv2dLayer, ModulatedConv2d, StyleConv, ToRGB), written from those notes.

Parameter convention (so that a MAT state dict maps 1:1, see `convert.py`): stored weights are the raw N(0,1)
values (N(0,1)/lr_multiplier for dense layers); the equalized-lr gains `lr_multiplier / sqrt(fan_in)` and the
bias `lr_multiplier` are applied in the forward pass. Dense kernels are [in, out], conv kernels HWIO.

Buffers: `StyleConv.noise_const` lives in the non-trainable collection "buffers" (like MAT's buffer), so an
optimizer over "params" never touches it; pass `variables["buffers"]` to `apply`. The MAT `resample_filter`
buffers are not variables here: they are the fixed FIR filter of `ops.py` (the converter checks their values).

Modulated conv implementations (`ModulatedConv2d.impl`), all built on the one `modulation` function:
  * "grouped": per-sample weights, batch folded into feature groups (one conv, feature_group_count=B);
  * "vmap": per-sample weights, `jax.vmap` over samples of an ordinary conv (JAX lowers this to a grouped conv);
  * "input": conv(x * scale, kernel) * decoef, i.e. modulate the activations and demodulate the output, one
    ordinary batched conv with the shared kernel (equal in exact arithmetic; StyleGAN2's non-fused form).
bench/modconv.py --full on the shared 2-core CPU (XLA CPU, float32, median ms, forward / forward+backward):
  B=4, 64x64, 256->256, k=3:  grouped 2207 / 11349   vmap 1183 / 7840    input  343 / 1315
  B=1, 32x32, 512->512, k=3:  grouped   60 /    78   vmap   42 /   77    input   42 /  100
  B=8, 32x32, 512->512, k=3:  grouped 2498 /  7393   vmap 2221 / 14333   input  640 / 2627
On XLA CPU a B-group conv costs about B times a dense conv of the same size (B=8 is ~40x B=1 above, not 8x),
so both per-sample-weight paths lose badly
for B > 1; "input" is the default. All three pass the MAT parity cases (tests/test_mat_parity.py).
"""
from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from psm_jax.models import ops

Array = jnp.ndarray
NoiseMode = Literal["random", "const", "none"]
ModConvImpl = Literal["grouped", "vmap", "input"]
MODCONV_IMPLS: tuple[str, ...] = ("grouped", "vmap", "input")

LRELU_SLOPE = 0.2
ACT_DEFAULT_GAIN = {"linear": 1.0, "relu": math.sqrt(2.0), "lrelu": math.sqrt(2.0)}
DEMOD_EPS = 1e-8  # added to the sum of squared modulated weights before rsqrt (MAT/StyleGAN2 value)
DEFAULT_MODCONV_IMPL: ModConvImpl = "input"  # fastest on CPU, see the module docstring


def _activate(x: Array, activation: str) -> Array:
    if activation == "linear":
        return x
    if activation == "relu":
        return jnp.maximum(x, 0)
    if activation == "lrelu":
        # `x > 0` (not >=) so the slope at exactly 0 is 0.2, as in torch's leaky_relu backward.
        return jnp.where(x > 0, x, x * LRELU_SLOPE)
    raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACT_DEFAULT_GAIN)}")


def bias_act(x: Array, bias: Array | None = None, activation: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> Array:
    """MAT's bias_act on the last (channel) axis: add bias, activate, multiply by
    `ACT_DEFAULT_GAIN[activation] * gain`, then clamp to [-clamp, clamp] (the clamp comes after the gain)."""
    if activation not in ACT_DEFAULT_GAIN:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACT_DEFAULT_GAIN)}")
    if bias is not None:
        x = x + bias.astype(x.dtype)
    x = _activate(x, activation)
    total_gain = ACT_DEFAULT_GAIN[activation] * gain
    if total_gain != 1:
        x = x * total_gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def _normal_init(scale: float = 1.0):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) * scale
    return init


class FullyConnected(nn.Module):
    """Equalized-lr dense layer: y = act(x @ (kernel * lr/sqrt(in)) + bias * lr) * act_gain. x: [..., in]."""

    features: int
    use_bias: bool = True
    bias_init: float = 0.0  # stored bias init; the effective initial bias is bias_init * lr_multiplier
    lr_multiplier: float = 1.0
    activation: str = "linear"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", _normal_init(1.0 / self.lr_multiplier), (fan_in, self.features))
        b = None
        if self.use_bias:
            b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
            if self.lr_multiplier != 1:
                b = b * self.lr_multiplier
        # x @ (kernel * g) == (x @ kernel) * g; the gain goes on the (small) output, where it fuses with bias_act,
        # instead of a pass over the [in, out] kernel on every call (see "Speed" in the module docstring).
        y = jnp.matmul(x, kernel.astype(x.dtype)) * jnp.asarray(self.lr_multiplier / math.sqrt(fan_in), x.dtype)
        return bias_act(y, b, self.activation)


class Conv2dLayer(nn.Module):
    """Equalized-lr conv with optional FIR up/downsampling ('same' padding k//2), bias and activation.

    `__call__(x_NHWC, gain=1.0)`: the activation gain is multiplied by `gain` and the clamp is `conv_clamp * gain`.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    activation: str = "linear"
    up: int = 1
    down: int = 1
    conv_clamp: float | None = None

    @nn.compact
    def __call__(self, x_NHWC: Array, gain: float = 1.0) -> Array:
        k, fan_in = self.kernel_size, x_NHWC.shape[-1]
        kernel = self.param("kernel", _normal_init(), (k, k, fan_in, self.features))
        # conv(x, kernel * g) == conv(x, kernel) * g: the equalized-lr gain is applied to the output, where it fuses
        # with bias_act; scaling a 3x3x512x512 kernel is a separate pass that cost more than the 8x8 conv itself.
        y_NHWC = ops.conv2d_resample(x_NHWC, kernel.astype(x_NHWC.dtype), up=self.up, down=self.down, padding=k // 2)
        y_NHWC = y_NHWC * jnp.asarray(1.0 / math.sqrt(fan_in * k * k), y_NHWC.dtype)
        b = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(y_NHWC, b, self.activation, gain=gain, clamp=clamp)


def modulation(kernel_HWIO: Array, styles_BI: Array, demodulate: bool) -> tuple[Array, Array | None]:
    """The modulation/demodulation math, shared by every impl. The per-sample weight is
    w[b] = kernel * scale[b, i] * decoef[b, o] with scale = s / sqrt(I*kh*kw) and
    decoef = rsqrt(sum_{kh,kw,i} (kernel * scale)^2 + 1e-8) (None without demodulation).
    Returns (scale_BI, decoef_BO).

    The sum over (kh, kw) is written as kh*kw elementwise adds of [I, O] slices (XLA fuses them into one loop) and
    the sum over I as a matmul [B, I] @ [I, O] at HIGHEST precision (full float32 also on accelerators whose
    default matmul precision is reduced). A plain `jnp.sum` over axes (0, 1) plus a broadcast [B, I, O] reduction
    ran as a slow generic reduction on XLA CPU (~35 ms per 3x3x512x512 kernel, 17% of a 256 forward)."""
    kh, kw, fan_in, _ = kernel_HWIO.shape
    scale_BI = styles_BI * (1.0 / math.sqrt(fan_in * kh * kw))
    if not demodulate:
        return scale_BI, None
    kernel_sq_HWIO = jnp.square(kernel_HWIO)
    taps = [kernel_sq_HWIO[i, j] for i in range(kh) for j in range(kw)]
    kernel_sq_IO = sum(taps[1:], taps[0])
    sum_sq_BO = jnp.matmul(jnp.square(scale_BI), kernel_sq_IO, precision=lax.Precision.HIGHEST)
    decoef_BO = lax.rsqrt(sum_sq_BO + DEMOD_EPS)
    return scale_BI, decoef_BO


def modulated_conv(x_NHWC: Array, kernel_HWIO: Array, scale_BI: Array, decoef_BO: Array | None, up: int,
                   impl: ModConvImpl) -> Array:
    """Convolves each sample with its modulated weights (padding k//2, optional FIR upsampling); see `modulation`."""
    padding = kernel_HWIO.shape[0] // 2
    if impl == "input":
        # conv(x, kernel * scale * decoef) == conv(x * scale, kernel) * decoef: one ordinary batched conv.
        y_NHWC = ops.conv2d_resample(x_NHWC * scale_BI[:, None, None, :], kernel_HWIO, up=up, padding=padding)
        return y_NHWC if decoef_BO is None else y_NHWC * decoef_BO[:, None, None, :]
    w_BHWIO = kernel_HWIO[None] * scale_BI[:, None, None, :, None]
    if decoef_BO is not None:
        w_BHWIO = w_BHWIO * decoef_BO[:, None, None, None, :]
    if impl == "grouped":
        batch, height, width, fan_in = x_NHWC.shape
        _, kh, kw, _, fan_out = w_BHWIO.shape
        # Batch folded into channels: group b sees input channels b*I:(b+1)*I and owns outputs b*O:(b+1)*O.
        x_1HWX = x_NHWC.transpose(1, 2, 0, 3).reshape(1, height, width, batch * fan_in)
        w_HWIX = w_BHWIO.transpose(1, 2, 3, 0, 4).reshape(kh, kw, fan_in, batch * fan_out)
        y_1HWX = ops.conv2d_resample(x_1HWX, w_HWIX, up=up, padding=padding, groups=batch)
        out_h, out_w = y_1HWX.shape[1:3]
        return y_1HWX.reshape(out_h, out_w, batch, fan_out).transpose(2, 0, 1, 3)
    if impl == "vmap":
        def one(x_HWC: Array, w_HWIO: Array) -> Array:
            return ops.conv2d_resample(x_HWC[None], w_HWIO, up=up, padding=padding)[0]
        return jax.vmap(one)(x_NHWC, w_BHWIO)
    raise ValueError(f"unknown modulated conv impl {impl!r}; expected one of {MODCONV_IMPLS}")


class ModulatedConv2d(nn.Module):
    """Style-modulated conv (no bias). `__call__(x_NHWC, style_BD)`; the style goes through the owned affine
    layer `affine` (FullyConnected, bias_init=1) to per-input-channel scales."""

    features: int
    kernel_size: int
    demodulate: bool = True
    up: int = 1
    impl: ModConvImpl = DEFAULT_MODCONV_IMPL

    @nn.compact
    def __call__(self, x_NHWC: Array, style_BD: Array) -> Array:
        k, fan_in = self.kernel_size, x_NHWC.shape[-1]
        styles_BI = FullyConnected(fan_in, bias_init=1.0, name="affine")(style_BD)
        kernel = self.param("kernel", _normal_init(), (k, k, fan_in, self.features))
        kernel = kernel.astype(x_NHWC.dtype)
        scale_BI, decoef_BO = modulation(kernel, styles_BI, self.demodulate)
        return modulated_conv(x_NHWC, kernel, scale_BI, decoef_BO, self.up, self.impl)


class StyleConv(nn.Module):
    """Modulated conv + noise + bias + activation (MAT StyleConv).

    `__call__(x_NHWC, style_BD, noise_mode="random", gain=1.0)`. The noise is added before bias and activation:
      * "random": N(0,1) of shape [B,H,W,1] from `self.make_rng("noise")`, times `noise_strength`;
      * "const": the [res,res] buffer `noise_const` (collection "buffers") times `noise_strength`; needs the
        output size to equal `resolution`;
      * "none": no noise. With use_noise=True MAT raises here (UnboundLocalError); we add nothing instead, which
        equals MAT's use_noise=False output given the same other parameters.
    """

    features: int
    kernel_size: int
    resolution: int  # output size; the size of noise_const
    up: int = 1
    use_noise: bool = True
    activation: str = "lrelu"
    conv_clamp: float | None = None
    demodulate: bool = True
    impl: ModConvImpl = DEFAULT_MODCONV_IMPL

    @nn.compact
    def __call__(self, x_NHWC: Array, style_BD: Array, noise_mode: NoiseMode = "random", gain: float = 1.0) -> Array:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        y_NHWC = ModulatedConv2d(self.features, self.kernel_size, self.demodulate, self.up, self.impl,
                                 name="conv")(x_NHWC, style_BD)
        if self.use_noise:
            res = self.resolution
            noise_const = self.variable("buffers", "noise_const",
                                        lambda: jax.random.normal(self.make_rng("params"), (res, res)))
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            if noise_mode == "random":
                noise_NHW1 = jax.random.normal(self.make_rng("noise"), (*y_NHWC.shape[:3], 1), y_NHWC.dtype)
                y_NHWC = y_NHWC + noise_NHW1 * strength
            elif noise_mode == "const":
                if y_NHWC.shape[1:3] != (res, res):
                    raise ValueError(f"noise_mode='const' needs a {res}x{res} output, got {y_NHWC.shape[1:3]}")
                y_NHWC = y_NHWC + (noise_const.value * strength).astype(y_NHWC.dtype)[None, :, :, None]
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(y_NHWC, b, self.activation, gain=gain, clamp=clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation + bias (linear) + optional skip image.

    `__call__(x_NHWC, style_BD, skip=None)`: a skip at half the output size is FIR-upsampled x2 before adding.
    ``grad_channels = k``: only the first k output channels pass gradients to ``x`` and ``style``; the
    others see both through a stop-gradient (same values; their own weights still learn).
    """

    features: int = 3
    kernel_size: int = 1
    conv_clamp: float | None = None
    impl: ModConvImpl = DEFAULT_MODCONV_IMPL
    grad_channels: int | None = None

    @nn.compact
    def __call__(self, x_NHWC: Array, style_BD: Array, skip: Array | None = None) -> Array:
        conv = ModulatedConv2d(self.features, self.kernel_size, demodulate=False, impl=self.impl, name="conv")
        y_NHWC = conv(x_NHWC, style_BD)
        if self.grad_channels is not None:
            k = self.grad_channels
            y_sg = conv(jax.lax.stop_gradient(x_NHWC), jax.lax.stop_gradient(style_BD))
            y_NHWC = jnp.concatenate([y_NHWC[..., :k], y_sg[..., k:]], axis=-1)
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        y_NHWC = bias_act(y_NHWC, b, "linear", clamp=self.conv_clamp)
        if skip is not None:
            if skip.shape != y_NHWC.shape:
                skip = ops.upsample2d(skip)
            y_NHWC = y_NHWC + skip
        return y_NHWC
