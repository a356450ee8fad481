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
# The tiny config's global batch 8 gives 2 rows per device; its Adam eps = 1e-3 keeps rounding
# noise from deciding parameter signs (configs/demo.py).
STEPS = ("--config.progress_bar=False",)


def _env(devices: int) -> dict[str, str]:
    # The persistent compilation cache stays on: process 0 loads its steps from it while process 1
    # compiles (on CPU only process 0's entries are ever written), and the trainer lines the two up
    # before the first step (psm_jax/distributed.py; test_a_late_process_is_waited_for below).
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(workdir: Path, steps: int, *, processes: int, devices: int, ckpt_every: int = 0) -> str:
    flags = [f"--config={TINY}", f"--workdir={workdir}", f"--config.total_steps={steps}",
             f"--config.ckpt_every={ckpt_every or steps}", *STEPS]
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


def _state(workdir: Path, step: int | None = None) -> dict:
    mngr = ckpt.make_manager(workdir, async_save=False, data_handler=False)
    return ckpt.restore_numpy(mngr, mngr.latest_step() if step is None else step)


def _assert_close(ref: dict, got: dict) -> None:
    for key in ("g_params", "g_ema_params", "d_params"):
        a, b = dict(_flat(ref[key])), dict(_flat(got[key]))
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=f"{key}{name}")


# One process of a 2-process cluster: it compiles a cross-process sum, process 1 DELAY seconds late (a
# compile that process 0 found in its cache), meets the other at psm_jax.distributed.compile_then_meet,
# and runs it. Without the meeting, gloo gives up on a peer that is more than 30 s late.
MEET = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from psm_jax import distributed
pid, port, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])   # python -c: argv[0] is '-c'
distributed.initialize(f"127.0.0.1:{port}", 2, pid)
mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.full(2, pid + 1.0, np.float32))
f = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))
time.sleep(delay * pid)
arrived = time.time()
distributed.compile_then_meet("meet test", [(f, (x,))])
left = time.time()
print(arrived, left, float(f(x).addressable_data(0)))
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_late_process_is_waited_for():
    delay = 8.0
    port = str(_free_port())
    # `-c` from the repository root imports this checkout's psm_jax.
    procs = [subprocess.Popen([sys.executable, "-c", MEET, str(i), port, str(delay)], env=_env(2), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    (arrived0, left0, sum0), (arrived1, left1, sum1) = (map(float, out.split()[-3:]) for out, _ in outs)
    assert sum0 == sum1 == 2 * 1.0 + 2 * 2.0          # the collective ran over both processes
    assert arrived1 - arrived0 > 0.8 * delay           # process 1 came late ...
    assert left0 - arrived0 > 0.8 * delay              # ... process 0 waited for it ...
    assert abs(left0 - left1) < 2.0                    # ... and both went on together


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
    _train(one, 3, processes=1, devices=4, ckpt_every=1)      # the uninterrupted reference
    _train(multi, 2, processes=2, devices=2)
    got = _state(multi)
    assert int(got["step"]) == 2
    # Equal to float32 reduction order: gloo's cross-process all-reduce sums in another order
    # than the in-process one, so the two layouts differ in the last bits.
    _assert_close(_state(one, 2), got)
    shutil.copytree(multi, cross)
    _train(multi, 3, processes=2, devices=2)                  # resume on 2 processes
    assert ckpt.digest(multi)[0] == 3
    # 2 processes -> 1: the step-3 batch is the uninterrupted run's, bit for bit, and so are the
    # parameters up to the layouts' last bits.
    out = _train(cross, 3, processes=1, devices=4)
    assert "saved with another process count" in out and "at global batch 2" in out, out[-3000:]
    assert _batch_shas(cross)[3] == _batch_shas(one)[3]
    got = _state(cross)
    assert int(got["step"]) == 3
    _assert_close(_state(one, 3), got)
