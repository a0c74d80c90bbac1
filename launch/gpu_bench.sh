#!/usr/bin/env bash
# The accelerator figures of docs/benchmarks.md in one command: the train-step benchmark
# of PreAct-ResNet-18 (CIFAR-10 shapes), the attacks' worst case on it on
# both paths (compacted and fixed batches), and, given a trained digits
# PGD-AT workdir, the attacks on that model on both paths and both packings.
# About 7 minutes on one H200; each part is cut off after its time limit
# (rows print as they end, so a part cut off keeps what it measured).
#
#   launch/gpu_bench.sh OUT_DIR [DIGITS_PGD_AT_WORKDIR]
#
# A digits PGD-AT workdir: python -m caat_jax.main --config=configs/digits.py
#   --config.method=pgd_at --config.suite='()' --workdir=runs/digits_pgd_at
# Run from anywhere; JSON and the log land in OUT_DIR.
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [DIGITS_PGD_AT_WORKDIR]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd); trained=${2:+$(cd "$2" && pwd)}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/gpu_bench.log") 2>&1
part() { echo "=== $1 ($(date -u +%H:%M:%S))"; }

part "train steps"
timeout 300 python -m caat_jax.bench --config=configs/cifar10.py --out="$out/train.json" \
  --config.bench.methods='("pgd_at","natural","trades","meta_caat","reinforce_caat","frl","meta_caat --config.meta.variant=nested_grad","meta_caat --config.meta.variant=first_order")'
pre=(--config=configs/cifar10.py --skip_train_bench --attack_models=preact_resnet18
     --attack_batch=16 --attack_repeats=2)
part "attacks, worst case, compacted"
timeout 300 python -m caat_jax.bench "${pre[@]}" --out="$out/attacks_compact.json" \
  --attacks=pgd20,apgd-ce,apgd-t,fab-t,square,autoattack
part "attacks, worst case, fixed batches"
timeout 300 python -m caat_jax.bench "${pre[@]}" --out="$out/attacks_fixed.json" --no_compact \
  --attacks=apgd-ce,apgd-t,fab-t,square,autoattack
if [ -n "$trained" ]; then
  dig=(--config=configs/digits.py --skip_train_bench --attack_model_from="$trained"
       --attack_points=128 --attack_batch=64 --attack_eps=0.2 --attack_repeats=2
       --attacks=apgd-ce,apgd-t,fab-t,square,autoattack)
  for how in calls slots fixed; do
    flag=--attack_pack=$how; [ "$how" = fixed ] && flag=--no_compact
    part "attacks, trained digits PGD-AT, $how"
    timeout 200 python -m caat_jax.bench "${dig[@]}" "$flag" --out="$out/digits_$how.json"
  done
fi
part end
