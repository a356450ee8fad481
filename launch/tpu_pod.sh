#!/usr/bin/env bash
# Train PSM on a Cloud TPU VM slice: create (or reuse) the slice, install on every worker, run on all.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --tpu NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/DIR [options] [-- TRAIN_FLAGS...]

Creates the TPU VM slice NAME if it does not exist (or reuses it), copies this checkout to every
worker, installs requirements.txt plus jax[tpu] of the pinned version, and starts
`python -m psm_jax.main --distributed` on all workers at once (jax.distributed.initialize()
finds the slice by itself). The workdir must be a GCS path: every worker writes its checkpoint
shards there, and a preempted run resumes from it when started again with the same command.

Options:
  --tpu NAME                 TPU VM name (required)
  --zone ZONE                GCP zone, e.g. us-central2-b (required)
  --config CONFIG            e.g. configs/psm.py:places512 (required)
  --workdir gs://...         run directory on GCS (required)
  --accelerator TYPE         slice type when creating, e.g. v4-32 (default: v4-32)
  --version RUNTIME          TPU VM runtime when creating (default: tpu-ubuntu2204-base)
  --project PROJECT          GCP project (default: gcloud's)
  --spot                     create the slice as spot capacity
  --no-install               skip copying and installing (already done)
  --dry_run                  print the gcloud commands instead of running them
  -h, --help                 this help

Example:
  launch/tpu_pod.sh --tpu psm-v4-32 --zone us-central2-b --config configs/psm.py:places512 \
      --workdir gs://my-bucket/runs/places512 -- \
      --config.data.source=tfds --config.data.tfds_name=places2_512 --config.data.tfds_data_dir=gs://my-bucket/tfds
USAGE
}

tpu="" zone="" config="" workdir="" accel="v4-32" version="tpu-ubuntu2204-base" project="" spot="" install=1 dry=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --accelerator) accel=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --project) project="--project=$2"; shift 2 ;;
    --spot) spot="--spot"; shift ;;
    --no-install) install=0; shift ;;
    --dry_run) dry=echo; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: launch/tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in tpu zone config workdir; do
  [[ -n "${!v}" ]] || { echo "error: launch/tpu_pod.sh: --$v is required (see --help)" >&2; exit 2; }
done
[[ "$workdir" == gs://* ]] || { echo "error: launch/tpu_pod.sh: --workdir must be a gs:// path, got $workdir" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
jax_version=$(sed -n 's/^jax==//p' "$repo/requirements.txt")
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" $project --worker=all)
if ! gcloud compute tpus tpu-vm describe "$tpu" --zone "$zone" $project >/dev/null 2>&1; then
  $dry gcloud compute tpus tpu-vm create "$tpu" --zone "$zone" $project --accelerator-type "$accel" \
    --version "$version" $spot
fi
if [[ $install == 1 ]]; then
  $dry gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu:~/psm-jax" --zone "$zone" $project --worker=all
  $dry "${ssh[@]}" --command "cd ~/psm-jax && python3 -m pip install -q -r requirements.txt 'jax[tpu]==$jax_version' && python3 -m pip install -q --no-deps -e ."
fi
$dry "${ssh[@]}" --command "cd ~/psm-jax && python3 -m psm_jax.main --distributed --config=$config --workdir=$workdir $*"
