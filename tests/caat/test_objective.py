"""The meta objectives (docs/method.md §5) against hand computations: the
``official`` objective at the current and at the look-ahead model, ``clean_ce``,
the FRL class weights in the meta loss, and the meta adversaries at the
look-ahead model treated as constants.

The hand computations (tests/helpers.py ``hand_*``) share neither
``methods.perturb`` nor ``losses`` with the code under test. The tests that
compile a gradient through attacks are slow (``-m slow``): XLA compiles take
tens of seconds on a 2-core CPU."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import losses, train
from caat_jax.caat import fairness, objective
from caat_jax.data import augment as augment_lib
from caat_jax.methods import perturb
from caat_jax.parallel import Parallel
from tests.helpers import (
  assert_tree_close,
  digits_config,
  hand_attack,
  hand_ce,
  hand_forward,
  hand_kl,
)

LAM = 1.5


def _official_by_hand(ctx, params, bs, xm, ym, x_adv, x_at):
  lm, la, lt = (hand_forward(ctx, params, bs, v) for v in (xm, x_adv, x_at))
  return (hand_ce(lm, ym) + LAM * hand_kl(lm, la)).mean() + hand_ce(lt, ym).mean()


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
    return objective.meta_loss_fn(
      kind, LAM, ctx, perturb.meta_perturbations(ctx), adversary_at="current"
    )(state, attack_fn, batch, k_adv, k_at, None)(params)

  x_adv, x_at = jax.jit(
    lambda: (
      hand_attack(ctx, attack_fn, xm, ym, k_adv, adversary=True),
      hand_attack(ctx, attack_fn, xm, ym, k_at, adversary=False),
    )
  )()
  want = _official_by_hand(ctx, state.params, state.batch_stats, xm, ym, x_adv, x_at)
  official = meta_loss("official", state.params)
  np.testing.assert_allclose(official, want, rtol=1e-5)
  # the anti-adversarial term is really there (and really anti-adversarial:
  # its CE is below the clean CE)
  lm = hand_forward(ctx, state.params, state.batch_stats, xm)
  lt = hand_forward(ctx, state.params, state.batch_stats, x_at)
  assert float(hand_ce(lt, ym).mean()) < float(hand_ce(lm, ym).mean())
  robust = meta_loss("robust", state.params)
  np.testing.assert_allclose(official - robust, hand_ce(lt, ym).mean(), rtol=1e-4)


@pytest.mark.slow  # compiles a step or a gradient through two attacks: ~20 s on 2 cores
def test_official_meta_objective_at_lookahead_model(setup):
  """The default ``adversary_at='lookahead'``: both meta attacks are made at
  W_hat, and enter the gradient as constants."""
  ctx, state, batch = setup
  xm, ym = batch["meta_image"], batch["meta_label"]
  k_adv, k_at = jax.random.PRNGKey(21), jax.random.PRNGKey(22)
  bs = state.batch_stats
  w_hat = jax.tree.map(lambda p: 1.1 * p - 0.01, state.params)
  fn = objective.meta_loss_fn(
    "official", LAM, ctx, perturb.meta_perturbations(ctx), adversary_at="lookahead"
  )(state, ctx.eval_logits_fn(state.params, bs), batch, k_adv, k_at, None)
  f_hat = ctx.eval_logits_fn(w_hat, bs)
  x_adv, x_at = jax.jit(
    lambda: (
      hand_attack(ctx, f_hat, xm, ym, k_adv, adversary=True),
      hand_attack(ctx, f_hat, xm, ym, k_at, adversary=False),
    )
  )()
  by_hand = lambda p: _official_by_hand(ctx, p, bs, xm, ym, x_adv, x_at)
  got, got_grad = jax.jit(jax.value_and_grad(fn))(w_hat)
  want, want_grad = jax.jit(jax.value_and_grad(by_hand))(w_hat)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert_tree_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)


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
  by_hand = lambda p: hand_ce(hand_forward(ctx, p, bs, xm), ym).mean()
  np.testing.assert_allclose(fn(w_hat), by_hand(w_hat), rtol=1e-6)
  assert float(fn(w_hat)) == float(other(w_hat))
  assert_tree_close(jax.grad(fn)(w_hat), jax.grad(by_hand)(w_hat), rtol=1e-5, atol=1e-8)


def _fair(num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "lambda0": jnp.asarray(rng.uniform(0, 0.05, num_classes), jnp.float32),
    "lambda1": jnp.asarray(rng.uniform(0, 0.05, num_classes), jnp.float32),
    "lambda2": jnp.asarray(rng.uniform(-0.3, 0.4, num_classes), jnp.float32),
    "baseline_w": jnp.asarray(fairness.baseline_reweight(rng.uniform(size=num_classes))),
  }


def _ctx_state(**overrides):
  run = train.Run(
    digits_config(method="meta_caat", **overrides), Parallel("pmap", devices=jax.devices()[:1])
  )
  ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
  batch = next(iter(run.input.batches(0)))
  batch = {
    k: jnp.asarray(augment_lib.to_float01(v) if "image" in k else v) for k, v in batch.items()
  }
  return ctx, run.init_state(), batch


def test_meta_loss_carries_frl_class_weights():
  """Defect 4: with fairness on, the robust meta loss is FRL's weighted loss
  on the meta batch, sum w0 CE / sum w0 + lam sum w1 KL / sum w1 (docs/method.md §7,
  Eqs. A.119-A.121), computed here by hand."""
  ctx, state, batch = _ctx_state(**{"attack.num_steps": 2})
  fair, lam = _fair(seed=1), 0.7
  fn = objective.meta_loss_fn(
    "robust",
    lam,
    ctx,
    perturb.meta_perturbations(ctx),
    adversary_at="current",
    factors=fairness.factors_fn("reweight"),
  )
  attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
  k = jax.random.PRNGKey(5)
  value = fn(state, attack_fn, batch, k, None, fair)(state.params)
  xm, ym = batch["meta_image"], batch["meta_label"]
  xm_adv = perturb.adversaries(ctx, attack_fn, xm, ym, attack_fn(xm), ctx.full_eps(xm.shape[0]), k)
  lm, bs = ctx.train_logits(state.params, state.batch_stats, xm)
  la, _ = ctx.train_logits(state.params, bs, xm_adv)
  w0 = np.asarray(fairness.class_weights(fair["lambda0"]))[np.asarray(ym)]
  w1 = np.asarray(fairness.class_weights(fair["lambda1"]))[np.asarray(ym)]
  ce, kl = np.asarray(losses.cross_entropy(lm, ym)), np.asarray(losses.kl_divergence(lm, la))
  want = (w0 * ce).sum() / w0.sum() + lam * (w1 * kl).sum() / w1.sum()
  np.testing.assert_allclose(value, want, rtol=1e-5)
  unweighted = objective.meta_loss_fn(
    "robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="current"
  )(state, attack_fn, batch, k, None, fair)(state.params)
  assert abs(float(unweighted) - want) > 1e-4


def test_meta_adversaries_at_the_lookahead_model_are_constants():
  """Defect 3: with adversary_at='lookahead' the meta loss at W_hat attacks
  W_hat itself, and its gradient has no path through the attack: it equals
  the gradient of the loss with those adversaries held fixed."""
  ctx, state, batch = _ctx_state(**{"attack.num_steps": 3})
  lam, k = 1.0, jax.random.PRNGKey(7)
  attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
  w_hat = jax.tree.map(lambda p: p * 1.05 + 0.01, state.params)  # another model
  fn = objective.meta_loss_fn(
    "robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="lookahead"
  )(state, attack_fn, batch, k, None, None)
  xm, ym = batch["meta_image"], batch["meta_label"]
  f_hat = ctx.eval_logits_fn(w_hat, state.batch_stats)
  fixed_adv = perturb.adversaries(ctx, f_hat, xm, ym, f_hat(xm), ctx.full_eps(xm.shape[0]), k)

  def by_hand(params):
    lm, bs = ctx.train_logits(params, state.batch_stats, xm)
    la, _ = ctx.train_logits(params, bs, fixed_adv)
    return (losses.cross_entropy(lm, ym) + lam * losses.kl_divergence(lm, la)).mean()

  np.testing.assert_allclose(fn(w_hat), by_hand(w_hat), rtol=1e-6)
  assert_tree_close(jax.grad(fn)(w_hat), jax.grad(by_hand)(w_hat), rtol=1e-4, atol=1e-7)
  # made at W_hat, not at W: the 'current' choice gives another loss
  current = objective.meta_loss_fn(
    "robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="current"
  )(state, attack_fn, batch, k, None, None)
  assert abs(float(current(w_hat)) - float(fn(w_hat))) > 1e-6
