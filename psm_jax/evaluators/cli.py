"""Shared command-line conventions of the evaluation tools (issue 16).

A bad flag or input file is one line ``error: ...`` on stderr and exit code 2: no usage block, no
traceback, nothing written to the output.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import zipfile

# What reading user-supplied files can raise; all of it becomes a one-line error.
INPUT_ERRORS = (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ImportError)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        fail(message)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
