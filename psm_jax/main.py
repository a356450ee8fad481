"""Entry point: ``python -m psm_jax.main --config configs/NAME.py[:variant] --workdir DIR``.

Overrides use ml-collections syntax (``--config.batch_size=64``); the config is locked, so a
misspelled key is an error. On multi-host pods ``jax.distributed.initialize()`` finds the
cluster by itself; ``--coordinator/--num_processes/--process_id`` set it explicitly (local tests).
"""
import os
import re
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from psm_jax import cli

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
    # Deferred: jax and the trainer take seconds to import; a bad flag is reported before that.
    from psm_jax import distributed
    if FLAGS.coordinator or FLAGS.distributed:
        # Safe with the persistent compilation cache: the trainer compiles its steps on every
        # process before the first collective (psm_jax/distributed.py).
        distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    from psm_jax import train   # deferred with jax, above
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


_REQUIRED = {"config": "a config file, e.g. --config=configs/psm.py:places512",
             "workdir": "the run's folder, e.g. --workdir=runs/places512"}


def _config_spec(argv: list[str]) -> str | None:
    """The value of --config in ``argv`` (either spelling), if any."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _flag_message(e: Exception, spec: str | None) -> str:
    """One line for a bad flag, config file or override: the flag and what was expected, no class names."""
    text = str(e)
    if isinstance(e, flags.UnrecognizedFlagError):
        return f"unknown flag --{e.flagname} (see --help)"
    missing = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None", text)
    if missing:
        return f"--{missing.group(1)} is missing; expected {_REQUIRED.get(missing.group(1), 'a value')}"
    if "Traceback" in text:   # a config file that raised: keep its last line
        text = [line for line in text.splitlines() if line.strip()][-1]
    text = " ".join(text.replace("\\n", " ").replace("\\'", "'").split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    text = re.sub(r"\b[A-Z][A-Za-z]*(Error|Exception): ", "", text)      # no internal class names
    text = text.replace("flag --", "--")
    if isinstance(e, AttributeError) or "Did you mean" in text:       # an override naming no field
        overrides = [a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--config.")]
        field = re.match(r"'?(\w+)'?", text)
        named = [o for o in overrides if field and o.rsplit(".", 1)[-1] == field.group(1)]
        return f"{named[0] if named else '--config.*'}: no such config field ({text})"
    if not isinstance(e, flags.Error) and spec:
        return f"--config={spec}: {text}"
    return text


def _parse_flags(argv):
    """absl parsing, but a bad flag, config file or override key is one line and exit 2."""
    spec = _config_spec(argv[1:])
    if spec is not None and not Path(spec.split(":", 1)[0]).is_file():
        sys.exit(cli.error(f"--config={spec}: config file {spec.split(':', 1)[0]} not found"))
    try:
        rest = FLAGS(argv)
        FLAGS.config.get("seed")  # config_flags defers a failed load; trip it here, inside the try
        return rest
    except Exception as e:  # noqa: BLE001 - flags, config files and overrides raise many types
        sys.exit(cli.error(_flag_message(e, spec)))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
