#!/usr/bin/env bash
# One prepared run for the day an accelerator is lent (project issue 25): at most 10 minutes, one JSON file.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/accelerator_check.sh [--quick] [--out FILE.json] [--budget SECONDS] [--python PY]

Runs the bench rows on this machine's default JAX device, each stage under its own time limit inside
one overall budget (default 570 s, under the 10 minutes a lent accelerator is held; 1200 s with --quick,
whose compiles are CPU compiles), and writes ONE JSON
file: {"device", "started", "budget_s", "wall_s", "stages": [{"stage", "cmd", "rc", "wall_s", "rows",
"stderr_tail"}]} where "rows" are the JSON lines the bench script printed. A stage that fails or runs out
of time keeps the rows it printed (rc 124 = its time limit) and the next stage still runs.

Stages, in priority order (the first ones are the ones docs/SCALING.md needs most):
  train_step   bench/train_step.py: the G + D step at 512 and 256, bf16 then f32, batch 4 (the per-device
               batch of global batch 32 on 8 devices), with the perceptual ResNet (random weights): step
               time, MFU, XLA's memory analysis and the device's peak bytes in use (the real counterpart
               of bench/scaling.py's XLA:CPU estimate)
  digits       200 steps of the digits demo config (python -m psm_jax.main): the last logged metrics
  inference    bench/inference.py: 512 latency at T = 4, in-process and through the jax.export artifact
  peak         bench/peak.py: this device's measured bf16/f32 matmul and conv peak
  generator    bench/generator.py: the forward at 512/256, batch 1 and 8, bf16 and f32
  spread       bench/spread.py: the 512 spread at T = 1, 2, 4

--quick runs every stage at the tiny sizes (32 px, a few steps), for an end-to-end check on a CPU.

Example (on the lent machine, from the repository root):
  bench/accelerator_check.sh --out bench/results/accelerator_check.json
USAGE
}

quick=0 out="" budget="" py="${PYTHON:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out|--budget|--python)
      [[ $# -ge 2 ]] || { echo "error: bench/accelerator_check.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;
  esac
  case "$1" in
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: bench/accelerator_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py=python3; fi
fi
[[ -n "$budget" ]] || { if [[ $quick == 1 ]]; then budget=1200; else budget=570; fi; }
[[ "$budget" =~ ^[1-9][0-9]*$ ]] || { echo "error: bench/accelerator_check.sh: --budget must be a positive integer (seconds), got $budget" >&2; exit 2; }
[[ -n "$out" ]] || out="$repo/bench/results/accelerator_check_$(date -u +%Y%m%dT%H%M%SZ).json"
if [[ -d "$out" ]]; then echo "error: bench/accelerator_check.sh: --out $out is a directory; expected a .json file path" >&2; exit 2; fi
mkdir -p "$(dirname "$out")" || { echo "error: bench/accelerator_check.sh: cannot create the folder of --out $out" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$repo"
start=$(date +%s)

# run NAME LIMIT_S CMD...: one stage, its stdout (JSON lines) and stderr kept under $work.
run() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  (( limit > left )) && limit=$left
  local t0 rc=0
  t0=$(date +%s)
  if (( limit < 5 )); then
    echo "skipped: out of budget" > "$work/$name.err"; : > "$work/$name.out"; rc=125
  else
    echo "[accelerator_check] $name (limit ${limit}s): $*" >&2
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$work/$name.out" 2> "$work/$name.err" || rc=$?
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$*" >> "$work/stages.tsv"
}

if [[ $quick == 1 ]]; then
  run train_step 300 "$py" bench/train_step.py --configs tiny --batch 2 --remat off --dtype float32 --repeats 1
  run digits 300 "$py" -m psm_jax.main --config=configs/demo.py:tiny --workdir="$work/digits" \
      --config.total_steps=2 --config.ckpt_every=2 --config.progress_bar=False
  run inference 120 "$py" bench/inference.py --sizes 32 --iters 1 --repeats 1 --warmup 0
  run peak 60 "$py" bench/peak.py --dtypes float32 --repeats 1 --out "$work/peak.jsonl"
  run generator 60 "$py" bench/generator.py --resolution 32 --batch 1 --repeats 1 --json
  run spread 60 "$py" bench/spread.py --model tiny --batch 1 --iters 1 --repeats 1
else
  # bf16 first: it is what a pod would run. 512 before 256: it is what the doc plans.
  for dtype in bfloat16 float32; do
    for cfg in 512 256; do
      run "train_step_${cfg}_${dtype}" 75 "$py" bench/train_step.py --configs "$cfg" --batch 4 --remat off \
          --dtype "$dtype" --pcp --repeats 3 --max-seconds 15
    done
  done
  run digits 90 "$py" -m psm_jax.main --config=configs/demo.py --workdir="$work/digits" \
      --config.total_steps=200 --config.ckpt_every=200 --config.progress_bar=False
  run inference 70 "$py" bench/inference.py --sizes 512 --iters 4 --batch 1 --repeats 3
  run peak 30 "$py" bench/peak.py --dtypes bfloat16 float32 --repeats 3 --out "$work/peak.jsonl"
  run generator 45 "$py" bench/generator.py --resolution 512 256 --batch 1 8 --dtype bfloat16 float32 \
      --repeats 3 --max-seconds 5 --json
  run spread 35 "$py" bench/spread.py --model paper512 --batch 1 --iters 1 2 4 --repeats 3 --max-seconds 5
fi

# The digits run's metrics (last logged step) become that stage's rows.
if [[ -f "$work/digits/metrics.jsonl" ]]; then tail -n 1 "$work/digits/metrics.jsonl" >> "$work/digits.out"; fi

"$py" - "$work" "$out" "$start" "$budget" "$quick" <<'PY'
import json, os, sys, time
work, out, start, budget, quick = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
stages = []
for line in open(os.path.join(work, "stages.tsv")):
    name, rc, wall, cmd = line.rstrip("\n").split("\t", 3)
    rows = []
    for l in open(os.path.join(work, name + ".out")):
        try:
            rows.append(json.loads(l))
        except json.JSONDecodeError:
            pass
    err = open(os.path.join(work, name + ".err")).read().strip().splitlines()[-15:]
    stages.append({"stage": name, "cmd": cmd, "rc": int(rc), "wall_s": int(wall), "rows": rows, "stderr_tail": err})
device = next((r.get("device") for s in stages for r in s["rows"] if r.get("device")), None)
report = {"device": device, "quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
          "budget_s": budget, "wall_s": int(time.time()) - start, "load1": os.getloadavg()[0], "stages": stages}
with open(out + ".tmp", "w") as f:
    json.dump(report, f, indent=1)
os.replace(out + ".tmp", out)
failed = [s["stage"] for s in stages if s["rc"] != 0]
print(f"wrote {out}: {len(stages)} stages, {sum(len(s['rows']) for s in stages)} rows, "
      f"{report['wall_s']} s" + (f"; not clean: {', '.join(failed)}" if failed else ""))
PY
