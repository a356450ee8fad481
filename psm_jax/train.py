"""``train_and_evaluate``: the PSM training job (paper Sec. 3.3 and 4.2), as one linear function.

Sections: setup, mesh, data, models, state (fresh or resumed), compiled steps, loop
(train, lazy R1, logging, samples, checkpoints, preemption), final save.

The state is a plain dict pytree::

    step, g_params, g_buffers, g_ema_params, d_params, g_opt, d_opt, ada{p, acc, n}

The step RNG is ``fold_in(key(seed), step)``, so a resumed run draws the same numbers as an
uninterrupted one, and with ``jax_threefry_partitionable`` the numbers do not depend on the
device count either.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from absl import logging as absl_logging
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from psm_jax import checkpoint as ckpt
from psm_jax import config_lib
from psm_jax import distributed
from psm_jax import perceptual
from psm_jax import sharding as shd
from psm_jax import train_eval
from psm_jax import train_step as ts
from psm_jax import workdir_lock
from psm_jax.data import pipeline
from psm_jax.models.discriminator import Discriminator
from psm_jax.models.generator import Generator
from psm_jax.run_log import RunLog

log = logging.getLogger("psm_jax.train")
# Multi-process runs agree on a SIGTERM this often (a host sync; single-process runs never sync).
PREEMPT_SYNC_EVERY = 10


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the last good checkpoint is kept."""


def build_models(config: ml_collections.ConfigDict) -> ts.Models:
    G = Generator(**config.model)
    D = Discriminator(resolution=config.model.resolution, img_channels=3, **config.discriminator)
    pcp_params, pcp_fn = (None, None)
    if config.loss.pcp_weight:
        pcp_params, pcp_fn = perceptual.make_perceptual_fn(config.loss)
    return ts.Models(G, D, pcp_params, pcp_fn)


# Fields that only steer the host loop (data, logging, checkpoints, evaluation). The compiled
# programs are built from a copy of the config without them, so they cannot depend on them.
LOOP_FIELDS = ("data", "demo", "eval", "total_steps", "ckpt_every", "keep_ckpts", "log_every",
               "progress_bar", "sample_every", "log_batch_digest")
_PROGRAMS_KEPT = 4


class Program(NamedTuple):
    """What one model configuration compiles: models, state layout and the jitted steps."""
    models: ts.Models
    init: Any                # jitted key -> state (sharded)
    abstract: Any            # the state's ShapeDtypeStructs
    state_sh: Any            # its NamedShardings
    batch_sharding: Any
    train_step: Any          # jitted (state, batch) -> (state, metrics), state donated
    r1_step: Any


_programs: dict[str, Program] = {}


def program_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config without :data:`LOOP_FIELDS`: all that the compiled programs may read."""
    d = config.to_dict()
    for k in LOOP_FIELDS:
        d.pop(k, None)
    return ml_collections.FrozenConfigDict(d)


def compiled_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Program:
    """The models and jitted steps of ``config`` on ``mesh``, shared by the runs of one process.

    A later ``train_and_evaluate`` in the same process with the same model, losses and mesh
    (a sweep driven from Python, a notebook, the tests) reuses the traced and compiled steps
    instead of tracing them again: only the loop fields may differ. The last few are kept.
    """
    pc = program_config(config)
    key = json.dumps([pc.to_json_best_effort(sort_keys=True), _weights_identity(pc),
                      [d.id for d in mesh.devices.flat], list(mesh.shape.items()), jax.process_count()])
    if key in _programs:
        _programs[key] = _programs.pop(key)   # most recently used last
        return _programs[key]
    models = build_models(pc)
    init_fn = lambda k: init_state(pc, models, k)  # noqa: E731
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    state_sh = shd.state_shardings(abstract, mesh)
    batch_sh, replicated = shd.batch_sharding(mesh), shd.replicated(mesh)
    program = Program(
        models=models, init=jax.jit(init_fn, out_shardings=state_sh), abstract=abstract,
        state_sh=state_sh, batch_sharding=batch_sh,
        train_step=jax.jit(ts.make_train_step(pc, models), in_shardings=(state_sh, batch_sh),
                           out_shardings=(state_sh, replicated), donate_argnums=0),
        r1_step=jax.jit(ts.make_r1_step(pc, models), in_shardings=(state_sh, batch_sh),
                        out_shardings=(state_sh, replicated), donate_argnums=0))
    _programs[key] = program
    while len(_programs) > _PROGRAMS_KEPT:
        _programs.pop(next(iter(_programs)))
    return program


def _weights_identity(pc: ml_collections.FrozenConfigDict) -> list:
    """A perceptual weights file is read into the program: a rewritten file is another program."""
    path = str(pc.loss.get("perceptual_weights", "") or "")
    if not path or not os.path.exists(path):
        return []
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def init_state(config: ml_collections.ConfigDict, models: ts.Models, key: jax.Array) -> dict:
    """A fresh train state (pure; run it under jit with the state shardings)."""
    R = config.model.resolution
    k_g, k_latent, k_noise, k_d = jax.random.split(key, 4)
    x = jnp.zeros((1, R, R, 3))
    m = jnp.ones((1, R, R, 1))
    g_vars = models.generator.init({"params": k_g, "latent": k_latent, "noise": k_noise},
                                   x, m, m, 1.0 - m, jnp.zeros((1,)))
    d_vars = models.discriminator.init(k_d, x, m)
    g_params = g_vars["params"]
    g_buffers = {k: v for k, v in g_vars.items() if k != "params"}
    g_tx, d_tx = ts.make_optimizers(config)
    return {
        "step": jnp.zeros((), jnp.int32),
        "g_params": g_params,
        "g_buffers": g_buffers,
        "g_ema_params": jax.tree.map(jnp.copy, g_params),
        "d_params": d_vars["params"],
        "g_opt": g_tx.init(g_params),
        "d_opt": d_tx.init(d_vars["params"]),
        "ada": {"p": jnp.asarray(config.ada.p_init, jnp.float32),
                "acc": jnp.zeros((), jnp.float32), "n": jnp.zeros((), jnp.int32)},
    }


def _batch_digest(batch: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode())
        h.update(np.ascontiguousarray(batch[k]).tobytes())
    return h.hexdigest()[:16]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (or resumes) until ``config.total_steps``; returns the last logged metrics."""
    # ------------------------------------------------------------------ setup
    jax.config.update("jax_threefry_partitionable", True)
    absl_logging.set_verbosity(absl_logging.WARNING)   # Orbax logs every save at INFO
    config_lib.validate(config)   # bad enum/range fields fail here, before anything is written
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"--workdir {workdir} exists and is not a directory")
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    lock = workdir_lock.acquire(workdir) if is_main else None   # one job per workdir
    try:
        config_json = config.to_json_best_effort(sort_keys=True)

        # ------------------------------------------------------------------ mesh
        mesh = shd.make_mesh(config.mesh.fsdp)
        shd.check_batch_size(config.batch_size, mesh)

        # ------------------------------------------------------------------ data
        def _data_iter(start_batch=0):
            return pipeline.make_train_iterator(
                config.data, global_batch_size=config.batch_size, seed=config.seed,
                process_index=jax.process_index(), process_count=jax.process_count(),
                start_batch=start_batch)
        data_iter = _data_iter()

        # ------------------------------------------------------------------ models and state
        program = compiled_program(config, mesh)
        abstract, state_sh = program.abstract, program.state_sh
        batch_sharding = program.batch_sharding
        mngr = ckpt.make_manager(workdir, keep=config.keep_ckpts)
        latest = mngr.latest_step()
        if latest is not None:
            target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, state_sh)
            # The newest checkpoint may be damaged (a disk fault, a truncated copy): resume from the
            # newest one that reads back, saying which were skipped; never silently from scratch.
            state, bad, same_layout = None, [], True
            for step_ in sorted(mngr.all_steps(), reverse=True):
                try:
                    saved_config = json.loads(ckpt.read_meta(mngr, step_)["config"])
                    # A readable step of another model is the user's mistake, not damage: refuse.
                    ckpt.check_compatible(saved_config, json.loads(config_json))
                    same_layout = ckpt.data_state_matches(mngr, step_)
                    state, _ = ckpt.restore(mngr, step_, target, data_iter if same_layout else None)
                except ckpt.CheckpointReadError as e:
                    bad.append(e)
                    continue
                latest = step_
                break
            if state is None:
                others = f" (steps {', '.join(str(e.step) for e in bad[1:])} too)" if bad[1:] else ""
                raise ckpt.CheckpointReadError(
                    f"{bad[0]}{others}, and no older step reads back: move {mngr.directory} away (or "
                    "use another --workdir) to train from scratch", bad[0].step, bad[0].path)
            for e in bad:
                print(f"warning: {e}; resuming from step {latest}", flush=True)
            if bad:
                # Keep the damaged steps for inspection, out of the way of the steps to be re-saved.
                if is_main:
                    aside = workdir / "checkpoints_unreadable"
                    aside.mkdir(exist_ok=True)
                    for e in bad:
                        os.replace(e.path, aside / f"{e.step}.{int(time.time())}")
                    print(f"warning: moved unreadable step(s) {[e.step for e in bad]} to {aside}", flush=True)
                if jax.process_count() > 1:
                    multihost_utils.sync_global_devices("psm_jax: unreadable checkpoints moved")
                mngr.reload()
            if not same_layout:
                # Saved by another process count: grain's per-process positions do not apply. The
                # global order does not depend on the layout, so start at global batch `latest`
                # (one batch per step); exact unless a process had skipped corrupt records.
                if hasattr(data_iter, "close"):
                    data_iter.close()
                data_iter = _data_iter(start_batch=latest)
                print(f"warning: step {latest} was saved with another process count; the input "
                      f"order continues at global batch {latest}", flush=True)
            print(f"resumed from {mngr.directory} at step {latest}", flush=True)
        else:
            state = program.init(jax.random.key(config.seed))
        start_step = int(jax.device_get(state["step"]))
        meta = ckpt.run_metadata(config_json)
        if is_main:
            # Written once the run's state is settled: a refused resume leaves the old config.json.
            (workdir / "config.json").write_text(config_json)
            # What this start ran with (a resumed run may have another device count or code version).
            record = {**meta, "config": json.loads(config_json), "start_step": start_step,
                      "process_count": jax.process_count(), "device_count": jax.device_count(),
                      "local_device_count": jax.local_device_count(), "platform": jax.devices()[0].platform,
                      "device_kind": jax.devices()[0].device_kind,
                      "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (workdir / "run.json").write_text(json.dumps(record, indent=1, sort_keys=True))
            with open(workdir / "starts.jsonl", "a") as f:
                f.write(json.dumps({k: v for k, v in record.items() if k != "config"}, sort_keys=True) + "\n")

        # ------------------------------------------------------------------ compiled steps
        train_step, r1_step = program.train_step, program.r1_step
        # Every process compiles (or loads from the cache) both steps, then all start the first
        # step together: a process that found its steps in the compilation cache would otherwise
        # wait at the first collective for one that compiles (psm_jax/distributed.py).
        r = config.model.resolution
        batch_abs = {k: jax.ShapeDtypeStruct((config.batch_size, r, r, c), jnp.float32, sharding=batch_sharding)
                     for k, c in (("image", 3), ("mask", 1))}
        steps = [(train_step, (state, batch_abs))]
        if config.loss.r1_gamma:
            steps.append((r1_step, (state, batch_abs)))
        distributed.compile_then_meet("steps compiled", steps if jax.process_count() > 1 else [])

        # ------------------------------------------------------------------ evaluation
        evaluator = None
        if config.eval.every:
            evaluator = train_eval.TrainEvaluator(config)

        def _evaluate(step_done):
            values = evaluator(train_eval.gather_ema_variables(state))
            run_log.scalars(step_done, values)
            return values

        # ------------------------------------------------------------------ preemption
        preempted = {"flag": False}

        def _on_sigterm(signum, frame):  # noqa: ARG001
            preempted["flag"] = True
        previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)

        # ------------------------------------------------------------------ loop
        run_log = RunLog(workdir, total_steps=config.total_steps, start_step=start_step,
                         enabled=is_main, progress_bar=config.progress_bar,
                         images_per_step=config.batch_size, log_every=config.log_every)
        sample_batch = None
        pending: tuple[int, Any] | None = None   # metrics fetched one step late: no device stall
        last: dict[str, Any] = {}
        stop = False

        def _flush(pending_metrics):
            step_done, metrics = pending_metrics
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(math.isfinite(v) for v in values.values()):
                bad = sorted(k for k, v in values.items() if not math.isfinite(v))
                raise TrainingDiverged(f"non-finite {', '.join(bad)} at step {step_done}; "
                                       f"keeping the last good checkpoint in {mngr.directory}")
            run_log.step(step_done, values)
            return values

        try:
            if evaluator is not None and train_eval.pending_step(config, workdir, start_step) is not None:
                print(f"running the eval of step {start_step} that the previous run did not finish", flush=True)
                _evaluate(start_step)
            nan_batch_at = os.environ.get("PSM_FAULT_NAN_BATCH_AT")   # fault injection, read once
            for step in range(start_step, config.total_steps):
                local = next(data_iter)
                local = {k: v for k, v in local.items() if k in ("image", "mask")}
                if nan_batch_at == str(step + 1):
                    # Fault injection for the divergence test: a batch of NaN pixels makes every
                    # loss NaN without compiling another program (a huge lr would be a new one).
                    local = dict(local, image=np.full_like(local["image"], np.nan))
                if sample_batch is None:
                    sample_batch = local
                batch = pipeline.to_global_batch(local, batch_sharding)
                if step % config.loss.r1_interval == 0 and config.loss.r1_gamma:
                    state, r1_metrics = r1_step(state, batch)
                else:
                    r1_metrics = {}
                state, metrics = train_step(state, batch)
                metrics = {**metrics, **r1_metrics}
                if config.log_batch_digest:
                    run_log.record(step + 1, {"batch_sha": _batch_digest(local)})
                if pending is not None:
                    last = _flush(pending)
                pending = (step + 1, metrics)
                done = step + 1
                if jax.process_count() == 1:
                    stop = preempted["flag"]
                elif done % PREEMPT_SYNC_EVERY == 0:
                    # Every process must agree to stop at the same step, or the save deadlocks.
                    stop = bool(multihost_utils.process_allgather(np.asarray(preempted["flag"])).any())
                if config.sample_every and done % config.sample_every == 0 and is_main:
                    train_eval.save_sample_grid(config, state, sample_batch, workdir / f"samples/{done:08d}.png")
                if stop or done % config.ckpt_every == 0 or done == config.total_steps:
                    last = _flush(pending)       # never checkpoint a diverged state
                    pending = None
                    ckpt.save(mngr, done, state, data_iter, meta)
                    # Fault injection for the resume tests: die like a preempted VM would, with
                    # the save committed, or while its async write is in flight.
                    if os.environ.get("PSM_FAULT_KILL_AFTER_CKPT") == str(done):
                        ckpt.wait(mngr)
                        os.kill(os.getpid(), signal.SIGKILL)
                    if os.environ.get("PSM_FAULT_KILL_DURING_CKPT") == str(done):
                        os.kill(os.getpid(), signal.SIGKILL)
                if evaluator is not None and train_eval.is_eval_step(config, done) and not stop:
                    _evaluate(done)
                if stop:
                    ckpt.wait(mngr)
                    print(f"SIGTERM: saved checkpoint at step {done} in {mngr.directory}; exiting.",
                          flush=True)
                    break
            if pending is not None:
                last = _flush(pending)
        finally:
            try:
                ckpt.wait(mngr)
            except ckpt.CheckpointWriteError as e:
                # A write that failed in the background; do not mask an error already in flight.
                if sys.exc_info()[0] is None:
                    raise
                print(f"warning: {e}", flush=True)
            if hasattr(data_iter, "close"):   # grain workers leak shared memory otherwise
                data_iter.close()
            run_log.close()
            signal.signal(signal.SIGTERM, previous_handler)
        return last
    finally:
        if lock is not None:
            workdir_lock.release(lock)
