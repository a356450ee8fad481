"""psm_jax.export: the whole spread through jax.export (symbolic batch and H, W = 32h, 32w), and the
shape-polymorphic path of the CPU conv banding (models/ops.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infer_fixture as fx  # noqa: E402

from psm_jax import export as ex  # noqa: E402
from psm_jax import inpaint  # noqa: E402
from psm_jax.models import ops  # noqa: E402


def _strided_conv(x):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 4, 5)), jnp.float32)
    return ops.conv2d_resample(x, w, down=2, padding=1)


def test_banding_is_bit_identical(monkeypatch):
    """Row bands must never change the numbers: the banded conv equals the one-conv result exactly."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 96, 4)), jnp.float32)
    monkeypatch.setattr(ops, "_CPU_STRIDED_BAND_FLOPS", 1e12)
    one = jax.jit(_strided_conv)(x)
    monkeypatch.setattr(ops, "_CPU_STRIDED_BAND_FLOPS", 1e4)
    monkeypatch.setattr(ops, "_on_cpu", lambda: True)
    assert ops._num_bands(jnp.zeros((2, 67, 99, 4)), jnp.zeros((3, 3, 4, 5)), 2, 1) > 1
    banded = jax.jit(_strided_conv)(x)
    np.testing.assert_array_equal(np.asarray(banded), np.asarray(one))


def test_strided_conv_exports_with_symbolic_shapes(monkeypatch):
    """The band count needs concrete H, W; under symbolic shapes the one-conv path is taken (no bool error)."""
    monkeypatch.setattr(ops, "_CPU_STRIDED_BAND_FLOPS", 1e4)          # would band at every size
    monkeypatch.setattr(ops, "_on_cpu", lambda: True)
    b, h, w = jax_export.symbolic_shape("b, 32*h, 32*w")
    exp = jax_export.export(jax.jit(_strided_conv))(jax.ShapeDtypeStruct((b, h, w, 4), jnp.float32))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 32, 64, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(exp.call(x)), np.asarray(jax.jit(_strided_conv)(x)))


def test_cli_bad_input(tmp_path, capsys):
    assert ex.main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "a.jaxexport")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    with pytest.raises(SystemExit) as e:
        ex.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "a"), "--platforms", "cpu,gpu9"])
    assert e.value.code == 2 and "gpu9" in capsys.readouterr().err
    assert not (tmp_path / "a.jaxexport").exists()


@pytest.mark.slow
def test_cli_export_with_trajectory_matches_inpainter(tmp_path, capsys):
    wd = fx.make_workdir(tmp_path / "run")
    out = tmp_path / "psm.jaxexport"
    assert ex.main(["--workdir", str(wd), "--out", str(out), "--with_trajectory",
                    "--platforms", "cpu,cuda,tpu"]) == 0, capsys.readouterr().err
    meta = json.loads(ex.sidecar_path(out).read_text())
    assert meta["iters"] == fx.ITERS and meta["with_trajectory"] and meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert meta["inputs"][2]["dtype"] == "uint32" and meta["config"]["model"]["resolution"] == fx.RESOLUTION
    assert meta["versions"]["jax"] == jax.__version__ and meta["checkpoint_step"] == 3
    exp = jax_export.deserialize(bytearray(out.read_bytes()))
    rng = np.random.default_rng(3)
    img = inpaint.to_model_range(np.stack([fx.random_image(rng, 32, 64) for _ in range(2)]))
    mask = np.stack([fx.box_mask(32, 64), fx.box_mask(32, 64, 0.0, 1.0, 0.6, 0.9)])[..., None]
    key_data = jax.random.key_data(inpaint.sample_key(9))
    image, sigma = exp.call(img, mask, key_data)
    assert image.shape == (2, 32, 64, 3) and sigma.shape == (fx.ITERS, 2, 32, 64, 3)
    ref = inpaint.Inpainter.from_workdir(wd).run(img, mask, inpaint.sample_key(9), return_trajectory=True)
    np.testing.assert_allclose(np.asarray(image), ref["image"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(sigma), ref["trajectory"]["std"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(image)[mask[..., 0] > 0.5], img[mask[..., 0] > 0.5])
