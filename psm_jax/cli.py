"""Command-line conventions of every ``python -m`` tool: one-line errors and exit code 2.

A user who mistypes a flag or points at a missing or unreadable file gets ``error: ...`` on one
line of stderr (naming the flag or file and what was expected) and exit code 2: no usage block,
no traceback, nothing written to the output.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import zipfile
from typing import NoReturn

# What reading user-supplied files can raise; all of it becomes a one-line error.
INPUT_ERRORS = (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ImportError)


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` (whitespace folded onto one line) and exits with code 2."""
    raise SystemExit(error(message))


def error(message: str) -> int:
    """Prints ``error: message`` on one line and returns exit code 2 (for ``main() -> int``)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2, without the usage block."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        fail(f"{self.prog}: {message}")
