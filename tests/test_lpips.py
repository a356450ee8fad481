"""LPIPS (AlexNet, v0.1) and its converter against a NumPy/SciPy reference of the same layers."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from psm_jax.evaluators import convert_lpips, lpips
from tests import torch_files

SHAPES = [(64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3)]


def random_weights(seed=0):
    rng = np.random.default_rng(seed)
    backbone, linear = {}, {}
    for idx, (o, i, k) in zip((0, 3, 6, 8, 10), SHAPES):
        backbone[f"features.{idx}.weight"] = (rng.normal(size=(o, i, k, k)) * np.sqrt(2 / (i * k * k))).astype(np.float32)
        backbone[f"features.{idx}.bias"] = (0.1 * rng.normal(size=o)).astype(np.float32)
    for name, shape in (("classifier.1.weight", (16, 8)), ("classifier.1.bias", (16,))):
        backbone[name] = rng.normal(size=shape).astype(np.float32)   # ignored by LPIPS
    for k, (o, _, _) in enumerate(SHAPES):
        linear[f"lin{k}.model.1.weight"] = np.abs(rng.normal(size=(1, o, 1, 1))).astype(np.float32)
    return backbone, linear


def ref_conv(x, w, b, stride, pad):
    """x [C, H, W]; torch-layout w [O, I, k, k]: cross-correlation by explicit sliding windows."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("chwij,ocij->ohw", win, w, optimize=True) + b[:, None, None]


def test_ref_conv_is_scipy_correlation():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(2, 9, 8)), rng.normal(size=(3, 2, 3, 3))
    want = np.stack([sum(scipy.signal.correlate(x[i], w[o, i], mode="valid") for i in range(2)) for o in range(3)])
    np.testing.assert_allclose(ref_conv(x, w, np.zeros(3), 1, 0), want, atol=1e-12)


def ref_pool(x):
    c, h, w = x.shape
    ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    return np.array([[[x[ch, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(wo)] for i in range(ho)]
                     for ch in range(c)])


def ref_lpips(backbone, linear, a_u8, b_u8):
    def taps(img):
        x = img.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1
        x = (x - np.array([-.030, -.088, -.188])[:, None, None]) / np.array([.458, .448, .450])[:, None, None]
        out = []
        for n, (idx, stride, pad) in enumerate(((0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1))):
            if n in (1, 2):
                x = ref_pool(x)
            x = np.maximum(ref_conv(x, backbone[f"features.{idx}.weight"], backbone[f"features.{idx}.bias"],
                                    stride, pad), 0)
            out.append(x)
        return out

    total = 0.0
    for k, (f0, f1) in enumerate(zip(taps(a_u8), taps(b_u8))):
        n0 = f0 / (np.sqrt((f0 ** 2).sum(0, keepdims=True)) + 1e-10)
        n1 = f1 / (np.sqrt((f1 ** 2).sum(0, keepdims=True)) + 1e-10)
        total += np.mean(np.einsum("chw,c->hw", (n0 - n1) ** 2, linear[f"lin{k}.model.1.weight"].reshape(-1)))
    return total


def test_converter_round_trip_matches_reference(tmp_path):
    backbone, linear = random_weights()
    b_path = torch_files.write_legacy(tmp_path / "alexnet-owt-7be5be79.pth", backbone)
    l_path = torch_files.write_legacy(tmp_path / "alex.pth", linear, location="cuda:0")
    assert convert_lpips.main(["--backbone", str(b_path), "--linear", str(l_path), str(tmp_path / "lp.npz")]) == 0
    metric = lpips.LPIPS.from_npz(tmp_path / "lp.npz")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 67, 64, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    got = metric(a, b)
    assert got.shape == (2,) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], ref_lpips(backbone, linear, a[0], b[0]), rtol=1e-4)
    np.testing.assert_allclose(metric(a, a), 0.0, atol=1e-7)


def test_converter_refuses_wrong_files(tmp_path, capsys):
    backbone, linear = random_weights()
    b_path = torch_files.write_zip(tmp_path / "b.pth", backbone)
    # Passing the backbone as the linear file (a classic mix-up) must be refused.
    with pytest.raises(SystemExit) as e:
        convert_lpips.main(["--backbone", str(b_path), "--linear", str(b_path), str(tmp_path / "o.npz")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "lin0.model.1.weight" in err
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(SystemExit) as e:
        convert_lpips.main(["--backbone", str(b_path), str(tmp_path / "o.npz")])
    assert e.value.code == 2 and "--linear" in capsys.readouterr().err
