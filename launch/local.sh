#!/usr/bin/env bash
# Runs PSM on this machine: one process, or N local processes x D CPU devices over 127.0.0.1.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/local.sh [--processes N] [--devices D] [--python PY] CONFIG WORKDIR [TRAIN_FLAGS...]

With --processes 1 (default) runs `python -m psm_jax.main` directly. With N > 1 it starts N
processes that form one JAX cluster through jax.distributed on 127.0.0.1 (a free port), each
with D CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=D): the same code path as a
multi-host pod, on one CPU machine. The exit status is the first failing process's.

The persistent compilation cache (JAX_COMPILATION_CACHE_DIR) is safe here and on pods: every
process compiles its steps (or loads them from the cache), then all wait at a barrier before the
first step (psm_jax/distributed.py). Without it, a process that found its program in the cache
reached the first collective minutes before one that compiled, and gloo gives a late peer 30 s.
On CPU only process 0 profits: jax writes entries from process 0 alone, and a CPU cache key holds
the process's own topology, so the other processes always compile. jax's
JAX_SHARE_BINARY_BETWEEN_HOSTS does not help on CPU (it waits on that per-process key, in vain).
See docs/TESTING.md.

Example:
  launch/local.sh --processes 2 --devices 2 configs/demo.py:tiny /tmp/psm_2x2
USAGE
}

n=1 d="" py="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) n=$2; shift 2 ;;
    --devices) d=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --*) echo "error: launch/local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || { echo "error: launch/local.sh: CONFIG and WORKDIR are required (see --help)" >&2; exit 2; }
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "error: launch/local.sh: --processes must be a positive integer, got $n" >&2; exit 2; }
config=$1; workdir=$2; shift 2
if [[ -n "$d" ]]; then export XLA_FLAGS="--xla_force_host_platform_device_count=$d"; fi
if [[ $n == 1 ]]; then
  exec "$py" -m psm_jax.main --config="$config" --workdir="$workdir" "$@"
fi
export JAX_PLATFORMS=cpu
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  "$py" -m psm_jax.main --config="$config" --workdir="$workdir" \
    --coordinator="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || { s=$?; [[ $status == 0 ]] && status=$s; }; done
exit $status
