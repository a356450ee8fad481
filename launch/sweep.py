"""Expand a config's sweep into runs and launch them: locally, on a TPU pod, or through SLURM.

    python -m launch.sweep configs/psm.py:table1 --dry_run            # print the 7 Table 1 runs
    python -m launch.sweep configs/psm.py:table4 --workdir_root runs  # run them here, one by one
    python -m launch.sweep configs/psm.py:table1 --launcher slurm     # sbatch one job per run
    python -m launch.sweep configs/psm.py:table1 --launcher tpu --tpu psm-v4-32 --zone us-central2-b \\
        --workdir_root gs://bucket/runs
    python -m launch.sweep configs/psm.py:table2 --dry_run --eval_images /data/places365/val \\
        --eval_masks /data/masks/large --inception /weights/inception.npz

A sweep is ``get_sweep(name)`` in the config file (configs/psm.py): a list of runs, each with a
``name``, a config ``arg`` and dotted ``overrides``, or an ``evaluate`` entry (Table 2 re-tests
trained models at other iteration counts, reusing the training sweep's workdirs; its optional
keys ``images``, ``masks``, ``inception`` (False: no FID), ``seed``, ``batch_size``,
``calib_samples`` and ``save_images`` become ``psm_jax.evaluate`` flags). Each run's workdir is
``WORKDIR_ROOT/SWEEP/NAME``, where SWEEP is the sweep's name without its arguments
(``repro,seeds=3`` runs in ``repro``). ``sweep.json`` in ``WORKDIR_ROOT/SWEEP`` records the runs
and the paper's numbers for ``python -m launch.collect``. Extra arguments after ``--`` are passed
to every training run.

Run here (``--launcher local``), the sweep resumes: a training run whose last checkpoint is at
its total_steps, and an evaluation whose ``results.json`` has the asked iterations of the
training run's last step, are skipped. Each run it starts gets its wall and CPU time printed and
added to ``NAME/sweep_timing.json``; the total is printed at the end.
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from psm_jax.cli import ArgumentParser, fail
from psm_jax.config_lib import load_config

PROG = "python -m launch.sweep"
TRAIN_SWEEP_OF = {"table2": "table1"}     # evaluation sweeps reuse these training workdirs
EVALUATE_FLAGS = ("seed", "batch_size", "calib_samples", "save_images")   # optional `evaluate` keys
TIMING = "sweep_timing.json"


def load_sweep(spec: str) -> tuple[str, str, list[dict[str, Any]]]:
    """``path/to/config.py:NAME[,ARGS]`` -> (config path, sweep name without ARGS, runs); a training
    run gets ``total_steps`` from its config."""
    path, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"{spec!r}: expected CONFIG.py:SWEEP, e.g. configs/psm.py:table1")
    if not Path(path).is_file():
        raise ValueError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"_psm_sweep_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a config that does not import: report, don't trace
        raise ValueError(f"config file {path!r} does not import: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"config file {path!r} defines no get_sweep()")
    runs = [dict(run) for run in module.get_sweep(name)]
    seen = set()
    for run in runs:
        # A run's workdir is ROOT/SWEEP/NAME: a name must not climb out of it or clash.
        run_name = str(run.get("name", ""))
        if not run_name or run_name in (".", "..") or "/" in run_name or "\\" in run_name:
            raise ValueError(f"{spec}: run name {run_name!r} is not a plain directory name "
                             "(no '/', not '.' or '..', not empty)")
        if run_name in seen:
            raise ValueError(f"{spec}: two runs are named {run_name!r}; their workdirs would clash")
        seen.add(run_name)
    for run in runs:
        if "evaluate" not in run:
            # Build each run's config here, with the setter --config.* uses (config_lib.set_dotted):
            # a misspelled override fails now, not in a job hours into the queue.
            run_name = run["name"]
            if not hasattr(module, "get_config"):
                raise ValueError(f"config file {path!r} defines no get_config() for its training runs")
            try:
                run["total_steps"] = int(load_config(f"{path}:{run['arg']}", run.get("overrides", {})).total_steps)
            except (KeyError, ValueError, TypeError, AttributeError, FileNotFoundError) as e:
                detail = " ".join(str(e).replace("\\'", "'").split()).strip("\"")
                raise ValueError(f"{spec}: run {run_name!r} (config {run['arg']!r}, overrides "
                                 f"{run.get('overrides', {})}) does not build: {detail}") from None
    return path, name.split(",")[0], runs


def _override_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def run_commands(config_path: str, sweep: str, runs: list[dict[str, Any]], root: str, *,
                 eval_images: str, eval_masks: str, inception: str, extra: list[str]) -> list[dict]:
    """Each run with its workdir and its command line (argv list)."""
    out = []
    for run in runs:
        workdir = f"{root.rstrip('/')}/{sweep}/{run['name']}"
        if "evaluate" in run:
            ev = run["evaluate"]
            train_dir = f"{root.rstrip('/')}/{TRAIN_SWEEP_OF.get(sweep, sweep)}/{ev['train_run']}"
            iters = ev["iters"] if isinstance(ev["iters"], int) else ",".join(map(str, ev["iters"]))
            argv = ["python", "-m", "psm_jax.evaluate", "--workdir", train_dir,
                    "--images", ev.get("images", eval_images), "--masks", ev.get("masks", eval_masks),
                    "--iters", str(iters)]
            if ev.get("inception", True):
                argv += ["--inception", inception]
            for flag in EVALUATE_FLAGS:
                if flag in ev:
                    argv += [f"--{flag}", str(ev[flag])]
            argv += ["--out", f"{workdir}/results.json"]
            kind = "evaluate"
            run = {**run, "train_workdir": train_dir}
        else:
            argv = ["python", "-m", "psm_jax.main", f"--config={config_path}:{run['arg']}",
                    f"--workdir={workdir}", *_override_flags(run.get("overrides", {})), *extra]
            kind = "train"
        out.append({**run, "workdir": workdir, "kind": kind, "argv": argv})
    return out


def launcher_argv(run: dict[str, Any], launcher: str, tpu: str, zone: str) -> list[str]:
    """The command that starts ``run`` through ``launcher`` (local, tpu or slurm)."""
    argv = run["argv"]
    if launcher == "local" or run["kind"] == "evaluate" and launcher == "tpu":
        return argv       # evaluation runs on one host; run it there
    if launcher == "slurm":
        if run["kind"] == "evaluate":
            return ["sbatch", f"--job-name=psm-{run['name']}", "--nodes=1", "--wrap", shlex.join(argv)]
        config = argv[3].split("=", 1)[1]
        return ["sbatch", f"--job-name=psm-{run['name']}", "launch/gpu_slurm.sbatch", config,
                run["workdir"], *argv[5:]]
    config = argv[3].split("=", 1)[1]
    return ["launch/tpu_pod.sh", "--tpu", tpu, "--zone", zone, "--config", config,
            "--workdir", run["workdir"], "--", *argv[5:]]


def _iters(ev: dict[str, Any]) -> list[int]:
    return [ev["iters"]] if isinstance(ev["iters"], int) else [int(t) for t in ev["iters"]]


def finished(run: dict[str, Any]) -> str | None:
    """Why ``run`` (with a local workdir) needs no start, or None if it does."""
    # Deferred: the checkpoint module pulls in orbax and jax (seconds); only a local run needs it.
    from psm_jax.checkpoint import latest_complete_step

    def last_step(workdir: str) -> int | None:
        ckpts = Path(workdir) / "checkpoints"
        return latest_complete_step(ckpts) if ckpts.is_dir() else None

    if run["kind"] == "train":
        step = last_step(run["workdir"])
        return f"finished earlier (step {step})" if step is not None and step >= run["total_steps"] else None
    try:
        record = json.loads((Path(run["workdir"]) / "results.json").read_text())["record"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    step = last_step(run["train_workdir"])
    if record.get("iterations") == _iters(run["evaluate"]) and step is not None and record.get("step") == step:
        return f"evaluated earlier (step {step})"
    return None


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], workdir: Path | None) -> tuple[int, float, float]:
    """Runs ``cmd``; (exit code, wall s, CPU s), added to ``workdir/sweep_timing.json`` if it exists."""
    t0, c0, load0 = time.perf_counter(), _children_cpu_s(), os.getloadavg()[0]
    code = subprocess.run(cmd).returncode
    wall, cpu = time.perf_counter() - t0, _children_cpu_s() - c0
    if workdir is not None and workdir.is_dir():
        path = workdir / TIMING
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = {}
        path.write_text(json.dumps({
            "wall_s": round(before.get("wall_s", 0.0) + wall, 1), "cpu_s": round(before.get("cpu_s", 0.0) + cpu, 1),
            "starts": before.get("starts", 0) + 1, "last_exit_code": code, "cpu_count": os.cpu_count(),
            "load_avg_1min": [*before.get("load_avg_1min", []), round(load0, 2), round(os.getloadavg()[0], 2)],
        }, indent=1) + "\n")
    return code, wall, cpu


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="CONFIG.py:SWEEP, e.g. configs/psm.py:table1")
    ap.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--workdir_root", default="runs", help="runs go to WORKDIR_ROOT/SWEEP/NAME")
    ap.add_argument("--launcher", default="local", choices=("local", "tpu", "slurm"))
    ap.add_argument("--tpu", default="${TPU_NAME}", help="--launcher tpu: TPU VM name")
    ap.add_argument("--zone", default="${TPU_ZONE}", help="--launcher tpu: zone")
    ap.add_argument("--eval_images", default="${EVAL_IMAGES}", help="evaluation sweeps: image folder")
    ap.add_argument("--eval_masks", default="${EVAL_MASKS}", help="evaluation sweeps: mask folder|large|small")
    ap.add_argument("--inception", default="${INCEPTION_NPZ}", help="evaluation sweeps: Inception .npz")
    args = ap.parse_args(argv)
    try:
        config_path, sweep, runs = load_sweep(args.sweep)
    except ValueError as e:
        fail(f"{PROG}: {e}")
    runs = run_commands(config_path, sweep, runs, args.workdir_root, eval_images=args.eval_images,
                        eval_masks=args.eval_masks, inception=args.inception, extra=extra)
    commands = [launcher_argv(r, args.launcher, args.tpu, args.zone) for r in runs]
    if args.dry_run:
        for cmd in commands:
            print(shlex.join(cmd).replace("'${", "${").replace("}'", "}"))
        return 0
    unset = sorted({a for cmd in commands for a in cmd if "${" in a})
    if unset:
        fail(f"{PROG}: set {', '.join(unset)} (flags --tpu/--zone/--eval_images/--eval_masks/--inception)")
    sweep_dir = Path(args.workdir_root) / sweep
    if not args.workdir_root.startswith("gs://"):
        for d in (Path(args.workdir_root), sweep_dir):
            if d.exists() and not d.is_dir():
                fail(f"{PROG}: --workdir_root: {d} exists and is not a directory")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        keys = ("name", "workdir", "kind", "paper", "study", "evaluate")
        record = {"sweep": sweep, "argument": args.sweep.partition(":")[2], "config": config_path,
                  "runs": [{k: r[k] for k in keys if k in r} for r in runs]}
        (sweep_dir / "sweep.json").write_text(json.dumps(record, indent=1))
    local = args.launcher == "local" and not args.workdir_root.startswith("gs://")
    failed, started, total_wall, total_cpu = [], 0, 0.0, 0.0
    for run, cmd in zip(runs, commands):
        done = finished(run) if local else None
        if done:
            print(f"[{run['name']}] {done}: skipped", flush=True)
            continue
        print(f"[{run['name']}] {shlex.join(cmd)}", flush=True)
        if cmd[0] == "python":          # run with this interpreter (the venv), not PATH's python
            cmd = [sys.executable, *cmd[1:]]
        workdir = Path(run["workdir"]) if local else None
        if workdir is not None and run["kind"] == "evaluate":
            workdir.mkdir(parents=True, exist_ok=True)   # evaluate writes results.json into it
        code, wall, cpu = timed(cmd, workdir)
        started, total_wall, total_cpu = started + 1, total_wall + wall, total_cpu + cpu
        print(f"[{run['name']}] {'done' if code == 0 else f'failed (exit {code})'} in {_hms(wall)} wall, "
              f"{_hms(cpu)} CPU", flush=True)
        if code != 0:
            failed.append(run["name"])
    print(f"{PROG}: {started} of {len(runs)} runs started ({len(runs) - started} skipped) in {_hms(total_wall)} "
          f"wall, {_hms(total_cpu)} CPU (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
    if failed:
        print(f"error: {PROG}: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
