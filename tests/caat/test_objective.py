"""Switches no other test reaches, against hand computations (issue 11,
"never exercised"): the ``official`` and ``clean_ce`` meta objectives,
TRADES' loss and its gradient through the clean logits, PGD-AT's uniform
start keyed per sample, and evaluation's definition of a robust point.

The hand computations call the attack (``attacks.pgd``) directly with keys
``fold_in(key, i)`` and write cross-entropy and KL with ``log_softmax``, so
they share neither ``caat.perturb`` nor ``losses`` with the code under test.
The tests that compile a whole step or a gradient through attacks are slow
(``-m slow``): XLA compiles take tens of seconds on a 2-core CPU.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from caat_jax import attacks, evaluators, train
from caat_jax.data import augment as augment_lib
from caat_jax.caat import objective
from caat_jax.methods import perturb, pgd_at, trades
from caat_jax.parallel import Parallel
from tests.helpers import digits_config

LAM = 1.5


@pytest.fixture(scope="module")
def setup():
  """(ctx without a device axis, initial state, first float batch): one Run."""
  config = digits_config(method="meta_caat", batch_size=32,
                         **{"attack.num_steps": 1, "meta.batch_size": 16})
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
  batch = next(iter(run.input.batches(0)))
  batch = {k: jnp.asarray(augment_lib.to_float01(v) if "image" in k else v)
           for k, v in batch.items()}
  return ctx, jax.jit(run.init_state)(), batch  # one compile, not one per op


# -- hand-written pieces -------------------------------------------------------

def _keys(key, b):
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))


def _attack(ctx, logits_fn, x, y, key, adversary: bool):
  """SPEC 2 by hand: adversaries ascend KL(f(x) || f(x')), anti-adversaries
  descend CE(f(x'), y), from x + 0.001 N with sample i's key fold_in(key, i)."""
  b = x.shape[0]
  ones = jnp.ones((b,), jnp.float32)
  kind = attacks.LOSS_KL if adversary else attacks.LOSS_CE
  return attacks.pgd(logits_fn, x, y, eps=ctx.attack.eps * ones,
                     step_size=ctx.attack.step_size * ones, num_steps=ctx.attack.num_steps,
                     keys=_keys(key, b), sign=ones if adversary else -ones,
                     loss_kind=jnp.full((b,), kind, jnp.int32), clean_logits=logits_fn(x),
                     start="gaussian")


def _ce(logits, y):
  lp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]


def _kl(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per sample."""
  lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
  return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def _forward(ctx, params, batch_stats, x):
  return ctx.train_logits(params, batch_stats, x)[0]


def _close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _dist(a, b):
  return float(np.sqrt(sum(np.sum((np.asarray(u, np.float64) - np.asarray(v)) ** 2)
                           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


# -- 1. the meta objectives ----------------------------------------------------

def _official_by_hand(ctx, params, bs, xm, ym, x_adv, x_at):
  lm, la, lt = (_forward(ctx, params, bs, v) for v in (xm, x_adv, x_at))
  return (_ce(lm, ym) + LAM * _kl(lm, la)).mean() + _ce(lt, ym).mean()


@pytest.mark.slow  # compiles the official objective and its attacks: ~20 s on 2 cores
def test_official_meta_objective_at_current_model(setup):
  """``official`` = CE + lam KL on the meta batch's KL adversaries plus the
  mean CE of its anti-adversaries, attacks made at W."""
  ctx, state, batch = setup
  xm, ym = batch["meta_image"], batch["meta_label"]
  k_adv, k_at = jax.random.PRNGKey(11), jax.random.PRNGKey(12)
  attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)

  @functools.partial(jax.jit, static_argnums=0)
  def meta_loss(kind, params):
    return objective.meta_loss_fn(kind, LAM, ctx, perturb.meta_perturbations(ctx), adversary_at="current")(
        state, attack_fn, batch, k_adv, k_at, None)(params)

  x_adv, x_at = jax.jit(lambda: (_attack(ctx, attack_fn, xm, ym, k_adv, adversary=True),
                                 _attack(ctx, attack_fn, xm, ym, k_at, adversary=False)))()
  want = _official_by_hand(ctx, state.params, state.batch_stats, xm, ym, x_adv, x_at)
  official = meta_loss("official", state.params)
  np.testing.assert_allclose(official, want, rtol=1e-5)
  # the anti-adversarial term is really there (and really anti-adversarial:
  # its CE is below the clean CE)
  lm = _forward(ctx, state.params, state.batch_stats, xm)
  lt = _forward(ctx, state.params, state.batch_stats, x_at)
  assert float(_ce(lt, ym).mean()) < float(_ce(lm, ym).mean())
  robust = meta_loss("robust", state.params)
  np.testing.assert_allclose(official - robust, _ce(lt, ym).mean(), rtol=1e-4)


@pytest.mark.slow  # compiles a step or a gradient through two attacks: ~20 s on 2 cores
def test_official_meta_objective_at_lookahead_model(setup):
  """The default ``adversary_at='lookahead'``: both meta attacks are made at
  W_hat, and enter the gradient as constants."""
  ctx, state, batch = setup
  xm, ym = batch["meta_image"], batch["meta_label"]
  k_adv, k_at = jax.random.PRNGKey(21), jax.random.PRNGKey(22)
  bs = state.batch_stats
  w_hat = jax.tree.map(lambda p: 1.1 * p - 0.01, state.params)
  fn = objective.meta_loss_fn("official", LAM, ctx, perturb.meta_perturbations(ctx), adversary_at="lookahead")(
      state, ctx.eval_logits_fn(state.params, bs), batch, k_adv, k_at, None)
  f_hat = ctx.eval_logits_fn(w_hat, bs)
  x_adv, x_at = jax.jit(lambda: (_attack(ctx, f_hat, xm, ym, k_adv, adversary=True),
                                 _attack(ctx, f_hat, xm, ym, k_at, adversary=False)))()
  by_hand = lambda p: _official_by_hand(ctx, p, bs, xm, ym, x_adv, x_at)
  got, got_grad = jax.jit(jax.value_and_grad(fn))(w_hat)
  want, want_grad = jax.jit(jax.value_and_grad(by_hand))(w_hat)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  _close(got_grad, want_grad, rtol=1e-4, atol=1e-7)


def test_clean_ce_meta_objective(setup):
  """``clean_ce`` (Meta-Weight-Net): the mean clean CE of the meta batch in
  training mode, no attack (the keys do not matter)."""
  ctx, state, batch = setup
  xm, ym = batch["meta_image"], batch["meta_label"]
  bs = state.batch_stats
  w_hat = jax.tree.map(lambda p: 0.9 * p, state.params)
  make = objective.meta_loss_fn("clean_ce", LAM, ctx, perturb.meta_perturbations(ctx))
  f = ctx.eval_logits_fn(state.params, bs)
  fn = make(state, f, batch, jax.random.PRNGKey(1), jax.random.PRNGKey(2), None)
  other = make(state, f, batch, jax.random.PRNGKey(3), jax.random.PRNGKey(4), None)
  by_hand = lambda p: _ce(_forward(ctx, p, bs, xm), ym).mean()
  np.testing.assert_allclose(fn(w_hat), by_hand(w_hat), rtol=1e-6)
  assert float(fn(w_hat)) == float(other(w_hat))
  _close(jax.grad(fn)(w_hat), jax.grad(by_hand)(w_hat), rtol=1e-5, atol=1e-8)


# -- 7. TRADES' loss and PGD-AT's start -----------------------------------------

def _sgd1(ctx, state):
  """ctx and state with the optimiser optax.sgd(1): the update is -grad."""
  tx = optax.sgd(1.0)
  return (dataclasses.replace(ctx, tx=tx),
          state.replace(opt_state=tx.init(state.params), extra={}))


@pytest.mark.slow  # compiles a step or a gradient through two attacks: ~20 s on 2 cores
def test_trades_loss_and_gradient_through_clean_logits(setup):
  """TRADES: CE(f(x), y) + beta KL(f(x) || f(x')), f(x) not detached; x' the
  KL adversary with per-sample keys. The step's update (optimiser sgd(1))
  is minus the gradient of that loss written by hand; detaching f(x) in the
  KL, or swapping the KL's arguments, gives measurably different numbers."""
  ctx, state, batch = setup
  beta = 6.0
  ctx1, st = _sgd1(ctx, state)
  st = st.replace(params=jax.tree.map(lambda p: 3.0 * p, st.params))  # sharper outputs
  x, y = batch["image"], batch["label"]
  key = jax.random.PRNGKey(31)
  step = jax.jit(trades.make_step(digits_config(method="trades", **{"trades.beta": beta}), ctx1))
  new, metrics = step(st, {"image": x, "label": y}, key)
  got_grad = jax.tree.map(lambda a, b: a - b, st.params, new.params)

  bs = st.batch_stats
  x_adv = jax.jit(lambda: _attack(ctx, ctx.eval_logits_fn(st.params, bs), x, y, key,
                                   adversary=True))()

  def by_hand(params, detach=False, swap=False):
    lc, la = _forward(ctx, params, bs, x), _forward(ctx, params, bs, x_adv)
    target = jax.lax.stop_gradient(lc) if detach else lc
    kl = _kl(la, target) if swap else _kl(target, la)
    return _ce(lc, y).mean() + beta * kl.mean()

  np.testing.assert_allclose(metrics["loss"], by_hand(st.params), rtol=1e-5)
  lc, la = _forward(ctx, st.params, bs, x), _forward(ctx, st.params, bs, x_adv)
  np.testing.assert_allclose(metrics["kl"], _kl(lc, la).mean(), rtol=1e-5)
  assert abs(float(_kl(la, lc).mean()) - float(metrics["kl"])) > 1e-3 * float(metrics["kl"])
  grads = jax.jit(lambda p: [jax.grad(by_hand)(p),
                             jax.grad(lambda q: by_hand(q, detach=True))(p),
                             jax.grad(lambda q: by_hand(q, swap=True))(p)])
  want, detached, swapped = grads(st.params)
  scale = _dist(want, jax.tree.map(jnp.zeros_like, want))
  assert _dist(got_grad, want) < 1e-4 * scale
  assert _dist(got_grad, detached) > 1e-2 * scale
  assert _dist(got_grad, swapped) > 1e-3 * scale  # KL is symmetric to second order


@pytest.mark.slow  # compiles a step or a gradient through two attacks: ~20 s on 2 cores
def test_pgd_at_start_is_uniform_in_the_ball_keyed_per_sample(setup):
  """PGD-AT with K = 0 trains on its start point: x + U(-eps, eps) from
  sample i's key fold_in(key, i), clipped to [0, 1]; the step's loss and
  update (sgd(1)) match the hand computation on that point."""
  ctx, state, batch = setup
  ctx1, st = _sgd1(ctx, state)
  ctx0 = dataclasses.replace(ctx1, attack=dataclasses.replace(ctx.attack, num_steps=0))
  x, y = batch["image"], batch["label"]
  key, eps = jax.random.PRNGKey(41), ctx.attack.eps
  new, metrics = jax.jit(pgd_at.make_step(None, ctx0))(st, {"image": x, "label": y}, key)

  noise = np.stack([np.asarray(jax.random.uniform(jax.random.fold_in(key, i), x.shape[1:],
                                                  jnp.float32, -1.0, 1.0))
                    for i in range(x.shape[0])])
  start = np.clip(np.asarray(x) + eps * noise, 0.0, 1.0)
  # the start point fills the ball (uniform, not 0.001 N), differently per sample
  inner = (np.asarray(x) > eps) & (np.asarray(x) < 1 - eps)
  assert np.abs(start - x)[inner].max() > 0.99 * eps
  assert np.abs(start - x).max() <= eps + 1e-6
  assert not np.allclose(noise[0], noise[1])
  by_hand = lambda p: _ce(_forward(ctx, p, st.batch_stats, jnp.asarray(start)), y).mean()
  np.testing.assert_allclose(metrics["loss"], by_hand(st.params), rtol=1e-5)
  got_grad = jax.tree.map(lambda a, b: a - b, st.params, new.params)
  want = jax.grad(by_hand)(st.params)
  assert _dist(got_grad, want) < 1e-4 * _dist(want, jax.tree.map(jnp.zeros_like, want))
  # the attack itself with K = 0 returns that start point
  f = ctx.eval_logits_fn(st.params, st.batch_stats)
  b = x.shape[0]
  x0 = attacks.pgd(f, x, y, eps=jnp.full((b,), eps), step_size=jnp.full((b,), 0.01),
                   num_steps=0, keys=_keys(key, b), start="uniform")
  np.testing.assert_allclose(x0, start, atol=1e-6)


# -- 8. evaluation: robust = correct clean AND attacked ------------------------

class _Flagged(nn.Module):
  """Two classes on images [B, 1, 2, 1]: logit_1 = a (x1 - 0.5), logit_0 = 0,
  so the prediction is 1 iff x1 > 0.5. Pixel x0 is a flag, unused by the
  logits: where it is above 0.5 the input gradient of x1 is reversed (same
  value, gradient -a), so PGD, ascending CE by the gradient's sign, moves x1
  *toward* the true class: a misclassified point within eps of the boundary
  is classified correctly after the attack."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    a = self.param("a", nn.initializers.constant(10.0), ())
    x0, x1 = x[:, 0, 0, 0], x[:, 0, 1, 0]
    s = jnp.where(x0 > 0.5, -1.0, 1.0)
    z1 = s * a * x1 + jax.lax.stop_gradient((1.0 - s) * a * x1) - 0.5 * a
    return jnp.stack([jnp.zeros_like(z1), z1], axis=-1)


def test_robust_means_correct_clean_and_attacked():
  """PGD-5 with eps 0.1, step 0.05 moves x1 by exactly eps (the steps cover
  the ball from any start): away from the true class on plain points,
  toward it on flagged ones. Points misclassified clean but correct after the
  attack (C and F) must count as non-robust, as the paper's exists-delta
  definition says; FRL's attacked-only count would call them robust."""
  # (label, x1, flag): clean correct?, attacked correct?
  points = [(1, 0.70, 0.1),  # A: yes, yes (x1 -> 0.60)
            (1, 0.55, 0.1),  # B: yes, no  (-> 0.45)
            (1, 0.45, 0.9),  # C: no,  yes (-> 0.55, flagged)
            (1, 0.30, 0.1),  # G: no,  no  (-> 0.20)
            (0, 0.30, 0.1),  # D: yes, yes (-> 0.40)
            (0, 0.45, 0.1),  # E: yes, no  (-> 0.55)
            (0, 0.55, 0.9)]  # F: no,  yes (-> 0.45, flagged)
  labels = np.array([p[0] for p in points], np.int32)
  images = np.array([[[[p[2]], [p[1]]]] for p in points], np.float32)
  model = _Flagged()
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(images))
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels),
           "index": jnp.arange(len(points))}
  out = evaluators.eval_fn(variables, batch, model=model, attack_names=("pgd5",), eps=0.1,
                           step_size=0.05, unroll=True)
  clean_ok = np.array([True, True, False, False, True, True, False])
  attacked_ok = np.array([True, False, True, False, True, False, True])
  np.testing.assert_array_equal(out["natural"], clean_ok)
  np.testing.assert_array_equal(out["pgd5"], clean_ok & attacked_ok)
  outcomes = {k: np.asarray(v) for k, v in out.items()}
  outcomes["label"] = labels
  doc = evaluators.report(outcomes, 2, attack="pgd5", eps=0.1)
  # by hand, per class (%): class 0 = D, E, F; class 1 = A, B, C, G
  nat = [100 * 1 / 3, 100 * 2 / 4]  # F; C, G
  rob = [100 * 2 / 3, 100 * 3 / 4]  # E, F; B, C, G
  np.testing.assert_allclose(doc["per_class"]["natural"], nat, atol=1e-3)
  np.testing.assert_allclose(doc["per_class"]["robust"], rob, atol=1e-3)
  np.testing.assert_allclose(doc["per_class"]["boundary"], np.subtract(rob, nat), atol=1e-3)
  np.testing.assert_allclose(doc["avg"]["robust"], np.mean(rob), atol=1e-3)
  np.testing.assert_allclose(doc["worst"]["robust"], 75.0, atol=1e-3)
  np.testing.assert_allclose(doc["worst"]["boundary"], 100 / 3, atol=1e-3)
  # FRL's attacked-only count would give robust errors [1/3, 2/4] and zero
  # boundary errors: C and F are what tells the definitions apart
  assert (~attacked_ok & (labels == 1)).sum() / 4 * 100 < rob[1]
