#!/usr/bin/env bash
# SLURM launcher: one task per node, all GPUs of the node in that task.
# jax.distributed.initialize() reads the SLURM environment (--distributed).
# Install: pip install -r requirements.txt "jax[cuda12]==0.10.2" && pip install --no-deps -e .
#SBATCH --job-name=psm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --signal=TERM@120
# Usage: sbatch launch/gpu_slurm.sh CONFIG WORKDIR [flags...]
# (--signal=TERM@120 sends SIGTERM two minutes before the time limit; the trainer saves and exits.)
set -euo pipefail
config=${1:?}; workdir=${2:?}; shift 2
srun python -m psm_jax.main --distributed --config="$config" --workdir="$workdir" "$@"
