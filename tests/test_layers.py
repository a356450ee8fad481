"""Unit tests of the StyleGAN2/MAT blocks that need no golden data: FIR ops against a direct numpy reference,
modulated-conv implementations agreeing, StyleConv noise modes, mapping w_avg, decoder ws rows, and the
torch<->Flax converter (errors, names, exact round trips)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax.models import discriminator as disc
from psm_jax.models import layers, mapping, mat_blocks, ops
from psm_jax.models.convert import ConversionSpec, flax_to_torch, torch_to_flax

RNG = np.random.default_rng(0)


def _init(module, *args, seed: int = 0, **static_kwargs):
    """Jitted init (eager init compiles every op and RNG kernel separately, which is slow on CPU)."""
    return jax.jit(lambda key, *a: module.init(key, *a, **static_kwargs))(jax.random.key(seed), *args)


def _apply(module, variables, *args, **static_kwargs):
    """Jitted apply; keyword arguments (noise_mode, mutable, ...) are static."""
    return jax.jit(lambda v, *a: module.apply(v, *a, **static_kwargs))(variables, *args)


def _normal(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- ops


def _upfirdn_reference(x_NHWC, f2d, up, down, pads, gain):
    """Literal upfirdn: zero insertion, pad/crop, flipped-filter valid convolution, subsampling (float64)."""
    x = np.asarray(x_NHWC, np.float64)
    n, h, w, c = x.shape
    u = np.zeros((n, h * up, w * up, c))
    u[:, ::up, ::up] = x
    x0, x1, y0, y1 = pads
    u = np.pad(u, ((0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0)), (0, 0)))
    u = u[:, max(-y0, 0):u.shape[1] - max(-y1, 0), max(-x0, 0):u.shape[2] - max(-x1, 0)]
    f = np.asarray(f2d, np.float64)[::-1, ::-1] * gain
    fh, fw = f.shape
    oh, ow = u.shape[1] - fh + 1, u.shape[2] - fw + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(fh):
        for j in range(fw):
            out += f[i, j] * u[:, i:i + oh, j:j + ow]
    return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pads,gain", [(2, 1, (3, 2, 3, 2), 4.0), (1, 2, (1, 1, 1, 1), 1.0),
                                               (2, 2, (1, -1, 0, 2), 2.0), (1, 1, (-1, 0, 2, -2), 1.0)])
def test_upfirdn2d_matches_direct_definition(up, down, pads, gain):
    x = _normal(2, 7, 9, 3)
    asym = np.arange(1.0, 13.0).reshape(3, 4) / 78.0  # asymmetric: catches a missing filter flip
    want = _upfirdn_reference(x, asym, up, down, pads, gain)
    np.testing.assert_allclose(ops.upfirdn2d(x, asym, up, down, pads, gain), want, rtol=1e-5, atol=1e-5)
    # The default separable [1,3,3,1] filter equals MAT's stored 4x4 outer product.
    want = _upfirdn_reference(x, ops.fir_filter_2d(), up, down, pads, gain)
    np.testing.assert_allclose(ops.upfirdn2d(x, None, up, down, pads, gain), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 2, 1), (2, 1, 1)])
def test_conv2d_resample_matches_reference_composition(up, down, k):
    """Fast paths == upfirdn2d(up, pads, gain up^2) -> valid correlation -> FIR down (MAT's definition)."""
    x, w = _normal(2, 8, 6, 4), _normal(k, k, 4, 5)
    p = k // 2
    x0 = x1 = y0 = y1 = p
    if up > 1:
        x0, x1, y0, y1 = x0 + 2, x1 + 1, y0 + 2, y1 + 1
    if down > 1:
        x0, x1, y0, y1 = x0 + 1, x1 + 1, y0 + 1, y1 + 1
    z = ops.upfirdn2d(x, ops.fir_filter_2d() if up > 1 else np.ones((1, 1)), up=up, padding=(x0, x1, y0, y1),
                      gain=up * up)
    want = jax.lax.conv_general_dilated(z, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if down > 1:
        want = ops.upfirdn2d(want, ops.fir_filter_2d(), down=down)
    got = ops.conv2d_resample(x, w, ops.fir_filter_2d(), up=up, down=down, padding=p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- modulated conv


@pytest.mark.parametrize("up,demodulate,k", [(1, True, 3), (2, True, 3), (1, False, 1)])
def test_modulated_conv_impls_agree(up, demodulate, k):
    x, style = _normal(3, 6, 5, 4), _normal(3, 10)
    style2 = style.copy()
    style2[1] += 1.0
    # The parameters do not depend on impl, so one init serves all three.
    variables = _init(layers.ModulatedConv2d(6, k, demodulate=demodulate, up=up), x, style)
    outs = {}
    for impl in layers.MODCONV_IMPLS:
        module = layers.ModulatedConv2d(6, k, demodulate=demodulate, up=up, impl=impl)
        run = jax.jit(module.apply)
        outs[impl] = np.asarray(run(variables, x, style))
        # Samples are modulated independently: changing sample 1's style leaves sample 0 untouched.
        y2 = np.asarray(run(variables, x, style2))
        np.testing.assert_allclose(y2[0], outs[impl][0], rtol=1e-6, atol=1e-6)
        assert not np.allclose(y2[1], outs[impl][1])
    assert outs["grouped"].shape == (3, 6 * up, 5 * up, 6)
    for impl in layers.MODCONV_IMPLS[1:]:
        np.testing.assert_allclose(outs[impl], outs["grouped"], rtol=2e-5, atol=2e-5)


def test_demodulation_normalises_output_weights():
    kernel, styles = jnp.asarray(_normal(3, 3, 4, 5)), jnp.asarray(_normal(2, 4))
    scale, decoef = layers.modulation(kernel, styles, demodulate=True)
    w = kernel[None] * scale[:, None, None, :, None] * decoef[:, None, None, None, :]
    np.testing.assert_allclose(np.sum(np.square(w), axis=(1, 2, 3)), 1.0, rtol=1e-5)
    assert layers.modulation(kernel, styles, demodulate=False)[1] is None


# ----------------------------------------------------------------------------- StyleConv noise


def test_styleconv_noise_modes():
    x, style = _normal(2, 8, 8, 4), _normal(2, 6)
    module = layers.StyleConv(3, 3, resolution=8, activation="linear")
    variables = _init(module, x, style, noise_mode="const")
    variables = {"params": {**variables["params"], "noise_strength": jnp.asarray(0.7)},
                 "buffers": variables["buffers"]}
    apply = lambda mode, key=0: _apply(module, variables, x, style, noise_mode=mode,  # noqa: E731
                                       rngs={"noise": jax.random.key(key)})
    none, const = apply("none"), apply("const")
    # 'none' equals a layer without noise parameters (what MAT's use_noise=False computes).
    plain = layers.StyleConv(3, 3, resolution=8, use_noise=False, activation="linear")
    plain_vars = {"params": {k: v for k, v in variables["params"].items() if k != "noise_strength"}}
    np.testing.assert_allclose(_apply(plain, plain_vars, x, style, noise_mode="none"), none, rtol=1e-6)
    # 'const' adds noise_const * strength, shared over batch and channels (linear act: visible as is).
    want = 0.7 * variables["buffers"]["noise_const"][None, :, :, None]
    np.testing.assert_allclose(const - none, np.broadcast_to(want, none.shape), rtol=1e-5, atol=1e-5)
    # 'random' draws from the "noise" rng: deterministic per key, one map per sample shared by channels.
    r0, r0b, r1 = apply("random", 0), apply("random", 0), apply("random", 1)
    np.testing.assert_array_equal(r0, r0b)
    assert not np.allclose(r0, r1)
    diff = np.asarray(r0 - none)
    np.testing.assert_allclose(diff, np.broadcast_to(diff[..., :1], diff.shape), rtol=1e-5, atol=1e-5)
    assert not np.allclose(diff[0], diff[1])
    with pytest.raises(ValueError, match="noise_mode"):
        apply("bogus")
    with pytest.raises(ValueError, match="8x8"):
        _apply(module, variables, _normal(2, 4, 4, 4), style, noise_mode="const")


def test_torgb_upsamples_half_resolution_skip():
    x, style, skip = _normal(2, 8, 8, 4), _normal(2, 6), _normal(2, 4, 4, 3)
    module = layers.ToRGB(3)
    variables = _init(module, x, style)
    run = jax.jit(module.apply)
    base = run(variables, x, style)
    np.testing.assert_allclose(run(variables, x, style, skip) - base, ops.upsample2d(skip), rtol=1e-5, atol=1e-5)
    same = _normal(2, 8, 8, 3)
    np.testing.assert_allclose(run(variables, x, style, same) - base, same, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- mapping and decoder rows


def test_mapping_w_avg_updates_only_in_train_mode():
    z = _normal(4, 8)
    net = mapping.MappingNetwork(8, 8, num_ws=3, num_layers=2)
    variables = _init(net, z)
    ws = _apply(net, variables, z)
    assert ws.shape == (4, 3, 8)
    _, frozen = _apply(net, variables, z, mutable=["buffers"])
    np.testing.assert_array_equal(frozen["buffers"]["w_avg"], variables["buffers"]["w_avg"])
    _, moved = _apply(net, variables, z, update_w_avg=True, mutable=["buffers"])
    want = 0.005 * np.asarray(ws[:, 0]).mean(axis=0)  # from w_avg = 0
    np.testing.assert_allclose(moved["buffers"]["w_avg"], want, rtol=1e-5, atol=1e-7)
    # Truncation with a cutoff only moves the first rows toward w_avg.
    bufs = {"params": variables["params"], "buffers": {"w_avg": jnp.ones(8)}}
    cut = _apply(net, bufs, z, truncation_psi=0.5, truncation_cutoff=1)
    np.testing.assert_allclose(cut[:, 0], 1 + 0.5 * (ws[:, 0] - 1), rtol=1e-5)
    np.testing.assert_array_equal(cut[:, 1:], ws[:, 1:])


@pytest.mark.parametrize("first_res,res,rows", [(4, 5, (1, 2, 3)), (2, 4, (3, 4, 5))])
def test_decblock_reads_its_ws_rows(first_res, res, rows):
    size = 2 ** res
    block = mat_blocks.DecBlock(4, res=res, first_res=first_res, use_noise=False)
    x, img, gs = _normal(1, size // 2, size // 2, 4), _normal(1, size // 2, size // 2, 3), _normal(1, 3)
    ws = _normal(1, 6, 5)
    feats = {res: _normal(1, size, size, 4)}
    variables = _init(block, x, img, ws, gs, feats, noise_mode="none")

    def img_energy(w):
        return jnp.sum(jnp.square(block.apply(variables, x, img, w, gs, feats, noise_mode="none")[1]))

    grad_rows = np.abs(np.asarray(jax.jit(jax.grad(img_energy))(ws))).sum(axis=(0, 2))
    assert tuple(np.flatnonzero(grad_rows)) == rows, grad_rows


# ----------------------------------------------------------------------------- converter


def _decoder_and_args():
    block = mat_blocks.DecBlockFirstV2(4, res=2, first_res=2)
    args = (_normal(2, 4, 4, 5), _normal(2, 3, 6), _normal(2, 2), {2: _normal(2, 4, 4, 4)})
    return block, args


def _random_state_dict(spec: ConversionSpec) -> dict[str, np.ndarray]:
    return {e.torch_name: ops.fir_filter_2d() if e.layout == "filter" else _normal(*e.torch_shape)
            for e in spec.entries}


def test_spec_names_follow_mat():
    block, args = _decoder_and_args()
    spec = ConversionSpec.from_module(block, *args, noise_mode="const")
    shapes = {e.torch_name: e.torch_shape for e in spec.entries}
    assert shapes == {
        "conv0.weight": (4, 5, 3, 3), "conv0.bias": (4,), "conv0.resample_filter": (4, 4),
        "conv1.noise_strength": (), "conv1.bias": (4,), "conv1.noise_const": (4, 4),
        "conv1.conv.weight": (1, 4, 4, 3, 3), "conv1.conv.affine.weight": (4, 8), "conv1.conv.affine.bias": (4,),
        "conv1.conv.resample_filter": (4, 4), "toRGB.bias": (3,), "toRGB.resample_filter": (4, 4),
        "toRGB.conv.weight": (1, 3, 4, 1, 1), "toRGB.conv.affine.weight": (4, 8), "toRGB.conv.affine.bias": (4,),
        "toRGB.conv.resample_filter": (4, 4)}
    d_spec = ConversionSpec.from_module(disc.Discriminator(16, channel_base=64, channel_max=8),
                                        _normal(2, 16, 16, 3), _normal(2, 16, 16, 1))
    names = set(d_spec.torch_names())
    assert {"Dis.0.conv.weight", "Dis.1.skip.weight", "Dis.2.conv1.bias", "Dis.4.weight", "fc0.weight",
            "fc1.bias"} <= names
    assert not any(n.startswith("Dis.3.") for n in names)  # the parameter-free minibatch-std slot
    s_spec = ConversionSpec.from_module(mat_blocks.ToStyle(6), _normal(1, 16, 16, 4))
    assert {"conv.0.weight", "conv.2.resample_filter", "fc.weight"} <= set(s_spec.torch_names())


def test_round_trips_are_exact():
    block, args = _decoder_and_args()
    spec = ConversionSpec.from_module(block, *args, noise_mode="const")
    sd = _random_state_dict(spec)
    variables = torch_to_flax(spec, sd)
    assert set(variables) == {"params", "buffers"}
    back = flax_to_torch(spec, variables)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    # Flax -> torch -> Flax from freshly initialised variables.
    init_vars = _init(block, *args, seed=3, noise_mode="const")
    again = torch_to_flax(spec, flax_to_torch(spec, init_vars))
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, init_vars))
    # And the converted variables run.
    assert _apply(block, variables, *args, noise_mode="const")[1].shape == (2, 4, 4, 3)


def test_converter_errors_name_the_key():
    block, args = _decoder_and_args()
    spec = ConversionSpec.from_module(block, *args, noise_mode="const")
    sd = _random_state_dict(spec)
    missing = {k: v for k, v in sd.items() if k != "conv1.conv.affine.bias"}
    with pytest.raises(ValueError, match=r"missing.*conv1\.conv\.affine\.bias"):
        torch_to_flax(spec, missing)
    with pytest.raises(ValueError, match=r"unexpected.*conv1\.extra"):
        torch_to_flax(spec, {**sd, "conv1.extra": np.zeros(3)})
    with pytest.raises(ValueError, match=r"shape mismatch.*'toRGB\.conv\.weight'"):
        torch_to_flax(spec, {**sd, "toRGB.conv.weight": np.zeros((1, 3, 4, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"'conv0\.resample_filter'.*FIR"):
        torch_to_flax(spec, {**sd, "conv0.resample_filter": np.eye(4, dtype=np.float32)})
    variables = torch_to_flax(spec, sd)
    no_bias = {"params": {**variables["params"], "toRGB": {"conv": variables["params"]["toRGB"]["conv"]}},
               "buffers": variables["buffers"]}
    with pytest.raises(ValueError, match=r"missing Flax variable params/toRGB/bias"):
        flax_to_torch(spec, no_bias)
    with pytest.raises(ValueError, match=r"unexpected Flax collection"):
        flax_to_torch(spec, {**variables, "batch_stats": {}})
    with pytest.raises(ValueError, match=r"unexpected Flax variable.*params/extra"):
        flax_to_torch(spec, {**variables, "params": {**variables["params"], "extra": np.zeros(1)}})
