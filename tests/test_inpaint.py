"""psm_jax.inpaint: the Inpainter API and the any-size CLI (project issue 19).

Model runs use a randomly initialised tiny generator (tests/infer_fixture.py) and few distinct padded shapes,
because each new shape compiles the spread once; the tests that run the model are marked slow.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infer_fixture as fx  # noqa: E402

from psm_jax import inpaint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return fx.make_workdir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def inpainter(workdir):
    return inpaint.Inpainter.from_workdir(workdir)


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    rc = inpaint.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------------- host-side pieces


def test_binarize_mask_conventions():
    assert inpaint.binarize_mask(np.array([0, 1], np.uint8)).tolist() == [False, True]
    assert inpaint.binarize_mask(np.array([0, 127, 128, 255], np.uint8)).tolist() == [False, False, True, True]
    assert inpaint.binarize_mask(np.array([0.2, 0.7])).tolist() == [False, True]
    assert inpaint.binarize_mask(np.array([True, False]), mask_is_hole=True).tolist() == [False, True]


@pytest.mark.parametrize("strategy", inpaint.STRATEGIES)
@pytest.mark.parametrize("hw", [(45, 70), (100, 150), (7, 3)])
def test_plan_shapes_and_known_pixels(strategy, hw):
    """Every strategy feeds the network multiples of 32 and changes only hole pixels (a fake network)."""
    rng = np.random.default_rng(0)
    h, w = hw
    img = fx.random_image(rng, h, w)
    known = fx.box_mask(h, w) > 0.5
    job = inpaint.plan(img, known, strategy, resolution=32)
    assert job.image.shape[0] % 32 == 0 and job.image.shape[1] % 32 == 0
    assert job.known.shape == job.image.shape[:2] + (1,)
    out = job.finish(np.full(job.image.shape, 0.5, np.float32))       # "network" output: all 0.5
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], img[known])
    assert (out[~known] == 191).all()                                    # (0.5 + 1) * 127.5, rounded


def test_pad_reflects_the_mask_too():
    """Reflected holes stay holes, so content under the hole cannot leak into the padded context."""
    known = np.ones((40, 40), bool)
    known[30:, :] = False
    job = inpaint.plan(np.zeros((40, 40, 3), np.uint8), known, "pad", 32)
    assert job.shape == (64, 64) and (job.known[40:49, :, 0] == 0).all()   # rows 40-48 mirror 38-30


def test_resize_keeps_thin_holes():
    known = np.ones((300, 200), bool)
    known[:, 100] = False                                                # a 1-pixel line
    job = inpaint.plan(np.zeros((300, 200, 3), np.uint8), known, "resize", 32)
    assert job.valid == (32, 21) and (job.known[: 32, : 21, 0] == 0).any(axis=0).sum() >= 1


def test_compose_keeps_alpha_gray_and_16_bit(tmp_path):
    res = np.full((4, 5, 3), 200, np.uint8)
    known = np.ones((4, 5), bool)
    known[1, 2] = False
    rgba = np.dstack([np.zeros((4, 5, 3), np.uint8), np.full((4, 5), 77, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 5), 1000, np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(tmp_path / "g.png")
    a = inpaint.load_image(tmp_path / "a.png")
    out = a.compose(res, known)
    assert out.shape == (4, 5, 4) and (out[..., 3] == 77).all() and out[1, 2, 0] == 200 and out[0, 0, 0] == 0
    g16 = inpaint.load_image(tmp_path / "g16.png")
    assert g16.mode == "I;16" and g16.rgb[0, 0, 0] == round(1000 / 257)      # not clipped to white
    out16 = g16.compose(res, known)
    assert out16.dtype == np.uint16 and out16[0, 0] == 1000 and out16[1, 2] == 200 * 257
    g = inpaint.load_image(tmp_path / "g.png")
    outg = g.compose(res, known)
    assert outg.shape == (4, 5) and outg[0, 0] == 9 and outg[1, 2] == 200


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6                                                     # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert inpaint.load_image(tmp_path / "r.jpg").rgb.shape == (20, 10, 3)


def test_inference_imports_no_training_module():
    code = ("import sys, psm_jax.inpaint, psm_jax.export, psm_jax.serving; "
            "bad = [m for m in ('psm_jax.train_step', 'psm_jax.train', 'psm_jax.losses') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]


# ------------------------------------------------------------------------------------------- CLI errors


@pytest.fixture
def shell_workdir(tmp_path):
    """A workdir that passes the existence check; the CLI validates every input before loading weights."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    return tmp_path / "run"


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for name in ("a", "b"):
        Image.fromarray(fx.random_image(rng, 40, 56)).save(tmp_path / "img" / f"{name}.png")
        Image.fromarray((fx.box_mask(40, 56) * 255).astype(np.uint8)).save(tmp_path / "msk" / f"{name}.png")
    return tmp_path


def _assert_one_line_error(rc, lines, *needles, out: Path | None = None):
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for n in needles:
        assert n in lines[0], lines
    if out is not None:
        assert not out.exists() or not any(out.iterdir())


def test_cli_mismatched_name(capsys, shell_workdir, folder):
    (folder / "msk" / "b.png").rename(folder / "msk" / "c.png")
    rc, lines = _cli(capsys, "--workdir", shell_workdir, "--images", folder / "img", "--masks", folder / "msk",
                     "--out", folder / "out")
    _assert_one_line_error(rc, lines, "b.png", "no mask", out=folder / "out")


def test_cli_all_hole_mask(capsys, shell_workdir, folder):
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(folder / "msk" / "b.png")
    # --image / --mask: the singular spellings are kept as aliases of --images / --masks.
    rc, lines = _cli(capsys, "--workdir", shell_workdir, "--image", folder / "img", "--mask", folder / "msk",
                     "--out", folder / "out")
    _assert_one_line_error(rc, lines, "b.png", "all hole", out=folder / "out")


def test_cli_unreadable_image(capsys, shell_workdir, folder):
    (folder / "img" / "b.png").write_bytes(b"not a png")
    rc, lines = _cli(capsys, "--workdir", shell_workdir, "--images", folder / "img", "--masks", folder / "msk",
                     "--out", folder / "out")
    _assert_one_line_error(rc, lines, "b.png", "cannot read", out=folder / "out")


def test_cli_missing_checkpoint(capsys, folder):
    rc, lines = _cli(capsys, "--workdir", folder / "nope", "--images", folder / "img", "--masks", folder / "msk",
                     "--out", folder / "out")
    _assert_one_line_error(rc, lines, "nope", "does not exist", out=folder / "out")


def test_cli_mask_aspect_mismatch_and_missing_file(capsys, shell_workdir, folder):
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(folder / "msk" / "b.png")
    rc, lines = _cli(capsys, "--workdir", shell_workdir, "--images", folder / "img", "--masks", folder / "msk",
                     "--out", folder / "out")
    _assert_one_line_error(rc, lines, "b.png", "sizes differ", out=folder / "out")
    rc, lines = _cli(capsys, "--workdir", shell_workdir, "--images", folder / "img" / "zz.png", "--masks",
                     folder / "msk", "--out", folder / "out")
    _assert_one_line_error(rc, lines, "zz.png", "does not exist")
    rc, lines = _cli(capsys, "--workdir", shell_workdir, "--images", folder / "img", "--masks", folder / "msk",
                     "--out", folder / "out", "--strategy", "stretch")
    _assert_one_line_error(rc, lines, "--strategy")


# ------------------------------------------------------------------------------------------- model runs


@pytest.mark.slow
@pytest.mark.parametrize("strategy", inpaint.STRATEGIES)
def test_api_strategies_keep_size_and_known_pixels(inpainter, strategy):
    rng = np.random.default_rng(2)
    img = fx.random_image(rng, 100, 150)
    mask = fx.box_mask(100, 150, 0.4, 0.6, 0.4, 0.55)
    out = inpainter(img, mask, strategy=strategy, iters=fx.ITERS)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask > 0.5], img[mask > 0.5])
    assert (out[mask < 0.5] != img[mask < 0.5]).any()
    # The hole convention flag gives the same result.
    np.testing.assert_array_equal(inpainter(img, 1 - mask, mask_is_hole=True, strategy=strategy,
                                            iters=fx.ITERS), out)


@pytest.mark.slow
def test_api_batch_list_and_trajectory(inpainter):
    rng = np.random.default_rng(3)
    imgs = np.stack([fx.random_image(rng, 40, 56) for _ in range(2)])
    masks = np.stack([fx.box_mask(40, 56), fx.box_mask(40, 56, 0.5, 0.9, 0.1, 0.4)])
    out = inpainter(imgs, masks, iters=fx.ITERS, seed=1)
    assert out.shape == (2, 40, 56, 3)
    listed = inpainter(list(imgs), list(masks), iters=fx.ITERS, seed=1)
    np.testing.assert_array_equal(np.stack(listed), out)        # same batch, same key, same result
    samples, traj = inpainter(imgs[0], masks[0], iters=fx.ITERS, num_samples=2, return_trajectory=True)
    assert samples.shape == (2, 40, 56, 3) and len(traj) == 2
    t = traj[0]["trajectory"]
    assert t["mean"].shape == (fx.ITERS, 40, 56, 3) and t["std"].shape == t["mean"].shape
    assert t["mask"].shape == (fx.ITERS, 40, 56, 1) and (t["mask"][-1] == 1).all()
    assert (fx.ITERS, False, 2, 64, 64) in inpainter.compiled_shapes
    with pytest.raises(ValueError, match="all hole"):
        inpainter(imgs[0], np.zeros((40, 56)), iters=fx.ITERS)


@pytest.mark.slow
def test_cli_large_rgba_with_gray_mask_of_another_size(capsys, workdir, tmp_path):
    # 13x the test model's 16 px. Not 700x1000: its attention runs at H/4, and at the default "pad" strategy
    # a 1000 px image would give it 45k tokens (a paper model attends at H/16 and H/32).
    rng = np.random.default_rng(4)
    rgb = fx.random_image(rng, 140, 200)
    alpha = rng.integers(0, 256, (140, 200), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "big.png")
    Image.fromarray((fx.box_mask(70, 100) * 255).astype(np.uint8), mode="L").save(tmp_path / "big_mask.png")
    rc, lines = _cli(capsys, "--workdir", workdir, "--images", tmp_path / "big.png", "--masks",
                     tmp_path / "big_mask.png", "--out", tmp_path / "out", "--iters", fx.ITERS)
    assert rc == 0, lines
    assert any("hole ratio" in ln for ln in lines)
    out = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    assert out.shape == (140, 200, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 3], alpha)
    known = np.asarray(Image.fromarray((fx.box_mask(70, 100) * 255).astype(np.uint8)).resize(
        (200, 140), Image.NEAREST)) > 127
    np.testing.assert_array_equal(out[..., :3][known], rgb[known])


@pytest.mark.slow
def test_cli_num_samples_and_save_steps(capsys, workdir, tmp_path):
    rng = np.random.default_rng(5)
    img = fx.random_image(rng, 40, 56)
    Image.fromarray(img).save(tmp_path / "x.png")
    mask = (fx.box_mask(40, 56) * 255).astype(np.uint8)
    mask[0, 0] = 100                                                # non-binary: warned, thresholded
    Image.fromarray(mask).save(tmp_path / "m.png")
    rc, lines = _cli(capsys, "--workdir", workdir, "--images", tmp_path / "x.png", "--masks", tmp_path / "m.png",
                     "--out", tmp_path / "out", "--num_samples", 3, "--save_steps", "--iters", fx.ITERS)
    assert rc == 0, lines
    assert any(ln.startswith("warning:") and "not binary" in ln for ln in lines)
    outs = [np.asarray(Image.open(tmp_path / "out" / f"x_s{s}.png")) for s in range(3)]
    known = mask >= 128
    for o in outs:
        np.testing.assert_array_equal(o[known], img[known])
    assert all((outs[i][~known] != outs[j][~known]).any() for i, j in ((0, 1), (0, 2), (1, 2)))
    strip = np.asarray(Image.open(tmp_path / "out" / "x_s0_steps.png"))
    # input | (mu_t, sigma_t, m_t) x T | output, each cell 56 * ceil(128 / 56) wide, plus the colour bar.
    cell = 56 * 3
    assert strip.shape[1] == (2 + 3 * fx.ITERS) * cell + 64
    assert strip.shape[0] == 16 + 40 * 3
