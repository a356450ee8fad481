"""Image+mask residual discriminator of MAT/StyleGAN2 (Flax linen, NHWC).

Implements /work/shared/research/mat_modules.md section 11 (MAT `networks/basic_module.py`: DisFromRGB, DisBlock,
MinibatchStdLayer, Discriminator), written from those notes. PSM's discriminator is this single-branch one.
Submodule names follow MAT's state dict (`Dis_<i>` = `Dis.<i>`, `fc0`, `fc1`) so `convert.py` maps them by name.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from psm_jax.models.layers import Conv2dLayer, FullyConnected

Array = jnp.ndarray
SQRT_HALF = math.sqrt(0.5)


class MinibatchStd(nn.Module):
    """Appends `num_channels` minibatch-std channels. Groups are strided: sample i is grouped with
    i + n, i + 2n, ... where n = N / G and G = min(group_size, N). Std = sqrt(biased var + 1e-8) over the group,
    averaged over channels (per stat channel) and pixels."""

    group_size: int = 4
    num_channels: int = 1

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        n, h, w, c = x_NHWC.shape
        g = min(self.group_size, n)
        f = self.num_channels
        if n % g or c % f:
            raise ValueError(f"MinibatchStd: batch {n} must be divisible by group size {g} and channels {c} "
                             f"by num_channels {f}")
        # Leading axis G with the sample index i = g * (N/G) + j, i.e. group j holds samples j, j + N/G, ...
        y = x_NHWC.reshape(g, n // g, h, w, f, c // f)
        y = y - jnp.mean(y, axis=0)
        std = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [N/G, H, W, F, C/F]
        stat_nF = jnp.mean(std, axis=(1, 2, 4))
        stat_NF = jnp.tile(stat_nF, (g, 1))
        stat_NHWF = jnp.broadcast_to(stat_NF[:, None, None, :], (n, h, w, f)).astype(x_NHWC.dtype)
        return jnp.concatenate([x_NHWC, stat_NHWF], axis=-1)


class DisFromRGB(nn.Module):
    """1x1 lrelu conv from the (mask + image) input to features."""

    features: int
    activation: str = "lrelu"

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        return Conv2dLayer(self.features, 1, activation=self.activation, name="conv")(x_NHWC)


class DisBlock(nn.Module):
    """Residual down block: skip = 1x1 down-2 linear conv (no bias, gain sqrt .5); main = 3x3 conv then
    3x3 down-2 conv at gain sqrt .5; both read the block input. Maps [N,H,W,I] -> [N,H/2,W/2,features]."""

    features: int
    activation: str = "lrelu"

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        fan_in = x_NHWC.shape[-1]
        skip = Conv2dLayer(self.features, 1, use_bias=False, down=2, name="skip")(x_NHWC, gain=SQRT_HALF)
        x_NHWC = Conv2dLayer(fan_in, 3, activation=self.activation, name="conv0")(x_NHWC)
        x_NHWC = Conv2dLayer(self.features, 3, activation=self.activation, down=2, name="conv1")(x_NHWC,
                                                                                                   gain=SQRT_HALF)
        return skip + x_NHWC


def channels_at(stage: int, channel_base: int, channel_max: int) -> int:
    """Feature count at log2 resolution `stage`: clip(channel_base / 2**stage, 1, channel_max)."""
    return int(min(max(int(channel_base / 2 ** stage), 1), channel_max))


class Discriminator(nn.Module):
    """`__call__(images_BHWC, masks_BHW1) -> logits [B, 1]`. Input is concat([mask - 0.5, image]), mask first.

    Layers: Dis_0 DisFromRGB; Dis_1..Dis_n DisBlocks down to 4x4; Dis_{n+1} minibatch std (no params);
    Dis_{n+2} 3x3 lrelu conv; flatten in C,H,W order (as MAT's NCHW flatten); fc0 lrelu; fc1 linear.
    """

    resolution: int
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1

    @nn.compact
    def __call__(self, images_BHWC: Array, masks_BHW1: Array) -> Array:
        res_log2 = int(math.log2(self.resolution))
        if 2 ** res_log2 != self.resolution or res_log2 < 3:
            raise ValueError(f"Discriminator resolution must be a power of two >= 8, got {self.resolution}")
        if images_BHWC.shape[1:] != (self.resolution, self.resolution, self.img_channels):
            raise ValueError(f"Discriminator expects images [B,{self.resolution},{self.resolution},"
                             f"{self.img_channels}], got {images_BHWC.shape}")

        def nf(stage: int) -> int:
            return channels_at(stage, self.channel_base, self.channel_max)

        x = jnp.concatenate([masks_BHW1.astype(images_BHWC.dtype) - 0.5, images_BHWC], axis=-1)
        x = DisFromRGB(nf(res_log2), name="Dis_0")(x)
        for i, stage in enumerate(range(res_log2, 2, -1), start=1):
            x = DisBlock(nf(stage - 1), name=f"Dis_{i}")(x)
        n = res_log2 - 2
        x = MinibatchStd(self.mbstd_group_size, self.mbstd_num_channels, name=f"Dis_{n + 1}")(x)
        x = Conv2dLayer(nf(2), 3, activation="lrelu", name=f"Dis_{n + 2}")(x)
        x_BF = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C,H,W order, so fc0 matches MAT's weights
        x_BF = FullyConnected(nf(2), activation="lrelu", name="fc0")(x_BF)
        return FullyConnected(1, name="fc1")(x_BF)
