"""Shared pieces of the serve tests (test_serve.py, test_serve_browser.py): a tiny random-weight workdir whose
held-out data is the digits demo's, PNG helpers, and a uvicorn server on a free loopback port in a thread.
"""
from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image

import infer_fixture as fx
from psm_jax.data.pipeline import default_data_config
from psm_jax.serve import model
from psm_jax.serve.__main__ import bind, url_of


def digits_backend(workdir: Path):
    """The tiny workdir's backend, given the demo's held-out digits at the model's resolution: the fixture's config records
    no data section, and a run without one offers no examples."""
    backend = model.from_workdir(workdir)
    backend.config.data = default_data_config()
    backend.config.data.update(source="digits", resolution=fx.RESOLUTION)
    return backend


def png(a: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", **save)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def hole_png(hole: np.ndarray) -> bytes:
    """A painted mask: white = hole."""
    return png(np.where(hole, 255, 0).astype(np.uint8))


def box_hole(h: int, w: int) -> np.ndarray:
    return fx.box_mask(h, w) < 0.5


class ThreadServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a daemon thread; ``url`` once started."""

    def __init__(self, app):
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock).rstrip("/")
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        try:
            self.sock.close()
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
