"""Reinforce-CAAT (SPEC 6): the REINFORCE estimator and the joint policy on
toy problems, the paper reward's drift, the fused attack, configs, and N
devices = 1 with the policy actually updating. The train step itself:
tests/test_reinforce_step.py."""

import importlib
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import attacks, config_lib, losses
from caat_jax.caat import reinforce, nets
from caat_jax.methods import base, perturb
from tests.helpers import ROOT, digits_config
from tests.test_parallel import check_devices_agree

# -- the estimator on a toy problem ------------------------------------------

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
  omega = jax.tree.unflatten(tree, [l + 0.5 * jax.random.normal(k, l.shape)
                                    for l, k in zip(leaves, noise)])
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
    "paper": ("none", 0.0), "batch_mean": ("batch_mean", 0.0), "ema": ("ema", 0.0),
    "entropy_bonus": ("none", 0.1)}


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
      g = jax.grad(lambda om: reinforce.objective(
          net.apply({"params": om}, z), d, k, adv, bonus))(omega)
      return jax.flatten_util.ravel_pytree(g)[0]

    out = {name: grad(reinforce.advantages(r, baseline, ema=ema, momentum=0.9), bonus)
           for name, (baseline, bonus) in VARIANTS.items()}
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
      jax.random.split(jax.random.PRNGKey(1), draws))
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
  np.testing.assert_allclose(reinforce.leave_one_out_baseline(r, None),
                             [11 / 3, 10 / 3, 3.0, 2.0], rtol=1e-6)
  ema = reinforce.init_ema()
  assert float(reinforce.ema_value(ema, 0.9)) == 0.0
  ema = reinforce.ema_update(ema, r, 0.9, None)
  np.testing.assert_allclose(reinforce.ema_value(ema, 0.9), 3.0, rtol=1e-6)  # bias-corrected
  ema = reinforce.ema_update(ema, r + 1.0, 0.9, None)
  np.testing.assert_allclose(reinforce.ema_value(ema, 0.9), (0.9 * 0.1 * 3 + 0.1 * 4) / 0.19,
                             rtol=1e-6)


# -- the fused attack ---------------------------------------------------------


def test_fused_attack_equals_separate_attacks():
  """One PGD pass with per-sample sign, bound and loss gives each sample what
  the adversarial (KL ascent) and anti-adversarial (CE descent) attacks give
  when run on their own samples."""
  config = digits_config(method="reinforce_caat", **{"attack.num_steps": 5})
  ctx = base.StepContext(model=None, tx=None, num_classes=10, axis_name=None,
                         attack=base.AttackSettings.from_config(config.attack, unroll=True))
  b = 64
  rng = np.random.default_rng(0)
  x = np.round(rng.uniform(size=(b, 8, 8, 1)) * 16).astype(np.float32) / 16
  y = rng.integers(0, 10, b).astype(np.int32)
  direction = rng.integers(0, 2, b).astype(np.int32)
  eps = np.asarray(config.reinforce.bound_set, np.float32)[rng.integers(0, 13, b)] / 255
  corner = np.clip(x + eps[:, None, None, None] * rng.choice([-1, 1], x.shape), 0, 1)
  adv = np.flatnonzero(direction == reinforce.ADVERSARY)
  anti = np.flatnonzero(direction == reinforce.ANTI_ADVERSARY)
  assert len(adv) > 5 and len(anti) > 5
  # a small classifier that treats examples independently, as attacks need
  w1 = rng.normal(size=(64, 32)).astype(np.float32) / 4
  w2 = rng.normal(size=(32, 10)).astype(np.float32)
  fn = lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w1) @ w2

  @jax.jit
  def compute():  # one compilation: eager ops would each compile on their own
    clean = fn(x)
    keys = base.sample_keys(jax.random.PRNGKey(3), b, None)
    fused = perturb.perturb(ctx, fn, x, y, clean, jnp.asarray(eps), keys,
                         jnp.asarray(direction) == reinforce.ADVERSARY)

    def separate(idx, kind, sign):
      e = eps[idx]
      return attacks.pgd(fn, x[idx], y[idx], eps=e, step_size=ctx.attack.step_sizes(e),
                         num_steps=5, keys=keys[idx], sign=jnp.full(idx.shape, sign),
                         loss_kind=jnp.full(idx.shape, kind), clean_logits=clean[idx],
                         start="gaussian", unroll=True)

    kl = lambda v: losses.kl_divergence(clean, fn(v))
    ce = lambda v: losses.cross_entropy(fn(v), y)
    return dict(fused=fused, adv=separate(adv, attacks.LOSS_KL, 1.0),
                anti=separate(anti, attacks.LOSS_CE, -1.0), kl=kl(fused), kl_corner=kl(corner),
                ce=ce(fused), ce_corner=ce(corner), ce_clean=ce(x))

  out = jax.tree.map(np.asarray, compute())
  np.testing.assert_allclose(out["fused"][adv], out["adv"], atol=1e-6)
  np.testing.assert_allclose(out["fused"][anti], out["anti"], atol=1e-6)
  # ... and what they give is a real attack of the right kind and size
  linf = np.abs(out["fused"] - x).reshape(b, -1).max(1)
  assert np.all(linf <= eps + 1e-6) and np.mean(linf > 0.5 * eps) > 0.5
  # against a random corner of the same ball: the adversaries raise the KL
  # more, the anti-adversaries lower the CE more
  assert out["kl"][adv].mean() > 2 * out["kl_corner"][adv].mean()
  assert out["ce"][anti].mean() < min(out["ce_corner"][anti].mean(), out["ce_clean"][anti].mean())


# -- the train step -----------------------------------------------------------


def _config_module(name):
  sys.path.insert(0, ROOT)
  try:
    return importlib.import_module(f"configs.{name}")
  finally:
    sys.path.remove(ROOT)


def test_configs_load_and_validate():
  variants = {"cifar10_reinforce_caat": [()], "svhn_reinforce_caat": [()],
              "cifar10_reinforce_caat_noisy": [(), ("pairflip:0.2",)],
              "cifar10_reinforce_caat_lt": [(), ("10",)],
              "digits_reinforce_caat": [(), ("noisy",), ("lt",)]}
  for name, args in variants.items():
    for arg in args:
      c = _config_module(name).get_config(*arg)
      assert c.method == "reinforce_caat" and len(c.reinforce.bound_set) == 13
      assert c.reinforce.reward == "lookahead" and c.data.meta_per_class >= 1
      config_lib.validate(c, num_devices=1)
  assert _config_module("cifar10_reinforce_caat").get_config().reinforce.lam == 0.005
  assert _config_module("svhn_reinforce_caat").get_config().reinforce.lam == 0.1
  for key, value in [("reinforce.baseline", "mean"), ("reinforce.k", 0),
                     ("reinforce.reward", "lookahed"), ("reinforce.reward_mix", -1.0),
                     ("reinforce.optimizer", "rmsprop"), ("reinforce.bound_set", ())]:
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
      config_lib.validate(digits_config(method="reinforce_caat", **{key: value}))


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["lookahead", "paper"])
def test_eight_devices_equal_one_with_policy_updates(reward):
  """tests/test_parallel.py covers the default k = 20 (no policy update in its
  two steps); here Omega updates every step: the look-ahead reward's meta
  batch, JVP and cross-device standardisation, or the paper's reward."""
  check_devices_agree("reinforce_caat", **{"reinforce.k": 1, "reinforce.reward": reward,
                                           "reinforce.entropy_bonus": 0.01})
