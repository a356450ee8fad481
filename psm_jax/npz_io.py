"""Reading the ``.npz`` weight files users point us at (Inception, LPIPS, ResNet-50), never unpickling.

``np.load`` of a file that is not an ``.npz`` fails with numpy's own advice to pass
``allow_pickle=True``, i.e. to run code from the file. Every weights flag goes through
:func:`load_npz` instead: a bad file is one line naming it and what was expected.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np


class NpzError(ValueError):
    """A file is not a readable ``.npz`` of plain arrays; the message names it and what was expected."""


def load_npz(path: str | os.PathLike, expected: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``; ``expected`` says what it should hold (for the error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected {expected})")
    if not zipfile.is_zipfile(path):
        raise NpzError(f"{path}: not an .npz file (expected {expected})")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        # numpy's message would suggest allow_pickle=True; an object array is not weights anyway.
        raise NpzError(f"{path}: not an .npz of plain arrays, or damaged (expected {expected})") from None
