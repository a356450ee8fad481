"""One training job per workdir: a lock file with host and pid (issue: reliability).

Two jobs writing checkpoints into one workdir corrupt each other's runs silently. The trainer's
process 0 takes ``WORKDIR/lock`` at start (``{"host", "pid", "started_at"}``) and removes it at
exit. A second start refuses while the holder is alive; a lock left by a dead process (same
host, pid gone: a SIGKILL or a crash) is taken over with a warning. A lock from another host
cannot be checked, so it is refused unless ``PSM_FORCE_LOCK=1`` (after making sure that job is
gone).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_NAME = "lock"


class WorkdirLocked(RuntimeError):
    """Another live job holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        return True
    return True


def acquire(workdir: str | Path) -> Path:
    """Takes the workdir's lock or raises :class:`WorkdirLocked` naming the holder."""
    path = Path(workdir) / LOCK_NAME
    host = socket.gethostname()
    if path.exists():
        try:
            holder = json.loads(path.read_text())
            h_host, h_pid = str(holder["host"]), int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s: unreadable lock file, taking it over", path)
        else:
            if h_host == host and h_pid == os.getpid():
                return path
            if h_host != host and os.environ.get("PSM_FORCE_LOCK") != "1":
                raise WorkdirLocked(f"{workdir} is locked by pid {h_pid} on host {h_host} (since "
                                    f"{holder.get('started_at', '?')}); if that job is gone, set "
                                    f"PSM_FORCE_LOCK=1 or delete {path}")
            if h_host == host and _alive(h_pid):
                raise WorkdirLocked(f"{workdir} is in use by a running job (pid {h_pid} on {host}, since "
                                    f"{holder.get('started_at', '?')}); stop it or pick another --workdir")
            log.warning("%s: taking over the stale lock of pid %d on %s", path, h_pid, h_host)
            print(f"warning: taking over the stale lock of pid {h_pid} on {h_host} in {workdir}", flush=True)
    tmp = path.with_name(f".{LOCK_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps({"host": host, "pid": os.getpid(),
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    os.replace(tmp, path)        # atomic: a reader never sees a half-written lock
    return path


def release(path: Path) -> None:
    try:
        holder = json.loads(path.read_text())
        if int(holder.get("pid", -1)) == os.getpid() and holder.get("host") == socket.gethostname():
            path.unlink()
    except (OSError, ValueError):
        pass
