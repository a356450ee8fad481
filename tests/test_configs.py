"""configs/: the paper's values (Sec. 4.2-4.3, Tables 1, 2, 4) and that every variant builds."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]
PSM = REPO / "configs" / "psm.py"
DEMO = REPO / "configs" / "demo.py"

# Table 1 as printed: (T, DPM, CS, UGA, attention sizes at 256).
TABLE1 = {
    "A": (3, True, True, True, (32, 16)),
    "B": (1, True, True, True, (32, 16)),   # B, C: "-" for DPM/CS with T = 1 means nothing to pick
    "C": (2, True, True, True, (32, 16)),
    "D": (3, False, True, True, (32, 16)),
    "E": (3, True, False, True, (32, 16)),
    "F": (3, True, True, False, (32, 16)),
    "G": (3, True, True, True, (16,)),
}


def _cfg(arg, **overrides):
    return load_config(f"{PSM}:{arg}", overrides)


def _check_paper_training(c):
    assert c.batch_size == 32
    assert (c.optim.lr, c.optim.b1, c.optim.b2) == (1e-3, 0.0, 0.99)
    assert (c.optim.g_lr_mult, c.optim.d_lr_mult) == (1.0, 1.0)
    assert (c.loss.adv_weight, c.loss.pcp_weight, c.loss.nll_weight) == (1.0, 2.0, 1e-4)
    assert c.loss.nll_reduction == "sum" and c.loss.nll_region == "all"
    assert c.loss.l1_weight == 0.0
    assert c.spread.schedule == "linear"
    assert c.loss.style_mixing_prob == 0.9
    assert c.spread.resample_committed and c.model.time_input and c.model.use_latent
    assert not c.spread.unroll_train and c.spread.picker == "top_k"
    assert c.ema.rampup == 0.0 and c.ema.kimg == 10.0


@pytest.mark.parametrize("variant", ["places512", "celeba512"])
def test_512_configs_follow_sec_4_2(variant):
    c = _cfg(variant)
    _check_paper_training(c)
    assert c.model.resolution == c.data.resolution == 512
    assert (c.spread.train_iters, c.spread.test_iters) == (2, 4)
    assert c.spread.alpha == 0.01
    assert c.total_steps * c.batch_size == 20_000_000
    # 32x32 and 16x16 at 512 = H/16 and H/32.
    assert sorted(512 // f for f in c.model.attention_downsample) == [16, 32]
    assert (c.model.channel_base, c.model.channel_max) == (64, 512)


@pytest.mark.parametrize("variant", sorted(TABLE1))
def test_table1_models(variant):
    T, dpm, cs, uga, sizes = TABLE1[variant]
    c = _cfg(variant)
    _check_paper_training(c)
    assert c.model.resolution == c.data.resolution == 256
    assert c.total_steps * c.batch_size == 6_000_000
    assert c.spread.train_iters == c.spread.test_iters == T      # Sec. 4.3: same T train and test
    assert c.spread.decoupled == dpm
    assert c.spread.alpha == (0.01 if cs else 0.0)
    assert c.model.uncertainty_guided == uga
    assert tuple(sorted((256 // f for f in c.model.attention_downsample), reverse=True)) == sizes
    assert c.data.source == "tfds" and c.data.tfds_name == "places365_small"


def test_table1_relative_attention_reading():
    assert tuple(_cfg("A,att=relative").model.attention_downsample) == (16, 32)
    assert tuple(_cfg("G,att=relative").model.attention_downsample) == (16,)
    with pytest.raises(ValueError, match="att"):
        _cfg("A,att=sideways")


@pytest.mark.parametrize("model", ["A", "B"])
@pytest.mark.parametrize("t", range(4, 11))
def test_table2_test_iterations(model, t):
    c = _cfg(f"{model},test_iters={t}")
    assert c.spread.test_iters == t
    assert c.spread.train_iters == TABLE1[model][0]


@pytest.mark.parametrize("schedule", ["cubic", "cosine", "linear", "sqrt"])
def test_table4_schedules(schedule):
    c = _cfg(f"A,schedule={schedule}")
    assert c.spread.schedule == schedule and c.spread.train_iters == 3


def test_celeba256_supp_d():
    c = _cfg("celeba256")
    assert c.model.resolution == c.data.resolution == 256
    assert c.total_steps * c.batch_size == 12_000_000


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        _cfg("places1024")


ALL_VARIANTS = ([f"{PSM}:{v}" for v in ["places512", "celeba512", "celeba256", "places256", *TABLE1,
                                        "tiny"]] + [f"{DEMO}", f"{DEMO}:tiny"])


@pytest.mark.parametrize("spec", ALL_VARIANTS, ids=lambda s: Path(s.split(":")[0]).stem + ":" +
                         (s.split(":")[1] if ":" in s else "default"))
def test_every_variant_builds_and_its_models_trace(spec):
    from psm_jax.models.discriminator import Discriminator
    from psm_jax.models.generator import Generator

    config = load_config(spec)
    G = Generator(**config.model)
    D = Discriminator(resolution=config.model.resolution, img_channels=3, **config.discriminator)
    R = config.model.resolution
    x = jax.ShapeDtypeStruct((1, R, R, 3), jnp.float32)
    m = jax.ShapeDtypeStruct((1, R, R, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    keys = {"params": jax.random.key(0), "latent": jax.random.key(1), "noise": jax.random.key(2)}
    g_vars = jax.eval_shape(lambda *a: G.init(keys, *a), x, m, m, m, t)
    assert "params" in g_vars
    d_vars = jax.eval_shape(lambda a, b: D.init(jax.random.key(0), a, b), x, m)
    assert "params" in d_vars


@pytest.mark.slow
@pytest.mark.parametrize("spec", [f"{PSM}:tiny", f"{DEMO}:tiny"])
def test_tiny_variants_train_one_step(spec, tmp_path):
    """The tiny configs run the real step: psm.py:tiny with the paper's top_k, style mixing, fresh fakes.

    One step of ``python -m psm_jax.main``, started like every single-device run of the suite, so
    it compiles the same programs as the others (psm.py:tiny: the smoke sweep's runs) and one
    compile serves them all."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    from psm_jax import checkpoint as ckpt

    w = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "psm_jax.main", f"--config={spec}", f"--workdir={w}",
                        "--config.total_steps=1", "--config.ckpt_every=1", "--config.progress_bar=False"],
                       cwd=REPO, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt.latest_step(w) == 1
    records = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
    metrics = [rec for rec in records if rec.get("step") == 1 and "g_loss" in rec]
    assert metrics and all(np.isfinite(v) for v in metrics[0].values() if isinstance(v, (int, float)))
