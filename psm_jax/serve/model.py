"""The model behind the page: a training workdir or an exported artifact, one interface (paper Sec. 3.1.2).

Both run the whole test-time spread through ``Inpainter``'s size strategies (pad / resize / crop), so a request
gives the same pixels as ``Inpainter(image, mask, seed=...)``. A workdir runs G_ema in process and returns the
whole trajectory (m_t, mu_t, sigma_t). An artifact (``python -m psm_jax.export``) runs through
``psm_jax/serving.py``; its T is fixed at export, and its trajectory holds sigma_t only, and only when it was
exported ``--with_trajectory``.

Every request runs with the trajectory on: a page request and a script's request for the same size and T then
share one compiled spread (the output does not depend on it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from psm_jax import serving
from psm_jax.inpaint import STRATEGIES, Inpainter

MAX_ITERS = 8                      # the page's T slider: 1..8 (the paper tests T = 1..4)
TRAJECTORY_FIELDS = ("mask", "mean", "std")   # Inpainter's trajectory keys: m_t, mu_t, sigma_t
PANEL_NAMES = {"mask": "mask", "mean": "mean", "std": "sigma"}   # ... as the API names them


@dataclass
class Result:
    """Per sample: the uint8 [H, W, 3] output and, if available, its trajectory (``Inpainter``'s dict)."""
    outputs: list[np.ndarray]
    trajectories: list[dict[str, Any]] | None
    fields: tuple[str, ...] = field(default=TRAJECTORY_FIELDS)   # which trajectory entries are real


class Backend:
    """A model that inpaints one image: ``inpaint(image_u8, known, iters=, seed=, samples=, strategy=)``."""

    kind = "workdir"

    def __init__(self, inpainter: Inpainter, *, name: str, iters_range: tuple[int, int],
                 trajectory_fields: tuple[str, ...] = TRAJECTORY_FIELDS):
        self.inpainter = inpainter
        self.name = name
        self.iters_range = iters_range
        self.trajectory_fields = trajectory_fields

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.inpainter.config

    @property
    def resolution(self) -> int:
        return self.inpainter.resolution

    @property
    def default_iters(self) -> int:
        lo, hi = self.iters_range
        return min(max(self.inpainter.default_iters, lo), hi)

    def info(self) -> dict[str, Any]:
        """What ``GET /api/info`` reports (besides the server's limits)."""
        data = self.config.get("data", ml_collections.ConfigDict())
        try:
            compiled = [list(k) for k in self.inpainter.compiled_shapes]
        except RuntimeError:   # the model thread added a shape while this (event-loop) thread listed them
            compiled = None
        return {"name": self.name, "kind": self.kind, "resolution": self.resolution,
                "default_iters": self.default_iters, "iters_range": list(self.iters_range),
                "step": self.inpainter.step, "strategies": list(STRATEGIES),
                "trajectory": [PANEL_NAMES[f] for f in self.trajectory_fields], "data_source": data.get("source"),
                "compiled": compiled}

    def inpaint(self, image_u8: np.ndarray, known: np.ndarray, *, iters: int, seed: int, samples: int,
                strategy: str) -> Result:
        """image uint8 [H, W, 3], known bool [H, W] (True = known). Only hole pixels change."""
        outs, trajs = self.inpainter(image_u8, known, iters=iters, seed=seed, num_samples=samples,
                                     strategy=strategy, return_trajectory=True)
        if samples == 1:
            outs, trajs = [outs], [trajs]
        return Result([np.asarray(o) for o in outs], list(trajs) if self.trajectory_fields else None,
                      self.trajectory_fields)

    def warmup(self) -> None:
        """Compiles the default T at the training resolution (what the page's examples need)."""
        r = self.resolution
        known = np.ones((r, r), bool)
        known[r // 4:r // 2, r // 4:r // 2] = False
        self.inpaint(np.zeros((r, r, 3), np.uint8), known, iters=self.default_iters, seed=0, samples=1,
                     strategy="pad")


class _ArtifactSpread(Inpainter):
    """``Inpainter`` whose raw spread (``run``: network-ready arrays, the exported function's contract) is an
    exported artifact; planning, keys and pasting stay ``Inpainter``'s."""

    def __init__(self, model: serving.ExportedInpainter, config: ml_collections.ConfigDict,
                 step: int | None):
        super().__init__(config, None, step=step)
        self.model = model
        self.default_iters = model.iters
        self.resolution = int(model.meta.get("training_resolution", self.resolution))

    @property
    def compiled_shapes(self) -> list[tuple]:
        return sorted(self._compiled)

    def run(self, image: np.ndarray, mask: np.ndarray, key: jax.Array, *, iters: int | None = None,
            return_trajectory: bool = False) -> dict[str, Any]:
        T = int(iters or self.default_iters)
        if T != self.model.iters:
            raise ValueError(f"iters: this artifact runs T = {self.model.iters} (fixed at export), got {T}")
        image, mask = np.asarray(image, np.float32), np.asarray(mask, np.float32)
        self._compiled.setdefault((T, self.model.with_trajectory) + image.shape[:3], True)
        out = self.model(image, mask, key=np.asarray(jax.random.key_data(key)))
        if not self.model.with_trajectory:
            return {"image": out, "trajectory": _placeholder_trajectory(T, image.shape)}
        img, sigma_TBHW3 = out
        traj = _placeholder_trajectory(T, image.shape)
        traj["std"] = sigma_TBHW3
        return {"image": img, "trajectory": traj}


def _placeholder_trajectory(T: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Zeros for the entries an artifact does not return (``Result.fields`` says which are real)."""
    b, h, w = shape[:3]
    return {"mean": np.zeros((T, b, h, w, 3), np.float32), "std": np.zeros((T, b, h, w, 3), np.float32),
            "mask": np.zeros((T, b, h, w, 1), np.float32)}


class ArtifactBackend(Backend):
    kind = "artifact"


def from_workdir(workdir: str | Path, step: int | None = None) -> Backend:
    """Loads G_ema of a workdir (or a ``checkpoints/<step>`` folder); FileNotFoundError/ValueError, one line."""
    inp = Inpainter.from_workdir(workdir, step)
    return Backend(inp, name=config_name(inp.config, Path(workdir)), iters_range=(1, MAX_ITERS))


def from_artifact(path: str | Path) -> Backend:
    """Loads an exported artifact and its sidecar; FileNotFoundError/ValueError (one line) if unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such artifact file")
    try:
        model = serving.load(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}.json: the sidecar is not JSON ({e})") from None
    except (FileNotFoundError, ValueError):   # serving's own one-line messages (missing sidecar, wrong format)
        raise
    except Exception as e:  # noqa: BLE001 - jax.export's deserializer raises whatever flatbuffers raises
        raise ValueError(f"{path}: not a psm-jax export artifact (jax.export cannot deserialize it)") from None
    config = ml_collections.ConfigDict(model.meta.get("config", {}))
    inp = _ArtifactSpread(model, config, model.meta.get("checkpoint_step"))
    fields = ("std",) if model.with_trajectory else ()
    return ArtifactBackend(inp, name=config_name(config, path), iters_range=(model.iters, model.iters),
                           trajectory_fields=fields)


def config_name(config: ml_collections.ConfigDict, path: Path) -> str:
    """The run's name: ``config.name`` if the config has one, else the workdir's (or artifact's) name."""
    name = config.get("name") if "name" in config else None
    if name:
        return str(name)
    if path.name.isdigit() and path.parent.name == "checkpoints":   # a checkpoints/<step> folder
        path = path.parent.parent
    return path.stem if path.is_file() else path.name
