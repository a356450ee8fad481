"""One model thread behind a bounded queue: requests are serialised, and a full queue is refused at once.

JAX runs one spread at a time well on a CPU (it already uses every core), and the compiled-spread cache of
``Inpainter`` is not meant for concurrent writers; so a single thread runs every job in arrival order. A request
that finds ``max_queue`` jobs already waiting gets :class:`Busy` (the app answers 503) instead of piling up.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full."""


class Worker:
    """``await worker.submit(job)`` runs ``fn(job)`` on the worker thread and returns its result (or raises)."""

    def __init__(self, fn: Callable[[Any], Any], max_queue: int):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.fn = fn
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="psm-serve-worker", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize()

    async def submit(self, job: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self._queue.put_nowait((job, loop, future))
        except queue.Full:
            raise Busy(f"server busy: {self.max_queue} requests are already waiting; try again shortly") from None
        return await future

    def call_soon(self, fn: Callable[[], Any]) -> bool:
        """Queues ``fn()`` (e.g. a warm-up compile) without waiting for it; False if the queue is full."""
        try:
            self._queue.put_nowait((_Call(fn), None, None))
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Stops the thread after the jobs already queued."""
        self._queue.put((None, None, None))
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            job, loop, future = self._queue.get()
            if job is None:
                return
            try:
                result, error = (job.fn() if isinstance(job, _Call) else self.fn(job)), None
            except Exception as e:  # noqa: BLE001 - handed to the waiting request, which maps it to a response
                result, error = None, e
            if future is None:
                if error is not None:
                    log.warning("background job failed: %s: %s", type(error).__name__, error)
                continue
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:   # the request's event loop is gone (server shutting down)
                pass


class _Call:
    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():        # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
