"""The PSM generator f_theta (paper Sec. 3.2, Sec. 4.2, Supp. A; MAT notes sec. 9, 10, 12).

A U-Net with a StyleGAN2 decoder that maps one spread iteration's input to the mean and log
variance of every pixel (the decoupled probabilistic modelling of Sec. 3.1.1):

    input [B,H,W,7] = [x_{t-1} (3), m_0 - 1/2, m_{t-1} - 1/2, u_{t-1} - 1/2, t_frac - 1/2]
    (the last channel is 0 when ``time_input`` is False)
    output (mean [B,H,W,3], log_var [B,H,W,3])

Encoder (Supp. A): ``EncFromRGB`` (1x1 + 3x3 lrelu convs) to ``channel_base`` = 64 channels at
H, then one residual block of two 3x3 convs per downsampling (``ConvBlockDown`` as the main path,
a 1x1 down-2 conv as the skip, summed with gain sqrt(1/2) as in StyleGAN2's residual D blocks),
doubling the channels up to ``channel_max`` = 512, down to H/32 (``num_down`` = 5 downsamplings,
Supp. A's H/32; a small-image config may use fewer, so that its bottleneck is not 1x1). At the attention scales
(``attention_downsample``, default H/16 and H/32) an "early convolutional block" (a residual pair
of 3x3 convs, after "Early convolutions help transformers see better") precedes
``attention_depth`` uncertainty-guided attention blocks (``attention.py``). Every scale's output is
kept as the U-Net skip ``E_features[log2 res]``.

Style (Supp. A, as MAT combines them, notes sec. 9): a global code ``gs = ToStyle(feature at
H/32)`` (``global_style_down`` = 3 stride-2 convs, H/32 -> H/256, global mean, FC to
``global_style_dim``), concatenated after each row ``w_i`` of an 8-layer mapping network on
Gaussian ``z``. **Clamp:** the bottleneck map is only H/2^num_down pixels wide, so ToStyle uses
``min(global_style_down, log2(resolution) - num_down)`` downsamplings (3 at 512 and 256, 0 for a
32x32 config at num_down = 5, where the global mean of the 1x1 map is taken directly).

Decoder (Sec. 4.2, symmetric): ``DecBlockFirstV2`` at H/32 (conv + U-Net skip + StyleConv +
ToRGB), then ``DecBlock`` at H/16 ... H (StyleConv up-2, + U-Net skip, StyleConv, ToRGB skip).
The same early block + attention follow the decoder blocks at the attention scales. The ws rows
follow MAT (``first_res`` = log2(H / 2^num_down)), so there are 2 num_down + 2 style rows (12).

Output heads: the ToRGB layers have **6 channels** (mean 3 + log variance 3) and share the
upsampled skip chain, so both heads get the multi-scale ToRGB sum; this is the cheapest reading
of "the output contains 6 channels". The mean is used as is (no tanh, as MAT). Two fields change
how the log variance is made (docs/FIDELITY.md):

* ``var_head = "conv"`` adds a small conv head on the full-resolution decoder feature and the
  predicted mean (``VarianceHead``), whose output is added to the ToRGB log variance. Its last
  layer starts at zero, so at init the log variance is the ToRGB one.
* ``var_stop_grad = True`` lets the NLL train only the variance's own weights: the log-variance
  channels of every ToRGB, and the head, read the shared features through a stop-gradient, so the
  Gaussian term cannot pull the shared trunk away from the mean (the paper's sg[mu] of Eq. 1 carried
  through the shared layers).

The log variance is then scaled by ``var_gain`` (the mean by ``output_gain``) and soft-clamped to
``[log_var_min, log_var_max]`` (``soft_clamp``, nested softplus): about the identity in the
middle, saturating smoothly, so the NLL can never push sigma to 0 or infinity and the gradient
only vanishes where float32 saturates.

Not taken from MAT: its random 16x16 dropout mix of the feature with the w code (notes sec. 12)
and its first-stage transformer; neither is in the PSM paper. The mapping network's ``w_avg``
is updated only with ``train=True`` (call ``apply(..., mutable=["buffers"])``).

Parameter count (``python -m psm_jax.models.summary --variant paper512``): see
``psm_jax/models/summary.py`` for the number and the comparison with the paper's 74M.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from psm_jax.models.attention import AttentionBlock
from psm_jax.models.layers import Conv2dLayer, NoiseMode
from psm_jax.models.mapping import MappingNetwork
from psm_jax.models.mat_blocks import (ConvBlockDown, DecBlock, DecBlockFirstV2, EncFromRGB, ToStyle)

Array = jnp.ndarray
NUM_DOWN = 5          # H -> H/32 (Supp. A): the default of Generator.num_down
VAR_HEADS = ("torgb", "conv")
IN_CHANNELS = 7       # x (3), m_0, m_{t-1}, u_{t-1}, t
OUT_CHANNELS = 6      # mean (3), log variance (3)


def soft_clamp(x: Array, lo: float, hi: float) -> Array:
    """Smooth clamp to [lo, hi]: ~x in the middle, lo / hi at -/+ infinity, positive gradient.

    Nested softplus (a soft max with lo, then a soft min with hi) rather than
    ``lo + sp(x - lo) - sp(x - hi)``, whose difference of two large numbers cancels
    catastrophically in float32 for large |x| and can leave the range.
    """
    return hi - jax.nn.softplus(hi - (lo + jax.nn.softplus(x - lo)))


class ResBlock(nn.Module):
    """Residual block of two 3x3 lrelu convs (the first one stride-2 when ``down``).

    Main path: MAT's ``ConvBlockDown`` (down=True) or two plain 3x3 convs; skip: 1x1 conv (down-2,
    no bias) or identity. ``(main + skip) * sqrt(1/2)`` keeps the variance as StyleGAN2's D blocks.
    """

    features: int
    down: bool = True

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        if self.down:
            main = ConvBlockDown(self.features, name="main")(x_NHWC)
            skip = Conv2dLayer(self.features, 1, use_bias=False, down=2, name="skip")(x_NHWC)
        else:
            main = Conv2dLayer(self.features, 3, activation="lrelu", name="conv0")(x_NHWC)
            main = Conv2dLayer(self.features, 3, activation="lrelu", name="conv1")(main)
            skip = x_NHWC if x_NHWC.shape[-1] == self.features else Conv2dLayer(
                self.features, 1, use_bias=False, name="skip")(x_NHWC)
        return (main + skip) * math.sqrt(0.5)


def num_style_rows(num_down: int) -> int:
    """The mapping network's ws rows for a U-Net with ``num_down`` downsamplings (12 at 5)."""
    return 2 * num_down + 2


class VarianceHead(nn.Module):
    """The ``var_head = "conv"`` log-variance head: two 3x3 lrelu convs and a 1x1 linear conv to
    3 channels, on the full-resolution decoder feature concatenated with the predicted mean."""

    features: int

    @nn.compact
    def __call__(self, x_NHWC: Array) -> Array:
        x_NHWC = Conv2dLayer(self.features, 3, activation="lrelu", name="conv0")(x_NHWC)
        x_NHWC = Conv2dLayer(self.features, 3, activation="lrelu", name="conv1")(x_NHWC)
        return Conv2dLayer(3, 1, name="out")(x_NHWC)


class Generator(nn.Module):
    """PSM generator. Every field is a key of ``config.model`` (``Generator(**config.model)``)."""

    resolution: int = 512                          # training resolution (noise_const size, style clamp)
    num_down: int = NUM_DOWN                       # downsamplings: H -> H / 2**num_down (Supp. A: H/32)
    channel_base: int = 64                         # channels at full resolution (Supp. A: 64)
    channel_max: int = 512                         # channel cap (Supp. A: 512)
    z_dim: int = 512                               # latent z (Gaussian)
    w_dim: int = 512                               # mapping output per style row
    mapping_layers: int = 8                        # Supp. A: 8 FC layers
    global_style_dim: int = 1024                   # gs width (MAT: 2 * 512)
    global_style_down: int = 3                     # stride-2 convs H/32 -> H/256 (clamped, see above)
    attention_downsample: tuple[int, ...] = (16, 32)  # attention at H/16 and H/32; model G: (16,)
    attention_depth: int = 1                       # attention blocks per scale, encoder and decoder
    num_heads: int = 8                             # attention heads
    mlp_ratio: float = 2.0                         # attention block MLP width / channels
    uncertainty_guided: bool = True                # Eq. 6 bias F(u); model F: False
    uga_channels: int = 32                         # hidden width of F (4 conv 3x3 layers)
    use_noise: bool = True                         # StyleGAN2 per-pixel noise in the decoder
    # Supp. A: the style combines the global image feature with a *random* latent code. False feeds
    # z = 0, so the style comes from the image alone: for short runs, which cannot learn to ignore a
    # random modulation that at init outweighs the image (docs/DEMO.md).
    use_latent: bool = True
    # The log variance: the 6-channel ToRGB sum ("torgb", Supp. A's "6 channels") or that plus a
    # small conv head on the full-resolution feature and the mean ("conv"; VarianceHead).
    var_head: str = "torgb"
    var_head_channels: int = 32                    # hidden width of the "conv" head
    # True: the NLL reaches only the variance's own weights (ToRGB log-variance rows, the head).
    var_stop_grad: bool = False
    log_var_min: float = -12.0                     # soft clamp of the log variance (sigma >= 0.0025)
    log_var_max: float = 4.0                       # (sigma <= 7.4, i.e. beyond the [-1,1] range)
    # Gains on the summed ToRGB output: the mean channels (output_gain) and the log variance
    # (var_gain). MAT's is 1.0; a smaller gain keeps the large initial output off the soft clamp,
    # where the NLL gradient vanishes (docs/DEMO.md).
    output_gain: float = 1.0
    var_gain: float = 1.0
    # Supp. A feeds the time step as the 7th input channel. False feeds 0 there: a test T other than
    # the training T shows t values never trained on, while the mask channels already say how far
    # the spread has got.
    time_input: bool = True

    def channels(self, down: int) -> int:
        """Channels at H / 2**down: 64, 128, 256, 512, 512, 512."""
        return min(self.channel_base * 2**down, self.channel_max)

    @property
    def multiple(self) -> int:
        """Image height and width must be multiples of this (2**num_down)."""
        return 2**self.num_down

    @property
    def num_ws(self) -> int:
        """Style rows of the mapping network (MAT: 2 per decoder resolution, first_res = log2(H/2^num_down))."""
        return num_style_rows(self.num_down)

    def _check(self, h: int, w: int) -> None:
        if not isinstance(self.num_down, int) or self.num_down < 1:
            raise ValueError(f"Generator: num_down {self.num_down!r} must be an integer >= 1")
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"Generator: image size {h}x{w} must be divisible by {self.multiple}")
        if self.resolution % self.multiple or self.resolution & (self.resolution - 1):
            raise ValueError(f"Generator: resolution {self.resolution} must be a power of 2 >= {self.multiple}")
        bad = [f for f in self.attention_downsample if f not in (2**k for k in range(self.num_down + 1))]
        if bad:
            raise ValueError(f"Generator: attention_downsample {tuple(self.attention_downsample)} must be "
                             f"powers of 2 up to {self.multiple}")
        if self.var_head not in VAR_HEADS:
            raise ValueError(f"Generator: var_head {self.var_head!r} must be one of {VAR_HEADS}")

    def _attention(self, name: str, x_NHWC: Array, u_BHW1: Array, down: int) -> Array:
        """Early conv block + attention blocks, if H / 2**down is an attention scale."""
        if 2**down not in tuple(self.attention_downsample):
            return x_NHWC
        x_NHWC = ResBlock(x_NHWC.shape[-1], down=False, name=f"{name}_early{down}")(x_NHWC)
        for i in range(self.attention_depth):
            x_NHWC = AttentionBlock(self.num_heads, self.uncertainty_guided, self.uga_channels,
                                    self.mlp_ratio, name=f"{name}_attn{down}_{i}")(x_NHWC, u_BHW1)
        return x_NHWC

    @nn.compact
    def __call__(self, x: Array, m0: Array, m: Array, u: Array, t_frac: Array | float, *,
                 z: Array | None = None, noise_mode: NoiseMode = "random",
                 train: bool = False, style_mixing_prob: float = 0.0) -> tuple[Array, Array]:
        """x [B,H,W,3], m0/m/u [B,H,W,1], t_frac scalar or [B] -> (mean, log_var), both [B,H,W,3].

        ``style_mixing_prob`` (training only, MAT's run_G): with this probability per call, the ws
        rows from a random cutoff in [1, num_ws) on come from a second latent (one coin and one
        cutoff for the whole batch; the second mapping pass never updates w_avg).
        """
        b, h, w, _ = x.shape
        self._check(h, w)
        dtype = x.dtype
        t_B = jnp.broadcast_to(jnp.asarray(t_frac, dtype).reshape(-1), (b,))
        t_BHW1 = jnp.broadcast_to(t_B[:, None, None, None] - 0.5, (b, h, w, 1))
        if not self.time_input:
            t_BHW1 = jnp.zeros_like(t_BHW1)
        in_BHW7 = jnp.concatenate(
            [x, m0.astype(dtype) - 0.5, m.astype(dtype) - 0.5, u.astype(dtype) - 0.5, t_BHW1], -1)

        # ---- encoder: H -> H / 2**num_down, keeping each scale's features for the U-Net skips.
        nd = self.num_down
        top = int(math.log2(self.resolution))           # log2 of the training resolution
        first_res = top - nd                              # decoder's first block, MAT's `res` index
        feat = EncFromRGB(self.channels(0), name="enc_from_rgb")(in_BHW7)
        skips = {top: feat}
        for d in range(1, nd + 1):
            feat = ResBlock(self.channels(d), name=f"enc_res{d}")(feat)
            feat = self._attention("enc", feat, u, d)
            skips[top - d] = feat

        # ---- style: global image code + mapped latent (MAT's style_code(w_i, gs)).
        num_down = max(0, min(self.global_style_down, first_res))
        gs_BG = ToStyle(self.global_style_dim, num_down=num_down, name="to_style")(feat)
        if z is None:
            z = (jax.random.normal(self.make_rng("latent"), (b, self.z_dim), dtype)
                 if self.use_latent else jnp.zeros((b, self.z_dim), dtype))
        num_ws = self.num_ws
        mapping = MappingNetwork(self.z_dim, self.w_dim, num_ws, num_layers=self.mapping_layers,
                                 name="mapping")
        ws_BNW = mapping(z, update_w_avg=train).astype(dtype)
        if style_mixing_prob > 0 and self.use_latent:
            k_z2, k_cut, k_coin = jax.random.split(self.make_rng("latent"), 3)
            z2 = jax.random.normal(k_z2, z.shape, z.dtype)
            ws2_BNW = mapping(z2, update_w_avg=False).astype(dtype)
            cutoff = jax.random.randint(k_cut, (), 1, num_ws)
            cutoff = jnp.where(jax.random.uniform(k_coin) < style_mixing_prob, cutoff, num_ws)
            ws_BNW = jnp.where((jnp.arange(num_ws) >= cutoff)[None, :, None], ws2_BNW, ws_BNW)

        # ---- decoder: H / 2**num_down -> H, StyleGAN2 blocks with ToRGB skips (6 channels).
        # With var_stop_grad the ToRGBs' log-variance channels read the features through a stop-gradient.
        dec = dict(img_channels=OUT_CHANNELS, use_noise=self.use_noise, first_res=first_res,
                   rgb_grad_channels=3 if self.var_stop_grad else None)
        feat, img = DecBlockFirstV2(self.channels(nd), res=first_res, name="dec_first", **dec)(
            feat, ws_BNW, gs_BG, skips, noise_mode)
        feat = self._attention("dec", feat, u, nd)
        for d in range(nd - 1, -1, -1):
            feat, img = DecBlock(self.channels(d), res=top - d, name=f"dec_res{d}", **dec)(
                feat, img, ws_BNW, gs_BG, skips, noise_mode)
            feat = self._attention("dec", feat, u, d)

        mean_BHW3 = img[..., :3]
        if self.output_gain != 1.0:
            mean_BHW3 = mean_BHW3 * jnp.asarray(self.output_gain, img.dtype)
        raw_BHW3 = img[..., 3:]
        if self.var_head == "conv":
            head_in = jnp.concatenate([feat, mean_BHW3], -1)
            if self.var_stop_grad:
                head_in = jax.lax.stop_gradient(head_in)
            raw_BHW3 = raw_BHW3 + VarianceHead(self.var_head_channels, name="var_head")(head_in)
        if self.var_gain != 1.0:
            raw_BHW3 = raw_BHW3 * jnp.asarray(self.var_gain, img.dtype)
        log_var_BHW3 = soft_clamp(raw_BHW3, self.log_var_min, self.log_var_max)
        return mean_BHW3, log_var_BHW3


def make_apply_fn(generator: Generator, variables: Any, *, noise_mode: NoiseMode = "random",
                  style_mixing_prob: float = 0.0) -> Callable:
    """The ``apply_fn(x, m0, m, u, t_frac, key) -> (mean, log_var)`` that ``pixel_spread`` expects.

    ``key`` is split into the "latent" (z) and "noise" (StyleConv noise) streams.
    ``style_mixing_prob`` > 0 only in training (``loss.style_mixing_prob``).
    """
    def apply_fn(x, m0, m, u, t_frac, key):
        k_latent, k_noise = jax.random.split(key)
        return generator.apply(variables, x, m0, m, u, t_frac, noise_mode=noise_mode,
                               style_mixing_prob=style_mixing_prob,
                               rngs={"latent": k_latent, "noise": k_noise})
    return apply_fn


def model_config(variant: str) -> ml_collections.ConfigDict:
    """``config.model`` for a variant: "paper512" (Sec. 4.2), "paper256" (Sec. 4.3 ablations,
    same widths) or "tiny" (16x16, 2 levels, few channels; CPU tests). Keys are the Generator fields."""
    fields = {f.name: f.default for f in Generator.__dataclass_fields__.values()
              if f.name not in ("parent", "name")}
    if variant == "paper512":
        pass
    elif variant == "paper256":
        fields["resolution"] = 256
    elif variant == "tiny":
        # The test model, cheap to compile (docs/TESTING.md): every code path of the paper model on a
        # 2-level U-Net at 16 px (4x4 bottleneck, as 512 px has 16x16), attention at the bottleneck only.
        fields.update(resolution=16, num_down=2, channel_base=8, channel_max=32, z_dim=32, w_dim=32,
                      mapping_layers=2, global_style_dim=32, attention_downsample=(4,), num_heads=2,
                      uga_channels=8)
    else:
        raise ValueError(f"unknown generator variant {variant!r}; expected paper512, paper256 or tiny")
    return ml_collections.ConfigDict(fields)
