"""Evaluation protocols (PSM Table 3 columns), the run record, and the Markdown tables of ``psm_jax.evaluate``.

Table 3 of the paper reports, per data set (Places2, CelebA-HQ at 512) and mask kind (large,
small), FID, P-IDS (%) and U-IDS (%) on the full evaluation split: Places2 val 36,500 images,
CelebA-HQ test 2,993 (mat_metrics.md §2: MAT's ``fid36k5_full`` / ``fid2993_full``). Table 2
reports FID for several numbers of spread iterations T.
"""
from __future__ import annotations

import dataclasses
import math
import subprocess
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    num_images: int
    masks: str          # "large" | "small": MAT's free-form masks of that kind (or the user's fixed set)
    resolution: int


PROTOCOLS = {p.name: p for p in [
    Protocol("places512_large", "Places2 val", 36_500, "large", 512),
    Protocol("places512_small", "Places2 val", 36_500, "small", 512),
    Protocol("celeba512_large", "CelebA-HQ test", 2_993, "large", 512),
    Protocol("celeba512_small", "CelebA-HQ test", 2_993, "small", 512),
    Protocol("places256_large", "Places2 val", 36_500, "large", 256),
    Protocol("places256_small", "Places2 val", 36_500, "small", 256),
]}


def git_sha(repo: Path | None = None) -> str:
    """HEAD of the checkout holding psm_jax, with ``-dirty`` if it has uncommitted changes."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fmt(v: Any, digits: int = 4, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * scale:.{digits}f}"


def table3(results: dict[int, dict[str, float]], label: str) -> str:
    """One row per T in the layout of the paper's Table 3 (FID, P-IDS %, U-IDS %), plus our columns."""
    head = ("| Method | T | FID ↓ | P-IDS (%) ↑ | U-IDS (%) ↑ | LPIPS ↓ | PSNR ↑ | SSIM ↑ | L1 ↓ |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {label} | {t} | {_fmt(r.get('fid'), 2)} | {_fmt(r.get('p_ids'), 2, 100)} | "
        f"{_fmt(r.get('u_ids'), 2, 100)} | {_fmt(r.get('lpips'), 4)} | {_fmt(r.get('psnr'), 2)} | "
        f"{_fmt(r.get('ssim'), 4)} | {_fmt(r.get('l1'), 4)} |\n" for t, r in sorted(results.items()))
    return head + rows


def table2(results: dict[int, dict[str, float]]) -> str:
    """Table 2 style: FID for each number of iterations T."""
    ts = sorted(results)
    return ("| T | " + " | ".join(str(t) for t in ts) + " |\n|---|" + "---|" * len(ts) + "\n"
            "| FID ↓ | " + " | ".join(_fmt(results[t].get("fid"), 2) for t in ts) + " |\n")


def calibration_table(results: dict[int, dict[str, float]]) -> str:
    """Per T and iteration: Spearman(sigma, |err|), NLL (bits/dim), 1 / 2 sigma coverage (68.3 / 95.4 %)."""
    out = ("| T | iteration | Spearman ρ(σ, abs err) ↑ | NLL (bits/dim) ↓ | ±1σ coverage (68.3%) | "
           "±2σ coverage (95.4%) |\n|---|---|---|---|---|---|\n")
    for t, r in sorted(results.items()):
        i = 0
        while f"calib/spearman/iter{i}" in r:
            out += (f"| {t} | {i + 1} | {_fmt(r[f'calib/spearman/iter{i}'], 3)} | {_fmt(r[f'calib/nll_bpd/iter{i}'], 3)}"
                    f" | {_fmt(r[f'calib/coverage_1sigma/iter{i}'], 1, 100)}% |"
                    f" {_fmt(r[f'calib/coverage_2sigma/iter{i}'], 1, 100)}% |\n")
            i += 1
    return out


def spread_quality_table(results: dict[int, dict[str, float]]) -> str:
    """Per T and iteration, on the pixels still open (calibration.py): does sigma order the spread?"""
    out = ("| T | iteration | pick ratio ↓ | AUSE ↓ | AUSE rel. ↓ | Spearman ρ open ↑ |\n"
           "|---|---|---|---|---|---|\n")
    for t, r in sorted(results.items()):
        i = 0
        while f"calib/pick_ratio/iter{i}" in r:
            out += (f"| {t} | {i + 1} | {_fmt(r[f'calib/pick_ratio/iter{i}'], 3)} | {_fmt(r[f'calib/ause/iter{i}'], 4)}"
                    f" | {_fmt(r[f'calib/ause_rel/iter{i}'], 3)} | {_fmt(r[f'calib/spearman_open/iter{i}'], 3)} |\n")
            i += 1
    return out


def markdown(results: dict[int, dict[str, float]], record: dict[str, Any]) -> str:
    label = record.get("protocol") or "PSM (ours)"
    inception = record.get("inception")
    features = (f"Inception resize `{inception['resize']}` (sha256 {inception['sha256'][:12]}…), "
                f"FID method `{record['fid_method']}`" if inception else "FID and IDS left out (no --inception)")
    text = [f"## Evaluation: {label}", "",
            f"{record['num_images']} images, masks {record['masks']}, seed {record['seed']}, "
            f"{features}, git {record['git_sha'][:12]}.", "",
            table3(results, "PSM (ours)")]
    if len(results) > 1 and inception:
        text += ["", "FID per number of iterations (Table 2 style):", "", table2(results)]
    text += ["", "Uncertainty calibration on the hole pixels (σ of each iteration):", "", calibration_table(results),
             "", "Does σ order the spread? On the pixels still open at each iteration (the pick ratio of the "
             "last iteration is 1 by construction, left out):", "", spread_quality_table(results)]
    for w in record.get("warnings", []):
        text.append(f"\n> warning: {w}")
    return "\n".join(text) + "\n"
