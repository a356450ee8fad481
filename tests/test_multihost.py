"""Multi-host training verified on one machine: 2 processes x 2 CPU devices over 127.0.0.1.

Every run is ``python -m psm_jax.main`` in fresh processes, as on a pod (jax.distributed with a
local coordinator, gloo collectives), on ``configs/demo.py:tiny``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import xla_flags
from psm_jax import checkpoint as ckpt
from test_train import _batch_shas, _flatten as _flat

REPO = Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'configs' / 'demo.py'}:tiny"
# Global batch 8 (2 rows per device). Adam's eps = 1e-3: with 1e-8 a parameter whose gradient is
# pure rounding noise moves by +-lr on the noise's sign (see test_train.py).
STEPS = ("--config.batch_size=8", "--config.optim.eps=1e-3", "--config.progress_bar=False")


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(devices))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(workdir: Path, steps: int, *, processes: int, devices: int) -> str:
    flags = [f"--config={TINY}", f"--workdir={workdir}", f"--config.total_steps={steps}",
             f"--config.ckpt_every={steps}", *STEPS]
    if processes == 1:
        cmds = [[sys.executable, "-m", "psm_jax.main", *flags]]
    else:
        port = _free_port()
        cmds = [[sys.executable, "-m", "psm_jax.main", *flags, f"--coordinator=127.0.0.1:{port}",
                 f"--num_processes={processes}", f"--process_id={i}"] for i in range(processes)]
    procs = [subprocess.Popen(c, env=_env(devices), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    return outs[0][0] + outs[0][1]


def _state(workdir: Path) -> dict:
    mngr = ckpt.make_manager(workdir, async_save=False, data_handler=False)
    return ckpt._restore_numpy(mngr, mngr.latest_step())


def test_process_rows_are_disjoint_and_cover_the_global_batch():
    from psm_jax.config_lib import load_config
    from psm_jax.data import pipeline

    cfg = load_config(TINY)
    whole = pipeline.make_train_iterator(cfg.data, global_batch_size=8, seed=cfg.seed,
                                         process_index=0, process_count=1)
    parts = [pipeline.make_train_iterator(cfg.data, global_batch_size=8, seed=cfg.seed,
                                          process_index=i, process_count=2) for i in range(2)]
    for _ in range(3):
        g = next(whole)
        local = [next(p) for p in parts]
        a, b = (set(x["index"].tolist()) for x in local)
        assert not a & b
        assert sorted(a | b) == sorted(g["index"].tolist())
        # Process order assembles the global batch exactly, pixels included.
        np.testing.assert_array_equal(np.concatenate([x["image"] for x in local]), g["image"])
        np.testing.assert_array_equal(np.concatenate([x["mask"] for x in local]), g["mask"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process_and_resume(tmp_path):
    """2 processes x 2 devices train like 1 x 4; a 2-process run resumes on 2 processes, and on 1.

    On another process count grain's per-process iterator states (``data/process_<i>-of-<n>.json``)
    do not apply; the run continues the global order at batch ``step`` instead, so it reads
    exactly the batch an uninterrupted run reads, and trains to the same parameters.
    """
    one, multi, cross = tmp_path / "one", tmp_path / "multi", tmp_path / "cross"
    _train(one, 2, processes=1, devices=4)
    _train(multi, 2, processes=2, devices=2)
    ref, got = _state(one), _state(multi)
    assert int(got["step"]) == 2
    for key in ("g_params", "g_ema_params", "d_params"):
        a, b = dict(_flat(ref[key])), dict(_flat(got[key]))
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=f"{key}{name}")
    shutil.copytree(multi, cross)
    _train(multi, 3, processes=2, devices=2)
    assert ckpt.digest(multi)[0] == 3
    # 2 processes -> 1: the third batch and the parameters are those of the uninterrupted 1 x 4 run.
    out = _train(cross, 3, processes=1, devices=4)
    assert "saved with another process count" in out and "at global batch 2" in out, out[-3000:]
    _train(one, 3, processes=1, devices=4)
    assert _batch_shas(cross)[3] == _batch_shas(one)[3]
    ref, got = _state(one), _state(cross)
    assert int(got["step"]) == 3
    for key in ("g_params", "g_ema_params", "d_params"):
        a, b = dict(_flat(ref[key])), dict(_flat(got[key]))
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=f"{key}{name}")
