"""Reinforce-CAAT's step on a tiny BatchNorm-free classifier (docs/method.md §6): Eq. 31
against a hand-written loss, the policy step's sign and pairing of rewards
with actions, the look-ahead reward against a finite difference in float64,
and the strategy update exactly every K steps.
Also: the anti-adversaries' bounds, and N devices = 1 with the policy
actually updating."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from caat_jax import losses
from caat_jax import state as state_lib
from caat_jax.caat import features, objective, reinforce
from caat_jax.methods import base, perturb, reinforce_caat, strategy_stats
from tests.helpers import check_devices_agree, digits_config, first_training_attack

B, M, C = 16, 8, 10  # batch, meta batch, classes


LR = 0.1  # the classifier's (constant) learning rate eta_1


class TinyNet(nn.Module):
  """8x8x1 -> 10 logits, no BatchNorm (so per-sample losses are separable)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = jnp.tanh(nn.Dense(12)(x.reshape(x.shape[0], -1)))
    return nn.Dense(C)(h)


def _setup(dtype=jnp.float32, **overrides):
  """(config, ctx, state, batch) for a tiny Reinforce-CAAT step."""
  overrides = {"attack.num_steps": 2, "reinforce.hidden": 8, **overrides}
  config = digits_config(method="reinforce_caat", **overrides)
  tx = optax.sgd(LR)
  ctx = base.StepContext(
    model=TinyNet(),
    tx=tx,
    num_classes=C,
    class_counts=(10,) * C,
    axis_name=None,
    attack=base.AttackSettings.from_config(config.attack, unroll=True),
    schedule=lambda step: jnp.asarray(LR, dtype),
  )
  rng = np.random.default_rng(0)
  img = lambda n: jnp.asarray(np.round(rng.uniform(size=(n, 8, 8, 1)) * 16) / 16, dtype)
  lab = lambda n: jnp.asarray(rng.integers(0, C, n), jnp.int32)
  batch = {
    "image": img(B),
    "label": lab(B),
    "meta_image": img(M),
    "meta_label": lab(M),
    "corrupted": jnp.asarray(rng.integers(0, 2, B).astype(bool)),
  }
  key = jax.random.PRNGKey(0)
  params = TinyNet().init(key, batch["image"])["params"]
  params = jax.tree.map(lambda a: a.astype(dtype), params)
  extra = reinforce_caat.init_extra(config, ctx, jax.random.PRNGKey(1))
  state = state_lib.create({"params": params, "batch_stats": {}}, tx, key, extra)
  return config, ctx, state, batch


def _strategies(config, ctx, state, batch, key):
  """What the step draws, recomputed from the library pieces with the step's
  key derivation: (direction, bound, eps, x_tilde)."""
  x, y = batch["image"], batch["label"]
  k_policy, k_attack, _ = jax.random.split(key, 3)
  attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
  clean = attack_fn(x)
  z, _ = features.strategy_inputs(
    clean, y, ctx.class_counts, state.extra["stats"], config.caat, None
  )
  logits = reinforce_caat.policy_net(config).apply({"params": state.extra["policy"]}, z)
  d, k = reinforce.sample(ctx.sample_keys(k_policy, B), logits)
  eps = reinforce_caat.bound_values(config)[k]
  x_tilde = perturb.perturb(
    ctx,
    attack_fn,
    x,
    y,
    clean,
    eps=eps,
    keys=ctx.sample_keys(k_attack, B),
    adversary=d == reinforce.ADVERSARY,
  )
  return d, k, eps, x_tilde


def test_eq31_classifier_loss_by_hand():
  """The step's loss is Eq. 31 written out: for an adversary
  CE(f(x), y) + lam KL(f(x) || f(x_adv)), for an anti-adversary
  CE(f(x_at), y), averaged over the batch; W takes one SGD step on it."""
  config, ctx, state, batch = _setup(**{"reinforce.reward": "paper", "reinforce.lam": 0.7})
  key = jax.random.PRNGKey(5)
  step = jax.jit(reinforce_caat.make_step(config, ctx))
  new_state, metrics = step(state, batch, key)
  d, _, eps, x_tilde = jax.jit(lambda s, b, k: _strategies(config, ctx, s, b, k))(state, batch, key)
  d, x_tilde = np.asarray(d), np.asarray(x_tilde)
  assert 0 < d.sum() < B  # both directions drawn
  assert np.all(np.abs(x_tilde - batch["image"]).reshape(B, -1).max(1) <= eps + 1e-6)

  def hand_loss(params):
    f = lambda v: TinyNet().apply({"params": params}, v)
    logp, logq = jax.nn.log_softmax(f(batch["image"])), jax.nn.log_softmax(f(x_tilde))
    y = np.asarray(batch["label"])
    total = 0.0
    for i in range(B):
      if d[i] == reinforce.ADVERSARY:
        kl = jnp.sum(jnp.exp(logp[i]) * (logp[i] - logq[i]))
        total = total - logp[i, y[i]] + 0.7 * kl
      else:
        total = total - logq[i, y[i]]
    return total / B

  loss, grads = jax.value_and_grad(hand_loss)(state.params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  expected = jax.tree.map(lambda p, g: p - LR * g, state.params, grads)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_paper_policy_step_sign_and_pairing():
  """reward = 'paper', K = 1, SGD (Eq. 35): from the uniform policy the summed
  adversary-minus-anti-adversary head biases move by exactly
  lr2 / n (sum_adv L0_i + sum_anti L1_i) > 0. Dropping the ascent sign makes
  it negative; pairing rewards with other samples' actions changes it."""
  lr2 = 0.01
  config, ctx, state, batch = _setup(
    **{"reinforce.reward": "paper", "reinforce.k": 1, "reinforce.learning_rate": lr2}
  )
  new_state, metrics = jax.jit(reinforce_caat.make_step(config, ctx))(
    state, batch, jax.random.PRNGKey(3)
  )
  assert float(metrics["policy_updated"]) == 1.0
  num = np.asarray(metrics["ratio/paper_reward_per_direction/num"])  # [sum_adv L0, -sum_anti L1]
  den = np.asarray(metrics["ratio/paper_reward_per_direction/den"])
  assert den[0] > 0 and den[1] > 0 and num[0] > 0 and num[1] < 0
  bias = lambda s: np.asarray(s.extra["policy"]["strategy"]["bias"]).reshape(2, -1)
  moved = bias(new_state) - bias(state)
  gap = moved[0].sum() - moved[1].sum()
  np.testing.assert_allclose(gap, lr2 * (num[0] - num[1]) / B, rtol=1e-4)


def test_lookahead_reward_equals_finite_difference():
  """r_i = (eta_1 / n) <grad L_meta(W), grad l_i(W)> (one JVP) equals the
  first-order term of L_meta(W) - L_meta(W - (eta_1 / n) grad l_i(W)) (a
  one-sided finite difference at a small step, scaled), in float64,
  for several samples of both directions; and the rewards are not all alike."""
  with jax.enable_x64(True):
    config, ctx, state, batch = _setup(jnp.float64)
    key = jax.random.PRNGKey(4)
    d, _, _, x_tilde = _strategies(config, ctx, state, batch, key)
    is_adv = d == reinforce.ADVERSARY
    lam = config.reinforce.lam
    f = lambda p, v: TinyNet().apply({"params": p}, v)

    def per_sample_fn(params):
      lc, lt = f(params, batch["image"]), f(params, x_tilde)
      logp, logq = jax.nn.log_softmax(lc), jax.nn.log_softmax(lt)
      y = batch["label"][:, None]
      ce = -jnp.take_along_axis(logp, y, 1)[:, 0]
      l0 = ce + lam * jnp.sum(jnp.exp(logp) * (logp - logq), -1)
      l1 = -jnp.take_along_axis(logq, y, 1)[:, 0]
      return jnp.where(is_adv, l0, l1)[:, None], None

    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
    l0 = l1 = jnp.zeros(B)
    k_meta = jax.random.PRNGKey(9)
    reward_fn = reinforce_caat._reward_fn(config, ctx)  # pylint: disable=protected-access
    _, info = reward_fn(
      state,
      batch,
      attack_fn=attack_fn,
      per_sample_fn=per_sample_fn,
      direction=d,
      l0=l0,
      l1=l1,
      lr=LR,
      key=k_meta,
    )
    r = np.asarray(info["lookahead"])
    # the same meta loss (same meta adversaries) at a shifted W
    meta_fn = objective.meta_loss_fn(
      "robust",
      config.reinforce.meta_lam,
      ctx,
      perturb.meta_perturbations(ctx),
      adversary_at="current",
    )(state, attack_fn, batch, *jax.random.split(k_meta), state.extra["fair"])
    base_loss = meta_fn(state.params)
    for i in [int(np.argmax(is_adv)), int(np.argmin(is_adv)), 3, 7]:
      g_i = jax.grad(lambda p: per_sample_fn(p)[0][i, 0])(state.params)
      at = lambda h: meta_fn(jax.tree.map(lambda p, g: p - h * g, state.params, g_i))
      # The reward is the first-order term of L_meta(W) - L_meta(W - h grad l_i),
      # h = eta_1 / n. At h itself the h^2 term is not negligible where the
      # inner product is small (|grad l_i| ~ 4 here), so shrink the step to
      # eps and scale back by h / eps.
      h, eps = LR / B, 1e-6
      np.testing.assert_allclose(r[i], float(base_loss - at(eps)) * h / eps, rtol=1e-3)
    assert np.std(r) > 0.1 * np.abs(r).mean()


def test_lookahead_policy_updates_exactly_every_k_steps():
  """K = 3: the classifier moves every step, Omega (and its optimiser state)
  after the 3rd and 6th classifier steps only; the meta loss and rewards are
  logged on those steps only; the first policy is uniform over 2 x 13."""
  config, ctx, state, batch = _setup(**{"reinforce.k": 3})
  step = jax.jit(reinforce_caat.make_step(config, ctx))
  leaves = lambda t: [np.asarray(a) for a in jax.tree.leaves(t)]
  moved = lambda a, b: any(not np.array_equal(u, v) for u, v in zip(leaves(a), leaves(b)))
  changed, records = [], []
  for t in range(7):
    new, m = step(state, batch, jax.random.PRNGKey(t))
    assert moved(new.params, state.params)
    changed.append(moved(new.extra["policy"], state.extra["policy"]))
    assert moved(new.extra["policy_opt"], state.extra["policy_opt"]) == changed[-1]
    records.append(jax.tree.map(np.asarray, m))
    state = new
  assert changed == [False, False, True, False, False, True, False]
  assert [float(m["policy_updated"]) for m in records] == [0, 0, 1, 0, 0, 1, 0]
  assert [float(m["ratio/meta_loss/den"][0]) for m in records] == [0, 0, 1, 0, 0, 1, 0]
  assert all(m["ratio/meta_loss/num"][0] > 0 for m in records if m["policy_updated"])
  assert all(
    m["ratio/lookahead_reward_per_direction/den"].sum() == B for m in records if m["policy_updated"]
  )
  first = records[0]
  np.testing.assert_allclose(first["entropy"], np.log(26), rtol=1e-5)
  np.testing.assert_allclose(first["entropy_direction"], np.log(2), rtol=1e-5)
  np.testing.assert_allclose(first["entropy_bound"], np.log(13), rtol=1e-5)
  np.testing.assert_allclose(first["p_adv"], 0.5, rtol=1e-5)
  for m in records:
    assert m["ratio/adv_ratio_class_clean_noisy/num"].shape == (2 * C,)
    assert m["ratio/eps_direction_clean_noisy/den"].shape == (4,)
    assert m["ratio/eps_direction_clean_noisy/den"].sum() == B


def test_cost_and_meta_batch_follow_the_reward():
  config = digits_config(method="reinforce_caat")
  m = reinforce_caat.METHOD
  assert config.reinforce.reward == "lookahead" and m.meta_batch(config)
  paper = digits_config(method="reinforce_caat", **{"reinforce.reward": "paper"})
  assert not m.meta_batch(paper) and not m.needs_meta_set(paper)
  assert m.cost(paper) == pytest.approx(2 * paper.attack.num_steps + 7)
  # the meta part (meta batch attack + loss, JVP) divided by K
  meta_part = (1 + 2 * config.attack.num_steps + 6) * config.meta.batch_size / config.batch_size
  assert m.cost(config) == pytest.approx(m.cost(paper) + (meta_part + 4) / config.reinforce.k)
  assert reinforce_caat.resolved(paper) == ("sgd", "none")
  assert reinforce_caat.resolved(config) == ("adam", "batch_mean")


def test_fairness_margins_scale_the_learned_bounds():
  """fairness.enabled (Eq. 19): ReMargin multiplies each sample's learned
  bound by its class's margin m_c; the same strategies are drawn."""
  outs = []
  for enabled in (False, True):
    config, ctx, state, batch = _setup(
      **{
        "reinforce.reward": "paper",
        "fairness.enabled": enabled,
        "fairness.mode": "reweight_remargin",
      }
    )
    lambda2 = jnp.linspace(-0.2, 0.4, C)
    state = state.replace(extra=dict(state.extra, fair=dict(state.extra["fair"], lambda2=lambda2)))
    _, m = jax.jit(reinforce_caat.make_step(config, ctx))(state, batch, jax.random.PRNGKey(2))
    outs.append(jax.tree.map(np.asarray, m))
  off, on = outs
  assert reinforce_caat.METHOD.epoch_hook.validation(config) is not None
  seen = off["ratio/eps_per_class/den"] > 0
  margin = np.clip(np.exp(2 * np.asarray(lambda2)), 0.98, 2.5)
  np.testing.assert_allclose(
    on["ratio/eps_per_class/num"][seen],
    off["ratio/eps_per_class/num"][seen] * margin[seen],
    rtol=1e-5,
  )
  np.testing.assert_array_equal(
    on["ratio/adv_ratio_per_class/num"], off["ratio/adv_ratio_per_class/num"]
  )


def test_strategy_stats_bin_samples_by_bound_for_fig_8c():
  """Bins of width eps_max / 10 (a bound past eps_max in the last bin); each
  bin's margin and bound sums against a numpy loop over the samples."""
  rng = np.random.default_rng(3)
  eps = jnp.asarray([0.0, 0.012, 0.05, 0.0999, 0.1, 0.3, 0.051], jnp.float32)
  y = jnp.asarray(rng.integers(0, C, len(eps)), jnp.int32)
  logits = jnp.asarray(rng.normal(size=(len(eps), C)), jnp.float32)
  out = strategy_stats.strategy_stats(
    jnp.ones_like(eps), eps, y, {}, C, None, clean_logits=logits, eps_max=0.1
  )
  num, den = np.zeros(10), np.zeros(10)
  bnum = np.zeros(10)
  for e, yi, z in zip(np.asarray(eps), np.asarray(y), np.asarray(logits, np.float64)):
    k = min(int(e / 0.1 * 10), 9)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    num[k] += p[yi] - np.max(np.delete(p, yi))
    den[k] += 1
    bnum[k] += e
  np.testing.assert_array_equal(out["ratio/margin_by_bound/den"], den)
  assert den[0] == 1 and den[1] == 1 and den[5] == 2 and den[9] == 3
  np.testing.assert_allclose(out["ratio/margin_by_bound/num"], num, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["ratio/bound_by_bound_bin/num"], bnum, rtol=1e-6)
  assert "ratio/margin_by_bound/num" not in strategy_stats.strategy_stats(
    jnp.ones_like(eps), eps, y, {}, C, None
  )  # not asked for: not logged


def test_reinforce_step_logs_fig_8c_over_its_bound_range():
  """Every sample lands in one bin; each bin's mean bound lies in it (the
  range is the largest bound of the set); the margins are those of the
  inference-mode clean logits the strategy was drawn from."""
  config, ctx, state, batch = _setup(**{"reinforce.reward": "paper"})
  _, m = jax.jit(reinforce_caat.make_step(config, ctx))(state, batch, jax.random.PRNGKey(2))
  m = jax.tree.map(np.asarray, m)
  den = m["ratio/margin_by_bound/den"]
  assert den.sum() == B
  width = max(config.reinforce.bound_set) / 255.0 / strategy_stats.NUM_BOUND_BINS
  for k in np.flatnonzero(den):
    mean = m["ratio/bound_by_bound_bin/num"][k] / den[k]
    assert k * width - 1e-7 <= mean <= (k + 1) * width + 1e-7
  np.testing.assert_allclose(
    m["ratio/bound_by_bound_bin/num"].sum(), m["ratio/eps_per_class/num"].sum(), rtol=1e-5
  )
  clean = ctx.eval_logits_fn(state.params, state.batch_stats)(batch["image"])
  np.testing.assert_allclose(
    m["ratio/margin_by_bound/num"].sum(),
    float(losses.probability_margin(clean, batch["label"]).sum()),
    rtol=1e-4,
    atol=1e-5,
  )


@pytest.mark.parametrize("scale,cap", [(0.5, 0.0), (0.5, 0.1)])
def test_reinforce_caat_anti_bound(scale, cap):
  """Reinforce-CAAT: the drawn bound (one choice, 12/255) for adversaries;
  min(scale * 12/255, cap * attack.eps) for anti-adversaries (0.1 * 0.1
  binds)."""
  config = digits_config(
    method="reinforce_caat",
    batch_size=16,
    **{
      "attack.num_steps": 1,
      "reinforce.reward": "paper",
      "reinforce.bound_set": (12,),
      "caat.anti_bound_scale": scale,
      "caat.anti_bound_cap": cap,
    },
  )
  *_, eps, sign = first_training_attack(config)
  drawn = 12 / 255
  want_at = scale * drawn if cap == 0 else min(scale * drawn, cap * config.attack.eps)
  assert 0 < np.sum(sign > 0) < 16  # both directions drawn
  np.testing.assert_allclose(eps[sign > 0], drawn, rtol=1e-6)
  np.testing.assert_allclose(eps[sign < 0], want_at, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["lookahead", "paper"])
def test_eight_devices_equal_one_with_policy_updates(reward):
  """tests/test_parallel.py covers the default k = 20 (no policy update in its
  two steps); here Omega updates every step: the look-ahead reward's meta
  batch, JVP and cross-device standardisation, or the paper's reward."""
  check_devices_agree(
    "reinforce_caat",
    **{"reinforce.k": 1, "reinforce.reward": reward, "reinforce.entropy_bonus": 0.01},
  )
