"""``python -m psm_jax.evaluate`` end to end on a tiny checkpoint and 8 synthetic images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from psm_jax import evaluate
from psm_jax.evaluators import convert_lpips, inception, lpips
from tests import infer_fixture as fx
from tests.test_lpips import random_weights as random_lpips_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    # The test model's checkpoint (random weights, the real layout; trained checkpoints are read by the same
    # checkpoint.load_run in tests/test_demo.py), at 32 px: LPIPS's AlexNet needs at least 32 px.
    workdir = fx.make_workdir(root / "run", resolution=32)
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"img{i:02d}.png")
        m = np.full((32, 32), 255, np.uint8)
        m[4 + i:20 + i, 6:26] = 0
        Image.fromarray(m).save(masks / f"img{i:02d}.png")
    weights = root / "inception.npz"
    inception.save_npz(weights, inception.random_params(0), "random")
    lpips_npz = root / "lpips.npz"
    lpips.save_npz(lpips_npz, convert_lpips.convert_state_dicts(*random_lpips_weights()))
    return root, workdir, images, masks, weights, lpips_npz


def _args(setup, out, masks=None, extra=()):
    root, workdir, images, mask_dir, weights, _ = setup
    return ["--workdir", str(workdir), "--images", str(images), "--masks", str(masks or mask_dir),
            "--inception", str(weights), "--out", str(out), "--cache_dir", str(root / "cache"),
            "--no_progress", "--fid_method", "eigh", *extra]


def test_end_to_end(setup, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert evaluate.main(_args(setup, out, extra=["--iters", "1,2", "--batch_size", "4", "--lpips", str(setup[5])])) == 0
    printed = capsys.readouterr().out
    assert "| Method | T | FID" in printed and "Table 2" in printed and "Spearman" in printed
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"1", "2"}
    r = data["results"]["2"]
    for k in ("fid", "lpips", "p_ids", "u_ids", "psnr", "ssim", "l1", "l1_hole", "calib/spearman/iter1",
              "calib/nll_bpd/iter0", "calib/coverage_2sigma/iter1"):
        assert k in r, k
    assert r["num_images"] == 8 and 0 <= r["p_ids"] <= 1 and r["fid"] >= 0
    rec = data["record"]
    assert rec["num_images"] == 8 and rec["iterations"] == [1, 2] and rec["seed"] == 0
    assert rec["inception"]["resize"] == "nvidia" and len(rec["inception"]["sha256"]) == 64
    assert rec["lpips"]["sha256"] and r["lpips"] > 0
    assert rec["git_sha"] and "model" in rec["config"] and rec["real_stats_cache"]["hit"] is False
    assert out.with_suffix(".md").exists() and (tmp_path / "results_reliability_T2.png").exists()
    # Second run: the real statistics come from the cache and the numbers do not change. Asking
    # for more images than there are warns and reports the count instead of failing.
    out2 = tmp_path / "again.json"
    assert evaluate.main(_args(setup, out2, extra=["--iters", "1", "--batch_size", "4", "--num_images", "20"])) == 0
    assert "fewer than the 20" in capsys.readouterr().err
    again = json.loads(out2.read_text())
    assert again["record"]["real_stats_cache"]["hit"] is True and again["record"]["num_images"] == 8
    assert again["record"]["warnings"]
    assert again["results"]["1"]["fid"] == pytest.approx(data["results"]["1"]["fid"], rel=1e-6)


def test_mispaired_masks_refused(setup, tmp_path, capsys):
    root = setup[0]
    bad = tmp_path / "bad_masks"
    bad.mkdir()
    for p in sorted(setup[3].iterdir()):
        name = "stray.png" if p.name == "img03.png" else p.name
        (bad / name).write_bytes(p.read_bytes())
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        evaluate.main(_args(setup, out, masks=bad))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert "img03.png" in err and "stray.png" in err and not out.exists()


def test_protocol_with_few_images_warns_and_bad_flags_fail(setup, tmp_path, capsys):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:   # this model is 32 px; the protocol is 512 px
        evaluate.main(_args(setup, out, masks="large", extra=["--protocol", "places512_large"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "fewer than the 36500" in err and "512 px" in err and not out.exists()
    for extra in (["--iters", "0"], ["--iters", "a,b"], ["--batch_size", "0"]):
        with pytest.raises(SystemExit) as e:
            evaluate.main(_args(setup, out, extra=extra))
        assert e.value.code == 2 and not out.exists()
    with pytest.raises(SystemExit) as e:
        evaluate.main(_args(setup, out, masks="medium"))
    assert e.value.code == 2 and "--masks" in capsys.readouterr().err
