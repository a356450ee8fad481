"""``config.spread`` -> ``pixel_spread`` keywords (paper Sec. 3.1.2): the one mapping that training and
inference (in-process, exported, evaluated) all use, so the spread they run cannot drift apart.

Configs saved before a field existed are read with the value that run actually used, so an old
checkpoint still inpaints as it was trained and evaluated. Only the fields that describe the
spread itself are here; how a caller runs it (T, remat, unroll, gradients between iterations,
the trajectory) stays with the caller.
"""
from __future__ import annotations

from typing import Any

import ml_collections

# Defaults for configs saved before the field existed: what those runs did. They fed the network
# the "exp" uncertainty map (the only one then), ran Eq. 5 as written, ranked with the stable sort
# (both pickers pick the same pixels) and drew random StyleConv noise at test time.
_LEGACY = {"resample_committed": True, "uncertainty_map": "exp", "picker": "sort", "test_noise_mode": "random",
           "init_value": 0.0}


def spread_kwargs(config: ml_collections.ConfigDict, **overrides: Any) -> dict[str, Any]:
    """The ``pixel_spread`` keyword arguments that ``config.spread`` decides, plus ``overrides``.

    Returns ``schedule``, ``alpha``, ``resample_committed``, ``uncertainty_map``, ``picker`` and ``init_value``.
    """
    sp = config.spread
    kw = dict(schedule=sp.schedule, alpha=sp.alpha,
              **{k: sp.get(k, _LEGACY[k]) for k in ("resample_committed", "uncertainty_map", "picker", "init_value")})
    kw.update(overrides)
    return kw


def inference_noise_mode(config: ml_collections.ConfigDict) -> str:
    """The generator's StyleConv noise mode at test time (``spread.test_noise_mode``)."""
    return str(config.spread.get("test_noise_mode", _LEGACY["test_noise_mode"]))
