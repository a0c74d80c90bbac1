"""Estimated cost of an experiment: the pass-count model (docs/method.md §11) times the
model's FLOPs per forward, over a sustained throughput.

An estimate, not a measurement. Training: each method's ``cost(config)``
(forward-pass units F per example per step, the same numbers the benchmark
prints as its bound) x epochs x training examples; evaluation: PGD-k costs
(2k + 1) F per test point, AutoAttack about ``AUTOATTACK_F`` (half of its
worst case: most points of a robust model fall to the first attacks).
FLOPs per forward are XLA's cost analysis of each model's inference
function (``jax.jit(model.apply).lower(...).cost_analysis()``).

Throughputs: one NVIDIA H200 is *measured* (``H200_BENCH``: the PGD-AT row
of docs/benchmarks.md, PreAct-ResNet-18 at CIFAR-10 shapes, batch 128,
float32, which sustains about 110 TFLOP/s; the Meta-CAAT row of the same
table gives 106, so the figure holds across methods). Larger models
(WRN-34-10, ResNet-50) are assumed to sustain the same FLOP/s, which their
bigger kernels should if anything beat. The v4-32 slice is an assumption
(no TPU was measured). The CPU figure is measured on two cores.
"""

from collections.abc import Iterable

from caat_jax import methods
from caat_jax.experiments.registry import Experiment

# FLOPs of one forward pass of one example (XLA cost analysis, 10 classes).
FORWARD_FLOPS = {
  ("small_cnn", "digits"): 0.94e6,  # width 16, 8x8x1
  ("preact_resnet18", "cifar10"): 0.97e9,
  ("preact_resnet18", "svhn"): 0.97e9,
  ("wrn28_10", "cifar10"): 9.5e9,
  ("wrn34_10", "cifar10"): 11.6e9,
  ("resnet50", "imagenet2012"): 7.9e9,
}
# Training-split sizes after the clean meta hold-out, and test-split sizes.
TRAIN_SIZE = {"cifar10": 47_000, "svhn": 70_257, "digits": 1_337, "imagenet2012": 1_281_167}
TEST_SIZE = {"cifar10": 10_000, "svhn": 26_032, "digits": 360, "imagenet2012": 50_000}
AUTOATTACK_F = 5_000.0
# Measured on one H200 (docs/benchmarks.md, `python -m caat_jax.bench
# --config=configs/cifar10.py`): PGD-AT with a 10-step attack is 23 F per
# example (2 x 10 attack passes + 3 for the training step), run at 4,985
# img/s on PreAct-ResNet-18 (FORWARD_FLOPS below), float32.
H200_BENCH = {"forward_units": 23.0, "images_per_s": 4985.0}  # the PGD-AT row
# A v4-32 slice (16 chips) at an *assumed* 8 TFLOP/s per chip: a global batch
# of 128 leaves each core only 4 examples. The digits figure: two CPU cores,
# measured on TRADES digits (about 13 GFLOP/s), plus about 30 s of
# compilation and start-up per run.
THROUGHPUT = {
  "H200": H200_BENCH["forward_units"]
  * H200_BENCH["images_per_s"]
  * FORWARD_FLOPS[("preact_resnet18", "cifar10")],
  "v4-32": 16 * 8e12,
}
CPU_FLOPS, CPU_RUN_OVERHEAD_S = 13e9, 30.0


def _eval_f(attack: str) -> float:
  if attack.startswith("pgd"):
    return 2.0 * int(attack[3:]) + 1.0
  return AUTOATTACK_F


def run_flops(config, attacks: Iterable[str], eval_examples: int = 0) -> float:
  """FLOPs of one run: training plus the final evaluations."""
  flops = FORWARD_FLOPS.get((config.model, config.data.name))
  if flops is None:
    raise KeyError(f"no FLOPs estimate for model {config.model!r} on {config.data.name!r}")
  train_f = (
    methods.get(config.method).cost(config) * config.num_epochs * TRAIN_SIZE[config.data.name]
  )
  test = eval_examples or TEST_SIZE[config.data.name]
  eval_f = sum(_eval_f(a) for a in attacks) * test
  return (train_f + eval_f) * flops


def estimate(exp: Experiment, seeds: int | None = None) -> dict[str, float]:
  """{'H200': hours, 'v4-32': hours, 'cpu': hours, 'runs': n} for the whole experiment."""
  from caat_jax.experiments import runner  # pylint: disable=import-outside-toplevel

  n = exp.seeds if seeds is None else seeds
  total, runs = 0.0, 0
  for spec in runner.plan(exp, "/unused", seeds=1):
    total += run_flops(runner.build_config(spec), exp.attacks, exp.eval_examples) * n
    runs += n
  out = {name: total / tput / 3600 for name, tput in THROUGHPUT.items()}
  out["cpu"] = (total / CPU_FLOPS + runs * CPU_RUN_OVERHEAD_S) / 3600
  out["runs"] = runs
  return out


def listing(experiments: Iterable[Experiment]) -> str:
  """What ``experiments list`` prints."""
  lines = [
    "Estimated cost: the pass-count model (docs/method.md §11) x FLOPs per forward, at "
    f"{THROUGHPUT['H200'] / 1e12:.0f} TFLOP/s on one H200 (measured: PGD-AT, PreAct-ResNet-18, "
    f"float32) and an assumed {THROUGHPUT['v4-32'] / 1e12:.0f} TFLOP/s on a v4-32 slice "
    "(calibrate for your device with python -m caat_jax.bench).",
    "",
  ]
  for exp in experiments:
    head = f"{exp.name}: {exp.title}"
    if exp.unavailable:
      lines += [head, f"  not runnable yet: {exp.unavailable}", ""]
      continue
    try:
      c = estimate(exp)
      if exp.name.startswith("digits"):
        where = f"~{c['cpu']:.1f} h on 2 CPU cores"
      else:
        where = f"~{c['H200']:.1f} GPU-h on one H200, ~{c['v4-32']:.0f} h on a v4-32"
      cost_text = f"{int(c['runs'])} runs, {where}"
    except KeyError as e:
      cost_text = f"cost unknown ({e.args[0]})"
    lines.append(head)
    lines.append(
      f"  seeds {exp.seeds}, evaluation {', '.join(exp.attacks)}"
      + (f" on {exp.eval_examples} test points" if exp.eval_examples else "")
      + f", paper {exp.table or '-'}; {cost_text}"
    )
    lines.append("  rows: " + ", ".join(r.name for r in exp.rows))
    if exp.note:
      lines.append(f"  note: {exp.note}")
    lines.append("")
  return "\n".join(lines)
