#!/usr/bin/env bash
# Simulates a multi-host run on one CPU machine: N processes x D devices, talking over 127.0.0.1.
# Usage: launch/local_multiprocess.sh WORKDIR [N=2] [D=2] [CONFIG=configs/demo.py:tiny] [extra flags...]
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [N] [D] [CONFIG] [flags...]}
n=${2:-2}; d=${3:-2}; config=${4:-configs/demo.py:tiny}
shift $(( $# < 4 ? $# : 4 ))
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
    python -m psm_jax.main --config="$config" --workdir="$workdir" \
      --coordinator="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
