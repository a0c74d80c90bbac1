"""AutoAttack's pieces against closed forms and hand-computed values.

For a linear classifier ``z = W x + b`` (inputs away from the [0, 1] box's
faces) the smallest L-inf perturbation that makes class t score at least
as high as the label y is ``(z_y - z_t) / ||w_y - w_t||_1``, so a point is
robust at eps iff the minimum of that over t exceeds eps.

Every attack of the ensemble stays in the [0, 1] box near its faces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import attacks
from caat_jax.attacks import apgd, autoattack, fab, square
from tests.helpers import digits_config, eps_and_subset, keys_for, linear_problem


def test_autoattack_is_exact_on_a_linear_classifier_and_merges_per_point():
  f, x, y, dist = linear_problem(10, n=64, seed=6)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  y = y.at[0].set((y[0] + 1) % 10)  # one point misclassified clean
  opts = {"square": {"num_queries": 50}}
  res, stages = jax.jit(
    lambda x, y, k: autoattack.autoattack(f, x, y, eps=eps, keys=k, options=opts)
  )(x, y, keys_for(len(y)))
  want = dist > eps
  want[0] = False
  np.testing.assert_array_equal(np.asarray(res.robust), want)
  order = ["clean", *autoattack.STANDARD]
  for a, b in zip(order, order[1:]):  # cumulative: never more robust later
    assert np.all(np.asarray(stages[b]) <= np.asarray(stages[a]))
  np.testing.assert_array_equal(stages["square"], res.robust)
  broken = ~want
  broken[0] = False
  assert np.all(np.argmax(np.asarray(f(res.x_adv)), -1)[broken] != np.asarray(y)[broken])
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)


QUICK = {
  "apgd-ce": {"num_iters": 20},
  "apgd-t": {"num_iters": 20, "num_target_classes": 3},
  "fab-t": {"num_iters": 20, "num_target_classes": 3},
  "square": {"num_queries": 200},
}


@pytest.mark.slow
def test_autoattack_on_a_trained_cnn_is_not_weaker_than_pgd20(tmp_path):
  """Trains a small CNN on digits for one epoch, then evaluates the checkpoint
  as ``python -m caat_jax.evaluate`` does (shortened AutoAttack)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from caat_jax import evaluate, train  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "run")
  train.train_and_evaluate(digits_config(method="natural", **{"eval.num_examples": 100}), workdir)
  docs, checks = evaluate.evaluate_checkpoint(
    workdir,
    ["pgd20", "autoattack"],
    num_examples=100,
    aa_options=QUICK,
    sanity=True,
    progress=False,
  )
  pgd20, aa = docs
  assert aa["avg"]["natural"] == pgd20["avg"]["natural"]
  assert aa["avg"]["robust"] >= pgd20["avg"]["robust"]
  assert checks["autoattack_vs_pgd20"]["not_weaker"]
  assert checks["eps_sweep"]["monotone"] and checks["eps_sweep"]["zero_at_large"]
  stages = list(aa["stages"].values())
  assert stages == sorted(stages)  # robust error only grows along the ensemble
  for name in ("pgd20", "autoattack"):
    with open(os.path.join(workdir, f"eval_{name}.json")) as f:
      doc = json.load(f)
    assert doc["attack"] == name and len(doc["per_class"]["robust"]) == 10
    assert doc["verification"]["flag_mismatch"] == 0 and doc["verification"]["num_points"] == 100
    assert doc["verification"]["max_linf"] <= doc["eps"] + 1e-6
    assert isinstance(doc["warnings"], list)
  assert aa["compaction"]["square"]["points"] < 100  # Square saw only the survivors


N, HW, C = 16, 6, 3


def _model(seed=0, classes=4):
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=(HW * HW * C, classes)), jnp.float32)
  return lambda v: jnp.tanh(v.reshape(v.shape[0], -1)) @ w


def _near_faces(seed=1):
  """Images whose pixels sit at or within 0.01 of 0 and 1."""
  rng = np.random.default_rng(seed)
  x = rng.choice([0.0, 0.005, 0.995, 1.0], (N, HW, HW, C)).astype(np.float32)
  return jnp.asarray(x)


def _assert_in_ball_and_box(x_adv, x, eps):
  x_adv, x = np.asarray(x_adv), np.asarray(x)
  assert np.all(x_adv >= 0.0) and np.all(x_adv <= 1.0)
  assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
  return x_adv


@pytest.mark.parametrize("attack", ["pgd", "apgd", "fab", "square"])
def test_every_attack_stays_in_the_box_near_its_faces(attack):
  f = _model()
  x = _near_faces()
  y = jnp.argmax(f(x), -1)
  eps, keys = 0.1, keys_for(N)
  if attack == "pgd":
    out = attacks.pgd(
      f, x, y, eps=jnp.full((N,), eps), step_size=jnp.full((N,), 0.05), num_steps=5, keys=keys
    )
  elif attack == "apgd":
    out = apgd.apgd_run(f, x, y, eps=eps, keys=keys, num_iters=10)[0].x_adv
  elif attack == "fab":  # eps = 0.1 judges, but FAB searches unbounded: check the box only
    out, _ = fab.fab_run(f, x, y, (y + 1) % 4, num_iters=10)
    out = np.asarray(out)
    assert np.all(out >= 0.0) and np.all(out <= 1.0)
    return
  else:
    out = square.square(f, x, y, eps=eps, keys=keys, num_queries=20).x_adv
    # The stripes' start too: pixels at a face cannot move outwards.
    start = np.asarray(square.initial_stripes(x, jnp.full((N,), eps), keys))
    _assert_in_ball_and_box(start, x, eps)
    assert np.all(start[np.asarray(x) == 0.0] >= 0.0)
  out = _assert_in_ball_and_box(out, x, eps)
  if attack in ("pgd", "apgd"):  # sign steps push pixels at the faces onto them
    assert np.any(out == 0.0) and np.any(out == 1.0)
