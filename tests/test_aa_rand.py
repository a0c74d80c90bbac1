"""AutoAttack's version 'rand': EOT in APGD (the gradient averaged over draws
of a randomised model), ``autoattack-rand`` and ``--version=rand``."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from caat_jax import attacks, evaluate
from caat_jax.attacks import apgd
from caat_jax.evaluators import named_attacks
from tests.test_aa_eval import _setup
from tests.test_autoattack import linear_problem

C = 5


def _noisy_tanh_model(seed=0):
  """A randomised 2-layer tanh classifier on 8x8x1 inputs: the hidden units
  are multiplied by a fresh Bernoulli(0.7) mask per draw (dropout at test
  time), so gradients differ from draw to draw."""
  rng = np.random.default_rng(seed)
  w1 = jnp.asarray(rng.normal(size=(64, 16)) / 4, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(16, C)), jnp.float32)

  def fn(x, key):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1)
    mask = jax.random.bernoulli(key, 0.7, h.shape).astype(h.dtype)
    return (h * mask) @ w2

  return fn


def _inputs(n=4, seed=1):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(0.2, 0.8, size=(n, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, C, size=n), jnp.int32)
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n) + 100)
  return x, y, keys


def _ce(logits, y):
  return -jax.nn.log_softmax(logits)[y]


def test_eot_gradient_is_the_mean_over_draws_and_logits_the_last_draw():
  fn = _noisy_tanh_model()
  x, y, keys = _inputs()
  eot = 7
  value, logits, grad = apgd._loss_and_grad(apgd.Randomised(fn), "ce", eot)(x, y, y, keys)
  for b in range(len(y)):  # a slow loop over points and draws, one draw at a time
    draw_keys = [jax.random.fold_in(keys[b], j) for j in range(eot)]
    per_draw = [jax.grad(lambda xi, k=k: _ce(fn(xi[None], k)[0], y[b]))(x[b])
                for k in draw_keys]
    np.testing.assert_allclose(grad[b], np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-6)
    last = fn(x[b][None], draw_keys[-1])[0]
    np.testing.assert_allclose(logits[b], last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value[b], _ce(last, y[b]), rtol=1e-5, atol=1e-6)
  # the draws really differ: one draw's gradient is not the mean
  one = apgd._loss_and_grad(apgd.Randomised(fn), "ce", 1)(x, y, y, keys)[2]
  assert float(jnp.max(jnp.abs(one - grad))) > 1e-3


def test_apgd_first_step_follows_the_eot_gradient_of_its_iteration_keys():
  """The start point's gradient is averaged over the draws keyed by the
  start (fold_in(key, tag + num_iters), then the draw); the first iterate is
  the projected sign step of 2 eps along it."""
  fn = _noisy_tanh_model(seed=3)
  x, y, keys = _inputs(seed=4)
  eps, iters, eot = 0.05, 4, 5
  noise = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, x.shape), jnp.float32)
  traj = apgd.apgd_trajectory(apgd.Randomised(fn), x, y, eps=eps, keys=keys, num_iters=iters,
                              noise=noise, eot_iter=eot)
  x0 = np.asarray(traj["x_start"])
  for b in range(len(y)):
    k = jax.random.fold_in(keys[b], apgd._EOT_TAG + iters)
    g = np.mean([jax.grad(lambda xi, j=j: _ce(fn(xi[None], jax.random.fold_in(k, j))[0],
                                              y[b]))(x0[b]) for j in range(eot)], axis=0)
    want = np.clip(np.clip(x0[b] + 2 * eps * np.sign(g), x[b] - eps, x[b] + eps), 0, 1)
    np.testing.assert_allclose(traj["x_adv"][0, b], want, atol=1e-6)


def test_eot_on_a_deterministic_model_changes_nothing():
  f, x, y, dist = linear_problem(10, n=24, seed=2)
  eps = float(np.quantile(dist, 0.5))
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(len(y)))
  run = lambda e: attacks.apgd_ce(f, x, y, eps=eps, keys=keys, num_iters=10, eot_iter=e)
  a, b = run(1), run(20)
  np.testing.assert_array_equal(a.robust, b.robust)
  np.testing.assert_array_equal(a.x_adv, b.x_adv)
  assert 0 < int(a.robust.sum()) < len(y)
  with pytest.raises(ValueError, match="eot_iter=0; valid"):
    apgd._loss_and_grad(f, "ce", 0)


def test_version_options_and_names():
  assert named_attacks.ensemble_attacks("autoattack-rand") == ("apgd-ce", "apgd-dlr")
  opts = named_attacks.ensemble_options("autoattack-rand", {"apgd-ce": {"num_iters": 6}})
  assert opts == {"apgd-ce": {"num_restarts": 1, "eot_iter": 20, "num_iters": 6},
                  "apgd-dlr": {"num_restarts": 1, "eot_iter": 20}}
  assert named_attacks.ensemble_options("autoattack", {"square": {"num_queries": 3}}) == {
      "square": {"num_queries": 3}}
  named_attacks.check_names(["autoattack-rand"])
  with pytest.raises(ValueError, match="'standard', 'rand'"):
    attacks.autoattack.version_options("random")
  assert evaluate.apply_version(["pgd20", "autoattack"], "rand") == ["pgd20", "autoattack-rand"]
  assert evaluate.apply_version(["autoattack"], "standard") == ["autoattack"]
  with pytest.raises(ValueError) as e:
    evaluate.apply_version(["autoattack"], "rnd")
  assert "--version='rnd'" in str(e.value) and "'rand'" in str(e.value)


def test_autoattack_rand_on_the_evaluators_devices():
  """autoattack-rand = APGD-CE then APGD-DLR on the still-robust points, with
  the fixed-batch attacks' flags on the same keys; its document has both
  stages and no randomised-model check (a deterministic model here)."""
  ev, variables, split, f, x, y, dist = _setup(n=16)
  eps = float(np.quantile(dist, 0.6))
  tiny = {"apgd-ce": {"num_iters": 6}, "apgd-dlr": {"num_iters": 6}}
  keys = named_attacks.aa_keys(np.arange(len(y)))
  res, stages = jax.jit(lambda x, y, k: attacks.run_autoattack(
      f, x, y, eps=eps, keys=k, attacks=attacks.RAND,
      options=named_attacks.ensemble_options("autoattack-rand", tiny)))(x, y, keys)
  docs, out = ev.evaluate(variables, split, ["autoattack-rand"], 10, eps=eps,
                          step_size=eps / 4, batch_size=16, aa_options=tiny)
  np.testing.assert_array_equal(out["autoattack-rand"], np.asarray(res.robust))
  np.testing.assert_array_equal(out["autoattack-rand/apgd-ce"], np.asarray(stages["apgd-ce"]))
  assert 0 < out["autoattack-rand"].sum() < out["natural"].sum()
  (d,) = docs
  assert list(d["stages"]) == ["apgd-ce", "apgd-dlr"]
  assert d["verification"]["flag_mismatch"] == 0 and d["warnings"] == []


@pytest.mark.slow  # APGD-CE and APGD-DLR at the reference's 100 iterations, both paths
def test_bench_times_autoattack_rand_compacted_and_fixed_alike():
  """The benchmark runs autoattack-rand with its version's options on both
  paths: the same points break (APGD-CE then APGD-DLR, one restart each)."""
  from caat_jax import bench  # pylint: disable=import-outside-toplevel
  from tests.test_bench import _cfg  # pylint: disable=import-outside-toplevel
  got = {comp: bench.run_attack_bench(_cfg("pgd_at"), ["autoattack-rand"], ["small_cnn"],
                                      batch_size=8, compact=comp, eps=0.3,
                                      num_points=16)["rows"][0] for comp in (True, False)}
  assert got[True]["broken"] == got[False]["broken"] > 0
  assert got[False]["slots"] == 2 * 16  # two attacks, one run each, every point
  assert got[True]["slots"] <= got[False]["slots"]
