"""Orbax checkpoints of the whole training run, and the ``digest`` reproducibility tool.

A checkpoint step directory holds three items:

* ``state``: the train-state pytree (G, D, G_ema, both optimizer states, ADA p, the step),
* ``data``: the grain iterator state (one JSON per process), so the input order resumes exactly,
* ``meta``: JSON with the resolved config, library versions and the git SHA.

Saves are asynchronous; a partially written step (preemption mid-save) is left as
``<step>.orbax-checkpoint-tmp`` and Orbax ignores it, so the previous step is restored.

``python -m psm_jax.checkpoint digest WORKDIR`` prints the latest step and a SHA-256 over all
saved state arrays in a canonical order (sorted key paths; dtype, shape and bytes of each), so
two runs can be compared bit for bit whatever their device count.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from psm_jax import cli

ITEMS = ("state", "data", "meta")
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def make_manager(workdir: str | Path, *, keep: int = 3, async_save: bool = True,
                 data_handler: bool = True) -> ocp.CheckpointManager:
    """A manager over ``WORKDIR/checkpoints`` keeping the last ``keep`` steps."""
    import grain  # local: grain pulls in absl flags machinery at import

    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    names = ("state", "meta")
    if data_handler:
        handlers["data"] = grain.checkpoint.CheckpointHandler()
        names = ITEMS
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints", options=options,
                                 item_names=names, item_handlers=handlers)


def run_metadata(config_json: str) -> dict[str, Any]:
    """What a checkpoint records about the run besides arrays."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"config": config_json, "versions": versions, "git_sha": sha,
            "python": sys.version.split()[0]}


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost mount); older steps are intact."""


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         meta: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an (async) save of ``step``; a failure, now or of the previous async save, is a
    :class:`CheckpointWriteError` naming the directory and the newest step that is intact."""
    import grain

    args = {"state": ocp.args.PyTreeSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    with _write_errors(mngr, step):
        if os.environ.get("PSM_FAULT_DISK_FULL_AT") == str(step):
            # Fault injection for tests/test_faults.py: the write fails as on a full disk.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(mngr.directory) / str(step)))
        return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def wait(mngr: ocp.CheckpointManager) -> None:
    """Waits for the async save in flight; its failure is a :class:`CheckpointWriteError`."""
    with _write_errors(mngr, None):
        mngr.wait_until_finished()


@contextlib.contextmanager
def _write_errors(mngr: ocp.CheckpointManager, step: int | None):
    try:
        yield
    except CheckpointWriteError:
        raise
    except Exception as e:  # noqa: BLE001 - orbax, tensorstore and the OS raise many kinds
        try:
            mngr.wait_until_finished()   # an earlier async save may still be committing
        except Exception:  # noqa: BLE001 - that one failed too: report what is on disk
            pass
        try:
            intact = f"the newest complete checkpoint is step {latest_complete_step(mngr.directory)}"
        except Exception:  # noqa: BLE001
            intact = "older checkpoints were not touched"
        what = f"step {step}" if step is not None else "the checkpoint in flight"
        raise CheckpointWriteError(
            f"could not write {what} to {mngr.directory} ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]}); {intact}") from e


def latest_complete_step(checkpoint_dir: str | Path) -> int | None:
    """The newest finished step directory (a number, no ``.orbax-checkpoint-tmp`` suffix)."""
    steps = [int(p.name) for p in Path(checkpoint_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)


def data_state_matches(mngr: ocp.CheckpointManager, step: int) -> bool:
    """Whether ``step`` holds the grain state of this process for this process count.

    grain saves one ``data/process_<i>-of-<n>.json`` per process; a run resumed on another
    process count has none to read and restarts its iterator from the step instead.
    """
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return (Path(mngr.directory) / str(step) / "data" / name).exists()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any) -> tuple[Any, dict[str, Any]]:
    """Restores onto the shardings in ``abstract_state`` (any device count)."""
    import grain

    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
        if isinstance(a, jax.ShapeDtypeStruct) and a.sharding is not None
        else ocp.RestoreArgs(restore_type=np.ndarray), abstract_state)
    args = {"state": ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args),
            "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**args))
    return out["state"], out["meta"]


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta`` item of a step (config JSON, versions, git SHA) without reading any array."""
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


# Config sections whose values decide the shapes of the saved state.
SHAPE_FIELDS = ("model", "discriminator")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k in sorted(d):
            out.update(_flat(d[k], f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tuple(d) if isinstance(d, list) else d}


def check_compatible(saved_config: dict[str, Any], config: dict[str, Any]) -> None:
    """Raises ValueError naming the first field that makes ``config`` unable to resume
    ``saved_config``'s state (a model or discriminator field, or the training resolution)."""
    saved = {k: v for k, v in _flat(saved_config).items()
             if k.split(".")[0] in SHAPE_FIELDS or k == "data.resolution"}
    now = _flat(config)
    for key in sorted(saved):
        if key in now and now[key] != saved[key]:
            raise ValueError(f"cannot resume: config field {key} is {now[key]!r}, but the checkpoint "
                             f"was trained with {saved[key]!r} (use another --workdir, or the old value)")


def _restore_numpy(mngr: ocp.CheckpointManager, step: int) -> Any:
    tree = mngr.item_metadata(step)["state"]
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=restore_args)))
    return out["state"]


def tree_digest(tree: Any) -> str:
    """SHA-256 over (path, dtype, shape, bytes) of every leaf, in sorted path order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    h = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def latest_step(workdir: str | Path) -> int | None:
    """The latest finished checkpoint step in a workdir, or None."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return None
    return make_manager(workdir, async_save=False).latest_step()


def digest(workdir: str | Path) -> tuple[int, str]:
    """(latest step, SHA-256 of its state) for a workdir; raises FileNotFoundError if none."""
    ckpt_dir = Path(workdir) / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{workdir}: no checkpoints/ directory")
    mngr = make_manager(workdir, async_save=False)
    step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"{ckpt_dir}: no finished checkpoint")
    return step, tree_digest(_restore_numpy(mngr, step))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m psm_jax.checkpoint",
                                     description="Inspect psm_jax training checkpoints.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("digest", help="print the latest step and a SHA-256 over its saved arrays")
    p.add_argument("workdir")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        step, sha = digest(args.workdir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: orbax/tensorstore raise many kinds
        print(f"error: {args.workdir}: the latest checkpoint cannot be read ({type(e).__name__}: "
              f"{' '.join(str(e).split())[:300]})", file=sys.stderr)
        return 2
    print(f"step {step} sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
