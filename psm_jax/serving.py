"""Serve an exported PSM (``python -m psm_jax.export``; the spread of paper Sec. 3.1.2) with jax and numpy only.

This file imports nothing from flax or psm_jax: copy it next to the artifact and its ``.json`` sidecar, or load it
by path. It checks inputs against the sidecar (dtype, shape, value range), reflect-pads H and W at the bottom/right
to the multiple of 32 the artifact needs (the mask too, as ``Inpainter``'s ``pad`` strategy does, so both give the
same result), and crops back::

    import serving                                    # this file
    model = serving.load("psm512.jaxexport")          # reads psm512.jaxexport.json beside it
    out = model(image, mask, seed=0)                  # image f32 [B,H,W,3] in [-1,1], mask [B,H,W,1] 1 = known
    out_u8 = model.inpaint_uint8(image_u8, known)     # uint8 [H,W,3] + bool/0-1 [H,W] -> uint8 [H,W,3]

The key is ``jax.random.key_data(jax.random.key(seed))`` (threefry2x32), as in ``psm_jax.inpaint.Inpainter``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

FORMAT = "psm-jax.export/1"


class InputContractError(ValueError):
    """An input does not match the artifact's contract (the message says what was expected)."""


def _reflect_pad(a: np.ndarray, H: int, W: int) -> np.ndarray:
    """[B, h, w, C] -> [B, H, W, C], reflecting at the bottom/right (a 1-pixel side repeats)."""
    ph, pw = H - a.shape[1], W - a.shape[2]
    if ph == 0 and pw == 0:
        return a
    mode = "reflect" if min(a.shape[1:3]) > 1 else "edge"
    return np.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


class ExportedInpainter:
    """A loaded artifact: ``__call__(image, mask, seed=0)`` runs the whole spread."""

    def __init__(self, artifact: str | Path, meta: dict[str, Any] | None = None):
        artifact = Path(artifact)
        side = artifact.with_name(artifact.name + ".json")
        if meta is None:
            if not side.exists():
                raise FileNotFoundError(f"{side}: sidecar not found (written by python -m psm_jax.export)")
            meta = json.loads(side.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{side}: format {meta.get('format')!r}, expected {FORMAT!r}")
        self.meta = meta
        self.multiple = int(meta["size_multiple"])
        self.iters = int(meta["iters"])
        self.with_trajectory = bool(meta.get("with_trajectory", False))
        self.exported = jax_export.deserialize(bytearray(artifact.read_bytes()))
        self._call = jax.jit(self.exported.call)

    def key_data(self, seed: int) -> np.ndarray:
        return np.asarray(jax.random.key_data(jax.random.key(int(seed), impl=self.meta.get("prng_impl",
                                                                                         "threefry2x32"))))

    def _check(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = self.meta["inputs"]
        if not isinstance(image, np.ndarray) or image.dtype != np.float32:
            raise InputContractError(f"image: expected {spec[0]['dtype']} [B,H,W,3] in [-1, 1], got "
                                     f"{getattr(image, 'dtype', type(image).__name__)}")
        if image.ndim != 4 or image.shape[-1] != 3 or min(image.shape[:3]) < 1:
            raise InputContractError(f"image: expected shape [B,H,W,3], got {image.shape}")
        if not isinstance(mask, np.ndarray) or mask.dtype != np.float32:
            raise InputContractError(f"mask: expected {spec[1]['dtype']} [B,H,W,1] (1 = known), got "
                                     f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.ndim == 3:
            mask = mask[..., None]
        if mask.shape != image.shape[:3] + (1,):
            raise InputContractError(f"mask: expected shape {image.shape[:3] + (1,)} to match the image, "
                                     f"got {mask.shape}")
        lo, hi = spec[0]["range"]
        if not np.isfinite(image).all() or image.min() < lo - 1e-3 or image.max() > hi + 1e-3:
            raise InputContractError(f"image: values must be finite and in [{lo}, {hi}] (uint8 x -> x / 127.5 - 1), "
                                     f"got [{np.nanmin(image):.4g}, {np.nanmax(image):.4g}]")
        return image, mask

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, key: np.ndarray | None = None):
        """image f32 [B,H,W,3] (or [H,W,3]) in [-1, 1], mask f32 [B,H,W,1] / [B,H,W] (1 = known), any H, W.

        Returns f32 [B,H,W,3] (squeezed like the input), plus sigma [T,B,H,W,3] for a trajectory export.
        ``key``: uint32[2] key data (default: from ``seed``).
        """
        single = isinstance(image, np.ndarray) and image.ndim == 3
        if single:
            image = image[None]
            mask = mask[None] if isinstance(mask, np.ndarray) else mask
        image, mask = self._check(image, mask)
        b, h, w, _ = image.shape
        m = self.multiple
        H, W = max(m, -(-h // m) * m), max(m, -(-w // m) * m)
        kd = self.key_data(seed) if key is None else np.asarray(key, np.uint32)
        if kd.shape != (2,):
            raise InputContractError(f"key: expected uint32 [2] key data, got shape {kd.shape}")
        out = self._call(_reflect_pad(image, H, W), _reflect_pad(mask, H, W), kd)
        if self.with_trajectory:
            img, sigma = out
            img, sigma = np.asarray(img)[:, :h, :w], np.asarray(sigma)[:, :, :h, :w]
            return (img[0], sigma[:, 0]) if single else (img, sigma)
        img = np.asarray(out)[:, :h, :w]
        return img[0] if single else img

    def inpaint_uint8(self, image_u8: np.ndarray, known: np.ndarray, seed: int = 0) -> np.ndarray:
        """uint8 [H,W,3] (or [B,H,W,3]) + mask [H,W] (bool or 0/1, True = known) -> uint8; only holes change."""
        image_u8 = np.asarray(image_u8)
        if image_u8.dtype != np.uint8:
            raise InputContractError(f"image_u8: expected uint8, got {image_u8.dtype}")
        k = np.asarray(known) > 0.5 if np.asarray(known).dtype != bool else np.asarray(known)
        x = image_u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        res = self(x, k.astype(np.float32), seed=seed)
        res = res[0] if self.with_trajectory else res
        res_u8 = np.clip(np.rint((res + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return np.where(k[..., None], image_u8, res_u8)


def load(artifact: str | Path) -> ExportedInpainter:
    """Loads ``artifact`` and its ``artifact.json`` sidecar."""
    return ExportedInpainter(artifact)
