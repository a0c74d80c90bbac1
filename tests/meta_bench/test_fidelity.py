"""meta_bench's fidelity metrics, each against a hand computation, and the
probe on a toy problem whose exact and first-order answers are known in
closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import meta
from caat_jax.meta_bench import capture, fidelity, probe


def test_gradient_metrics_by_hand():
  assert fidelity.cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
  assert fidelity.cosine([-2.0, 0.0], [1.0, 0.0]) == -1.0
  # |(1, 1) - (1, 0)| / |(1, 0)| = 1; |(3, 4) - (0, 0)|: undefined
  assert fidelity.relative_error([1.0, 1.0], [1.0, 0.0]) == 1.0
  assert math.isnan(fidelity.relative_error([3.0, 4.0], [0.0, 0.0]))
  # <(2, 1), (1, 0)> / 1 = 2; half the exact gradient: 0.5
  assert fidelity.effective_lr_ratio([2.0, 1.0], [1.0, 0.0]) == 2.0
  assert fidelity.effective_lr_ratio([0.5, 1.5], [1.0, 3.0]) == 0.5
  # pytrees of any shape are flattened alike
  assert fidelity.cosine(np.eye(2), np.eye(2)) == pytest.approx(1.0)


def test_rank_metrics_by_hand():
  np.testing.assert_array_equal(fidelity.ranks([3.0, 1.0, 1.0, 2.0]), [4.0, 1.5, 1.5, 3.0])
  # ranks (1 2 3 4) vs (1 2 4 3): rho = 1 - 6 * 2 / (4 * 15) = 0.8
  assert fidelity.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
  assert fidelity.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
  # c_adv - c_anti per sample: (1, -1, 2) vs (3, 1, -1): signs agree on 1 of 3
  est, ex = np.array([[2, 1], [0, 1], [3, 1]]), np.array([[4, 1], [2, 1], [0, 1]])
  np.testing.assert_array_equal(fidelity.direction_score(est), [1, -1, 2])
  assert fidelity.sign_agreement(fidelity.direction_score(est), fidelity.direction_score(ex)) == (
    pytest.approx(1 / 3)
  )
  # 20 entries, top 10% = 2: {19, 18} vs {19, 0}: overlap 1 of 2
  a = np.arange(20.0)
  b = a.copy()
  b[0], b[18] = 100.0, -1.0
  assert fidelity.top_overlap(a, b, 0.1) == 0.5
  assert fidelity.top_overlap(a, a, 0.1) == 1.0


def test_auroc_and_bias_by_hand():
  # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of 4 pairs ordered
  assert fidelity.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
  assert fidelity.auroc([0.5, 0.5], [True, False]) == 0.5  # a tie counts one half
  assert math.isnan(fidelity.auroc([0.1, 0.2], [False, False]))
  # samples (1, 0), (3, 0) of exact (1, 0): mean (2, 0), bias 1, std sqrt(2 / 1)
  bias, std = fidelity.bias_and_std(np.array([[1.0, 0.0], [3.0, 0.0]]), [1.0, 0.0])
  assert (bias, std) == (pytest.approx(1.0), pytest.approx(math.sqrt(2.0)))


def _toy(w0=1.0):
  """Scalar W = 0, per-sample losses 0.5 (W - a_i)^2, SGD look-ahead lr 0.5,
  meta loss 0.5 (W - 1)^2, weights = Omega. g = mean_i (W - a_i) = -1.25,
  W_hat = 0.625, v = W_hat - 1 = -0.375; exact d meta / d w_i =
  -(lr / B) v (W - a_i) = -0.046875 a_i. First order takes v at W: -1, so its
  estimate is the exact one times -1 / -0.375 = 8 / 3."""
  a = jnp.array([1.0, 2.0, 3.0, -1.0])
  problem = meta.MetaProblem(
    weights_fn=lambda om: om,
    per_sample_fn=lambda p: (0.5 * (p - a)[:, None] ** 2, None),
    lookahead_fn=meta.sgd_lookahead(0.5),
    meta_loss_fn=lambda p: 0.5 * (p - 1.0) ** 2,
    lr=0.5,
  )
  return capture.Captured(
    problem,
    jnp.full((4, 1), w0),
    jnp.zeros(()),
    np.array([False, False, True, False]),
    0,
    "toy",
    None,
    None,
  )


def test_probe_on_a_toy_problem_with_known_answers():
  cap = _toy()
  rows = probe.probe_checkpoint(cap, ["jvp", "first_order"], _meta_cfg(), keys=[])
  got = {r["variant"]: r for r in rows}
  assert list(got) == ["nested_grad", "jvp", "first_order"]
  exact = -0.046875 * np.array([1.0, 2.0, 3.0, -1.0])
  assert got["nested_grad"]["grad_norm"] == pytest.approx(np.linalg.norm(exact), rel=1e-6)
  for name in ("nested_grad", "jvp"):
    assert got[name]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert got[name]["rel_error"] < 1e-6
  fo = got["first_order"]
  assert fo["cosine"] == pytest.approx(1.0, abs=1e-6)
  assert fo["eff_lr_ratio"] == pytest.approx(8 / 3, rel=1e-5)
  assert fo["rel_error"] == pytest.approx(5 / 3, rel=1e-5)
  assert fo["grad_norm"] == pytest.approx(8 / 3 * np.linalg.norm(exact), rel=1e-5)
  # the cotangent is the Omega-gradient here: same order, same signs
  assert fo["spearman_c"] == pytest.approx(1.0)
  assert (fo["sign_agreement"], fo["top10_overlap"]) == (1.0, 1.0)
  # corrupted = sample 2 (a = 3): its exact c is the most negative of four,
  # so the score c ranks it below all three clean ones: AUROC 0
  assert fo["auroc_noisy"] == 0.0 == fo["auroc_noisy_exact"]
  for r in rows:
    assert r["meta_flops"] is None or r["meta_flops"] > 0
    assert r["meta_s"] > 0 and r["meta_compile_s"] > 0
    assert math.isnan(r["bias"])  # deterministic variants: no spread


def _meta_cfg():
  from tests.helpers import digits_config  # pylint: disable=import-outside-toplevel

  return digits_config(method="meta_caat").meta


def test_stochastic_variants_get_a_key_each_and_their_spread():
  """A stochastic variant s(key) * nested_grad, s ~ U[1, 2): every key's
  cosine is 1, its eff lr the mean of s, bias |mean s - 1|, std the
  sample std of s (all relative to |g*|)."""
  nested = meta.get("nested_grad").make()

  def scaled(problem, omega, params):
    g, info = nested(problem, omega, params)
    s = 1.0 + jax.random.uniform(problem.key)
    return jax.tree.map(lambda x: s * x, g), info

  meta.VARIANTS["_scaled_test"] = meta.Variant(
    "_scaled_test", make=lambda: scaled, cost=lambda c: 0.0, stochastic=True
  )
  try:
    keys = list(jax.random.split(jax.random.PRNGKey(3), 5))
    rows = probe.probe_checkpoint(_toy(), ["_scaled_test"], _meta_cfg(), keys=keys)
  finally:
    del meta.VARIANTS["_scaled_test"]
  s = np.array([1.0 + float(jax.random.uniform(k)) for k in keys])
  r = rows[1]
  assert r["stochastic"] and r["num_keys"] == 5
  assert r["cosine"] == pytest.approx(1.0, abs=1e-6)
  assert r["eff_lr_ratio"] == pytest.approx(s.mean(), rel=1e-5)
  assert r["bias"] == pytest.approx(abs(s.mean() - 1.0), rel=1e-4)
  assert r["std"] == pytest.approx(s.std(ddof=1), rel=1e-4)
