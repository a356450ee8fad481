"""The numbers of the reproducibility study (PSM Tables 1 and 2 at small scale) and its verdicts.

Reads a study sweep (``configs/demo.py`` ``get_sweep("repro")``, run by ``launch.sweep``): every
evaluation run's ``results.json`` (``psm_jax.evaluate``) and every run's ``sweep_timing.json``.
``launch/repro_report.py`` turns the result into docs/REPRODUCTION.md.

A paper claim "X < Y" (X's hole L1 is lower, i.e. better) gets a verdict by NOISE_RULE below.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

NOISE_RULE = (
    "For a claim \"X < Y\" (X's hole L1 lower, i.e. better): d = mean(Y) - mean(X) over the training seeds, "
    "and the noise is the larger of the two seed standard deviations (ddof = 1). The claim **holds** if "
    "d > noise, is **reversed** if d < -noise, and is **within noise** otherwise (|d| <= noise). With one "
    "seed per model there is no noise estimate: the verdict is then the sign of d, marked \"(1 seed)\". "
    "A claim with several links (A < C < B) holds if every link holds, is reversed if any link is, and "
    "is within noise otherwise.")
HOLDS, REVERSED, WITHIN = "holds", "reversed", "within noise"
METRICS = ("l1_hole", "psnr", "ssim", "lpips")
SPREAD_METRICS = ("pick_ratio", "ause", "spearman_open")
# Table 1 claims (Sec. 4.3), each a chain of "X < Y" links; the four come first.
TABLE1_CLAIMS = (
    ("More training iterations help (A < C < B)", (("A", "C"), ("C", "B"))),
    ("Decoupled probabilistic modelling helps (A < D)", (("A", "D"),)),
    ("Uncertainty-guided attention helps (A < F)", (("A", "F"),)),
    ("Continuous sampling helps (A < E)", (("A", "E"),)),
    ("Attention at two scales helps (A < G)", (("A", "G"),)),
)
TABLE2_MODELS = ("A", "B")        # the models Table 2 re-tests


@dataclasses.dataclass
class Study:
    """Per (model, seed): the evaluation results by T, as ``psm_jax.evaluate`` wrote them."""
    results: dict[tuple[str, int], dict[int, dict[str, float]]]
    own_iters: dict[str, int]                   # each model's training T (its Table 1 test T)
    design: dict[str, dict[str, Any]]           # Table 1's columns, read from each run's config
    paper_fid: dict[str, float]
    paper_by_iters: dict[str, dict[int, float]]
    timing: dict[str, dict[str, float]]         # "train" / "evaluate": wall_s, cpu_s, runs
    missing: list[str]                          # runs of the sweep without results
    load_avg: list[float]

    @property
    def models(self) -> list[str]:
        return sorted({m for m, _ in self.results})

    @property
    def seeds(self) -> list[int]:
        return sorted({s for _, s in self.results})

    @property
    def iters(self) -> list[int]:
        return sorted({t for r in self.results.values() for t in r})

    def values(self, model: str, t: int, key: str) -> list[float]:
        """``key`` of ``model`` at T = ``t``, one value per seed that has it (finite only)."""
        out = []
        for (m, _), by_t in sorted(self.results.items()):
            v = by_t.get(t, {}).get(key) if m == model else None
            if isinstance(v, (int, float)) and np.isfinite(v):
                out.append(float(v))
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def run_dir(sweep_dir: Path, run: dict[str, Any]) -> Path:
    """A run's folder: its recorded workdir if absolute, else the one named like it in ``sweep_dir``."""
    workdir = Path(run["workdir"])
    return workdir if workdir.is_absolute() else sweep_dir / workdir.name


def load_study(sweep_dir: Path) -> Study:
    sweep = _read_json(sweep_dir / "sweep.json")
    results, own, design, paper_fid, paper_t, missing = {}, {}, {}, {}, {}, []
    timing = {k: {"wall_s": 0.0, "cpu_s": 0.0, "runs": 0} for k in ("train", "evaluate")}
    loads: list[float] = []
    for run in sweep["runs"]:
        folder = run_dir(sweep_dir, run)
        if (folder / "sweep_timing.json").is_file():
            t = _read_json(folder / "sweep_timing.json")
            total = timing[run["kind"]]
            total["wall_s"] += t["wall_s"]
            total["cpu_s"] += t["cpu_s"]
            total["runs"] += 1
            loads += t.get("load_avg_1min", [])
        study = run.get("study")
        if run["kind"] != "evaluate" or not study:
            continue
        m, s = study["model"], int(study["seed"])
        paper_fid[m] = run["paper"]["fid"]
        paper_t[m] = {int(t): v for t, v in run["paper"].get("fid_by_iters", {}).items()}
        if not (folder / "results.json").is_file():
            missing.append(run["name"])
            continue
        data = _read_json(folder / "results.json")
        results[(m, s)] = {int(t): r for t, r in data["results"].items()}
        c = data["record"]["config"]
        own[m] = int(c["spread"]["train_iters"])
        design[m] = {"dpm": bool(c["spread"]["decoupled"]), "cs": float(c["spread"]["alpha"]) > 0,
                     "uga": bool(c["model"]["uncertainty_guided"]),
                     "att": tuple(c["model"]["attention_downsample"]), "steps": int(data["record"]["step"])}
    return Study(results, own, design, paper_fid, paper_t, timing, missing, loads)


# ----------------------------------------------------------------------------- statistics


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof = 1; None with one value)."""
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def fmt(values: list[float], digits: int = 2) -> str:
    """``mean ± std`` (``mean`` alone for one value, ``-`` for none)."""
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


@dataclasses.dataclass
class Link:
    """One comparison "lower < higher" of per-seed values."""
    lower: str
    higher: str
    lower_values: list[float]
    higher_values: list[float]

    @property
    def difference(self) -> float:
        return float(np.mean(self.higher_values) - np.mean(self.lower_values))

    @property
    def noise(self) -> float | None:
        stds = [mean_std(v)[1] for v in (self.lower_values, self.higher_values)]
        return None if None in stds else max(stds)

    @property
    def verdict(self) -> str:
        d, noise = self.difference, self.noise
        if noise is None:
            return HOLDS if d > 0 else REVERSED
        return HOLDS if d > noise else REVERSED if d < -noise else WITHIN

    def text(self, digits: int = 2) -> str:
        noise = "1 seed" if self.noise is None else f"noise {self.noise:.{digits}f}"
        return (f"{self.lower} {fmt(self.lower_values, digits)} vs {self.higher} {fmt(self.higher_values, digits)} "
                f"(d = {self.difference:+.{digits}f}, {noise}): {self.verdict}")


@dataclasses.dataclass
class Claim:
    title: str
    links: list[Link]
    not_measured: str = ""          # why some or all links are missing

    @property
    def verdict(self) -> str:
        if not self.links:
            return "not measured"
        verdicts = [link.verdict for link in self.links]
        v = HOLDS if all(x == HOLDS for x in verdicts) else REVERSED if REVERSED in verdicts else WITHIN
        return f"{v} (1 seed)" if any(link.noise is None for link in self.links) else v


def table1_claims(study: Study) -> list[Claim]:
    """Each model at its own T (Table 1), hole L1."""
    out = []
    for title, links in TABLE1_CLAIMS:
        done, absent = [], sorted({m for pair in links for m in pair if m not in study.own_iters})
        for x, y in links:
            if x in study.own_iters and y in study.own_iters:
                done.append(Link(f"{x} (T={study.own_iters[x]})", f"{y} (T={study.own_iters[y]})",
                                 study.values(x, study.own_iters[x], "l1_hole"),
                                 study.values(y, study.own_iters[y], "l1_hole")))
        out.append(Claim(title, done, f"model {', '.join(absent)} not in this sweep" if absent else ""))
    return out


def table2_claims(study: Study) -> list[Claim]:
    """Per Table 2 model: more test iterations help (largest T against its own T), then saturate
    (the hole-L1 gain per added iteration over the last two T is below the one over the first step
    past its own T)."""
    out = []
    for m in TABLE2_MODELS:
        if m not in study.own_iters:
            out.append(Claim(f"More test iterations help, then saturate (model {m})", [],
                             f"model {m} not in this sweep"))
            continue
        own = study.own_iters[m]
        ts = [t for t in study.iters if t >= own and study.values(m, t, "l1_hole")]
        if len(ts) < 2:
            out.append(Claim(f"More test iterations help (model {m})", [], f"no test T above {own}"))
            continue
        l1 = {t: study.values(m, t, "l1_hole") for t in ts}
        out.append(Claim(f"More test iterations help (model {m}, T = {own} -> {ts[-1]})",
                         [Link(f"T={ts[-1]}", f"T={own}", l1[ts[-1]], l1[own])]))
        if len(ts) < 3:
            out.append(Claim(f"More test iterations saturate (model {m})", [], f"needs three test T from {own} up"))
            continue

        def rate(a: int, b: int) -> list[float]:
            return [(x - y) / (b - a) for x, y in zip(l1[a], l1[b])]
        late, early = (ts[-2], ts[-1]), (ts[0], ts[1])
        out.append(Claim(
            f"More test iterations saturate (model {m}: hole-L1 gain per iteration, T = {late[0]} -> {late[1]} "
            f"below T = {early[0]} -> {early[1]})",
            [Link(f"gain {late[0]}->{late[1]}", f"gain {early[0]}->{early[1]}", rate(*late), rate(*early))]))
    return out
