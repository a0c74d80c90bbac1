#!/usr/bin/env bash
# A Cloud TPU pod slice (several hosts): create the TPU VM, install caat_jax on
# every worker, then run the same command on every worker at once. Each
# worker is one JAX process; jax.distributed.initialize() finds the others
# from the TPU metadata (--config.parallel.distributed=on).
#
#   TPU_NAME=caat ZONE=us-central2-b ACCELERATOR=v4-32 \
#   BUCKET=gs://my-bucket launch/tpu_pod.sh create
#   ... launch/tpu_pod.sh setup
#   ... launch/tpu_pod.sh run configs/cifar10.py [--config.key=value ...]
#   ... launch/tpu_pod.sh delete
#
# `run` writes to $BUCKET/<config name>, or to $WORKDIR when set (one
# directory per run: `python -m caat_jax.experiments emit ... --launcher=tpu_pod`).
# The workdir must be shared by all workers (orbax writes each checkpoint
# collectively, process 0 writes the metrics): use a GCS path,
# $BUCKET/<name>. TFDS data likewise: --config.data.data_dir=$BUCKET/tfds.
# Preemptible / spot slices: after a preemption, recreate the slice and run
# the same `run` command; the job resumes from the newest checkpoint.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE, e.g. us-central2-b}"
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO=${REPO:-https://github.com/OWNER/caat_jax.git}  # where workers clone from
BRANCH=${BRANCH:-main}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

cmd=${1:-}; shift || true
case "$cmd" in
  create)
    # Add --spot (or --preemptible) for cheaper, interruptible capacity.
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "$@"
    ;;
  setup)
    on_all_workers "set -e; [ -d caat_jax ] || git clone -b $BRANCH $REPO caat_jax; \
      cd caat_jax && git pull -q && python3 -m venv .venv && . .venv/bin/activate && \
      pip install -q -U pip && pip install -q -e . 'jax[tpu]'"
    ;;
  run)
    config=${1:?usage: $0 run CONFIG [flags]}; shift
    : "${WORKDIR:=${BUCKET:?set BUCKET=gs://... or WORKDIR (a directory every worker can reach)}/$(basename "$config" .py)}"
    # printf %q keeps any quoting in the extra flags intact through ssh.
    extra=""
    [ $# -eq 0 ] || extra=$(printf ' %q' "$@")
    on_all_workers "cd caat_jax && . .venv/bin/activate && \
      python -m caat_jax.main --config=$config --workdir=$WORKDIR \
        --config.parallel.distributed=on$extra"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 create|setup|run CONFIG [flags]|delete" >&2
    exit 2
    ;;
esac
