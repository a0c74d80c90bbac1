"""Reinforce-CAAT's policy (docs/method.md §6): the REINFORCE estimator and the
joint policy on toy problems, the paper reward's drift, the look-ahead reward's
standardisation, the leave-one-out baseline. The train step itself:
tests/methods/test_reinforce_caat.py."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax.caat import nets, reinforce

B, K, H = 6, 5, 8  # samples, bound choices, hidden width


NUM_DRAWS = 20000


@jax.jit  # one compilation instead of one per eager op
def _toy_arrays(seed):
  """A PolicyNet on random features with a non-zero head, and per-(sample,
  bound) rewards L0 (as adversary) and L1 (as anti-adversary)."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  z = jax.random.normal(ks[0], (B, 6))
  net = nets.PolicyNet(hidden=H, num_bounds=K)
  omega = net.init(ks[1], z)["params"]
  # perturb every leaf: the zero-initialised head would hide the hidden layer
  leaves, tree = jax.tree.flatten(omega)
  noise = jax.random.split(ks[2], len(leaves))
  omega = jax.tree.unflatten(
    tree, [l + 0.5 * jax.random.normal(k, l.shape) for l, k in zip(leaves, noise)]
  )
  l0 = jax.random.uniform(ks[3], (B, K), minval=0.5, maxval=3.0)
  l1 = jax.random.uniform(ks[4], (B, K), minval=0.0, maxval=2.0)
  return omega, z, l0, l1


@jax.jit
def _exact_grad(omega, z, l0, l1, entropy_bonus):
  """grad of J+ - J- (+ bonus * mean joint entropy) in closed form, summing
  over all 2 x K strategies instead of sampling; flattened to [P]."""
  net = nets.PolicyNet(hidden=H, num_bounds=K)

  def objective(om):
    logits = net.apply({"params": om}, z)
    p = jax.nn.softmax(logits.reshape(B, -1)).reshape(B, 2, K)
    j_plus = jnp.sum(p[:, 0] * l0, -1)
    j_minus = jnp.sum(p[:, 1] * l1, -1)
    return jnp.mean(j_plus - j_minus + entropy_bonus * reinforce.entropies(logits)["joint"])

  return jax.flatten_util.ravel_pytree(jax.grad(objective)(omega))[0]


VARIANTS = {  # name: (baseline, entropy bonus)
  "paper": ("none", 0.0),
  "batch_mean": ("batch_mean", 0.0),
  "ema": ("ema", 0.0),
  "entropy_bonus": ("none", 0.1),
}


@jax.jit
def _estimates(omega, z, l0, l1):
  """NUM_DRAWS independent estimates of grad J per variant, each [NUM_DRAWS, P];
  'wrong_sign' maximises J+ + J- instead, 'misaligned' pairs each reward with
  the next sample's action (the bugs the test must be able to see)."""
  net = nets.PolicyNet(hidden=H, num_bounds=K)
  ema = {"mean": jnp.asarray(0.7), "count": jnp.asarray(3.0)}  # any action-independent value

  def one(key):
    logits = net.apply({"params": omega}, z)
    d, k = reinforce.sample(jax.random.split(key, B), logits)
    rows = jnp.arange(B)
    r = reinforce.paper_rewards(d, l0[rows, k], l1[rows, k])

    def grad(adv, bonus, d=d, k=k):
      g = jax.grad(lambda om: reinforce.objective(net.apply({"params": om}, z), d, k, adv, bonus))(
        omega
      )
      return jax.flatten_util.ravel_pytree(g)[0]

    out = {
      name: grad(reinforce.advantages(r, baseline, ema=ema, momentum=0.9), bonus)
      for name, (baseline, bonus) in VARIANTS.items()
    }
    out["wrong_sign"] = grad(jnp.abs(r), 0.0)
    out["misaligned"] = grad(jnp.roll(r, 1), 0.0)
    return out

  return jax.vmap(one)(jax.random.split(jax.random.PRNGKey(42), NUM_DRAWS))


def test_reinforce_estimator_is_unbiased():
  """For each baseline / entropy-bonus variant, the mean of many Eq. 34
  estimates equals the exact gradient of the expected reward (J+ - J-, plus
  the bonus times the mean entropy), per coordinate within its standard
  error; an estimator with the anti-adversary term's sign flipped, or with
  rewards paired with another sample's action, is caught."""
  omega, z, l0, l1 = _toy_arrays(0)
  est = jax.tree.map(lambda a: np.asarray(a, np.float64), _estimates(omega, z, l0, l1))

  def zscores(draws, bonus):
    exact = np.asarray(_exact_grad(omega, z, l0, l1, bonus))
    assert np.abs(exact).max() > 1e-2  # a gradient worth estimating
    se = draws.std(0) / np.sqrt(NUM_DRAWS)
    return np.abs(draws.mean(0) - exact) / (se + 1e-7)

  for name, (_, bonus) in VARIANTS.items():
    # ~140 coordinates: the largest |z| of an unbiased estimate is ~3; P(|z| > 5) = 6e-7
    assert zscores(est[name], bonus).max() < 5.0, name
  assert zscores(est["wrong_sign"], 0.0).max() > 10.0
  assert zscores(est["misaligned"], 0.0).max() > 10.0


def test_joint_policy_sampling_and_entropies():
  """The joint categorical: empirical strategy frequencies match softmax of
  the flattened logits, log_prob indexes (direction, bound) in that order,
  and H(s) = H(dir) + H(bound | dir)."""
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 3)) * 2.0
  draws = 40000
  d, k = jax.jit(lambda keys: reinforce.sample(keys, jnp.broadcast_to(logits, (draws, 2, 3))))(
    jax.random.split(jax.random.PRNGKey(1), draws)
  )
  p = np.asarray(jax.nn.softmax(logits.reshape(-1)))
  freq = np.bincount(np.asarray(d * 3 + k), minlength=6) / draws
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / draws).max())
  for dd in range(2):
    for kk in range(3):
      lp = reinforce.log_prob(logits, jnp.array([dd]), jnp.array([kk]))
      np.testing.assert_allclose(np.exp(lp), p[dd * 3 + kk], rtol=1e-5)
  ent = reinforce.entropies(logits)
  pd = p.reshape(2, 3).sum(1)
  np.testing.assert_allclose(ent["joint"], -(p * np.log(p)).sum(), rtol=1e-5)
  np.testing.assert_allclose(ent["direction"], -(pd * np.log(pd)).sum(), rtol=1e-5)
  cond = p.reshape(2, 3) / pd[:, None]
  np.testing.assert_allclose(ent["bound"], -(pd[:, None] * cond * np.log(cond)).sum(), rtol=1e-5)


@jax.jit
def _paper_drift(key):
  """SGD on Eq. 34 (no baseline) for one policy on a fixed feature vector,
  rewards L0 ~ U(0.5, 3) (mean 1.75) and L1 ~ U(0, 2) (mean 1) drawn afresh
  each update. Returns the per-update gap of the mean adversary and
  anti-adversary biases and p(adv), both [T]."""
  net = nets.PolicyNet(hidden=H, num_bounds=K)
  z = jnp.ones((64, 6))
  omega = net.init(jax.random.PRNGKey(0), z)["params"]
  lr = 0.05

  def update(omega, key):
    k_s, k0, k1 = jax.random.split(key, 3)
    logits = net.apply({"params": omega}, z)
    d, k = reinforce.sample(jax.random.split(k_s, 64), logits)
    l0 = jax.random.uniform(k0, (64,), minval=0.5, maxval=3.0)
    l1 = jax.random.uniform(k1, (64,), minval=0.0, maxval=2.0)
    r = reinforce.paper_rewards(d, l0, l1)
    g = jax.grad(lambda om: reinforce.objective(net.apply({"params": om}, z), d, k, r))(omega)
    new = jax.tree.map(lambda w, gw: w + lr * gw, omega, g)  # Eq. 35: ascent
    bias = lambda om: om["strategy"]["bias"].reshape(2, K)
    gap = lambda om: bias(om)[0].sum() - bias(om)[1].sum()
    p_adv = jax.nn.softmax(reinforce.direction_logits(logits))[0, 0]
    return new, (gap(new) - gap(omega), p_adv)

  _, (dgap, p_adv) = jax.lax.scan(update, omega, jax.random.split(key, 300))
  return dgap, p_adv


def test_paper_reward_drifts_to_all_adversary_at_the_predicted_rate():
  """Eq. 34 literally: from the uniform policy the expected change of the
  summed adversary-minus-anti-adversary head biases per SGD step is
  lr * p(adv) p(anti) * 2 (E[L0] + E[L1]) = lr (E[L0] + E[L1]) / 2, and
  p(adv) climbs toward 1."""
  dgap, p_adv = jax.vmap(_paper_drift)(jax.random.split(jax.random.PRNGKey(7), 200))
  first = np.asarray(dgap[:, 0], np.float64)  # every run starts from p(adv) = 1/2
  predicted = 0.05 * (1.75 + 1.0) / 2
  assert abs(first.mean() - predicted) < 4 * first.std() / np.sqrt(len(first))
  p_adv = np.asarray(p_adv).mean(0)
  assert p_adv[0] == pytest.approx(0.5, abs=1e-6)
  assert p_adv[-1] > 0.9 and np.all(np.diff(p_adv[::50]) > 0)


def test_lookahead_standardize():
  r = jnp.array([1.0, 2.0, 3.0, 6.0])
  s = reinforce.standardize(r, None)
  np.testing.assert_allclose(np.std(s), 1.0, rtol=1e-5)
  np.testing.assert_allclose(s * np.std(r), r, rtol=1e-5)  # a scale only
  np.testing.assert_allclose(reinforce.lookahead_rewards(jnp.array([2.0]), 0.1, 4), [0.05])


def test_leave_one_out_baseline_and_ema():
  r = jnp.array([1.0, 2.0, 3.0, 6.0])
  np.testing.assert_allclose(
    reinforce.leave_one_out_baseline(r, None), [11 / 3, 10 / 3, 3.0, 2.0], rtol=1e-6
  )
  ema = reinforce.init_ema()
  assert float(reinforce.ema_value(ema, 0.9)) == 0.0
  ema = reinforce.ema_update(ema, r, 0.9, None)
  np.testing.assert_allclose(reinforce.ema_value(ema, 0.9), 3.0, rtol=1e-6)  # bias-corrected
  ema = reinforce.ema_update(ema, r + 1.0, 0.9, None)
  np.testing.assert_allclose(
    reinforce.ema_value(ema, 0.9), (0.9 * 0.1 * 3 + 0.1 * 4) / 0.19, rtol=1e-6
  )
