"""Uncertainty-guided attention (paper Sec. 3.2, Eq. 6, Fig. 4; Supp. A).

    Attention(q, k, v, u) = softmax(q k^T / sqrt(d_k) + F(u)) v

``F`` is the paper's "adaptive mapping function": 4 equalized-lr 3x3 conv layers on the
uncertainty map (resized to the attention resolution). Its output has one channel per head and
is read as a **per-key** bias (the reshape in Eq. 6): every query adds the same learned bias to
key ``j``, so the network can learn to down-weight uncertain (missing) pixels as information
sources, whatever the feature similarity says. That is the failure Sec. 3.2 describes: holes
are initialised with the same value, so their features are similar and plain attention lets
them attend to each other and blur the valid pixels.

Choices the paper leaves open (documented here, configured from the generator):
* The uncertainty map is resized by **area averaging** when the attention grid divides the image
  (always the case in the U-Net: factors 16 and 32), otherwise bilinearly. Averaging keeps the
  fraction of uncertain pixels in each cell, which is what a key token summarises.
* F's hidden width is ``bias_channels`` (32 by default); the first three convs use lrelu, the
  last is linear. The bias is shared by all queries, one value per head and key.
* The block around the attention is a pre-norm transformer block: LayerNorm -> multi-head
  attention -> residual, LayerNorm -> MLP (``mlp_ratio``, lrelu) -> residual. Projections are
  the equalized-lr ``FullyConnected`` layers used everywhere else in the generator.
* With ``uncertainty_guided=False`` (Table 1, model F) the block is plain multi-head attention:
  F is not built (no parameters) and ``u`` is ignored.
* The bias is recorded with ``self.sow("intermediates", "attention_bias", ...)`` so tests and
  visualisations can read it (``apply(..., mutable=["intermediates"])``).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from psm_jax.models.layers import Conv2dLayer, FullyConnected

Array = jnp.ndarray


def resize_uncertainty(u_BHW1: Array, size: tuple[int, int]) -> Array:
    """Resizes u to ``size`` (area average for integer downsampling, else bilinear)."""
    b, h, w, c = u_BHW1.shape
    th, tw = size
    if (h, w) == (th, tw):
        return u_BHW1
    if h % th == 0 and w % tw == 0:
        fh, fw = h // th, w // tw
        return u_BHW1.reshape(b, th, fh, tw, fw, c).mean(axis=(2, 4))
    return jax.image.resize(u_BHW1, (b, th, tw, c), method="linear")


class UncertaintyBias(nn.Module):
    """F(u) of Eq. 6: 4 conv 3x3 layers, u [B,h,w,1] -> per-head, per-key bias [B,heads,1,h*w]."""

    num_heads: int
    channels: int = 32     # hidden width of F
    num_layers: int = 4    # the paper's 4 conv layers

    @nn.compact
    def __call__(self, u_BHW1: Array) -> Array:
        h_BHWC = u_BHW1
        for i in range(self.num_layers - 1):
            h_BHWC = Conv2dLayer(self.channels, 3, activation="lrelu", name=f"conv{i}")(h_BHWC)
        h_BHWN = Conv2dLayer(self.num_heads, 3, name=f"conv{self.num_layers - 1}")(h_BHWC)
        b, hh, ww, n = h_BHWN.shape
        return h_BHWN.reshape(b, hh * ww, n).transpose(0, 2, 1)[:, :, None, :]


class UncertaintyGuidedAttention(nn.Module):
    """Multi-head self-attention over the h*w tokens of x_BHWC with the Eq. 6 bias."""

    num_heads: int
    uncertainty_guided: bool = True   # False: plain attention (Table 1, model F)
    bias_channels: int = 32

    @nn.compact
    def __call__(self, x_BHWC: Array, u_BHW1: Array | None = None) -> Array:
        b, h, w, c = x_BHWC.shape
        if c % self.num_heads:
            raise ValueError(f"attention: {c} channels not divisible by num_heads={self.num_heads}")
        d = c // self.num_heads
        tokens_BSC = x_BHWC.reshape(b, h * w, c)
        qkv_BS3C = FullyConnected(3 * c, name="qkv")(tokens_BSC)
        q_BSND, k_BSND, v_BSND = jnp.split(qkv_BS3C.reshape(b, h * w, 3, self.num_heads, d), 3, axis=2)
        q_BSND, k_BSND, v_BSND = (t[:, :, 0] for t in (q_BSND, k_BSND, v_BSND))
        # Softmax in float32 even under bf16 compute: the logits of 1024 keys need the range.
        logits_BNQK = jnp.einsum("bqnd,bknd->bnqk", q_BSND, k_BSND,
                                 preferred_element_type=jnp.float32) / math.sqrt(d)
        if self.uncertainty_guided:
            if u_BHW1 is None:
                raise ValueError("uncertainty-guided attention needs the uncertainty map u")
            u_hw = resize_uncertainty(u_BHW1.astype(x_BHWC.dtype), (h, w))
            bias_BN1K = UncertaintyBias(self.num_heads, self.bias_channels, name="uncertainty_bias")(u_hw)
            self.sow("intermediates", "attention_bias", bias_BN1K)
            logits_BNQK = logits_BNQK + bias_BN1K.astype(jnp.float32)
        probs_BNQK = jax.nn.softmax(logits_BNQK, axis=-1).astype(x_BHWC.dtype)
        out_BSND = jnp.einsum("bnqk,bknd->bqnd", probs_BNQK, v_BSND)
        out_BSC = FullyConnected(c, name="proj")(out_BSND.reshape(b, h * w, c))
        return out_BSC.reshape(b, h, w, c)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x), u), then x + MLP(LN(x)). NHWC in and out."""

    num_heads: int
    uncertainty_guided: bool = True
    bias_channels: int = 32
    mlp_ratio: float = 2.0

    @nn.compact
    def __call__(self, x_BHWC: Array, u_BHW1: Array | None = None) -> Array:
        c = x_BHWC.shape[-1]
        y = nn.LayerNorm(epsilon=1e-5, name="norm1")(x_BHWC)
        x_BHWC = x_BHWC + UncertaintyGuidedAttention(
            self.num_heads, self.uncertainty_guided, self.bias_channels, name="attn")(y, u_BHW1)
        y = nn.LayerNorm(epsilon=1e-5, name="norm2")(x_BHWC)
        y = FullyConnected(int(c * self.mlp_ratio), activation="lrelu", name="mlp_fc0")(y)
        y = FullyConnected(c, name="mlp_fc1")(y)
        return x_BHWC + y
