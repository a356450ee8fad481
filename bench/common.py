"""Shared helpers of the bench/ scripts (project issue 7): timing, device and load info, JSON lines,
XLA FLOP counts, and the Markdown tables of docs/BENCHMARKS.md.

Every script prints one JSON object per line (``emit``) and, with ``--markdown``, rewrites its own section of
docs/BENCHMARKS.md (``update_markdown``): a table between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``. Rows are keyed (e.g. device, dtype, resolution, batch); a rerun replaces the rows
with its keys and keeps the others, so CPU, GPU and TPU results live side by side.

Timings on a shared machine: every row carries ``load1`` (the 1-minute load average, max of before/after the
measurement) so a figure taken while other jobs ran can be told apart from a clean one.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py` from anywhere
from psm_jax import cli  # noqa: E402  (after the path fix above)

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
RESULTS_DIR = REPO / "bench" / "results"  # machine-specific outputs (peak.py); git-ignored


# Every bench script takes its flags the way every psm_jax command does (one ``error:`` line, exit 2).
ArgumentParser = cli.ArgumentParser


def fail(script: str, message: str) -> None:
    """Bad CLI input: ``error: SCRIPT: message`` on one line of stderr, exit code 2 (no traceback)."""
    cli.fail(f"{script}: {message}")


def load1() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def device_name() -> str:
    """``device_kind`` of the default JAX device ("NVIDIA H100 80GB HBM3", "TPU v5 lite"); on CPU, where that is
    just "cpu", the CPU model and core count ("cpu AMD EPYC x2")."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return dev.device_kind
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " " + line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu{model} x{os.cpu_count()}"


def device_info() -> dict[str, Any]:
    """Device name (``device_name``) and platform of the default JAX backend, device count, JAX version."""
    return {"device": device_name(), "platform": jax.devices()[0].platform, "num_devices": jax.device_count(),
            "jax": jax.__version__}


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 3, warmup: int = 1,
            max_seconds: float | None = None, args_fn: Callable[[int], tuple] | None = None) -> dict[str, Any]:
    """Median wall time of ``jax.block_until_ready(fn(*args))`` after ``warmup`` untimed calls.

    ``args_fn(i)`` (optional) gives the arguments of call i instead of ``args`` (fresh keys, donated state).
    ``max_seconds`` stops early once that much time was spent timing (at least one timed call is made).
    Returns median_s, min_s, repeats (the timed calls made), times_s, cpu_s and load1. ``cpu_s`` is this
    process's CPU time per timed call (all threads): on a machine shared with other jobs it is much less
    inflated than wall time, and wall time on an idle machine with C cores is at least cpu_s / C.
    """
    load_before = load1()
    call = (lambda i: fn(*args_fn(i))) if args_fn is not None else (lambda i: fn(*args))
    for i in range(warmup):
        jax.block_until_ready(call(-1 - i))
    times: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call(i))
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    cpu_s = (time.process_time() - cpu_start) / len(times)
    loads = [x for x in (load_before, load1()) if x is not None]
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times),
            "times_s": [round(t, 5) for t in times], "cpu_s": cpu_s, "load1": max(loads) if loads else None}


def xla_flops(lowered_or_compiled: Any) -> float:
    """FLOPs of a lowered or compiled JAX computation from XLA's cost analysis (0.0 if unavailable).

    XLA counts 2 FLOPs per multiply-add and only the (output, tap) pairs that read real input: padding and the
    holes of an lhs-dilated (transposed, up-2) conv are not counted (checked in docs/BENCHMARKS.md)."""
    cost = lowered_or_compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures: small GFLOP counts keep their precision."""
    return float(f"{value:.{digits}g}")


def emit(row: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed (so a pipe sees rows as they are measured)."""
    print(json.dumps(row), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Markdown tables


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def _markers(section: str) -> tuple[str, str]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", section):
        raise ValueError(f"markdown section name {section!r}: use letters, digits, '_', '.', '-'")
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


def _parse_table(block: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return [], []
    split = lambda ln: [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])]  # noqa: E731
    header = split(lines[0])
    rows = [dict(zip(header, split(ln))) for ln in lines[2:]]
    return header, rows


def render_table(columns: Sequence[str], rows: Iterable[dict[str, str]]) -> str:
    """A Markdown table of already formatted (``_fmt``) cells."""
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(r.get(c, "") for c in columns) + " |")
    return "\n".join(out)


def update_markdown(section: str, rows: Sequence[dict[str, Any]], *, key: Sequence[str],
                    columns: Sequence[str] | None = None, title: str | None = None,
                    path: Path | str = BENCHMARKS_MD) -> Path:
    """Rewrites the table of ``section`` in ``path`` (created if missing) with ``rows``.

    Existing rows whose ``key`` columns equal a new row's are replaced (in place); other existing rows are kept.
    ``columns`` picks and orders the table's columns (default: the keys of the first row). A section not yet in
    the file is appended at its end under ``## title``. Only the text between the section's markers changes.
    """
    path = Path(path)
    begin, end = _markers(section)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    columns = list(columns or (rows[0].keys() if rows else []))
    missing = [k for k in key if k not in columns]
    if missing:
        raise ValueError(f"update_markdown({section!r}): key columns {missing} not among the columns")
    new = [{c: _fmt(r.get(c)) for c in columns} for r in rows]
    i, j = text.find(begin), text.find(end)
    old: list[dict[str, str]] = []
    if i >= 0 and j > i:
        _, old = _parse_table(text[i + len(begin):j])
    merged: list[dict[str, str]] = []
    new_by_key = {tuple(r[k] for k in key): r for r in new}
    used = set()
    for r in old:
        k = tuple(r.get(c, "") for c in key)
        if k in new_by_key:
            if k not in used:
                merged.append(new_by_key[k])
                used.add(k)
        else:
            merged.append({c: r.get(c, "") for c in columns})
    merged += [r for k, r in new_by_key.items() if k not in used]
    block = f"{begin}\n{render_table(columns, merged)}\n{end}"
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {title or section}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
