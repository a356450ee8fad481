"""Command-line conventions of every ``python -m`` tool: one-line errors and exit code 2.

A user who mistypes a flag or points at a missing or unreadable file gets ``error: ...`` on one
line of stderr (naming the flag or file and what was expected) and exit code 2: no usage block,
no traceback, nothing written to the output.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import NoReturn

# What reading user-supplied files can raise; all of it becomes a one-line error.
INPUT_ERRORS = (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ImportError)


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` (whitespace folded onto one line) and exits with code 2."""
    raise SystemExit(error(message))


def error(message: str, code: int = 2, *, last_words: bool = False) -> int:
    """Prints ``error: message`` on one line and returns ``code`` (for ``main() -> int``).

    ``last_words=True`` is for a process that exits right after (the training CLIs): background
    threads that outlive the failure, such as the data pipeline's readers still decoding
    prefetched files, must not write after the error line, which has to be the last one a user
    or a scheduler's log scraper sees. Logging is switched off, the line is written while holding
    every handler's lock (which waits for a write already in progress), and stderr is then
    pointed at /dev/null for the rest of the process: a thread that was already past logging's
    level check when it was switched off writes nowhere.
    """
    line = f"error: {' '.join(str(message).split())}"
    if not last_words:
        print(line, file=sys.stderr, flush=True)
        return code
    logging.disable(logging.CRITICAL)
    handlers = [h for name in (None, "absl") for h in logging.getLogger(name).handlers]
    for h in handlers:
        h.acquire()
    try:
        print(line, file=sys.stderr, flush=True)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass   # stderr is not a file (captured in-process): nothing else writes to it anyway
    finally:
        for h in reversed(handlers):
            h.release()
    return code


def check_output(path: str | os.PathLike, flag: str, *, folder: bool) -> Path:
    """``path`` can be written as a folder (``folder=True``) or a file: ValueError with one line naming
    ``flag`` otherwise. Call it before any work, so a bad ``--out`` never costs a run."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file; expected a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; expected a file name")
    for d in (path.parent, *path.parent.parents) if not folder else (path, *path.parents):
        if d.exists():
            if not d.is_dir():
                raise ValueError(f"{flag} {path}: cannot be created: {d} is a file")
            break
    return path


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2, without the usage block."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        fail(f"{self.prog}: {message}")
