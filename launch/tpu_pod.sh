#!/usr/bin/env bash
# Runs PSM training on every host of a Cloud TPU pod slice. jax.distributed.initialize()
# auto-detects the slice (--distributed). Install first on all hosts:
#   pip install -r requirements.txt "jax[tpu]==0.10.2" && pip install --no-deps -e .
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/psm.py:places512 gs://bucket/runs/p512 \
#       --config.data.source=tfds --config.data.tfds_name=places2_512 --config.data.tfds_data_dir=gs://bucket/tfds
set -euo pipefail
tpu=${1:?}; zone=${2:?}; config=${3:?}; workdir=${4:?}; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd psm-jax && python -m psm_jax.main --distributed --config=$config --workdir=$workdir $*"
