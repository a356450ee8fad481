"""psm_jax/serving.py: the exported spread (psm_jax.export) served with jax and numpy only.

The acceptance test runs the artifact in a subprocess where importing flax or psm_jax raises (a
``sys.meta_path`` blocker), at two sizes (one not a multiple of 32) and two batch sizes, and checks that
the outputs equal the in-process ``Inpainter`` for the same inputs and seed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infer_fixture as fx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = [(1, 64, 64), (3, 40, 56)]     # (batch, H, W): an aligned and an unaligned size, two batch sizes
SEED = 5

BLOCKED_RUNNER = textwrap.dedent("""
    import importlib.abc, importlib.util, json, sys
    import numpy as np

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("flax", "psm_jax"):
                raise ImportError(f"blocked import of {name}: serving must need only jax and numpy")
            return None

    sys.meta_path.insert(0, Blocker())
    serving_path, artifact, inputs, out = sys.argv[1:5]
    spec = importlib.util.spec_from_file_location("psm_serving", serving_path)
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)
    model = serving.load(artifact)
    data = np.load(inputs)
    results = {}
    for name in sorted(k[len("image_"):] for k in data.files if k.startswith("image_")):
        results[name] = model(data["image_" + name], data["mask_" + name], seed=int(data["seed"]))
    try:
        model(data["image_" + name].astype(np.float64), data["mask_" + name])
        dtype_error = ""
    except serving.InputContractError as e:
        dtype_error = str(e)
    np.savez(out, **results)
    mods = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "psm_jax"))
    print(json.dumps({"loaded": mods, "dtype_error": dtype_error}))
""")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from psm_jax import export as ex
    from psm_jax import inpaint

    wd = fx.make_workdir(tmp_path_factory.mktemp("run"))
    config, variables, step = inpaint.load_checkpoint(wd)
    exp = ex.export_spread(config, variables, num_iters=fx.ITERS)
    path = tmp_path_factory.mktemp("export") / "psm.jaxexport"
    ex.save(exp, ex.sidecar(exp, config, num_iters=fx.ITERS, step=step, with_trajectory=False,
                            artifact=path.name), path)
    return wd, path


def _inputs(rng):
    from psm_jax.data.transforms import to_model_range

    out = {}
    for b, h, w in CASES:
        imgs = np.stack([fx.random_image(rng, h, w) for _ in range(b)])
        masks = np.stack([fx.box_mask(h, w, 0.1 + 0.1 * i, 0.7, 0.2, 0.8 - 0.1 * i) for i in range(b)])
        out[f"{b}x{h}x{w}"] = (imgs, masks, to_model_range(imgs), masks[..., None])
    return out


@pytest.mark.slow
def test_blocked_subprocess_matches_inpainter(artifact, tmp_path):
    from psm_jax import inpaint

    wd, path = artifact
    cases = _inputs(np.random.default_rng(0))
    npz = tmp_path / "inputs.npz"
    np.savez(npz, seed=SEED, **{f"image_{k}": v[2] for k, v in cases.items()},
             **{f"mask_{k}": v[3] for k, v in cases.items()})
    res = subprocess.run([sys.executable, "-c", BLOCKED_RUNNER, str(REPO / "psm_jax" / "serving.py"), str(path),
                          str(npz), str(tmp_path / "out.npz")], capture_output=True, text=True, cwd=tmp_path,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert "float32" in report["dtype_error"], report
    served = np.load(tmp_path / "out.npz")

    inp = inpaint.Inpainter.from_workdir(wd)
    for name, (imgs_u8, masks, image, mask) in cases.items():
        b, h, w = image.shape[:3]
        H, W = inpaint.padded_size(h), inpaint.padded_size(w)
        pad = lambda a: np.stack([inpaint.reflect_pad(x, H, W) for x in a])  # noqa: E731
        ref = inp.run(pad(image), pad(mask), inpaint.sample_key(SEED), iters=fx.ITERS)["image"][:, :h, :w]
        np.testing.assert_allclose(served[name], ref, atol=1e-5, rtol=0, err_msg=name)
        # The uint8 API agrees too (up to a rounding flip of float noise at a .5 boundary).
        out_u8 = inp(imgs_u8, masks, seed=SEED, iters=fx.ITERS)
        exp_u8 = np.where(masks[..., None] > 0.5, imgs_u8,
                          np.clip(np.rint((served[name] + 1) * 127.5), 0, 255).astype(np.uint8))
        assert np.abs(out_u8.astype(int) - exp_u8).max() <= 1, name


def test_contract_errors(artifact):
    import importlib.util

    spec = importlib.util.spec_from_file_location("psm_serving_t", REPO / "psm_jax" / "serving.py")
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)
    _, path = artifact
    model = serving.load(path)
    img = np.zeros((1, 32, 32, 3), np.float32)
    mask = np.ones((1, 32, 32, 1), np.float32)
    with pytest.raises(serving.InputContractError, match="float32"):
        model(img.astype(np.float64), mask)
    with pytest.raises(serving.InputContractError, match="shape"):
        model(np.zeros((1, 32, 32, 4), np.float32), mask)
    with pytest.raises(serving.InputContractError, match="match the image"):
        model(img, np.ones((1, 32, 16, 1), np.float32))
    with pytest.raises(serving.InputContractError, match=r"\[-1"):
        model(img + 200.0, mask)
    meta = json.loads((path.parent / (path.name + ".json")).read_text())
    assert meta["iters"] == fx.ITERS and meta["size_multiple"] == 32
    assert meta["training_resolution"] == fx.RESOLUTION and meta["checkpoint_step"] == 3
