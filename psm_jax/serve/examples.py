"""The page's example images: the held-out split of the run's own data (``config.data``), by index only.

Image ``i`` is the evaluation image ``i`` as the demo and the evaluators see it (``make_source(train=False)``,
decoded, centre-cropped to the training resolution; for the digits demo, held-out digit ``digits_eval[0] + i``).
Clients name an image by its index, never by a file name, and only the first ``limit`` images are offered.
"""
from __future__ import annotations

import functools
import logging
import threading

import ml_collections
import numpy as np

from psm_jax.data.sources import make_source
from psm_jax.data.transforms import CORRUPT, Decode, center_crop
from psm_jax.serve.render import png_bytes

log = logging.getLogger(__name__)


class Examples:
    """``len(examples)`` images; ``examples.png(i)`` is image ``i`` as PNG bytes (None if unreadable)."""

    def __init__(self, config: ml_collections.ConfigDict, limit: int):
        self.reason = ""
        self._source = None
        self._count = 0
        self._lock = threading.Lock()
        data = config.get("data") if config is not None else None
        if data is None or "source" not in data or limit <= 0:
            self.reason = ("examples switched off (--examples 0)" if limit <= 0
                           else "the run's config records no data source")
            return
        self.resolution = int(data.get("resolution", config.model.resolution))
        self._decode = Decode(int(data.get("resize_short", 0) or 0))
        try:
            self._source = make_source(data, train=False)
            self._count = min(len(self._source), int(limit))
        except Exception as e:  # noqa: BLE001 - a missing folder, an unprepared TFDS set, ...: the page still works
            self.reason = f"the run's held-out data is not readable here ({type(e).__name__}: {e})"
            log.warning("examples: %s", self.reason)
        self.source_name = str(data.get("source", "?"))

    def __len__(self) -> int:
        return self._count

    @functools.lru_cache(maxsize=512)
    def png(self, index: int) -> bytes | None:
        if not 0 <= index < self._count:
            raise IndexError(index)
        with self._lock:     # sources may decode lazily into a shared cache
            record = self._source[index]
        element = self._decode.map({"raw": record["raw"], "name": record.get("name", "?"), "index": index})
        if CORRUPT in element:
            return None
        return png_bytes(center_crop(np.asarray(element["image"]), self.resolution))
