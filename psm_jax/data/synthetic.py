"""Procedural synthetic images for tests and the demo (stands in for Places2/CelebA-HQ, paper Sec. 4.1).

Each record is a layered composition of structured textures and shapes: oriented stripes,
checkerboards, linear gradients and concentric rings as backgrounds (sometimes two of them split
by a random line), with circles, rectangles (rotated) and triangles on top, each filled with a
flat random colour or its own texture. The point of these images is that *context* decides the
content of a hole: a stripe or checker pattern continues across the hole with a period and a
phase that only a model which has seen the whole image can infer, and a shape's edge must be
completed along its geometry. Diffusion-style classical inpainting (OpenCV Telea) smears the
border colours inwards instead, which is what the demo's comparison with Telea tests.

Two kinds (``SyntheticSource(kind=...)``, ``config.data.synthetic_kind``):

* "layered" (the default, above): oriented textures at any angle, period and phase, with shapes.
* "tiles": one axis-aligned stripe or checker pattern of two colours whose cells are a whole
  power-of-two number of pixels (R/16, R/8 or R/4) and start at the image corner, like a tiled
  floor. The continuation across a hole is fully determined by the visible cells and the grid,
  which a stride-2 conv net represents exactly (a cell maps to one feature at its scale), so a
  small conv net learns it from few images (measurements: bench/demo_learning.py, docs/DEMO.md).

Record ``i`` is a pure function of ``(seed, i)`` (its own ``np.random.Generator`` from a
``SeedSequence``), so the source is random-access and identical in every process and worker.
Everything is vectorised over the pixel grid with numpy (no per-pixel Python loops).
"""
from __future__ import annotations

import numpy as np

_BACKGROUNDS = ("stripes", "checker", "gradient", "rings")
_SHAPES = ("circle", "rectangle", "triangle")
KINDS = ("layered", "tiles")


class SyntheticSource:
    """Random-access source of ``num_records`` synthetic uint8 RGB images, ``[R, R, 3]``.

    Satisfies grain's ``RandomAccessDataSource`` protocol (``__len__``/``__getitem__``) and
    pickles cheaply (three ints and the kind), so it works inside grain's spawn workers.
    """

    def __init__(self, num_records: int, resolution: int, seed: int = 0, kind: str = "layered"):
        if kind not in KINDS:
            raise ValueError(f"SyntheticSource: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if num_records <= 0:
            raise ValueError(f"SyntheticSource: num_records must be > 0, got {num_records}")
        if resolution < 8 or (kind == "tiles" and resolution % 16):
            raise ValueError(f"SyntheticSource: resolution must be >= 8 (and a multiple of 16 for tiles), "
                             f"got {resolution}")
        self.num_records = int(num_records)
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.kind = kind

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < self.num_records:
            raise IndexError(f"SyntheticSource index {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        return (render_tiles if self.kind == "tiles" else render)(rng, self.resolution)

    def __repr__(self) -> str:
        return (f"SyntheticSource(num_records={self.num_records}, resolution={self.resolution}, "
                f"seed={self.seed}, kind={self.kind!r})")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _texture(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A full-canvas texture ``[R, R, 3]`` float32 in [0, 255]. yy/xx are in [0, 1)."""
    c1, c2 = _colour(rng), _colour(rng)
    theta = rng.uniform(0.0, np.pi)
    cos, sin = float(np.cos(theta)), float(np.sin(theta))  # Python floats keep the grid float32
    # Coordinate along the texture's orientation; periods are a few to ~12 cycles per image so
    # a 1/4-image hole always hides at least part of a cycle that must be continued.
    u = cos * xx + sin * yy
    if kind == "stripes":
        period = rng.uniform(0.05, 0.25)
        duty = rng.uniform(0.3, 0.7)
        w = (np.mod(u / period + rng.uniform(), 1.0) < duty).astype(np.float32)
    elif kind == "checker":
        v = -sin * xx + cos * yy
        period = rng.uniform(0.06, 0.25)
        w = np.mod(np.floor(u / period) + np.floor(v / period), 2.0).astype(np.float32)
    elif kind == "gradient":
        lo, hi = u.min(), u.max()
        w = ((u - lo) / max(hi - lo, 1e-6)).astype(np.float32)
    elif kind == "rings":
        cy, cx = (float(c) for c in rng.uniform(0.0, 1.0, size=2))
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        period = rng.uniform(0.06, 0.2)
        w = (np.mod(r / period, 1.0) < 0.5).astype(np.float32)
    else:  # pragma: no cover - internal table
        raise ValueError(kind)
    return c1 + w[..., None] * (c2 - c1)


def _shape_mask(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean ``[R, R]`` coverage of one random shape (coordinates in [0, 1))."""
    cy, cx = (float(c) for c in rng.uniform(0.1, 0.9, size=2))
    size = rng.uniform(0.12, 0.4)
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 2) ** 2
    if kind == "rectangle":
        theta = rng.uniform(0.0, np.pi / 2)
        cos, sin = float(np.cos(theta)), float(np.sin(theta))
        h, w = (float(v) for v in size * rng.uniform(0.4, 1.0, size=2))
        dy, dx = yy - cy, xx - cx
        u = cos * dx + sin * dy
        v = -sin * dx + cos * dy
        return (np.abs(u) < w / 2) & (np.abs(v) < h / 2)
    if kind == "triangle":
        angles = rng.uniform(0.0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, size=3)
        py = [float(a) for a in cy + size / 2 * np.sin(angles)]
        px = [float(a) for a in cx + size / 2 * np.cos(angles)]
        # Inside test with edge functions: all three have the same sign.
        e = [(px[(k + 1) % 3] - px[k]) * (yy - py[k]) - (py[(k + 1) % 3] - py[k]) * (xx - px[k]) for k in range(3)]
        return ((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)) | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0))
    raise ValueError(kind)  # pragma: no cover - internal table


def render(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Draws one image, uint8 ``[R, R, 3]``, from ``rng``."""
    r = resolution
    grid = (np.arange(r, dtype=np.float32) + 0.5) / r
    yy, xx = grid[:, None], grid[None, :]
    yy, xx = np.broadcast_to(yy, (r, r)), np.broadcast_to(xx, (r, r))

    canvas = _texture(rng, _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], yy, xx)
    if rng.uniform() < 0.4:
        # Mixture: a second texture on one side of a random line through the canvas.
        other = _texture(rng, _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], yy, xx)
        theta = rng.uniform(0.0, 2 * np.pi)
        cos, sin = float(np.cos(theta)), float(np.sin(theta))
        side = cos * (xx - rng.uniform(0.2, 0.8)) + sin * (yy - rng.uniform(0.2, 0.8)) > 0
        canvas[side] = other[side]

    for _ in range(rng.integers(1, 6)):
        cover = _shape_mask(rng, _SHAPES[rng.integers(len(_SHAPES))], yy, xx)
        if rng.uniform() < 0.3:
            texture = _texture(rng, _BACKGROUNDS[rng.integers(2)], yy, xx)  # stripes or checker
            canvas[cover] = texture[cover]
        else:
            canvas[cover] = _colour(rng)

    return _add_noise_to_uint8(rng, canvas)


def render_tiles(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Draws one "tiles" image (see the module docstring), uint8 ``[R, R, 3]``, from ``rng``."""
    c1, c2 = _colour(rng), _colour(rng)
    cell = resolution // int(rng.choice([16, 8, 4]))
    iy = np.arange(resolution)[:, None] // cell
    ix = np.arange(resolution)[None, :] // cell
    kind = rng.integers(3)  # checker, horizontal stripes, vertical stripes
    w = (iy + ix) % 2 if kind == 0 else np.broadcast_to(iy % 2 if kind == 1 else ix % 2, (resolution,) * 2)
    canvas = c1 + w[..., None].astype(np.float32) * (c2 - c1)
    return _add_noise_to_uint8(rng, canvas)


def _add_noise_to_uint8(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    # Mild sensor-like noise so flat regions are not perfectly constant (a model must not be
    # able to key on exact pixel values), small enough to keep the structure dominant.
    noise = rng.standard_normal(size=canvas.shape, dtype=np.float32)
    noise *= 3.0
    canvas += noise
    canvas += 0.5  # round to nearest in the cast below
    np.clip(canvas, 0, 255, out=canvas)
    return canvas.astype(np.uint8)
