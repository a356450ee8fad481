"""Per-device memory and FLOPs of the sharded training programs on a simulated pod (project issue 25).

    .venv/bin/python bench/scaling.py --configs tiny --mesh data=4 data=2,fsdp=2           # seconds-minutes
    .venv/bin/python bench/scaling.py --configs places512 --mesh data=8 data=4,fsdp=2 --batch 32 \\
        --dtype bfloat16 --out docs/scaling.jsonl --markdown                                # minutes per row
    .venv/bin/python bench/scaling.py --configs tiny --mesh data=1 --batch 32 --execute 3  # CPU analysis vs RSS

For every (config, mesh, global batch, remat, dtype) it compiles train.py's own jitted G + D step and lazy-R1
step (``psm_jax.scaling.analyze``: ``train.compiled_program``, same shardings and donation) from shapes only, on
``data x fsdp`` simulated CPU devices (the script asks JAX for them, ``jax_num_cpu_devices``, before its first
computation), and prints one JSON line:

* ``state_{params,opt,ema,other,total}_bytes``: what one device holds of the train state (its shards);
  ``state_params_replicated_bytes`` the part of the parameters that fsdp leaves whole on every device;
* ``{train,r1}_{argument,output,temp,alias,constant,total}_bytes``: ``compiled.memory_analysis()`` per device,
  total = argument + output + temp - alias + constant (the perceptual ResNet's weights, which the G step holds
  as constants that the analysis leaves out); ``peak_bytes`` the larger of the two totals; ``{train,r1}_gflop`` XLA's
  FLOPs per step per device; ``{train,r1}_compile_s``;
* ``fits_<N>gib``: peak_bytes <= ``--headroom`` x N GiB for N in 16, 32, 40, 80, 141;
* ``note``: the figures are XLA:CPU's (arguments, outputs and state are exact; temporaries are the CPU
  compiler's, see docs/SCALING.md for the measured gaps).

Compiling a 512 configuration takes minutes on a 2-core CPU, so ``--out FILE`` appends each row as it is made
and skips configurations already in FILE: a long grid can be stopped and resumed. ``--markdown`` rewrites the
measured table of docs/SCALING.md from all rows of ``--out``. ``--platform gpu`` (or tpu) compiles on that
backend's real devices instead, for the accelerator day (a 1-device mesh on a one-GPU machine).
``--execute N`` runs N steps of the compiled programs after compiling (tiny configs only: it allocates
everything) and reports the process's peak RSS growth against the analysis (``rss_*`` keys).
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from psm_jax import config_lib  # noqa: E402
from psm_jax import scaling  # noqa: E402
from psm_jax import train  # noqa: E402

CONFIGS = {"tiny": "configs/psm.py:tiny", "places256": "configs/psm.py:places256",
           "places512": "configs/psm.py:places512"}
CAPACITIES_GIB = (16, 32, 40, 80, 141)
KEY = ("config", "mesh", "batch", "remat", "dtype", "platform")
SCALING_MD = common.REPO / "docs" / "SCALING.md"
MD_COLUMNS = ("config", "mesh", "batch", "per_device_batch", "dtype", "remat", "state_gib", "train_temp_gib",
              "train_total_gib", "r1_total_gib", "peak_gib", *(f"fits_{c}" for c in CAPACITIES_GIB),
              "train_tflop", "r1_tflop", "compile_s", "platform", "load1")
# Published peak dense bf16 FLOP/s per chip (one JAX device) and memory per chip; sources in docs/SCALING.md.
# (A100 80GB and H200 have the speed of A100 40GB and H100 SXM: the fits_80/fits_141 columns tell them apart.)
ACCELERATORS = {"TPU v4": (275e12, 32), "TPU v5e": (197e12, 16), "A100 40GB": (312e12, 40),
                "H100 SXM": (989e12, 80)}
MFUS = (0.15, 0.3, 0.5)
TRAIN_IMAGES = 20_000_000     # Sec. 4.2
PROJECTION_COLUMNS = ("config", "mesh", "batch", "remat", "accelerator", "fits",
                      *(f"step_s@{m:.0%} (projected)" for m in MFUS),
                      *(f"days/20M@{m:.0%} (projected)" for m in MFUS))
LARGEST_COLUMNS = ("config", "fsdp", "dtype", "remat", "from_per_device_batches", "train_gib_per_image",
                   "train_fixed_gib", "r1_gib_per_image", "r1_fixed_gib",
                   *(f"max_per_device_batch_{c}gib" for c in CAPACITIES_GIB))


def _config(name: str, batch: int | None, remat: bool, dtype: str):
    overrides = {"spread.remat": remat, "compute_dtype": dtype}
    if batch is not None:
        overrides["batch_size"] = batch
    return config_lib.load_config(CONFIGS[name], overrides)


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def execute_rss(config, mesh, row: dict, steps: int) -> dict:
    """Runs the compiled programs ``steps`` times and measures this process's RSS against the analysis.

    ``rss_state_bytes``: RSS growth from allocating the state and batch (all devices) vs their argument bytes;
    ``rss_step_peak_bytes``: the peak RSS above that while the steps run vs the analysis' per-step transient
    (temp + output - alias), summed over the devices, since simulated devices share this process.
    """
    compiled = row.pop("compiled")
    program = train.compiled_program(scaling.for_planning(config), mesh)   # analyze's, cached
    gc.collect()
    rss0 = _vm_kib("VmRSS") * 1024
    state = program.init(jax.random.key(config.seed))
    rng = np.random.default_rng(0)
    r, b = config.model.resolution, config.batch_size
    batch = {"image": rng.uniform(-1, 1, (b, r, r, 3)).astype(np.float32),
             "mask": (rng.uniform(size=(b, r, r, 1)) > 0.5).astype(np.float32)}
    batch = jax.device_put(batch, program.batch_sharding)
    jax.block_until_ready((state, batch))
    rss1 = _vm_kib("VmRSS") * 1024
    if not _reset_peak_rss():
        return {"rss_note": "cannot reset VmHWM on this system"}
    for i in range(steps):
        if "r1" in compiled:
            state, _ = compiled["r1"](state, batch)
        state, metrics = compiled["train"](state, batch)
        jax.block_until_ready(metrics)
    peak = _vm_kib("VmHWM") * 1024
    n = row["devices"]
    names = [s for s in ("train", "r1") if s in compiled]
    predicted_state = n * row["train_argument_bytes"]
    predicted_step = n * max(row[f"{s}_temp_bytes"] + row[f"{s}_output_bytes"] - row[f"{s}_alias_bytes"]
                             for s in names)
    return {"rss_steps": steps, "rss_state_bytes": rss1 - rss0, "analysis_state_bytes": predicted_state,
            "rss_step_peak_bytes": peak - rss1, "analysis_step_bytes": predicted_step,
            "rss_step_over_analysis": round((peak - rss1) / max(predicted_step, 1), 3)}


def _markdown_row(r: dict) -> dict:
    g = lambda k: round(scaling.gib(r[k]), 3) if k in r else None  # noqa: E731
    return {**r, "state_gib": g("state_total_bytes"), "train_temp_gib": g("train_temp_bytes"),
            "train_total_gib": g("train_total_bytes"), "r1_total_gib": g("r1_total_bytes"),
            "peak_gib": g("peak_bytes"), **{f"fits_{c}": r.get(f"fits_{c}gib") for c in CAPACITIES_GIB},
            "train_tflop": round(r["train_gflop"] / 1e3, 3) if "train_gflop" in r else None,
            "r1_tflop": round(r["r1_gflop"] / 1e3, 4) if "r1_gflop" in r else None,
            "compile_s": round(sum(r.get(f"{s}_compile_s", 0.0) for s in ("train", "r1")), 1)}


def projections(rows: list[dict]) -> list[dict]:
    """Projected step time and days per 20M images on each accelerator, for the bf16 rows at global batch 32
    with data parallelism only (fsdp adds communication, not FLOPs) and both steps compiled.

    step_s = (train FLOPs + r1 FLOPs / r1_interval) per device / (peak bf16 FLOP/s x MFU);
    days = 20M / global batch x step_s / 86400. Communication and input are assumed hidden.
    """
    out = []
    for r in rows:
        if (r.get("dtype"), r.get("batch"), r.get("fsdp")) != ("bfloat16", 32, 1) or "r1_gflop" not in r \
                or "train_gflop" not in r:
            continue
        flop = (r["train_gflop"] + r["r1_gflop"] / r.get("r1_interval", 16)) * 1e9
        for name, (peak, mem_gib) in ACCELERATORS.items():
            row = {**{k: r[k] for k in ("config", "mesh", "batch", "remat")}, "accelerator": name,
                   "fits": r["peak_bytes"] <= r.get("headroom", 0.9) * mem_gib * scaling.GIB}
            for mfu in MFUS:
                step_s = flop / (peak * mfu)
                row[f"step_s@{mfu:.0%} (projected)"] = round(step_s, 3)
                row[f"days/20M@{mfu:.0%} (projected)"] = round(TRAIN_IMAGES / r["batch"] * step_s / 86400, 2)
            out.append(row)
    return out


def largest_batches(rows: list[dict]) -> list[dict]:
    """Largest per-device batch that fits each capacity, extrapolated linearly in the per-device batch from the
    two most distant per-device batches compiled for the same (config, fsdp, dtype, remat, platform).

    The G + D step and the R1 step each get their own line, and a batch fits where both do: with remat on, the
    G + D step sets the peak at a small batch and the R1 step at a large one, so a line through the peaks
    alone would mix the two programs and overstate the largest batch."""
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if "peak_bytes" in r:
            groups.setdefault((r["config"], r["fsdp"], r["dtype"], r["remat"], r["platform"]), {})[
                r["per_device_batch"]] = r
    out = []
    for (config, fsdp, dtype, remat, _), by_b in groups.items():
        if len(by_b) < 2:
            continue
        b0, b1 = min(by_b), max(by_b)
        lines = {}
        for step in (s for s in ("train", "r1") if f"{s}_total_bytes" in by_b[b0]):   # no R1 step: no line
            slope = (by_b[b1][f"{step}_total_bytes"] - by_b[b0][f"{step}_total_bytes"]) / (b1 - b0)
            lines[step] = (slope, by_b[b0][f"{step}_total_bytes"] - slope * b0)
        if not lines or any(slope <= 0 for slope, _ in lines.values()):
            continue
        headroom = by_b[b1].get("headroom", 0.9)
        out.append({"config": config, "fsdp": fsdp, "dtype": dtype, "remat": remat,
                    "from_per_device_batches": f"{b0}, {b1}",
                    **{f"{step}_gib_per_image": round(scaling.gib(slope), 2) for step, (slope, _) in lines.items()},
                    **{f"{step}_fixed_gib": round(scaling.gib(fixed), 2) for step, (_, fixed) in lines.items()},
                    **{f"max_per_device_batch_{c}gib": max(0, min(int((headroom * c * scaling.GIB - fixed) // slope)
                                                                  for slope, fixed in lines.values()))
                       for c in CAPACITIES_GIB}})
    return out


def write_markdown(rows: list[dict]) -> None:
    # The derived tables are recomputed from every row, so their old rows are dropped first (update_markdown
    # keeps rows whose keys are not among the new ones, which suits the measured table only).
    text = SCALING_MD.read_text()
    for section in ("scaling_largest", "scaling_projection"):
        begin, end = f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"
        i, j = text.find(begin), text.find(end)
        if 0 <= i < j:
            text = text[:i + len(begin)] + "\n" + text[j:]
    SCALING_MD.write_text(text)
    common.update_markdown("scaling", [_markdown_row(r) for r in rows], key=KEY, columns=MD_COLUMNS,
                           path=SCALING_MD, title="Per-device memory and FLOPs (bench/scaling.py)")
    common.update_markdown("scaling_largest", largest_batches(rows), key=("config", "fsdp", "dtype", "remat"),
                           columns=LARGEST_COLUMNS, path=SCALING_MD, title="Largest per-device batch (extrapolated)")
    common.update_markdown("scaling_projection", projections(rows),
                           key=("config", "mesh", "batch", "remat", "accelerator"),
                           columns=PROJECTION_COLUMNS, path=SCALING_MD, title="Projected step time (PROJECTION)")


def _read_rows(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("bench") == "scaling":
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(prog="bench/scaling.py", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny", help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--mesh", nargs="+", default=["data=4", "data=2,fsdp=2"],
                    help="meshes as data=N[,fsdp=M]; data x fsdp devices each")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="global batch sizes (default: the config's)")
    ap.add_argument("--remat", default="off", choices=["off", "on", "both"])
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--steps", default="train,r1", help="programs to compile: train, r1 or train,r1")
    ap.add_argument("--headroom", type=float, default=0.9,
                    help="a layout fits N GiB if its peak is at most headroom x N GiB")
    ap.add_argument("--platform", default="cpu", help="cpu (simulated devices, default), gpu or tpu")
    ap.add_argument("--out", default="", help="append rows to this JSON-lines file, skipping rows already in it")
    ap.add_argument("--markdown", action="store_true", help=f"rewrite the table of {SCALING_MD.name} from --out")
    ap.add_argument("--execute", type=int, default=0, metavar="N",
                    help="also run N steps and compare peak RSS with the analysis (tiny configs only)")
    ap.add_argument("--full-compile", action="store_true",
                    help="compile with LLVM's optimisation passes, as for a run (slower; same figures)")
    args = ap.parse_args(argv)
    prog = "bench/scaling.py"
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not names or any(c not in CONFIGS for c in names):
        common.fail(prog, f"--configs takes a comma-separated subset of {','.join(CONFIGS)}, got {args.configs!r}")
    try:
        meshes = [scaling.parse_mesh(m) for m in args.mesh]
    except ValueError as e:
        common.fail(prog, f"--mesh: {e}")
    steps = tuple(s.strip() for s in args.steps.split(","))
    if not steps or any(s not in ("train", "r1") for s in steps) or len(set(steps)) != len(steps):
        common.fail(prog, f"--steps takes train, r1 or train,r1, got {args.steps!r}")
    if args.batch is not None and min(args.batch) < 1:
        common.fail(prog, f"--batch must be >= 1, got {args.batch}")
    if not 0 < args.headroom <= 1:
        common.fail(prog, f"--headroom must be in (0, 1], got {args.headroom}")
    if args.execute < 0 or (args.execute and (names != ["tiny"] or "train" not in steps)):
        common.fail(prog, "--execute N runs real steps: N >= 0, --configs tiny only, with the train step")
    if args.markdown and not args.out:
        common.fail(prog, "--markdown rebuilds the table from the rows of --out: give --out FILE")
    if args.platform == "cpu":
        try:
            scaling.use_cpu_devices(max(d * f for d, f in meshes))
        except ValueError as e:
            common.fail(prog, f"--mesh: {e}")
    else:
        try:
            have = len(jax.devices(args.platform))
        except RuntimeError as e:
            common.fail(prog, f"--platform {args.platform}: {' '.join(str(e).split())[:200]}")
        if have < max(d * f for d, f in meshes):
            common.fail(prog, f"--mesh needs {max(d * f for d, f in meshes)} {args.platform} devices, found {have}")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_file():
        common.fail(prog, f"--out {out} is not a file; expected a JSON-lines file path")
    done = {tuple(r.get(k) for k in KEY) for r in _read_rows(out)} if out else set()
    remats = {"off": [False], "on": [True], "both": [False, True]}[args.remat]
    # Bad batches fail here, before minutes of compiling: every batch must split over every mesh.
    grid = []
    for name in names:
        batches = args.batch or [_config(name, None, False, "float32").batch_size]
        for data, fsdp in meshes:
            for b in batches:
                if b % (data * fsdp):
                    common.fail(prog, f"--batch {b} does not split over --mesh {scaling.mesh_name(data, fsdp)} "
                                      f"({data * fsdp} devices): use a multiple of {data * fsdp}")
                grid += [(name, data, fsdp, b, remat, dtype) for dtype in args.dtype for remat in remats]
    device = common.device_name() if args.platform != "cpu" else f"cpu (simulated, host: {common.device_name()})"
    for name, data, fsdp, b, remat, dtype in grid:
        base = {"bench": "scaling", "config": name, "mesh": scaling.mesh_name(data, fsdp), "batch": b,
                "remat": remat, "dtype": dtype, "platform": args.platform}
        if tuple(base[k] for k in KEY) in done:
            common.emit({**base, "skipped": f"already in {out}"})
            continue
        config = _config(name, b, remat, dtype)
        load_before = common.load1()
        mesh = scaling.make_mesh(data, fsdp, args.platform)
        row = scaling.analyze(config, mesh, steps=steps, keep_compiled=bool(args.execute),
                              plan_only=not (args.execute or args.full_compile))
        row = {**base, **row, "resolution": config.model.resolution, "T_train": config.spread.train_iters,
               "r1_interval": config.loss.r1_interval}
        row.update({f"fits_{c}gib": row["peak_bytes"] <= args.headroom * c * scaling.GIB for c in CAPACITIES_GIB})
        if args.execute:
            row.update(execute_rss(config, mesh, row, args.execute))
        loads = [x for x in (load_before, common.load1()) if x is not None]
        row.update({"headroom": args.headroom, "device": device, "jax": jax.__version__,
                    "load1": max(loads) if loads else None,
                    "note": scaling.CPU_NOTE if args.platform == "cpu" else "compiled for this backend"})
        common.emit(row)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    if args.markdown:
        write_markdown(_read_rows(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
