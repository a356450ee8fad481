"""End-to-end training checks on ``configs/demo.py:tiny`` (psm_jax/train.py, main.py).

Runs about a process (preemption, an exit code, a device count) are fresh subprocesses
(``python -m psm_jax.main``), as a user or a pod scheduler would start them; the others run in
the test process (conftest.train_in_process).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import train_in_process, xla_flags
from psm_jax import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'configs' / 'demo.py'}:tiny"


def _env(devices: int = 1, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = xla_flags(devices)
    env.update(extra)
    return env


def _main_cmd(workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "psm_jax.main", f"--config={TINY}", f"--workdir={workdir}",
            "--config.progress_bar=False", *overrides]


def _run(workdir: Path, *overrides: str, devices: int = 1, check: bool = True,
         **env: str) -> subprocess.CompletedProcess:
    r = subprocess.run(_main_cmd(workdir, *overrides), env=_env(devices, **env), cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _batch_shas(workdir: Path) -> dict[int, str]:
    """The batch digest of every step; a resumed run keeps the record written last."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "batch_sha" in rec:
            out[rec["step"]] = rec["batch_sha"]
    return out


def _metric(workdir: Path, key: str) -> list[float]:
    return [json.loads(l)[key] for l in (workdir / "metrics.jsonl").read_text().splitlines()
            if key in json.loads(l)]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    w = tmp_path / "w"
    proc = subprocess.Popen(_main_cmd(w, "--config.total_steps=100000", "--config.ckpt_every=100000"),
                            env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if (w / "metrics.jsonl").exists() and len(_batch_shas(w)) >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM" in out
    step = ckpt.latest_step(w)
    assert step is not None and step >= 2


@pytest.mark.slow
def test_losses_decrease_on_tiny(tmp_path):
    """The supervised terms must go down in a short run (the GAN terms need not).

    From MAT's initialisation (output gain 1, the paper's NLL weighting): the demo config's
    output_gain 0.1 starts the mean near its 40-step level already, so 40 tiny steps would not show
    a clear descent there."""
    w = tmp_path / "w"
    train_in_process(TINY, w, {"total_steps": 40, "ckpt_every": 40, "loss.l1_weight": 1.0, "sample_every": 20,
                               "model.output_gain": 1.0, "loss.nll_weight": 1e-4, "loss.nll_region": "all"})
    assert sorted(p.name for p in (w / "samples").iterdir()) == ["00000020.png", "00000040.png"]
    assert list((w / "tb").iterdir()), "no TensorBoard event file"
    l1 = _metric(w, "g_l1")
    nll = _metric(w, "g_nll")
    assert len(l1) == 40
    assert np.mean(l1[-8:]) < 0.8 * np.mean(l1[:8]), l1
    assert np.mean(nll[-8:]) < np.mean(nll[:8]), nll


def _params(workdir: Path) -> dict:
    mngr = ckpt.make_manager(workdir, async_save=False, data_handler=False)
    return ckpt.restore_numpy(mngr, mngr.latest_step())


@pytest.mark.slow
def test_same_params_on_1_and_8_devices(tmp_path):
    """(2 processes x 2 devices are compared with 1 x 4 in tests/test_multihost.py.)

    The tiny config's global batch 8 fills the 8-device mesh, and its Adam eps = 1e-3 keeps the
    comparison about the computation, not about the sign of rounding noise (configs/demo.py)."""
    two_steps = ("--config.total_steps=2", "--config.ckpt_every=2")
    one, eight = tmp_path / "one", tmp_path / "eight"
    _run(one, *two_steps, devices=1)
    _run(eight, *two_steps, "--config.mesh.fsdp=2", devices=8)   # data x fsdp = 4 x 2
    ref, other = _params(one), _params(eight)
    for key in ("g_params", "d_params", "g_ema_params"):
        flat_ref = dict(_flatten(ref[key]))
        flat_other = dict(_flatten(other[key]))
        assert flat_ref.keys() == flat_other.keys()
        for name, v in flat_ref.items():
            np.testing.assert_allclose(flat_other[name], v, rtol=1e-4, atol=1e-5, err_msg=f"{key}{name}")
    assert int(other["step"]) == 2
    # A checkpoint written on 8 devices resumes on 1 device.
    r = _run(eight, "--config.total_steps=3", "--config.ckpt_every=3", devices=1)
    assert "resumed" in r.stdout and ckpt.latest_step(eight) == 3


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    w = tmp_path / "w"
    # Step 4 trains on a batch of NaN pixels (a fault hook in train.py): its losses are NaN.
    r = _run(w, "--config.ckpt_every=1", check=False, PSM_FAULT_NAN_BATCH_AT="4")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "non-finite" in r.stderr and "at step 4" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: training diverged")
    step = ckpt.latest_step(w)
    assert step == 3      # steps 1-3 were saved; the diverged step 4 never is
    records = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
    logged = [rec for rec in records if "g_loss" in rec and rec["step"] <= step]
    assert logged and all(np.isfinite(rec["g_loss"]) for rec in logged)


@pytest.mark.slow
def test_bf16_train_step_keeps_f32_state():
    import jax
    import jax.numpy as jnp

    from psm_jax import train, train_step as ts
    from psm_jax.config_lib import load_config

    cfg = load_config(TINY, {"compute_dtype": "bfloat16"})
    models = train.build_models(cfg)
    state = jax.jit(lambda k: train.init_state(cfg, models, k))(jax.random.key(0))
    R = cfg.model.resolution
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (cfg.batch_size, R, R, 3)), jnp.float32),
             "mask": jnp.asarray(rng.uniform(size=(cfg.batch_size, R, R, 1)) > 0.5, jnp.float32)}
    state, metrics = jax.jit(ts.make_train_step(cfg, models))(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for leaf in jax.tree.leaves((state["g_params"], state["d_params"], state["g_opt"])):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("override", ["--config.optim.lrr=1", "--config.batch_size=abc"])
def test_bad_config_override_is_one_line_error(tmp_path, override):
    r = subprocess.run(_main_cmd(tmp_path / "w", override), env=_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_g_and_d_learning_rate_multipliers():
    import jax.numpy as jnp

    from psm_jax import losses
    from psm_jax import train_step as ts
    from psm_jax.config_lib import load_config

    # eps 1e-8 (the tiny config trains with 1e-3): the first Adam step is then the lr to 1e-5.
    cfg = load_config(TINY, {"optim.lr": 1e-3, "optim.g_lr_mult": 3.0, "optim.d_lr_mult": 0.5,
                             "optim.eps": 1e-8})
    g_tx, d_tx = ts.make_optimizers(cfg)
    params = {"w": jnp.zeros((4,))}
    grads = {"w": jnp.ones((4,))}
    # Adam's first step moves every parameter by -lr * g / |g| (up to eps): the learning rate itself.
    g_step = g_tx.update(grads, g_tx.init(params), params)[0]["w"]
    d_step = d_tx.update(grads, d_tx.init(params), params)[0]["w"]
    d_lr = losses.lazy_reg_adam_hparams(1e-3 * 0.5, cfg.optim.b1, cfg.optim.b2, cfg.loss.r1_interval)[0]
    np.testing.assert_allclose(g_step, -3e-3, rtol=1e-4)
    np.testing.assert_allclose(d_step, -d_lr, rtol=1e-4)


@pytest.mark.slow
def test_frozen_spread_supervises_the_output_image():
    """spread.resample_committed=False: iteration t's L1 is the hole L1 of the image it outputs,
    over the pixels still open at its input; iteration 1 is unchanged."""
    import jax
    import jax.numpy as jnp

    from psm_jax import losses, train, train_step as ts
    from psm_jax.config_lib import load_config
    from psm_jax.spread import pixel_spread

    def setup(resample):
        cfg = load_config(TINY, {"spread.resample_committed": resample, "spread.train_iters": 2,
                                 "loss.l1_weight": 1.0})
        models = train.build_models(cfg)
        state = jax.jit(lambda k: train.init_state(cfg, models, k))(jax.random.key(0))
        return cfg, models, state

    cfg, models, state = setup(False)
    R = cfg.model.resolution
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.uniform(-1, 1, (cfg.batch_size, R, R, 3)), jnp.float32)
    m0 = jnp.asarray(rng.uniform(size=(cfg.batch_size, R, R, 1)) > 0.5, jnp.float32)
    key = jax.random.key(3)
    variables = {"params": state["g_params"], **state["g_buffers"]}

    # _g_loss's key chain: key -> (spread part, D augment); spread part -> (spread, model D sample).
    k_spread = jax.random.split(jax.random.split(key)[0])[0]
    spreads = {r: jax.jit(lambda i, m, r=r: pixel_spread(
        ts.generator_apply_fn(models, variables), i, m, k_spread,
        num_iters=2, alpha=cfg.spread.alpha, schedule=cfg.spread.schedule,
        uncertainty_map=cfg.spread.uncertainty_map, picker=cfg.spread.picker,
        return_trajectory=True, resample_committed=r))
        for r in (False, True)}

    def spread(image, resample):
        return spreads[resample](image, m0)

    # The trajectory never sees the hole's ground truth (x_0 is zero there), so the pixels that
    # iteration 1 commits can be given a ground truth far from any prediction: then the L1 over
    # the open pixels (frozen) and over the whole hole (Eq. 5) must differ.
    m1 = spread(image, False)["trajectory"]["mask"][0]
    committed = (m1 > 0.5) & (m0 < 0.5)
    assert 0 < int(committed.sum()) < int((m0 < 0.5).sum())
    image = jnp.where(committed, 1.0, image)
    batch = {"image": image, "mask": m0}

    def l1_terms(resample):
        cfg, models, state = setup(resample)
        _, aux = jax.jit(lambda p, s, b: ts._g_loss(p, s, b, key, config=cfg, models=models))(
            state["g_params"], state, batch)
        return jax.tree.map(float, aux["terms"])

    frozen, literal = l1_terms(False), l1_terms(True)
    assert frozen["g_l1/iter0"] == pytest.approx(literal["g_l1/iter0"], rel=1e-6)
    out = spread(image, False)   # T = 2: the final image is iteration 2's output
    want_frozen = float(losses.l1_loss(out["image"], image, weight_mask=1.0 - m1))
    mean2 = spread(image, True)["trajectory"]["mean"][1]
    want_literal = float(losses.l1_loss(m0 * image + (1 - m0) * mean2, image, weight_mask=1.0 - m0))
    assert abs(want_literal - want_frozen) > 0.05 * want_frozen
    assert frozen["g_l1/iter1"] == pytest.approx(want_frozen, rel=1e-5)
    assert literal["g_l1/iter1"] == pytest.approx(want_literal, rel=1e-5)


def test_compiled_program_is_shared_across_loop_fields_only():
    """train.compiled_program: one Program per model and mesh; the loop fields never reach it."""
    from psm_jax import sharding as shd, train
    from psm_jax.config_lib import load_config

    mesh = shd.make_mesh(1)
    base = load_config(TINY)
    loop_only = load_config(TINY, {"total_steps": 99, "ckpt_every": 7, "data.seed": 5, "eval.every": 3,
                                   "log_every": 4, "sample_every": 2, "progress_bar": False})
    other_model = load_config(TINY, {"loss.l1_weight": base.loss.l1_weight + 1.0})
    p = train.compiled_program(base, mesh)
    assert train.compiled_program(loop_only, mesh) is p
    assert train.compiled_program(other_model, mesh) is not p
    pc = train.program_config(base)
    assert not any(k in pc for k in train.LOOP_FIELDS)
    with pytest.raises(AttributeError):
        pc.data   # noqa: B018 - a step that read the data config would fail at trace time
