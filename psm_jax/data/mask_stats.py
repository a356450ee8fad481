"""Statistics of a set of inpainting masks, and their comparison with MAT's generators (notes §6).

Use it to check that generated masks (psm_jax.data.masks) or a mask folder on disk look like MAT's:

    python -m psm_jax.data.mask_stats --generate --kind large --resolution 512 --num 5000 \
        --compare 512
    python -m psm_jax.data.mask_stats --masks masks/ --compare 512_small

Statistics (hole = mask == 0, one value per mask unless noted), as defined in notes §6:
hole-ratio mean/std/median/q05/q95 and 20-bin histogram on [0, 1]; mean number of hole components
(8- and 4-connected); fraction of masks with a hole pixel in the first/last row/column; and the mean
hole map P(hole) in 32 x 32 blocks, summarised at the centre, corners, middle of the left/right edges
and middle of the top/bottom edges (MAT's strokes zig-zag vertically, so left/right > top/bottom).

Reference values: the hole-ratio numbers come from reference/mat_mask_stats.json; the component,
border and spatial numbers exist only in the notes' table (§6) and are copied into
``MAT_REFERENCE_TABLE``. Tolerances (``TOLERANCES``): hole-ratio mean 0.015 and histogram
total-variation 0.05 are the project's acceptance bounds; the others are ~3-4 standard errors of a
5000-mask comparison plus the rounding of the notes' values (std 0.015, quantiles 0.03, components
0.1, border fraction 0.02, spatial block values 0.03), and left/right must exceed top/bottom by 0.02
(MAT's smallest gap, 256_small, is 0.051; an isotropic generator gives about 0).
Spatial summaries on the 32 x 32 map: centre = the middle 2 x 2 blocks, corners = the 4 corner
blocks, mid left/right = the middle 2 blocks of the first and last block columns, mid top/bottom =
the same on the first and last block rows. With these, MAT's own sample gives 0.489 / 0.255 /
0.407 / 0.292, the notes' "about 0.49 / 0.25 / 0.41 / 0.29".

CLI exit codes: 0 = statistics computed (and, with --compare, every check passed), 1 = a check
failed, 2 = bad input.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from psm_jax import cli
from psm_jax.data.mask_io import MaskPairingError, list_mask_files, load_mask
from psm_jax.data.masks import random_mask

__all__ = [
    "MAT_GENERATORS",
    "MAT_REFERENCE_TABLE",
    "TOLERANCES",
    "MaskStatsAccumulator",
    "Check",
    "mask_stats",
    "generated_mask_stats",
    "load_reference",
    "compare_stats",
    "main",
]

# Name in mat_mask_stats.json -> (kind, resolution) of psm_jax.data.masks.
MAT_GENERATORS: dict[str, tuple[str, int]] = {
    "512": ("large", 512),
    "512_small": ("small", 512),
    "256": ("large", 256),
    "256_small": ("small", 256),
}

# Notes §6 table (MAT's generator, 5000 masks each); spatial values are given for 512 only.
MAT_REFERENCE_TABLE: dict[str, dict[str, float]] = {
    "512": dict(hole_ratio_median=0.401, hole_ratio_q05=0.119, hole_ratio_q95=0.697,
                components_8_mean=1.986, components_4_mean=1.989, border_fraction=0.983,
                spatial_centre=0.49, spatial_corners=0.25,
                spatial_mid_left_right=0.41, spatial_mid_top_bottom=0.29),
    "512_small": dict(hole_ratio_median=0.194, hole_ratio_q05=0.035, hole_ratio_q95=0.494,
                      components_8_mean=1.894, components_4_mean=1.896, border_fraction=0.918),
    "256": dict(hole_ratio_median=0.410, hole_ratio_q05=0.090, hole_ratio_q95=0.702,
                components_8_mean=1.805, components_4_mean=1.810, border_fraction=0.965),
    "256_small": dict(hole_ratio_median=0.196, hole_ratio_q05=0.023, hole_ratio_q95=0.503,
                      components_8_mean=1.540, components_4_mean=1.541, border_fraction=0.872),
}

TOLERANCES: dict[str, float] = {
    "hole_ratio_mean": 0.015,
    "hole_ratio_hist_tv": 0.05,
    "hole_ratio_std": 0.015,
    "hole_ratio_median": 0.03,
    "hole_ratio_q05": 0.03,
    "hole_ratio_q95": 0.03,
    "components_8_mean": 0.1,
    "components_4_mean": 0.1,
    "border_fraction": 0.02,
    "spatial_centre": 0.03,
    "spatial_corners": 0.03,
    "spatial_mid_left_right": 0.03,
    "spatial_mid_top_bottom": 0.03,
    # Left/right minus top/bottom must be at least this. MAT's gap is 0.115 (512), 0.083
    # (512_small), 0.095 (256) and 0.051 (256_small); an isotropic generator gives 0 +- 0.01.
    "spatial_anisotropy_min": 0.02,
}

HIST_BINS = 20
MAP_BLOCKS = 32


def _count_components(hole_u8: np.ndarray, connectivity: int, labels: np.ndarray | None) -> int:
    """Number of hole components. OpenCV is ~5x faster than scipy.ndimage.label (same counts)."""
    n, _ = cv2.connectedComponents(hole_u8, labels=labels, connectivity=connectivity, ltype=cv2.CV_32S)
    return int(n) - 1  # label 0 is the background (known pixels)


class MaskStatsAccumulator:
    """Streams masks (1 = known, 0 = hole; any HxW, one size per accumulator) into statistics."""

    def __init__(self, components: bool = True):
        self.components = components
        self.hole_ratios: list[float] = []
        self.components_8: list[int] = []
        self.components_4: list[int] = []
        self.border_hits = 0
        self._hole_count_HW: np.ndarray | None = None
        self._hole_HW: np.ndarray | None = None
        self._labels_HW: np.ndarray | None = None

    def add(self, mask_HW: np.ndarray) -> None:
        mask_HW = np.asarray(mask_HW)
        if mask_HW.ndim == 3 and 1 in (mask_HW.shape[0], mask_HW.shape[-1]):
            mask_HW = mask_HW.reshape(mask_HW.shape[1:] if mask_HW.shape[0] == 1 else mask_HW.shape[:-1])
        if mask_HW.ndim != 2:
            raise ValueError(f"mask must be [H, W], got shape {mask_HW.shape}")
        if self._hole_count_HW is None:
            # Buffers are reused across masks: fresh full-size temporaries cost page faults.
            self._hole_count_HW = np.zeros(mask_HW.shape, np.int32)
            self._hole_HW = np.empty(mask_HW.shape, bool)
            self._labels_HW = np.empty(mask_HW.shape, np.int32)
        elif mask_HW.shape != self._hole_count_HW.shape:
            raise ValueError(f"mask shape {mask_HW.shape} differs from {self._hole_count_HW.shape}")
        hole_HW = np.equal(mask_HW, 0, out=self._hole_HW)
        hole_u8 = hole_HW.view(np.uint8)
        holes = int(np.count_nonzero(hole_u8))
        self.hole_ratios.append(holes / hole_HW.size)
        np.add(self._hole_count_HW, hole_u8, out=self._hole_count_HW)
        if hole_HW[0].any() or hole_HW[-1].any() or hole_HW[:, 0].any() or hole_HW[:, -1].any():
            self.border_hits += 1
        if self.components:
            self.components_8.append(_count_components(hole_u8, 8, self._labels_HW))
            self.components_4.append(_count_components(hole_u8, 4, self._labels_HW))

    def hole_map(self, blocks: int = MAP_BLOCKS) -> np.ndarray:
        """P(hole) averaged over ``blocks x blocks`` (near-)equal blocks, float64."""
        assert self._hole_count_HW is not None, "no masks added"
        h, w = self._hole_count_HW.shape
        rows = np.linspace(0, h, blocks + 1).round().astype(int)[:-1]
        cols = np.linspace(0, w, blocks + 1).round().astype(int)[:-1]
        sums = np.add.reduceat(np.add.reduceat(self._hole_count_HW.astype(np.float64), rows, 0), cols, 1)
        sizes = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
        return sums / sizes / len(self.hole_ratios)

    def result(self, include_hole_map: bool = False) -> dict:
        n = len(self.hole_ratios)
        if n == 0:
            raise ValueError("no masks to compute statistics of")
        r = np.asarray(self.hole_ratios)
        hist, _ = np.histogram(r, bins=HIST_BINS, range=(0.0, 1.0))
        hmap = self.hole_map()
        mid = slice(MAP_BLOCKS // 2 - 1, MAP_BLOCKS // 2 + 1)  # the middle two blocks of 32
        out = {
            "n": n,
            "shape": list(self._hole_count_HW.shape),
            "hole_ratio_mean": float(r.mean()),
            "hole_ratio_std": float(r.std()),
            "hole_ratio_median": float(np.median(r)),
            "hole_ratio_q05": float(np.quantile(r, 0.05)),
            "hole_ratio_q95": float(np.quantile(r, 0.95)),
            "hole_ratio_hist_counts": hist.tolist(),
            "border_fraction": self.border_hits / n,
            "spatial_centre": float(hmap[mid, mid].mean()),
            "spatial_corners": float(hmap[[0, 0, -1, -1], [0, -1, 0, -1]].mean()),
            "spatial_mid_left_right": float(np.concatenate([hmap[mid, 0], hmap[mid, -1]]).mean()),
            "spatial_mid_top_bottom": float(np.concatenate([hmap[0, mid], hmap[-1, mid]]).mean()),
        }
        if self.components:
            out["components_8_mean"] = float(np.mean(self.components_8))
            out["components_4_mean"] = float(np.mean(self.components_4))
        if include_hole_map:
            out["hole_map_32"] = np.round(hmap, 4).tolist()
        return out


def mask_stats(masks: Iterable[np.ndarray], components: bool = True, include_hole_map: bool = False) -> dict:
    """Statistics of an iterable of ``[H, W]`` masks (1 = known, 0 = hole)."""
    acc = MaskStatsAccumulator(components=components)
    for m in masks:
        acc.add(m)
    return acc.result(include_hole_map)


def generated_mask_stats(
    kind: str, resolution: int, num: int, seed: int = 0, legacy: bool = False, components: bool = True
) -> dict:
    """Statistics of ``num`` masks from psm_jax.data.masks, one RNG stream seeded with ``seed``.

    ``legacy=True`` uses ``RandomState(seed)``: with the notes' seeds (0, 1, 2, 3 for 512, 512_small,
    256, 256_small) it replays MAT's reference sample exactly.
    """
    rng = np.random.RandomState(seed) if legacy else np.random.default_rng(seed)
    return mask_stats((random_mask(rng, resolution, kind) for _ in range(num)), components=components)


def load_reference(path: str | Path, generator: str) -> dict:
    """Reference values for one of MAT's generators: the JSON's hole-ratio fields + the notes' table."""
    data = json.loads(Path(path).read_text())
    if generator not in data.get("generators", {}):
        raise KeyError(f"{path}: no generator {generator!r} (has {sorted(data.get('generators', {}))})")
    ref = dict(data["generators"][generator])
    ref.update(MAT_REFERENCE_TABLE.get(generator, {}))
    return ref


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ours: float
    reference: float
    tolerance: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok  " if self.ok else "FAIL"
        return f"{verdict} {self.name:26s} ours {self.ours:8.4f}  ref {self.reference:8.4f}  tol {self.tolerance}"


def compare_stats(stats: dict, reference: dict, tolerances: dict[str, float] | None = None) -> list[Check]:
    """Checks every statistic present in both ``stats`` and ``reference`` against its tolerance."""
    tol = {**TOLERANCES, **(tolerances or {})}
    checks = []
    for name in ("hole_ratio_mean", "hole_ratio_std", "hole_ratio_median", "hole_ratio_q05", "hole_ratio_q95",
                 "components_8_mean", "components_4_mean", "border_fraction", "spatial_centre",
                 "spatial_corners", "spatial_mid_left_right", "spatial_mid_top_bottom"):
        if name in stats and name in reference:
            diff = abs(stats[name] - reference[name])
            checks.append(Check(name, stats[name], reference[name], tol[name], diff <= tol[name]))
    if "hole_ratio_hist_counts" in reference:
        ours = np.asarray(stats["hole_ratio_hist_counts"], float)
        ref = np.asarray(reference["hole_ratio_hist_counts"], float)
        tv = 0.5 * float(np.abs(ours / ours.sum() - ref / ref.sum()).sum())
        checks.append(Check("hole_ratio_hist_tv", tv, 0.0, tol["hole_ratio_hist_tv"], tv <= tol["hole_ratio_hist_tv"]))
    # MAT's layout is anisotropic whatever the preset (notes §5): strokes zig-zag vertically.
    gap = stats["spatial_mid_left_right"] - stats["spatial_mid_top_bottom"]
    checks.append(Check("spatial_anisotropy", gap, tol["spatial_anisotropy_min"], 0.0,
                        gap >= tol["spatial_anisotropy_min"]))
    return checks


def _default_reference() -> Path:
    """``$PSM_SHARED_DIR/reference/mat_mask_stats.json``, else ../shared beside the repository."""
    shared = os.environ.get("PSM_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared"
    return Path(shared) / "reference" / "mat_mask_stats.json"


def _fail(msg: str) -> int:
    return cli.error(f"python -m psm_jax.data.mask_stats: {msg}")


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m psm_jax.data.mask_stats", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--masks", type=Path, help="folder of mask files (255 = known, 0 = hole)")
    src.add_argument("--generate", action="store_true", help="sample psm_jax.data.masks instead")
    p.add_argument("--mask_is_hole", action="store_true", help="with --masks: files use 255 = hole")
    p.add_argument("--kind", choices=["large", "small"], default="large")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--legacy_rng", action="store_true", help="numpy RandomState (MAT's exact stream)")
    p.add_argument("--compare", choices=sorted(MAT_GENERATORS), help="compare with this MAT generator")
    p.add_argument("--reference", type=Path, help="mat_mask_stats.json (default: ../shared/reference/)")
    p.add_argument("--hole_map", action="store_true", help="include the 32x32 mean hole map")
    p.add_argument("--no_components", action="store_true", help="skip component counts (faster)")
    args = p.parse_args(argv)

    components = not args.no_components
    if args.generate:
        if args.num < 1:
            return _fail(f"--num must be >= 1, got {args.num}")
        if args.resolution < 8:
            return _fail(f"--resolution must be >= 8, got {args.resolution}")
        rng = np.random.RandomState(args.seed) if args.legacy_rng else np.random.default_rng(args.seed)
        stats_iter = (random_mask(rng, args.resolution, args.kind) for _ in range(args.num))
    else:
        try:
            files = list_mask_files(args.masks)
        except MaskPairingError as e:
            return _fail(f"--masks: {e}")
        if not files:
            return _fail(f"--masks {args.masks}: no mask files found")
        stats_iter = (load_mask(f, invert=args.mask_is_hole) for f in files)
    try:
        stats = mask_stats(stats_iter, components=components, include_hole_map=args.hole_map)
    except (ValueError, OSError) as e:  # MaskFileError is a ValueError; sizes may differ
        return _fail(str(e))

    result: dict = {"stats": stats}
    ok = True
    if args.compare:
        ref_path = args.reference or _default_reference()
        try:
            reference = load_reference(ref_path, args.compare)
        except (OSError, KeyError, json.JSONDecodeError) as e:
            return _fail(f"--reference {ref_path}: {e}")
        checks = compare_stats(stats, reference)
        for c in checks:
            print(c, file=sys.stderr)
        ok = all(c.ok for c in checks)
        result["checks"] = [dataclasses.asdict(c) for c in checks]
        result["ok"] = ok
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
