"""Checkpoint digest tool and save/restore round trip (psm_jax/checkpoint.py)."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from psm_jax import checkpoint as ckpt


def _state(scale=1.0):
    return {"step": jnp.int32(3), "g_params": {"w": jnp.arange(6.0).reshape(2, 3) * scale},
            "ada": {"p": jnp.float32(0.25)}}


def test_tree_digest_is_canonical_and_sensitive():
    a = _state()
    b = {"ada": a["ada"], "g_params": a["g_params"], "step": a["step"]}   # other insertion order
    assert ckpt.tree_digest(a) == ckpt.tree_digest(b)
    assert ckpt.tree_digest(a) != ckpt.tree_digest(_state(scale=2.0))
    # dtype is part of the digest, not only the bytes
    c = dict(a, step=np.uint32(3))
    assert ckpt.tree_digest(a) != ckpt.tree_digest(c)


def test_save_restore_digest(tmp_path):
    mngr = ckpt.make_manager(tmp_path, keep=2, data_handler=False)
    state = _state()
    for step in (1, 2, 3):
        ckpt.save(mngr, step, jax.tree.map(lambda x: x + step, state), None, {"config": "{}"})
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2, 3]                      # keep the last K
    step, sha = ckpt.digest(tmp_path)
    assert step == 3
    assert sha == ckpt.tree_digest(jax.tree.map(lambda x: np.asarray(x + 3), state))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), state)
    restored, meta = ckpt.restore(mngr, 3, abstract, None)
    assert meta["config"] == "{}"
    np.testing.assert_array_equal(restored["g_params"]["w"], state["g_params"]["w"] + 3)


def test_digest_cli_errors_cleanly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "psm_jax.checkpoint", "digest", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "no checkpoints" in r.stderr
