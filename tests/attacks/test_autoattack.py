"""AutoAttack's pieces against closed forms and hand-computed values.

For a linear classifier ``z = W x + b`` (inputs away from the [0, 1] box's
faces) the smallest L-inf perturbation that makes class t score at least
as high as the label y is ``(z_y - z_t) / ||w_y - w_t||_1``, so a point is
robust at eps iff the minimum of that over t exceeds eps.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.attacks import apgd, autoattack, fab
from caat_jax.attacks.square import p_schedule, square, window_sizes

EPS_MARGIN = 0.05  # points whose distance is within 5% of eps are left out


def linear_problem(num_classes: int, *, n: int = 128, seed: int = 0, disjoint: bool = False):
  """A linear classifier on 8x8x1 inputs in [0.3, 0.7] labelled by itself.

  ``disjoint``: each class's weights live on their own pixels, so one
  perturbation (down on y's pixels, up on everyone else's) is optimal
  against every class at once.
  Returns (logits_fn, x [n, 8, 8, 1], y [n], dist [n] the exact minimal
  L-inf perturbation).
  """
  rng = np.random.default_rng(seed)
  d = 64
  w = rng.normal(size=(d, num_classes))
  if disjoint:
    block = d // num_classes
    mask = np.zeros((d, num_classes))
    for c in range(num_classes):
      mask[c * block:(c + 1) * block, c] = 1.0
    w = w * mask
  b = 0.5 * rng.normal(size=num_classes)
  x = rng.uniform(0.3, 0.7, size=(n, d))
  z = x @ w + b
  y = np.argmax(z, -1)
  gaps = (z[np.arange(n), y][:, None] - z) / np.maximum(_l1_diffs(w, y), 1e-12)
  gaps[np.arange(n), y] = np.inf
  dist = gaps.min(-1)
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w32 + b32
  return logits_fn, jnp.asarray(x.reshape(n, 8, 8, 1), jnp.float32), jnp.asarray(y), dist


def _l1_diffs(w, y):
  """||w_y - w_t||_1 for every point and class; [n, C]."""
  return np.abs(w[:, y][:, :, None] - w[:, None, :]).sum(0)


def eps_and_subset(dist, x, y, quantile=0.5):
  """An eps at a quantile of the distances; drops the points too close to it."""
  eps = float(np.quantile(dist, quantile))
  keep = np.abs(dist - eps) > EPS_MARGIN * eps
  return eps, x[keep], y[keep], dist[keep]


def keys_for(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# --- losses ------------------------------------------------------------------


def test_dlr_against_hand_computed_values():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.5], [1.0, 3.0, 2.0, 0.5]])
  # sorted: 3, 2, 1, 0.5. Label 1 is the argmax: -(3 - 2) / (3 - 1) = -0.5.
  # Label 0 is not: -(1 - 3) / (3 - 1) = 1.
  np.testing.assert_allclose(losses.dlr(logits, jnp.array([1, 0])), [-0.5, 1.0], rtol=1e-6)
  # Targeted, y = 1, t = 2: -(3 - 2) / (3 - (1 + 0.5) / 2) = -1 / 2.25;
  # y = 0, t = 3: -(1 - 0.5) / 2.25.
  got = losses.targeted_dlr(logits, jnp.array([1, 0]), jnp.array([2, 3]))
  np.testing.assert_allclose(got, [-1.0 / 2.25, -0.5 / 2.25], rtol=1e-6)


def test_dlr_is_shift_and_scale_invariant():
  z = jax.random.normal(jax.random.PRNGKey(0), (5, 10))
  y, t = jnp.arange(5), jnp.arange(5) + 3
  np.testing.assert_allclose(losses.dlr(3.0 * z + 7.0, y), losses.dlr(z, y), rtol=1e-5)
  np.testing.assert_allclose(losses.targeted_dlr(3.0 * z - 2.0, y, t),
                             losses.targeted_dlr(z, y, t), rtol=1e-5)


# --- APGD --------------------------------------------------------------------


def test_step_size_checkpoints_match_the_reference():
  after, window = apgd.checkpoints(100)
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  assert after == [22, 41, 57, 70, 80, 87, 93, 99]
  assert window == [22, 19, 16, 13, 10, 7, 6, 6]
  # The reference's counter logic, independently: counter3 counts up to k.
  for n in (10, 37, 100, 250):
    k, k_min, decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    expect, counter = [], 0
    for i in range(n):
      counter += 1
      if counter == k:
        expect.append(i + 1)
        k, counter = max(k - decr, k_min), 0
    assert apgd.checkpoints(n)[0] == expect, n


@pytest.mark.parametrize("num_classes,disjoint", [(2, False), (10, True)])
def test_apgd_ce_reaches_the_exact_robust_accuracy(num_classes, disjoint):
  f, x, y, dist = linear_problem(num_classes, disjoint=disjoint)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  res = jax.jit(lambda x, y, k: apgd.apgd_ce(f, x, y, eps=eps, keys=k))(x, y, keys_for(len(y)))
  np.testing.assert_array_equal(np.asarray(res.robust), dist > eps)
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)
  broken = ~np.asarray(res.robust)
  assert np.all(np.argmax(np.asarray(f(res.x_adv)), -1)[broken] != np.asarray(y)[broken])


@pytest.mark.parametrize("num_classes,disjoint", [(2, False), (10, False)])
def test_apgd_t_reaches_the_exact_robust_accuracy(num_classes, disjoint):
  f, x, y, dist = linear_problem(num_classes, disjoint=disjoint, seed=1)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  res = jax.jit(lambda x, y, k: apgd.apgd_targeted(f, x, y, eps=eps, keys=k))(
      x, y, keys_for(len(y)))
  np.testing.assert_array_equal(np.asarray(res.robust), dist > eps)
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)


def test_apgd_is_per_sample_and_deterministic():
  f, x, y, dist = linear_problem(10, n=32, seed=2)
  eps = float(np.quantile(dist, 0.5))
  keys = keys_for(32, seed=3)
  run = jax.jit(lambda x, y, k: apgd.apgd_ce(f, x, y, eps=eps, keys=k, num_iters=20))
  full, again, half = run(x, y, keys), run(x, y, keys), run(x[:16], y[:16], keys[:16])
  np.testing.assert_array_equal(full.x_adv, again.x_adv)
  np.testing.assert_array_equal(full.x_adv[:16], half.x_adv)
  np.testing.assert_array_equal(full.robust[:16], half.robust)


# --- FAB-T -------------------------------------------------------------------


def test_linf_projection_onto_a_hyperplane_in_the_box():
  """Against the definition: feasible, and no smaller norm reaches the plane."""
  rng = np.random.default_rng(0)
  n, d = 64, 20
  t = rng.uniform(0.0, 1.0, (n, d))
  w = rng.normal(size=(n, d)) * (rng.uniform(size=(n, d)) > 0.2)
  b = np.sum(w * rng.uniform(0.0, 1.0, (n, d)), -1)  # a plane that meets the box
  step = np.asarray(fab.project_linf(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
  z = t + step
  np.testing.assert_allclose(np.sum(w * z, -1), b, atol=1e-5)  # float32
  assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
  # The best a norm of lam can do is move each coordinate lam towards the plane.
  lam = 0.99 * np.abs(step).max(-1, keepdims=True)
  c = np.sum(w * t, -1) - b
  toward = -np.sign(c)[:, None] * np.sign(w)
  best = t + np.clip(toward * lam, -t, 1 - t)
  assert np.all(np.abs(np.sum(w * best, -1) - b) > 0)
  assert np.all(np.sign(np.sum(w * best, -1) - b) == np.sign(c))


@pytest.mark.parametrize("num_classes", [2, 10])
def test_fab_t_finds_the_minimal_perturbation(num_classes):
  f, x, y, dist = linear_problem(num_classes, n=64, seed=4)
  # eps = 0: nothing counts as broken, so every target runs and ``norm`` is
  # the smallest perturbation over all of them.
  res, norm = jax.jit(lambda x, y, k: fab.fab_targeted(f, x, y, eps=0.0, keys=k))(
      x, y, keys_for(len(y)))
  norm = np.asarray(norm)
  # FAB's overshoot (eta = 1.05) then backward step (beta = 0.9) settle about
  # 0.5% above the boundary.
  np.testing.assert_allclose(norm, dist, rtol=0.01)
  assert np.all(norm >= dist * (1 - 1e-4))
  np.testing.assert_array_equal(res.robust, np.ones(len(y), bool))  # eps = 0
  # With eps between the distances, robust = dist > eps.
  eps, x2, y2, dist2 = eps_and_subset(dist, x, y)
  res2, _ = fab.fab_targeted(f, x2, y2, eps=eps, keys=keys_for(len(y2)))
  np.testing.assert_array_equal(np.asarray(res2.robust), dist2 > eps)


# --- Square ------------------------------------------------------------------


def _no_gradient(logits_fn):
  """``logits_fn`` that fails if anything differentiates it."""
  @jax.custom_vjp
  def g(v):
    return logits_fn(v)

  def fwd(v):
    return g(v), None

  def bwd(_, __):
    raise AssertionError("Square Attack must not use gradients")

  g.defvjp(fwd, bwd)
  return g


def test_p_schedule_matches_the_reference():
  got = [p_schedule(i) for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001,
                                        2000, 2001, 4000, 4001, 6000, 6001, 8000, 8001)]
  want = [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125,
          0.0125, 0.00625, 0.00625, 0.003125, 0.003125, 0.0015625]
  np.testing.assert_allclose(got, want)
  assert window_sizes((32, 32))[:3] == [29, 20, 14]


def test_square_lowers_accuracy_without_gradients():
  f, x, y, dist = linear_problem(2, seed=5)
  # Most points breakable: random search needs no exact vertex for them.
  eps, x, y, dist = eps_and_subset(dist, x, y, quantile=0.9)
  res = jax.jit(lambda x, y, k: square(_no_gradient(f), x, y, eps=eps, keys=k,
                                              num_queries=1500))(x, y, keys_for(len(y)))
  robust = np.asarray(res.robust)
  assert robust.mean() < 0.75, robust.mean()  # clean accuracy is 1
  assert np.all(robust[dist > eps])  # never below the true robust accuracy
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)
  broken = ~robust
  assert np.all(np.argmax(np.asarray(f(res.x_adv)), -1)[broken] != np.asarray(y)[broken])


# --- the ensemble ------------------------------------------------------------


def test_autoattack_is_exact_on_a_linear_classifier_and_merges_per_point():
  f, x, y, dist = linear_problem(10, n=64, seed=6)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  y = y.at[0].set((y[0] + 1) % 10)  # one point misclassified clean
  opts = {"square": {"num_queries": 50}}
  res, stages = jax.jit(lambda x, y, k: autoattack.autoattack(
      f, x, y, eps=eps, keys=k, options=opts))(x, y, keys_for(len(y)))
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


# --- a trained CNN and the command line ----------------------------------------

QUICK = {"apgd-ce": {"num_iters": 20}, "apgd-t": {"num_iters": 20, "num_target_classes": 3},
         "fab-t": {"num_iters": 20, "num_target_classes": 3}, "square": {"num_queries": 200}}


@pytest.mark.slow
def test_autoattack_on_a_trained_cnn_is_not_weaker_than_pgd20(tmp_path):
  """Trains a small CNN on digits for one epoch, then evaluates the checkpoint
  as ``python -m caat_jax.evaluate`` does (shortened AutoAttack)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from caat_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  from tests.helpers import digits_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(digits_config(method="natural", **{"eval.num_examples": 100}),
                           workdir)
  docs, checks = evaluate.evaluate_checkpoint(
      workdir, ["pgd20", "autoattack"], num_examples=100, aa_options=QUICK,
      sanity=True, progress=False)
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
