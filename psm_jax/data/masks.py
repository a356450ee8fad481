"""Free-form training masks in the style of MAT (clean-room, from research/mat_masks.md).

PSM trains with masks generated on the fly "with the detailed setup from MAT" (paper §4.1); MAT's
generator is ``RandomMask`` (notes §3): up to a few axis-aligned boxes (notes §4) plus up to a few
thick zig-zag brush strokes (notes §5), retried until the hole ratio lies strictly inside
``hole_range``. This module re-implements that algorithm from the notes, not from MAT's code.

Conventions: the result is ``float32 [H, W]`` with **1 = known, 0 = hole** (notes §2).

Randomness comes from the caller's RNG, never from a global one:

* ``numpy.random.RandomState``: the draws are consumed in MAT's exact order (notes §5, "Random draw
  order") and strokes are rasterised with Pillow, as MAT does, so ``RandomState(seed)`` reproduces
  MAT's masks bit for bit (tests/test_mask_golden.py).
* ``numpy.random.Generator`` (what grain's ``RandomMap`` hands out per record): the same code path,
  with the legacy calls mapped onto their ``Generator`` equivalents by ``_Draws``. Same algorithm
  and statistics, different stream.

Presets. ``kind="large"`` is MAT's ``mask_generator_{256,512}`` and ``kind="small"`` is
``mask_generator_{256,512}_small`` (notes §4 table). At 256 and 512 the constants are MAT's.

Other resolutions. In MAT the box sizes (``s//2``, ``s``) and the stroke segment length
(``s*sqrt(2)/8``) already scale with ``s``; only the stroke width (12..48 px) is absolute, which
would hole almost everything at 64 px. So for another ``s`` we take the counts of the nearer preset
(256 for ``s <= 362``, i.e. below the geometric mean of 256 and 512; 512 above) and scale the stroke
widths by ``s / preset_resolution``. The whole mask is then a resized copy of the preset's geometry
(up to integer rounding), so the hole-ratio distribution stays close to MAT's (tests/test_masks.py
checks 64 and 128).

Speed (bench/masks.py): draws are vectorised per stroke where that leaves a ``RandomState`` stream
unchanged (a ``size=n`` call consumes exactly the numbers of ``n`` scalar calls), boxes and strokes
are drawn on one Pillow "L" image, and numpy touches the full-size mask only twice (count, convert).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["MaskConfig", "mask_config", "random_mask", "random_masks", "PRESET_COUNTS"]

MaskKind = Literal["large", "small"]
Rng = np.random.Generator | np.random.RandomState

# (group-A box count K, group-B box count K, stroke count K) per (kind, preset resolution); each
# count is drawn as randint(int(K * coef)), i.e. 0..K-1 with the default hole_range (notes §4 table).
PRESET_COUNTS: dict[tuple[str, int], tuple[int, int, int]] = {
    ("large", 512): (5, 3, 9),
    ("small", 512): (3, 2, 4),
    ("large", 256): (4, 2, 8),
    ("small", 256): (2, 2, 3),
}
# Resolutions above this use the 512 counts; it is sqrt(256 * 512), the log-midpoint.
_PRESET_SPLIT = math.sqrt(256 * 512)


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """All constants of one free-form mask generator (notes §4-§5)."""

    resolution: int  # s: the mask is s x s
    box_count_a: int  # K of group A boxes, max side s//2
    box_count_b: int  # K of group B boxes, max side s
    stroke_count: int  # K of brush strokes
    min_num_vertex: int = 4  # segments per stroke: randint(min, max) -> 4..17
    max_num_vertex: int = 18
    mean_angle: float = 2 * math.pi / 5  # 72 deg: segments zig-zag at about +-72 deg from +x
    angle_range: float = 2 * math.pi / 15  # 24 deg
    min_width: float = 12.0  # stroke width int(U(min, max)), MAT's px at 256/512
    max_width: float = 48.0


def mask_config(resolution: int, kind: MaskKind = "large") -> MaskConfig:
    """MAT's constants for ``kind`` at 256/512; scaled stroke widths elsewhere (module doc)."""
    if kind not in ("large", "small"):
        raise ValueError(f"mask kind must be 'large' or 'small', got {kind!r}")
    if int(resolution) != resolution or resolution < 8:
        raise ValueError(f"mask resolution must be an integer >= 8, got {resolution!r}")
    resolution = int(resolution)
    preset = 512 if resolution > _PRESET_SPLIT else 256
    ka, kb, ks = PRESET_COUNTS[(kind, preset)]
    scale = resolution / preset
    # At the preset resolutions scale == 1.0 exactly, so the widths stay 12.0 and 48.0 and the
    # uniform draw is bit-identical to MAT's.
    return MaskConfig(resolution, ka, kb, ks, min_width=12.0 * scale, max_width=48.0 * scale)


class _Draws:
    """MAT's legacy numpy calls, bound to a RandomState (exact) or a Generator (equivalent).

    Only the calls the generator makes: ``randint(high)`` / ``randint(low, high)`` (high exclusive),
    ``uniform(low, high[, size])``, ``normal(loc, scale, size)`` and ``random()``.
    """

    __slots__ = ("randint", "uniform", "normal", "random")

    def __init__(self, rng: Rng):
        if isinstance(rng, np.random.RandomState):
            self.randint = rng.randint
            self.random = rng.random_sample
        elif isinstance(rng, np.random.Generator):
            self.randint = rng.integers  # same half-open [low, high) as randint
            self.random = rng.random
        else:
            raise TypeError(
                "rng must be a numpy.random.Generator or numpy.random.RandomState, "
                f"got {type(rng).__name__}"
            )
        self.uniform = rng.uniform
        self.normal = rng.normal


def _draw_boxes(d: _Draws, count: int, max_size: int, s: int, out: list) -> None:
    """``randint(count)`` boxes of sides in [0, max_size), hanging over borders by <= half a side.

    Appends the clipped box as an inclusive PIL rectangle (x0, y0, x1, y1); empty boxes are skipped
    (their draws are still consumed).
    """
    for _ in range(int(d.randint(count))):
        w = int(d.randint(max_size))
        h = int(d.randint(max_size))
        x = int(d.randint(-(w // 2), s - w + w // 2))
        y = int(d.randint(-(h // 2), s - h + h // 2))
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, s), min(y + h, s)
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1 - 1, y1 - 1))


def _draw_brush(d: _Draws, cfg: MaskConfig, draw: ImageDraw.ImageDraw, ink: int) -> None:
    """``randint(stroke_count)`` zig-zag strokes drawn with ``ink`` (notes §5, steps 1-7)."""
    s = cfg.resolution
    avg_radius = math.sqrt(2.0 * s * s) / 8.0
    radius_std = avg_radius // 2  # float floor-division, as in MAT (45.0 at 512, 22.0 at 256)
    for _ in range(int(d.randint(cfg.stroke_count))):
        num_vertex = int(d.randint(cfg.min_num_vertex, cfg.max_num_vertex))
        offsets = d.uniform(0.0, cfg.angle_range, size=2)  # same stream as two scalar draws
        angle_min = cfg.mean_angle - float(offsets[0])
        angle_max = cfg.mean_angle + float(offsets[1])
        angles = d.uniform(angle_min, angle_max, size=num_vertex)
        # Even segments point about -72 deg, odd ones +72 deg: a zig-zag moving right (+x).
        angles[0::2] = 2 * math.pi - angles[0::2]
        x = int(d.randint(0, s))
        y = int(d.randint(0, s))
        radii = np.clip(d.normal(avg_radius, radius_std, size=num_vertex), 0.0, 2 * avg_radius)
        # float64 products identical to MAT's scalar np.cos/np.sin calls (checked: the vector
        # ufunc gives the same bits as the scalar one).
        dx = (radii * np.cos(angles)).tolist()
        dy = (radii * np.sin(angles)).tolist()
        vertices = [(x, y)]
        for i in range(num_vertex):
            # Clip to [0, s] (s is one past the last pixel) then truncate, like int(np.clip(...)).
            x = int(min(max(x + dx[i], 0.0), s))
            y = int(min(max(y + dy[i], 0.0), s))
            vertices.append((x, y))
        width = int(d.uniform(cfg.min_width, cfg.max_width))
        half = width // 2
        draw.line(vertices, fill=ink, width=width)
        for vx, vy in vertices:  # round discs at every joint
            draw.ellipse((vx - half, vy - half, vx + half, vy + half), fill=ink)
        d.random()  # MAT's per-stroke flips are no-ops, but they consume two draws
        d.random()


def _attempt(d: _Draws, cfg: MaskConfig, k_a: int, k_b: int, k_s: int) -> tuple[np.ndarray, int]:
    """One attempt of the rejection loop: (mask uint8 [s, s] with 1 = known, number of holes)."""
    s = cfg.resolution
    boxes: list[tuple[int, int, int, int]] = []
    _draw_boxes(d, k_a, s // 2, s, boxes)
    _draw_boxes(d, k_b, s, s, boxes)
    # The brush is drawn first (holes = 0 on known = 1) because its flips, drawn last, apply to
    # the strokes only; boxes are painted after the flips, unflipped, which equals MAT's AND.
    image = Image.new("L", (s, s), 1)
    draw = ImageDraw.Draw(image)
    _draw_brush(d, dataclasses.replace(cfg, stroke_count=k_s), draw, ink=0)
    if d.random() > 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if d.random() > 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if boxes:
        draw = ImageDraw.Draw(image)
        for box in boxes:
            draw.rectangle(box, fill=0)
    known_u8 = np.frombuffer(image.tobytes(), np.uint8).reshape(s, s)
    return known_u8, s * s - int(np.count_nonzero(known_u8))


def random_mask(
    rng: Rng,
    resolution: int,
    kind: MaskKind = "large",
    hole_range: tuple[float, float] = (0.0, 1.0),
    *,
    max_attempts: int = 10_000,
) -> np.ndarray:
    """One MAT-style free-form mask, ``float32 [resolution, resolution]``, 1 = known, 0 = hole.

    Args:
      rng: a ``numpy.random.Generator`` (e.g. grain's per-record RNG) or a legacy
        ``numpy.random.RandomState`` (MAT's exact stream).
      resolution: side length ``s`` (square masks, as in MAT).
      kind: "large" (MAT's training masks) or "small" (MAT's ``*_small`` generators).
      hole_range: attempts are retried until ``lo < hole ratio < hi`` (both exclusive, as MAT).
        ``coef = min(lo + hi, 1)`` scales the maximum shape counts as in MAT; a count that would
        become 0 (where MAT crashes) is clamped to 1, i.e. "none of that shape".
      max_attempts: give up with a RuntimeError instead of looping forever on an unreachable range.
    """
    cfg = mask_config(resolution, kind)
    lo, hi = float(hole_range[0]), float(hole_range[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"hole_range must satisfy 0 <= lo < hi <= 1, got {tuple(hole_range)!r}")
    d = _Draws(rng)
    coef = min(lo + hi, 1.0)
    k_a, k_b, k_s = (max(1, int(k * coef)) for k in (cfg.box_count_a, cfg.box_count_b, cfg.stroke_count))
    if max(k_a, k_b, k_s) <= 1:
        # randint(1) is always 0: nothing would ever be drawn (MAT would crash on randint(0)).
        raise ValueError(f"hole_range {tuple(hole_range)!r} scales every shape count of {kind!r} to zero")
    s = cfg.resolution
    for _ in range(max_attempts):
        known_u8, holes = _attempt(d, cfg, k_a, k_b, k_s)
        # 1 - mean(mask) computed in float64 like MAT's, so boundary decisions agree.
        hole_ratio = 1.0 - (s * s - holes) / (s * s)
        if lo < hole_ratio < hi:
            return known_u8.astype(np.float32)
    raise RuntimeError(
        f"no mask with hole ratio in ({lo}, {hi}) after {max_attempts} attempts "
        f"(kind={kind!r}, resolution={resolution})"
    )


def random_masks(
    rng: Rng, num: int, resolution: int, kind: MaskKind = "large", hole_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """``num`` successive masks from one RNG, stacked: ``float32 [num, s, s]`` (MAT's batch order)."""
    out_NHW = np.empty((num, resolution, resolution), np.float32)
    for i in range(num):
        out_NHW[i] = random_mask(rng, resolution, kind, hole_range)
    return out_NHW
