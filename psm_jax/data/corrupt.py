"""Unreadable training and eval records: dropped before batching, counted, reported once, and bounded.

``transforms.Decode`` turns a record it cannot decode into a marker element (``{CORRUPT: name,
CORRUPT_REASON: why}``) instead of raising, so grain's per-record steps stay one-to-one (see
pipeline.py). :func:`drop_corrupt` removes the markers in the main process, before batching:

* a skip never changes the batch size; the next good element carries ``"skipped"`` (int32: the
  records dropped just before it), so ``batch["skipped"].sum()`` counts the skips of that batch
  and :func:`skipped_total` the skips of the batches this process consumed (:func:`count_skipped`);
* a run of skipped records is logged as ONE warning when the next good record arrives (naming the
  files and why), never before: a dataset with no readable record at all gets the error below and
  nothing else;
* more than ``max_consecutive`` unreadable records in a row raise :class:`CorruptDataError` naming
  the field and the last files: a mostly corrupt dataset (a bad copy, a wrong mount) stops the run
  instead of training on the few survivors or looping forever.
"""
from __future__ import annotations

import logging
from typing import Any

import grain
import numpy as np

from psm_jax.data.transforms import CORRUPT, CORRUPT_REASON

log = logging.getLogger(__name__)

_SKIPPED_TOTAL = 0


class CorruptDataError(ValueError):
    """Too many unreadable records in a row (``config.data.max_consecutive_corrupt``)."""


def skipped_total() -> int:
    """Records skipped as unreadable in the batches this process has consumed since it started."""
    return _SKIPPED_TOTAL


def count_skipped(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds a batch's skips to the process-wide total when the batch is *consumed* (``ds.map`` it last).

    It runs in the consumer's thread: the drop step may run ahead in a prefetch thread, and counting
    there would include batches that were read ahead but never used.
    """
    global _SKIPPED_TOTAL
    n = int(batch["skipped"].sum())
    if n:
        _SKIPPED_TOTAL += n
        log.warning("batch had %d unreadable record(s) skipped; %d so far in this process", n, _SKIPPED_TOTAL)
    return batch


def _why(element: dict[str, Any] | None) -> str:
    return str((element or {}).get(CORRUPT_REASON) or "unreadable")


_NAMED = 20   # files named in one warning


def _report(count: int, names: dict[str, None], last: dict[str, Any] | None, where: str) -> None:
    """One warning for a run of ``count`` skipped records (``names``: its distinct files, in order)."""
    if count:
        shown = list(names)[:_NAMED]
        more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        log.warning("skipped %d unreadable record(s) %s: %s%s (%s)", count, where, ", ".join(shown), more,
                    _why(last))


class _DropCorruptIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, max_consecutive: int):
        super().__init__(parent)
        self._max_consecutive = max_consecutive

    def __iter__(self) -> grain.DatasetIterator:
        return _DropCorruptIterator(self._parent.__iter__(), self._max_consecutive)

    def __str__(self) -> str:
        return "DropCorruptIterDataset"


class _DropCorruptIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, max_consecutive: int):
        super().__init__(parent)
        self._max_consecutive = max_consecutive

    def __next__(self) -> dict[str, Any]:
        # The unreadable records before the next good one: their number, distinct names, the last 3.
        count, names, last = 0, {}, []
        while True:
            try:
                element = next(self._parent)
            except StopIteration:
                _report(count, names, last[-1] if last else None, "at the end of the data")
                raise
            if CORRUPT not in element:
                break
            count, last = count + 1, [*last[-2:], element]
            names.setdefault(str(element[CORRUPT]), None)
            if count > self._max_consecutive:
                raise CorruptDataError(
                    f"{count} unreadable training records in a row (config.data.max_consecutive_corrupt="
                    f"{self._max_consecutive}; the last could not be decoded: {_why(element)}); the last: "
                    f"{', '.join(str(e[CORRUPT]) for e in last)}")
        _report(count, names, last[-1] if last else None, f"before record {int(element['index'])}")
        element["skipped"] = np.int32(count)
        return element

    # Stateless between elements: the parent's position state is the whole state.
    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


def drop_corrupt(ds: grain.IterDataset, max_consecutive: int) -> grain.IterDataset:
    """``ds`` without its corrupt-record markers (see the module docstring)."""
    return _DropCorruptIterDataset(ds, max_consecutive)
