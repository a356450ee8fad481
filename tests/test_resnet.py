"""Tests for psm_jax.models.resnet: torchvision converter, loud errors, numerics vs numpy, dilation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax.models import resnet

EPS = 1e-5


# ----------------------------------------------------------------------------- torchvision layout
def torchvision_state_dict(stage_sizes=resnet.RESNET50_STAGES, base_width=64, seed=0,
                           shapes_only=False) -> dict[str, np.ndarray]:
    """A random state dict with torchvision's ResNet names and OIHW shapes, written from the
    torchvision layout (not from the converter), incl. fc.* and num_batches_tracked."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv(name, o, i, k):
        shape = (o, i, k, k)
        sd[name] = (np.empty(shape, np.float32) if shapes_only
                    else rng.normal(0, np.sqrt(2.0 / (i * k * k)), shape).astype(np.float32))

    def bn(name, c):
        if shapes_only:
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{name}.{leaf}"] = np.empty((c,), np.float32)
        else:
            sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
            sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
            sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1.weight", base_width, 3, 7)
    bn("bn1", base_width)
    inplanes = base_width
    for i, n in enumerate(stage_sizes):
        width = base_width * 2 ** i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            conv(f"{p}.conv1.weight", width, inplanes, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2.weight", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3.weight", 4 * width, width, 1)
            bn(f"{p}.bn3", 4 * width)
            if j == 0:   # every stage of a bottleneck ResNet starts with a projection
                conv(f"{p}.downsample.0.weight", 4 * width, inplanes, 1)
                bn(f"{p}.downsample.1", 4 * width)
            inplanes = 4 * width
    sd["fc.weight"] = np.zeros((1000, inplanes), np.float32)
    sd["fc.bias"] = np.zeros((1000,), np.float32)
    return sd


def test_resnet50_layout_matches_torchvision_names_and_shapes():
    sd = torchvision_state_dict(shapes_only=True)
    spec = resnet.variable_shapes()
    kept = {k: v.shape for k, v in sd.items() if not k.startswith("fc.") and "num_batches" not in k}
    assert len(kept) == 265   # torchvision resnet50: 320 keys - 53 num_batches_tracked - fc.{weight,bias}
    got = {k: resnet._to_torch_layout(np.empty(s, np.uint8)).shape for k, (_, _, s) in spec.items()}
    assert got == kept


def test_converter_round_trip():
    sd = torchvision_state_dict(base_width=8, seed=1)
    variables = resnet.from_torchvision(sd, base_width=8)
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)                       # HWIO
    np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
                                  sd["layer2.0.downsample.1.running_var"])
    back = resnet.to_torchvision(variables)
    expected = {k: v for k, v in sd.items() if not k.startswith("fc.") and "num_batches" not in k}
    assert set(back) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


@pytest.mark.parametrize("mutate, match", [
    (lambda sd: sd.pop("layer3.1.conv2.weight"), "missing keys.*layer3.1.conv2.weight"),
    (lambda sd: sd.pop("layer1.0.downsample.1.running_mean"), "missing keys.*downsample.1.running_mean"),
    (lambda sd: sd.__setitem__("layer5.0.conv1.weight", np.zeros(1)), "unexpected keys.*layer5.0.conv1.weight"),
    (lambda sd: sd.__setitem__("conv1.weight", np.zeros((8, 3, 3, 3), np.float32)),
     r"shape mismatches.*conv1.weight: got \(8, 3, 3, 3\), expected \(8, 3, 7, 7\)"),
    (lambda sd: sd.__setitem__("bn1.running_var", np.zeros((9,), np.float32)), "shape mismatches.*bn1.running_var"),
])
def test_converter_loud_errors(mutate, match):
    sd = torchvision_state_dict(base_width=8, shapes_only=True)
    mutate(sd)
    with pytest.raises(ValueError, match=match):
        resnet.from_torchvision(sd, base_width=8)


def test_converter_ignores_fc_and_num_batches_tracked():
    sd = torchvision_state_dict(base_width=8, shapes_only=True)
    sd["fc.weight"] = np.zeros((10, 3), np.float32)   # any classifier head
    resnet.from_torchvision(sd, base_width=8)
    sd_no_extras = {k: v for k, v in sd.items() if not k.startswith("fc.") and "num_batches" not in k}
    resnet.from_torchvision(sd_no_extras, base_width=8)


# ----------------------------------------------------------------------------- numerics vs numpy
def np_conv(x, w, stride=1, pad=0, dil=1):
    """Plain NCHW cross-correlation, torch.nn.functional.conv2d semantics, float64."""
    n, c, h, wd = x.shape
    o, i, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, :, a * dil: a * dil + stride * (ho - 1) + 1: stride,
                       b * dil: b * dil + stride * (wo - 1) + 1: stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, a, b])
    return out


def np_bn(x, sd, name):
    r = lambda v: v.reshape(1, -1, 1, 1).astype(np.float64)  # noqa: E731
    return ((x - r(sd[f"{name}.running_mean"])) / np.sqrt(r(sd[f"{name}.running_var"]) + EPS)
            * r(sd[f"{name}.weight"]) + r(sd[f"{name}.bias"]))


def np_maxpool_3x3_s2_p1(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho = (x.shape[2] + 2 - 3) // 2 + 1
    wo = (x.shape[3] + 2 - 3) // 2 + 1
    out = np.full(x.shape[:2] + (ho, wo), -np.inf)
    for a in range(3):
        for b in range(3):
            out = np.maximum(out, xp[:, :, a: a + 2 * (ho - 1) + 1: 2, b: b + 2 * (wo - 1) + 1: 2])
    return out


def np_bottleneck(x, sd, p, stride=1, dilation=1, downsample=False):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = relu(np_bn(np_conv(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    h = relu(np_bn(np_conv(h, sd[f"{p}.conv2.weight"], stride, dilation, dilation), sd, f"{p}.bn2"))
    h = np_bn(np_conv(h, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    skip = x
    if downsample:
        skip = np_bn(np_conv(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
    return relu(h + skip)


def _nhwc(x_nchw):
    return jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32)


def test_stem_and_first_bottleneck_match_numpy():
    stages, width = (1, 1, 1, 1), 16
    sd = torchvision_state_dict(stages, width, seed=2)
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 40))
    model = resnet.ResNet(stage_sizes=stages, base_width=width)
    with jax.default_matmul_precision("highest"):
        feats = jax.jit(model.apply)(resnet.from_torchvision(sd, stage_sizes=stages, base_width=width), _nhwc(x))
    stem = np.maximum(np_bn(np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"), 0)
    layer1 = np_bottleneck(np_maxpool_3x3_s2_p1(stem), sd, "layer1.0", downsample=True)
    for name, want in (("stem", stem), ("layer1", layer1)):
        got = np.asarray(feats[name]).transpose(0, 3, 1, 2)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("stride, dilation", [(1, 2), (2, 1), (1, 4)])
def test_bottleneck_stride_and_dilation_match_numpy(stride, dilation):
    # A lone block (torchvision names under "b"), incl. the dilated 3x3 convs of layer3/layer4.
    rng = np.random.default_rng(4)
    cin, width = 12, 4
    sd = {}
    for name, shape in (("conv1", (width, cin, 1, 1)), ("conv2", (width, width, 3, 3)),
                        ("conv3", (4 * width, width, 1, 1)), ("downsample.0", (4 * width, cin, 1, 1))):
        sd[f"b.{name}.weight"] = rng.normal(0, 0.4, shape).astype(np.float32)
    for name, c in (("bn1", width), ("bn2", width), ("bn3", 4 * width), ("downsample.1", 4 * width)):
        sd[f"b.{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"b.{name}.bias"] = rng.normal(0, 0.2, c).astype(np.float32)
        sd[f"b.{name}.running_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
        sd[f"b.{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    hwio = lambda w: jnp.asarray(w.transpose(2, 3, 1, 0))  # noqa: E731
    params, stats = {}, {}
    for flax_name, torch_name in (("conv1", "conv1"), ("conv2", "conv2"), ("conv3", "conv3"),
                                  ("downsample_conv", "downsample.0")):
        params[flax_name] = {"kernel": hwio(sd[f"b.{torch_name}.weight"])}
    for flax_name, torch_name in (("bn1", "bn1"), ("bn2", "bn2"), ("bn3", "bn3"), ("downsample_bn", "downsample.1")):
        params[flax_name] = {"scale": sd[f"b.{torch_name}.weight"], "bias": sd[f"b.{torch_name}.bias"]}
        stats[flax_name] = {"mean": sd[f"b.{torch_name}.running_mean"], "var": sd[f"b.{torch_name}.running_var"]}
    x = rng.normal(size=(2, cin, 13, 11))
    block = resnet.Bottleneck(width=width, stride=stride, dilation=dilation, downsample=True)
    with jax.default_matmul_precision("highest"):
        got = block.apply({"params": params, "batch_stats": stats}, _nhwc(x))
    want = np_bottleneck(x, sd, "b", stride, dilation, downsample=True)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- dilation
def test_stage_plan_follows_torchvision_dilation_rule():
    plan = resnet.stage_plan(resnet.RESNET50_STAGES, 64, (False, True, True))
    assert [(b["stride"], b["dilation"], b["downsample"]) for b in plan[1][:2]] == [(2, 1, True), (1, 1, False)]
    # layer3: the first block keeps the previous dilation (1), then 2; layer4: 2, then 4.
    assert [(b["stride"], b["dilation"]) for b in plan[2]] == [(1, 1)] + [(1, 2)] * 5
    assert [(b["stride"], b["dilation"]) for b in plan[3]] == [(1, 2), (1, 4), (1, 4)]
    assert plan[2][0]["downsample"] and plan[3][0]["downsample"]
    plain = resnet.stage_plan(resnet.RESNET50_STAGES, 64, (False, False, False))
    assert [b["stride"] for b in plain[3]] == [2, 1, 1] and all(b["dilation"] == 1 for s in plain for b in s)


def test_dilation_keeps_layer3_and_layer4_at_one_eighth():
    x = jnp.zeros((1, 64, 96, 3))
    for dil, want in (((False, True, True), [(16, 24), (8, 12), (8, 12), (8, 12)]),
                      ((False, False, False), [(16, 24), (8, 12), (4, 6), (2, 3)])):
        model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), base_width=4, replace_stride_with_dilation=dil)
        shapes = jax.eval_shape(lambda v: model.apply(v, x), jax.eval_shape(model.init, jax.random.PRNGKey(0), x))
        assert [shapes[n].shape[1:3] for n in resnet.LAYER_NAMES] == want, dil
        assert shapes["stem"].shape == (1, 32, 48, 4) and shapes["layer4"].shape[-1] == 4 * 8 * 4


# ----------------------------------------------------------------------------- loading
def test_load_weights_npz_and_errors(tmp_path, monkeypatch):
    sd = torchvision_state_dict((1, 1, 1, 1), 8, seed=5)
    path = tmp_path / "r.npz"
    np.savez(path, **sd)
    variables = resnet.load_resnet50_weights(path, stage_sizes=(1, 1, 1, 1), base_width=8)
    np.testing.assert_array_equal(variables["params"]["layer4_0"]["conv3"]["kernel"],
                                  sd["layer4.0.conv3.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="r.npz: .*missing keys"):
        resnet.load_resnet50_weights(path)                  # a ResNet-50 needs more blocks
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        resnet.load_resnet50_weights(tmp_path / "nope.npz")
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .npz"):
        resnet.load_resnet50_weights(tmp_path / "w.h5")
    (tmp_path / "w.pth").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)   # torch absent -> ImportError
    with pytest.raises(ValueError, match=r"needs torch.*np.savez") as e:
        resnet.load_resnet50_weights(tmp_path / "w.pth")
    assert "\n" not in str(e.value)


def test_random_variables_match_model_structure():
    v = resnet.random_variables(0, stage_sizes=(1, 1, 1, 1), base_width=8)
    model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), base_width=8)
    want = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert jax.tree.structure(v) == jax.tree.structure(want)
    assert jax.tree.map(lambda a: a.shape, v) == jax.tree.map(lambda a: a.shape, want)
    k = np.asarray(v["params"]["layer2_0"]["conv2"]["kernel"])       # 3x3x16x16, fan_out = 144
    assert abs(k.std() - np.sqrt(2 / 144)) < 0.2 * np.sqrt(2 / 144)
