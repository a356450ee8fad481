"""Entry point: ``python -m psm_jax.main --config configs/NAME.py[:variant] --workdir DIR``.

Overrides use ml-collections syntax (``--config.batch_size=64``); the config is locked, so a
misspelled key is an error. On multi-host pods ``jax.distributed.initialize()`` finds the
cluster by itself; ``--coordinator/--num_processes/--process_id`` set it explicitly (local tests).
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of JAX processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax
    if FLAGS.coordinator or FLAGS.distributed:
        kwargs = {}
        if FLAGS.coordinator and FLAGS.coordinator.split(":")[0] in ("127.0.0.1", "localhost"):
            # A local cluster: keep the coordinator on loopback (it binds every interface otherwise).
            kwargs["coordinator_bind_address"] = FLAGS.coordinator
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                                   **kwargs)
    from psm_jax import cli, train
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.TrainingDiverged as e:
        sys.exit(cli.error(f"training diverged: {e}", code=1, last_words=True))
    except train.ckpt.CheckpointWriteError as e:
        # A full disk or a lost mount: say so on one line; the older checkpoints are intact.
        sys.exit(cli.error(str(e), code=1, last_words=True))
    except (ValueError, FileNotFoundError, NotADirectoryError, train.workdir_lock.WorkdirLocked) as e:
        # Bad config values and missing files: one line, exit 2 (PSM_DEBUG=1 shows the traceback).
        if os.environ.get("PSM_DEBUG"):
            raise
        sys.exit(cli.error(str(e), last_words=True))


def _parse_flags(argv):
    """absl parsing, but a bad flag, config file or override key is one line and exit 2."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.get("seed")  # config_flags defers a failed load; trip it here, inside the try
        return rest
    except Exception as e:  # noqa: BLE001 - flags, config files and overrides raise many types
        text = str(e)
        if "Traceback" in text:  # a config file that raised: keep the flag and its last line
            lines = [l for l in text.splitlines() if l.strip()]
            text = f"{lines[0].split(': Error')[0]}: {lines[-1]}"
        message = " ".join(text.replace("\\n", " ").split()).strip("'\"")
        from psm_jax import cli
        sys.exit(cli.error(f"{type(e).__name__}: {message}"))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
