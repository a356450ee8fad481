"""MAT encoder/decoder blocks reused by the PSM generator (Flax linen, NHWC).

Implements /work/shared/research/mat_modules.md sections 9 and 12 (MAT `networks/mat.py` EncFromRGB, ConvBlockDown,
ToStyle, DecBlockFirstV2, DecBlock, and the 4x4-start variants of `networks/basic_module.py`), written from those
notes. The mat.py and basic_module.py decoder variants differ only in the log2 resolution their decoder starts at
(`first_res`: 4 for mat.py's 16x16 start, 2 for basic_module's 4x4 start), which fixes the ws rows a block reads.

Call signatures (stable; psm_jax/models/generator.py builds on them):
  style_code(w_BW, gs_BG) -> [B, W+G]
  EncFromRGB(features)(x_NHWC) -> [N,H,W,features]
  ConvBlockDown(features)(x_NHWC) -> [N,H/2,W/2,features]
  ToStyle(features)(x_NHWC) -> gs [N, features]
  DecBlockFirstV2(features, res, first_res=4)(x_NHWC, ws_BNW, gs_BG, E_features, noise_mode) -> (x, img)
  DecBlock(features, res, first_res=4)(x_NHWC, img_NHWC, ws_BNW, gs_BG, E_features, noise_mode) -> (x, img)
E_features is a dict {log2 resolution: [N,H,W,C]} (MAT's encoder feature dict).
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from psm_jax.models.layers import (DEFAULT_MODCONV_IMPL, Conv2dLayer, FullyConnected, ModConvImpl, NoiseMode,
                                   StyleConv, ToRGB)

Array = jnp.ndarray
MAT_FIRST_RES = 4  # mat.py decoders start at 16x16
BASIC_FIRST_RES = 2  # basic_module.py decoders start at 4x4


def style_code(w_BW: Array, gs_BG: Array) -> Array:
    """Style fed to every modulated conv: concat([w_i, gs]) with w first."""
    return jnp.concatenate([w_BW, gs_BG], axis=-1)


class EncFromRGB(nn.Module):
    """1x1 lrelu conv then 3x3 lrelu conv (input: MAT's 7 channels [mask-0.5, composite, image*mask])."""

    features: int
    activation: str = "lrelu"

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        x_NHWC = Conv2dLayer(self.features, 1, activation=self.activation, name="conv0")(x_NHWC)
        return Conv2dLayer(self.features, 3, activation=self.activation, name="conv1")(x_NHWC)


class ConvBlockDown(nn.Module):
    """3x3 down-2 lrelu conv then 3x3 lrelu conv."""

    features: int
    activation: str = "lrelu"

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        x_NHWC = Conv2dLayer(self.features, 3, activation=self.activation, down=2, name="conv0")(x_NHWC)
        return Conv2dLayer(self.features, 3, activation=self.activation, name="conv1")(x_NHWC)


class ToStyle(nn.Module):
    """Global style code: three 3x3 down-2 lrelu convs (channels kept), global mean, lrelu FC -> [N, features].
    (MAT's drop_rate is unused there, so it is not a field.)"""

    features: int
    activation: str = "lrelu"
    num_down: int = 3

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        channels = x_NHWC.shape[-1]
        for i in range(self.num_down):
            x_NHWC = Conv2dLayer(channels, 3, activation=self.activation, down=2, name=f"conv_{i}")(x_NHWC)
        x_NC = jnp.mean(x_NHWC, axis=(1, 2))
        return FullyConnected(self.features, activation=self.activation, name="fc")(x_NC)


class _StyledDecoder(nn.Module):
    """Shared fields of the two decoder blocks."""

    features: int
    res: int  # log2 of the block's output resolution
    first_res: int = MAT_FIRST_RES  # log2 resolution of DecBlockFirstV2 (4: mat.py, 2: basic_module.py)
    img_channels: int = 3
    activation: str = "lrelu"
    use_noise: bool = True
    demodulate: bool = True
    impl: ModConvImpl = DEFAULT_MODCONV_IMPL  # modulated conv implementation, see layers.py
    rgb_grad_channels: int | None = None  # ToRGB.grad_channels (PSM's var_stop_grad; None in MAT)

    def style_conv(self, name: str, up: int = 1) -> StyleConv:
        return StyleConv(self.features, 3, resolution=2 ** self.res, up=up, use_noise=self.use_noise,
                         activation=self.activation, demodulate=self.demodulate, impl=self.impl, name=name)

    def to_rgb(self) -> ToRGB:
        return ToRGB(self.img_channels, impl=self.impl, grad_channels=self.rgb_grad_channels, name="toRGB")


class DecBlockFirstV2(_StyledDecoder):
    """First decoder block: 3x3 lrelu conv, + E_features[res], StyleConv (ws row 0), ToRGB (ws row 1).

    `__call__(x_NHWC, ws_BNW, gs_BG, E_features, noise_mode="random") -> (x, img)`. `res` must equal
    `first_res`: DecBlockFirstV2(f) is mat.py's 16x16 block, DecBlockFirstV2(f, res=2, first_res=2) the 4x4 one.
    """

    res: int = MAT_FIRST_RES

    @nn.compact
    def __call__(self, x_NHWC: Array, ws_BNW: Array, gs_BG: Array, E_features: Mapping[int, Array],
                 noise_mode: NoiseMode = "random") -> tuple[Array, Array]:
        if self.res != self.first_res:
            raise ValueError(f"DecBlockFirstV2: res ({self.res}) must equal first_res ({self.first_res})")
        x_NHWC = Conv2dLayer(self.features, 3, activation=self.activation, name="conv0")(x_NHWC)
        x_NHWC = x_NHWC + E_features[self.res]
        x_NHWC = self.style_conv("conv1")(x_NHWC, style_code(ws_BNW[:, 0], gs_BG), noise_mode=noise_mode)
        img = self.to_rgb()(x_NHWC, style_code(ws_BNW[:, 1], gs_BG))
        return x_NHWC, img


class DecBlock(_StyledDecoder):
    """Decoder block at log2 resolution `res`: StyleConv up-2, + E_features[res], StyleConv, ToRGB with the
    incoming img as (upsampled) skip. Reads ws rows r, r+1, r+2 with r = 2 (res - first_res) - 1 (mat.py:
    2res-9; basic_module: 2res-5), so block res's ToRGB and block res+1's conv0 share a row.

    `__call__(x_NHWC, img_NHWC, ws_BNW, gs_BG, E_features, noise_mode="random") -> (x, img)`.
    """

    @nn.compact
    def __call__(self, x_NHWC: Array, img_NHWC: Array, ws_BNW: Array, gs_BG: Array,
                 E_features: Mapping[int, Array], noise_mode: NoiseMode = "random") -> tuple[Array, Array]:
        row = 2 * (self.res - self.first_res) - 1
        if row < 0 or row + 2 >= ws_BNW.shape[1]:
            raise ValueError(f"DecBlock(res={self.res}, first_res={self.first_res}) reads ws rows {row}..{row + 2}"
                             f" but ws has {ws_BNW.shape[1]} rows")
        x_NHWC = self.style_conv("conv0", up=2)(x_NHWC, style_code(ws_BNW[:, row], gs_BG), noise_mode=noise_mode)
        x_NHWC = x_NHWC + E_features[self.res]
        x_NHWC = self.style_conv("conv1")(x_NHWC, style_code(ws_BNW[:, row + 1], gs_BG), noise_mode=noise_mode)
        img = self.to_rgb()(x_NHWC, style_code(ws_BNW[:, row + 2], gs_BG), skip=img_NHWC)
        return x_NHWC, img
