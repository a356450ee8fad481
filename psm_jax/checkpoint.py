"""Orbax checkpoints of the whole training run: writing (training), reading back (resume and
inference), and the ``digest`` reproducibility tool.

A checkpoint step directory holds three items:

* ``state``: the train-state pytree (G, D, G_ema, both optimizer states, ADA p, the step),
* ``data``: the grain iterator state (one JSON per process), so the input order resumes exactly,
* ``meta``: JSON with the resolved config, library versions and the git SHA.

Saves are asynchronous; a partially written step (preemption mid-save) is left as
``<step>.orbax-checkpoint-tmp`` and Orbax ignores it, so the previous step is restored.

Inference reads only ``meta`` and G_ema (:func:`load_run`, :func:`load_checkpoint`). A step that
cannot be read back is a :class:`CheckpointReadError` naming the step and what to do.

``python -m psm_jax.checkpoint digest WORKDIR`` prints the latest step and a SHA-256 over all
saved state arrays in a canonical order (sorted key paths; dtype, shape and bytes of each), so
two runs can be compared bit for bit whatever their device count.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from psm_jax import cli

ITEMS = ("state", "data", "meta")
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def make_manager(workdir: str | Path, *, keep: int = 3, async_save: bool = True,
                 data_handler: bool = True) -> ocp.CheckpointManager:
    """A manager over ``WORKDIR/checkpoints`` keeping the last ``keep`` steps.

    ``data_handler=False`` (inference) reads ``state`` and ``meta`` only, without grain.
    """
    import grain  # deferred: grain pulls in absl flags machinery at import; inference never needs it

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
    import grain  # deferred: see make_manager

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
    """Restores onto the shardings in ``abstract_state`` (any device count); a step that cannot
    be read is a :class:`CheckpointReadError`."""
    import grain  # deferred: see make_manager

    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
        if isinstance(a, jax.ShapeDtypeStruct) and a.sharding is not None
        else ocp.RestoreArgs(restore_type=np.ndarray), abstract_state)
    args = {"state": ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args),
            "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    with _read_errors(mngr, step, "state"):
        out = mngr.restore(step, args=ocp.args.Composite(**args))
    return out["state"], out["meta"]


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta`` item of a step (config JSON, versions, git SHA) without reading any array."""
    with _read_errors(mngr, step, "meta"):
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        json.loads(meta["config"])   # a truncated config is damage too, found here rather than later
    return meta


class CheckpointReadError(ValueError):
    """A saved step cannot be read back (a damaged or truncated copy). The message is one line
    naming the step and its folder; ``step`` and ``path`` let callers say what to do."""

    def __init__(self, message: str, step: int, path: Path):
        super().__init__(message)
        self.step, self.path = step, path


def _brief(e: BaseException) -> str:
    """An exception's message on one line, at most 200 characters (no class name: users act on the text)."""
    text = " ".join(str(e).split()) or "no detail"
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _read_errors(mngr: ocp.CheckpointManager, step: int, item: str):
    try:
        yield
    except CheckpointReadError:
        raise
    except Exception as e:  # noqa: BLE001 - orbax, tensorstore, json and the OS raise many kinds
        path = Path(mngr.directory) / str(step)
        raise CheckpointReadError(f"checkpoint step {step} ({path}) is damaged: its {item} cannot be "
                                  f"read ({_brief(e)})", step, path) from e


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


def restore_numpy(mngr: ocp.CheckpointManager, step: int) -> Any:
    """The ``state`` item of ``step`` as host numpy arrays, whatever sharding it was saved with."""
    with _read_errors(mngr, step, "state"):
        tree = mngr.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(restore_args=restore_args)))
    return out["state"]


# ----------------------------------------------------------------------------- inference


def ema_variables(state: dict[str, Any]) -> dict[str, Any]:
    """Generator variables for inference: the EMA weights plus the (untrained) buffers."""
    return {"params": state["g_ema_params"], **state["g_buffers"]}


def _tuples(x: Any) -> Any:
    """JSON turns tuples into lists; module fields want the tuples back."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """The config a run saved (``meta["config"]``, ``config.json``), tuples restored."""
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


def resolve_checkpoint(workdir_or_checkpoint: str | Path, step: int | None = None) -> tuple[Path, int | None]:
    """(workdir, step) from a workdir, its ``checkpoints/`` folder or one ``checkpoints/<step>`` folder.

    Raises FileNotFoundError or ValueError (one line) if the path does not exist, holds no
    checkpoints folder, or is a step folder other than ``step``.
    """
    path = Path(workdir_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint or workdir does not exist")
    if path.name.isdigit() and path.parent.name == "checkpoints":
        if step is not None and step != int(path.name):
            raise ValueError(f"{path}: is step {path.name}, but step={step} was asked for")
        return path.parent.parent, int(path.name)
    if path.name == "checkpoints" and path.is_dir():
        path = path.parent
    if not (path / "checkpoints").is_dir():
        raise FileNotFoundError(f"{path}: not a training workdir (no checkpoints/ folder)")
    return path, step


def load_checkpoint(workdir_or_checkpoint: str | Path, step: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(config, G_ema variables, step) of the latest (or given) step of a workdir or checkpoint folder.

    FileNotFoundError (one line) when there is no such checkpoint; :class:`CheckpointReadError`
    naming the step and what to do when it is damaged.
    """
    workdir, step = resolve_checkpoint(workdir_or_checkpoint, step)
    mngr = make_manager(workdir, async_save=False, data_handler=False)
    steps = sorted(mngr.all_steps())
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{workdir}: no finished checkpoint")
    elif step not in steps:
        raise FileNotFoundError(f"{workdir}: no checkpoint at step {step} (have {steps})")
    try:
        meta = read_meta(mngr, step)
        state = restore_numpy(mngr, step)
    except CheckpointReadError as e:
        older = [s for s in steps if s < step]
        hint = (f"load an older step ({', '.join(map(str, older))}) or copy step {step} again" if older
                else f"copy step {step} again, or train anew")
        raise CheckpointReadError(f"{e}; {hint}", e.step, e.path) from None
    return config_from_json(meta["config"]), jax.tree.map(jnp.asarray, ema_variables(state)), int(step)


def load_run(workdir_or_checkpoint: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, G_ema variables) of the latest (or given) checkpoint (see :func:`load_checkpoint`)."""
    config, variables, _ = load_checkpoint(workdir_or_checkpoint, step)
    return config, variables


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
    return step, tree_digest(restore_numpy(mngr, step))


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
    except (FileNotFoundError, CheckpointReadError) as e:
        return cli.error(str(e), last_words=True)
    print(f"step {step} sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
