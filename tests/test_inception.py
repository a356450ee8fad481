"""FID Inception-v3 (psm_jax/evaluators/inception.py) and its converter, against NumPy/SciPy references.

The references below are written from the layer definitions (pytorch-fid / torchvision layout and
the TorchScript forward), independently of the Flax code: torch-layout weights (OIHW), NCHW maths
done with SciPy correlation or an im2col matmul, and the resize formulas of ``grid_sample`` and
``F.interpolate`` evaluated per output pixel.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from psm_jax.evaluators import convert_inception, inception
from tests import torch_files

# ----------------------------------------------------------------------------- references


def ref_resize(img: np.ndarray, mode: str, out: int = 299) -> np.ndarray:
    """[H, W, C] float -> [out, out, C] with the per-pixel torch formulas."""
    h, w, _ = img.shape

    def coords(n_in):
        i = np.arange(out, dtype=np.float32)
        if mode == "nvidia":
            # affine_grid(align_corners=False) base coords + theta translation 1/n_in - 1/out,
            # then grid_sample's unnormalisation and border clamping, all in float32.
            g = (2 * i + 1) / np.float32(out) - 1 + (np.float32(1) / n_in - np.float32(1) / out)
            src = ((g + 1) * n_in - 1) / 2
            return np.clip(src, 0, n_in - 1)
        src = (i + 0.5) * (np.float32(n_in) / out) - 0.5
        return np.clip(src, 0, None)

    def sample(line_src, n_in, axis_vals):
        i0 = np.floor(line_src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = line_src - i0
        return i0, i1, lam

    y0, y1, ly = sample(coords(h), h, None)
    x0, x1, lx = sample(coords(w), w, None)
    top = img[y0][:, x0] * (1 - lx)[None, :, None] + img[y0][:, x1] * lx[None, :, None]
    bot = img[y1][:, x0] * (1 - lx)[None, :, None] + img[y1][:, x1] * lx[None, :, None]
    return top * (1 - ly)[:, None, None] + bot * ly[:, None, None]


def ref_conv(x, w, stride=1, pad=(0, 0)):
    """x [C, H, W], w [O, I, kh, kw] torch layout -> [O, H', W'] via im2col."""
    x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("chwij,ocij->ohw", win, w, optimize=True)


def ref_unit(sd, name, x, stride=1, pad=(0, 0), bn_scale=True):
    y = ref_conv(x, sd[f"{name}.conv.weight"], stride, pad)
    scale = sd[f"{name}.bn.weight"] if bn_scale else 1.0
    inv = 1.0 / np.sqrt(sd[f"{name}.bn.running_var"] + 1e-3)
    y = (y - sd[f"{name}.bn.running_mean"][:, None, None]) * (scale * inv)[:, None, None] \
        + sd[f"{name}.bn.bias"][:, None, None]
    return np.maximum(y, 0)


def ref_pool(x, kind, k=3, stride=1, pad=0):
    c, h, w = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((c, ho, wo), np.float64)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * stride - pad, j * stride - pad
            r = slice(max(r0, 0), min(r0 + k, h))
            s = slice(max(c0, 0), min(c0 + k, w))
            patch = x[:, r, s].reshape(c, -1)
            out[:, i, j] = patch.max(1) if kind == "max" else patch.mean(1)  # mean over valid pixels only
    return out


def ref_block(sd, p, kind, x, bn_scale=True):
    u = lambda n, v, **kw: ref_unit(sd, f"{p}.{n}", v, bn_scale=bn_scale, **kw)  # noqa: E731
    if kind == "A":
        b5 = u("branch5x5_2", u("branch5x5_1", x), pad=(2, 2))
        b3 = u("branch3x3dbl_3", u("branch3x3dbl_2", u("branch3x3dbl_1", x), pad=(1, 1)), pad=(1, 1))
        return np.concatenate([u("branch1x1", x), b5, b3, u("branch_pool", ref_pool(x, "avg", pad=1))])
    if kind == "B":
        b3 = u("branch3x3dbl_3", u("branch3x3dbl_2", u("branch3x3dbl_1", x), pad=(1, 1)), stride=2)
        return np.concatenate([u("branch3x3", x, stride=2), b3, ref_pool(x, "max", stride=2)])
    if kind == "C":
        b7 = u("branch7x7_3", u("branch7x7_2", u("branch7x7_1", x), pad=(0, 3)), pad=(3, 0))
        bd = u("branch7x7dbl_1", x)
        for n, pd in (("2", (3, 0)), ("3", (0, 3)), ("4", (3, 0)), ("5", (0, 3))):
            bd = u(f"branch7x7dbl_{n}", bd, pad=pd)
        return np.concatenate([u("branch1x1", x), b7, bd, u("branch_pool", ref_pool(x, "avg", pad=1))])
    if kind == "D":
        b3 = u("branch3x3_2", u("branch3x3_1", x), stride=2)
        b7 = u("branch7x7x3_3", u("branch7x7x3_2", u("branch7x7x3_1", x), pad=(0, 3)), pad=(3, 0))
        return np.concatenate([b3, u("branch7x7x3_4", b7, stride=2), ref_pool(x, "max", stride=2)])
    pool = "avg" if kind == "E1" else "max"
    b3 = u("branch3x3_1", x)
    bd = u("branch3x3dbl_2", u("branch3x3dbl_1", x), pad=(1, 1))
    return np.concatenate([u("branch1x1", x), u("branch3x3_2a", b3, pad=(0, 1)), u("branch3x3_2b", b3, pad=(1, 0)),
                           u("branch3x3dbl_3a", bd, pad=(0, 1)), u("branch3x3dbl_3b", bd, pad=(1, 0)),
                           u("branch_pool", ref_pool(x, pool, pad=1))])


BLOCKS = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
          ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E1"),
          ("Mixed_7c", "E2")]


def ref_features(sd, image_u8, mode, bn_scale=True):
    x = ref_resize(image_u8.astype(np.float32) / (255.0 if mode == "pytorch_fid" else 1.0), mode)
    x = (x - 128) / 128 if mode == "nvidia" else 2 * x - 1
    x = x.transpose(2, 0, 1)
    u = lambda n, v, **kw: ref_unit(sd, n, v, bn_scale=bn_scale, **kw)  # noqa: E731
    x = u("Conv2d_2b_3x3", u("Conv2d_2a_3x3", u("Conv2d_1a_3x3", x, stride=2)), pad=(1, 1))
    x = u("Conv2d_4a_3x3", u("Conv2d_3b_1x1", ref_pool(x, "max", stride=2)))
    x = ref_pool(x, "max", stride=2)
    for name, kind in BLOCKS:
        x = ref_block(sd, name, kind, x, bn_scale)
    return x.mean(axis=(1, 2))


# ----------------------------------------------------------------------------- weights


def random_torch_state_dict(seed=0, bn_scale=True):
    """pytorch-fid-named, torch-layout random weights (the keys of pt_inception-2015-12-05-*.pth)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in inception.param_shapes().items():
        unit, leaf = key.rsplit("/", 1)
        t = unit.replace("/", ".")
        if unit == "fc":
            sd[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = rng.normal(
                size=shape[::-1] if leaf == "kernel" else shape).astype(np.float32) * 0.01
        elif leaf == "kernel":
            kh, kw, i, o = shape
            sd[f"{t}.conv.weight"] = (rng.normal(size=(o, i, kh, kw)) * np.sqrt(2 / (i * kh * kw))).astype(np.float32)
        else:
            name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
            v = rng.uniform(0.5, 1.5, shape) if leaf in ("scale", "var") else 0.1 * rng.normal(size=shape)
            if leaf == "scale" and not bn_scale:
                v = np.ones(shape)
            sd[f"{t}.bn.{name}"] = v.astype(np.float32)
            if leaf == "var":
                sd[f"{t}.bn.num_batches_tracked"] = np.asarray(0, np.int64)
    return sd


# TorchScript unit names per block kind, in the branch order used by ref_block (transcribed from
# the public TorchScript code transcripts; see convert_inception.py's docstring).
TS_UNITS = {
    "A": ["conv:branch1x1", "tower.conv:branch5x5_1", "tower.conv_1:branch5x5_2", "tower_1.conv:branch3x3dbl_1",
          "tower_1.conv_1:branch3x3dbl_2", "tower_1.conv_2:branch3x3dbl_3", "tower_2.conv:branch_pool"],
    "B": ["conv:branch3x3", "tower.conv:branch3x3dbl_1", "tower.conv_1:branch3x3dbl_2", "tower.conv_2:branch3x3dbl_3"],
    "C": ["conv:branch1x1", "tower.conv:branch7x7_1", "tower.conv_1:branch7x7_2", "tower.conv_2:branch7x7_3",
          "tower_1.conv:branch7x7dbl_1", "tower_1.conv_1:branch7x7dbl_2", "tower_1.conv_2:branch7x7dbl_3",
          "tower_1.conv_3:branch7x7dbl_4", "tower_1.conv_4:branch7x7dbl_5", "tower_2.conv:branch_pool"],
    "D": ["tower.conv:branch3x3_1", "tower.conv_1:branch3x3_2", "tower_1.conv:branch7x7x3_1",
          "tower_1.conv_1:branch7x7x3_2", "tower_1.conv_2:branch7x7x3_3", "tower_1.conv_3:branch7x7x3_4"],
    "E": ["conv:branch1x1", "tower_conv:branch3x3_1", "tower_mixed_conv:branch3x3_2a",
          "tower_mixed_conv_1:branch3x3_2b", "tower_1_conv:branch3x3dbl_1", "tower_1_conv_1:branch3x3dbl_2",
          "tower_1_mixed_conv:branch3x3dbl_3a", "tower_1_mixed_conv_1:branch3x3dbl_3b", "tower_2_conv:branch_pool"],
}


def torchscript_tree(sd):
    """The module tree that ``torch.jit.save`` of NVIDIA's detector pickles, filled from ``sd``."""
    M = torch_files.Module

    def unit(name):
        return M("__torch__.Conv2dLayer", {"weight": sd[f"{name}.conv.weight"], "beta": sd[f"{name}.bn.bias"],
                                           "mean": sd[f"{name}.bn.running_mean"], "var": sd[f"{name}.bn.running_var"]})

    def nest(attrs, path, value):
        head, *rest = path.split(".")
        if not rest:
            attrs[head] = value
        else:
            sub = attrs.setdefault(head, M("__torch__.torch.nn.modules.container.Sequential", {}))
            nest(sub.attrs, ".".join(rest), value)

    layers = {}
    for ts, name in zip(["conv", "conv_1", "conv_2", "conv_3", "conv_4"],
                        ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]):
        layers[ts] = unit(name)
    for i, (name, kind) in enumerate(BLOCKS):
        block: dict = {}
        for entry in TS_UNITS[kind[0]]:
            ts, branch = entry.split(":")
            nest(block, ts, unit(f"{name}.{branch}"))
        layers["mixed" if i == 0 else f"mixed_{i}"] = M(f"__torch__.Inception{kind[0]}", block)
    return M("__torch__.InceptionV3", {
        "layers": M("__torch__.torch.nn.modules.container.Sequential", layers),
        "output": M("__torch__.torch.nn.modules.linear.Linear", {"weight": sd["fc.weight"], "bias": sd["fc.bias"]})})


@pytest.fixture(scope="module")
def state_dict():
    return random_torch_state_dict(0)


@pytest.fixture(scope="module")
def flax_params(state_dict):
    flat, fmt = convert_inception.convert_state_dict(state_dict)
    assert fmt == "pytorch_fid"
    from flax import traverse_util
    return traverse_util.unflatten_dict(flat, sep="/")


# ----------------------------------------------------------------------------- layer tests


@pytest.mark.parametrize("mode", inception.RESIZES)
@pytest.mark.parametrize("hw", [(23, 17), (512, 512), (299, 299)])
def test_resize_matches_torch_formulas(mode, hw):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*hw, 3)).astype(np.uint8)
    got = np.asarray(inception.preprocess(img[None], mode))[0]
    want = ref_resize(img.astype(np.float32) / (255.0 if mode == "pytorch_fid" else 1.0), mode)
    want = (want - 128) / 128 if mode == "nvidia" else 2 * want - 1
    # torch computes the sample positions in float32 (~1e-5 px off at 512 -> 299); we use exact
    # positions: up to ~1e-4 on the [-1, 1] scale, i.e. 0.01 grey levels.
    np.testing.assert_allclose(got, want, atol=1.5e-4)
    if hw == (299, 299):  # both resizes are the identity at 299
        np.testing.assert_allclose(got, (img - 128.0) / 128 if mode == "nvidia" else img / 127.5 - 1, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pad", [((3, 3), 2, (0, 0)), ((1, 7), 1, (0, 3)), ((3, 1), 1, (1, 0))])
def test_conv_bn_relu_against_scipy(kernel, stride, pad):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 9, 11, 4)).astype(np.float32)
    unit = inception.ConvBN(5, kernel, strides=stride, padding=pad)
    p = {"kernel": rng.normal(size=(*kernel, 4, 5)).astype(np.float32), "scale": rng.uniform(.5, 2, 5),
         "bias": rng.normal(size=5), "mean": rng.normal(size=5), "var": rng.uniform(.5, 2, 5)}
    got = np.asarray(unit.apply({"params": p}, x))[0]
    xp = np.pad(x[0], ((pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    conv = sum(scipy.signal.correlate(xp[..., i], p["kernel"][:, :, i, o], mode="valid")[..., None] * (np.arange(5) == o)
               for i in range(4) for o in range(5))[::stride, ::stride]
    want = np.maximum((conv - p["mean"]) / np.sqrt(p["var"] + 1e-3) * p["scale"] + p["bias"], 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pools_against_loops():
    x = np.random.default_rng(3).normal(size=(1, 7, 8, 3)).astype(np.float32)
    c = x[0].transpose(2, 0, 1)
    np.testing.assert_allclose(np.asarray(inception.avg_pool_exclude_pad(x))[0].transpose(2, 0, 1),
                               ref_pool(c, "avg", pad=1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(inception.max_pool(x))[0].transpose(2, 0, 1), ref_pool(c, "max", stride=2))
    np.testing.assert_allclose(np.asarray(inception.max_pool(x, 3, 1, 1))[0].transpose(2, 0, 1),
                               ref_pool(c, "max", pad=1))


@pytest.mark.parametrize("name,kind", [("Mixed_5b", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
                                       ("Mixed_7a", "D"), ("Mixed_7b", "E1"), ("Mixed_7c", "E2")])
def test_blocks_against_numpy(state_dict, flax_params, name, kind):
    module = {"A": inception.InceptionA(32), "B": inception.InceptionB(), "C": inception.InceptionC(128),
              "D": inception.InceptionD(), "E1": inception.InceptionE("avg"), "E2": inception.InceptionE("max")}[kind]
    cin = {"A": 192, "B": 288, "C": 768, "D": 768, "E1": 1280, "E2": 2048}[kind]
    x = np.abs(np.random.default_rng(4).normal(size=(1, 7, 7, cin))).astype(np.float32)
    got = np.asarray(module.apply({"params": flax_params[name]}, x))[0].transpose(2, 0, 1)
    want = ref_block(state_dict, name, kind, x[0].transpose(2, 0, 1).astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


# ----------------------------------------------------------------------------- converter round trips


def _images():
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (2, 37, 45, 3)).astype(np.uint8)


@pytest.mark.slow
def test_pytorch_fid_file_round_trip(tmp_path, state_dict):
    # The 2019 pytorch-fid release predates torch's zip format: write the legacy layout.
    src = torch_files.write_legacy(tmp_path / "pt_inception-2015-12-05-6726825d.pth", state_dict)
    assert convert_inception.main([str(src), str(tmp_path / "inc.npz")]) == 0
    model = inception.InceptionFeatures.from_npz(tmp_path / "inc.npz", resize="pytorch_fid")
    assert model.source == "pytorch_fid" and len(model.sha256) == 64
    images = _images()
    got = model(images)
    assert got.shape == (2, 2048) and got.dtype == np.float32
    want = ref_features(state_dict, images[0], "pytorch_fid")
    np.testing.assert_allclose(got[0], want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.slow
def test_nvidia_torchscript_round_trip(tmp_path):
    sd = random_torch_state_dict(1, bn_scale=False)   # the TF graph has no BN scale
    src = torch_files.write_zip(tmp_path / "inception-2015-12-05.pt", torchscript_tree(sd),
                                root="inception-2015-12-05", script=True)
    assert convert_inception.main([str(src), str(tmp_path / "inc.npz")]) == 0
    model = inception.InceptionFeatures.from_npz(tmp_path / "inc.npz", resize="nvidia")
    assert model.source == "nvidia_torchscript"
    images = _images()
    want = ref_features(sd, images[1], "nvidia", bn_scale=False)
    np.testing.assert_allclose(model(images)[1], want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_converter_refuses_bad_files(tmp_path, state_dict, capsys):
    broken = dict(state_dict)
    del broken["Mixed_6b.branch7x7_2.conv.weight"]
    src = torch_files.write_zip(tmp_path / "broken.pth", broken)
    with pytest.raises(SystemExit) as e:
        convert_inception.main([str(src), str(tmp_path / "out.npz")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert "Mixed_6b.branch7x7_2.conv.weight" in err and not (tmp_path / "out.npz").exists()
    evil = torch_files.write_malicious(tmp_path / "evil.pth")
    with pytest.raises(SystemExit) as e:
        convert_inception.main([str(evil), str(tmp_path / "out.npz")])
    assert e.value.code == 2 and "os.system" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        convert_inception.main([str(tmp_path / "missing.pth"), str(tmp_path / "out.npz")])
    assert e.value.code == 2 and not (tmp_path / "out.npz").exists()
