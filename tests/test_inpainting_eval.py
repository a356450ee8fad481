"""``evaluators.inpainting.evaluate_spread`` (the in-training / CLI code path) with a stand-in spread."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psm_jax.evaluators import inpainting


def fake_spread(variables, image, mask, key):
    """Predicts the truth plus N(0, sigma^2) noise everywhere (T = 2), and garbage on known pixels."""
    sigma = variables["sigma"]
    noise = jax.random.normal(key, (2, *image.shape)) * sigma
    mean = image[None] + noise
    log_var = jnp.full_like(mean, 2 * jnp.log(sigma))
    # m_t as the real spread returns it: iteration 1 commits the top half of the hole, iteration 2 the rest.
    rows = jnp.arange(image.shape[1])[None, :, None, None]
    m1 = jnp.where(rows < image.shape[1] // 2, 1.0, mask)
    return {"image": jnp.where(mask > 0.5, 5.0, mean[-1]),       # the evaluator must composite
            "trajectory": {"mean": mean, "log_var": log_var, "mask": jnp.stack([m1, jnp.ones_like(mask)])}}


def _batches(n=6, bs=4):
    rng = np.random.default_rng(0)
    for start in range(0, n, bs):
        b = min(bs, n - start)
        image = (rng.integers(0, 256, (b, 24, 24, 3)) / 127.5 - 1).astype(np.float32)
        mask = np.ones((b, 24, 24, 1), np.float32)
        mask[:, 4:20, 4:20] = 0
        yield {"image": image, "mask": mask}


@pytest.mark.slow
def test_evaluate_spread_composites_and_reports_calibration():
    out = inpainting.evaluate_spread(fake_spread, {"sigma": jnp.float32(0.1)}, _batches(), key=jax.random.key(0))
    assert out["num_images"] == 6
    # Known pixels come from the input: the whole-image error is the hole error diluted by the known area.
    hole_frac = 16 * 16 / (24 * 24)
    assert out["l1"] * 255 == pytest.approx(out["l1_hole"] * hole_frac, rel=1e-3)
    assert 0.0 < out["ssim"] < 1.0 and np.isfinite(out["psnr"])
    for t in (0, 1):
        assert abs(out[f"calib/coverage_1sigma/iter{t}"] - 0.683) < 0.03
        assert abs(out[f"calib/coverage_2sigma/iter{t}"] - 0.954) < 0.02
        assert np.isfinite(out[f"calib/nll_bpd/iter{t}"])
    assert "fid" not in out   # no Inception given


@pytest.mark.slow
def test_mesh_path_gives_the_same_numbers():
    from psm_jax.sharding import make_mesh

    fn = jax.jit(fake_spread)
    v = {"sigma": jnp.float32(0.1)}
    plain = inpainting.evaluate_spread(fn, v, _batches(), key=jax.random.key(1))
    meshed = inpainting.evaluate_spread(fn, v, _batches(), key=jax.random.key(1), mesh=make_mesh())
    for k, a in plain.items():
        assert meshed[k] == pytest.approx(a, rel=1e-6, abs=1e-9, nan_ok=True), k  # constant sigma: Spearman is NaN
