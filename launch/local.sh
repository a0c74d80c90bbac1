#!/usr/bin/env bash
# One machine, all its accelerators, one process (jax.pmap / shard_map over
# every local device). Re-runs the job after a preemption-style stop (exit
# status 143: a checkpoint was saved on SIGTERM) so it resumes by itself;
# any other failure stops the loop.
#
#   launch/local.sh configs/cifar10.py runs/cifar10 [--config.key=value ...]
#
# Restrict the GPUs with CUDA_VISIBLE_DEVICES=0,1 as usual. The script
# changes into the repository root, so a relative CONFIG or WORKDIR is taken
# from there.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [extra flags for caat_jax.main]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
cd "$(dirname "$0")/.."

# Let XLA take GPU memory as it needs it rather than 75% up front, so the
# evaluation's larger batches fit beside the training step.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

while true; do
  rc=0
  python -m caat_jax.main --config="$config" --workdir="$workdir" "$@" || rc=$?
  if [ "$rc" -ne 143 ]; then
    exit "$rc"
  fi
  echo "$0: preempted (exit 143); resuming from $workdir/checkpoints" >&2
  sleep 5
done
