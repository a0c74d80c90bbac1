"""Section 5's anti-regularisation, measured on trained runs (issue 17).

  python docs/results/noise_diagnostics.py RUN_DIR [RUN_DIR ...] [--out=FILE.json]

For each run (a directory with checkpoints/, e.g. a row of
``python -m caat_jax.experiments run digits_table6``), on the clean test
points:
  * the per-class mean L1 norm of the CE input gradient at x (Eqs. 40-41:
    an anti-adversary flattens the loss around its sample; adversaries
    sharpen robustness around theirs), and the class average;
  * PGD-20 robust error split by whether the test point's nearest training
    image (pixel L2) carries a corrupted label, and whether that corrupted
    neighbour's noisy label is the one the attack reaches. If
    anti-adversaries of corrupted samples (CE descent toward the wrong
    label) shrink the robust region of nearby clean points of the true
    class, test points next to a corrupted training image lose robustness
    more under CAAT than under TRADES.
Prints one table and writes the numbers as JSON (default: stdout only).
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from caat_jax import evaluate, losses  # noqa: E402  pylint: disable=wrong-import-position


def measure(run_dir: str) -> dict:
  run, variables, step = evaluate.load_run(run_dir)
  c, ds = run.config, run.dataset
  host = run.parallel.fetch(variables)  # one host copy of the classifier
  model = run.eval_model
  x = jnp.asarray(ds.test.images, jnp.float32)
  if x.max() > 1.5:
    x = x / 255.0
  y = jnp.asarray(ds.test.labels)

  def loss(xx, yy):
    return losses.cross_entropy(model.apply(host, xx, train=False), yy).sum()

  g = np.asarray(jax.grad(loss)(x, y)).reshape(len(x), -1)
  gnorm = np.abs(g).sum(-1)
  out = run.evaluator.outcomes(
    variables,
    ds.test,
    ("pgd20",),
    eps=c.eval.eps,
    step_size=c.eval.step_size,
    batch_size=c.eval.batch_size,
  )
  robust, natural, label = out["pgd20"], out["natural"], out["label"]
  train = ds.train
  tx = np.asarray(train.images, np.float32).reshape(len(train), -1)
  if tx.max() > 1.5:
    tx = tx / 255.0
  te = np.asarray(x).reshape(len(x), -1)
  d2 = (te**2).sum(1)[:, None] - 2 * te @ tx.T + (tx**2).sum(1)[None]
  nearest = d2.argmin(1)
  near_corrupted = np.asarray(train.corrupted)[nearest]
  classes = int(ds.num_classes)
  per_class = [float(gnorm[np.asarray(label) == k].mean()) for k in range(classes)]

  def err(mask):
    return float(100 * (1 - robust[mask].mean())) if mask.any() else float("nan")

  return {
    "run": run_dir,
    "method": c.method,
    "step": int(step),
    "grad_l1_per_class": per_class,
    "grad_l1_avg": float(np.mean(per_class)),
    "robust_error_near_corrupted": err(near_corrupted),
    "robust_error_near_clean": err(~near_corrupted),
    "natural_error": float(100 * (1 - natural.mean())),
    "robust_error": float(100 * (1 - robust.mean())),
    "test_points_near_corrupted": int(near_corrupted.sum()),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("runs", nargs="+")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  rows = [measure(r) for r in args.runs]
  print(f"{'run':60s} {'grad L1':>8s} {'rob err':>8s} {'near corr.':>10s} {'near clean':>10s}")
  for r in rows:
    print(
      f"{r['run'][-60:]:60s} {r['grad_l1_avg']:8.3f} {r['robust_error']:8.2f} "
      f"{r['robust_error_near_corrupted']:10.2f} {r['robust_error_near_clean']:10.2f}"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
