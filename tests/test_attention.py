"""Tests for the uncertainty-guided attention (paper Eq. 6)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax.models.attention import (AttentionBlock, UncertaintyBias, UncertaintyGuidedAttention,
                                      resize_uncertainty)

B, H, W, C, HEADS = 2, 4, 4, 16, 2


@pytest.fixture(scope="module")
def inputs():
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (B, H, W, C))
    u = (jax.random.uniform(k2, (B, 4 * H, 4 * W, 1)) > 0.5).astype(jnp.float32)
    return x, u


def reference_attention(params, x, bias):
    """Eq. 6 written out with numpy from the module's own parameters."""
    p = params["params"]
    x = np.asarray(x, np.float64).reshape(B, H * W, C)
    qkv = x @ (np.asarray(p["qkv"]["kernel"]) / np.sqrt(C)) + np.asarray(p["qkv"]["bias"])
    q, k, v = np.split(qkv.reshape(B, H * W, 3, HEADS, C // HEADS), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    logits = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(C // HEADS)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bnqk,bknd->bqnd", probs, v).reshape(B, H * W, C)
    out = out @ (np.asarray(p["proj"]["kernel"]) / np.sqrt(C)) + np.asarray(p["proj"]["bias"])
    return out.reshape(B, H, W, C)


def test_resize_uncertainty_area_average():
    u = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(resize_uncertainty(u, (2, 2))[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])
    assert resize_uncertainty(u, (4, 4)) is u
    assert resize_uncertainty(u, (3, 3)).shape == (1, 3, 3, 1)


def test_uncertainty_bias_has_four_convs_and_per_key_shape(inputs):
    _, u = inputs
    f = UncertaintyBias(num_heads=HEADS, channels=8)
    variables = f.init(jax.random.key(1), u)
    assert sorted(variables["params"]) == ["conv0", "conv1", "conv2", "conv3"]
    for i in range(4):
        assert variables["params"][f"conv{i}"]["kernel"].shape[:2] == (3, 3)
    bias = f.apply(variables, u)
    assert bias.shape == (B, HEADS, 1, u.shape[1] * u.shape[2])


def test_guided_attention_matches_eq6(inputs):
    x, u = inputs
    attn = UncertaintyGuidedAttention(num_heads=HEADS, uncertainty_guided=True, bias_channels=8)
    variables = attn.init(jax.random.key(2), x, u)
    out, state = attn.apply(variables, x, u, mutable=["intermediates"])
    bias = state["intermediates"]["attention_bias"][0]
    assert bias.shape == (B, HEADS, 1, H * W)
    expected_bias = UncertaintyBias(HEADS, 8).apply(
        {"params": variables["params"]["uncertainty_bias"]}, resize_uncertainty(u, (H, W)))
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out, reference_attention(variables, x, bias), rtol=1e-4, atol=1e-4)
    # The output depends on u through F.
    out2 = attn.apply(variables, x, 1.0 - u)
    assert not np.allclose(out, out2)


def test_plain_attention_has_no_bias(inputs):
    """Model F (UGA off): no F parameters, no bias, and u has no effect."""
    x, u = inputs
    attn = UncertaintyGuidedAttention(num_heads=HEADS, uncertainty_guided=False)
    variables = attn.init(jax.random.key(2), x, u)
    assert "uncertainty_bias" not in variables["params"]
    out, state = attn.apply(variables, x, u, mutable=["intermediates"])
    assert "attention_bias" not in state.get("intermediates", {})
    np.testing.assert_allclose(out, reference_attention(variables, x, None), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out, attn.apply(variables, x, 1.0 - u))
    np.testing.assert_array_equal(out, attn.apply(variables, x, None))


def test_constant_bias_is_a_no_op(inputs):
    """Softmax is shift-invariant: when F's last conv outputs a constant, UGA equals plain attention,
    so any effect of u must come through F's per-key variation."""
    x, u = inputs
    attn = UncertaintyGuidedAttention(num_heads=HEADS, uncertainty_guided=True, bias_channels=8)
    variables = attn.init(jax.random.key(3), x, u)
    params = jax.tree.map(np.asarray, variables["params"])
    conv3 = params["uncertainty_bias"]["conv3"]
    flat = {"params": {**params, "uncertainty_bias": {**params["uncertainty_bias"], "conv3": {
        "kernel": np.zeros_like(conv3["kernel"]), "bias": np.full_like(conv3["bias"], 3.0)}}}}
    np.testing.assert_allclose(attn.apply(flat, x, u), reference_attention(variables, x, None),
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(attn.apply(variables, x, u), attn.apply(flat, x, u))


def test_attention_block_shapes_and_dtype(inputs):
    x, u = inputs
    block = AttentionBlock(num_heads=HEADS, mlp_ratio=2.0, bias_channels=8)
    variables = block.init(jax.random.key(4), x, u)
    y = block.apply(variables, x, u)
    assert y.shape == x.shape and y.dtype == x.dtype
    y16 = block.apply(jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables),
                      x.astype(jnp.bfloat16), u.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y16, np.float32)).all()
    assert "uncertainty_bias" in variables["params"]["attn"]
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(num_heads=3).init(jax.random.key(0), x, u)
