"""Meta-CAAT and FRL switches against independent computations (issue 11):
TRADES equivalence of Setting I, FRL's four fairness modes inside Meta-CAAT,
the fairness-weighted meta objective, meta adversaries at the look-ahead
model, augmented meta batches, the Table 5 noise model and FRL's numbers."""

import dataclasses
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import bench, config_lib, losses, train
from caat_jax.caat import fairness, objective
from caat_jax.data import augment as augment_lib
from caat_jax.methods import base, perturb
from caat_jax.parallel import Parallel
from tests.helpers import ROOT, digits_config


def _one_step(config, fair=None):
  """(params after one train step, step metrics) on one device, first batch."""
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  state = run.init_state()
  if fair is not None:
    state = state.replace(extra=dict(state.extra, fair=fair))
  rstate = run.parallel.replicate(state)
  batch = next(iter(run.input.batches(0)))
  rstate, metrics = run.train_step(rstate, run.parallel.shard(batch))
  return run.parallel.fetch(rstate.params), run.parallel.fetch(metrics)


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def _fair(num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {"lambda0": jnp.asarray(rng.uniform(0, 0.05, num_classes), jnp.float32),
          "lambda1": jnp.asarray(rng.uniform(0, 0.05, num_classes), jnp.float32),
          "lambda2": jnp.asarray(rng.uniform(-0.3, 0.4, num_classes), jnp.float32),
          "baseline_w": jnp.asarray(fairness.baseline_reweight(rng.uniform(size=num_classes)))}


def test_setting1_is_trades_with_beta_lam():
  """Defect 11: adversaries only with a fixed bound runs no anti-adversary
  (no attack, no forward pass, no BatchNorm update from it) and is a TRADES
  step with beta = lam, same keys."""
  lam = 2.5
  kw = {"attack.num_steps": 3, "meta.batch_size": 32}
  got, m = _one_step(digits_config(method="meta_caat", **kw, **{
      "caat.direction": "adversarial_only", "caat.bound": "fixed", "caat.lam": lam}))
  want, m_t = _one_step(digits_config(method="trades", **kw, **{"trades.beta": lam}))
  _assert_close(got, want)
  np.testing.assert_allclose(m["loss"], m_t["loss"], rtol=1e-5)
  assert "anti_acc" not in m
  # and it costs what TRADES costs in the benchmark's accounting
  c = digits_config(method="meta_caat", **{"caat.direction": "adversarial_only"})
  assert bench.forward_units(c) == bench.forward_units(digits_config(method="trades"))


@pytest.mark.parametrize("mode", [
    m if m == "reweight_remargin" else pytest.param(m, marks=pytest.mark.slow)
    for m in fairness.MODES])  # the default suite runs the mode with weights and margins
def test_meta_caat_fairness_modes_weigh_as_frl(mode):
  """Defect 5: with fairness on, each of FRL's four modes changes Meta-CAAT's
  loss exactly as FRL's (Setting I with FRL's bounds = FRL with beta = lam),
  from the same non-zero multipliers."""
  fair = _fair()
  bound = "remargin" if mode in fairness.MARGIN_MODES else "fixed"
  # a step size at which the bound binds, so class-wise bounds matter
  kw = {"attack.num_steps": 2, "attack.step_size": 0.08, "meta.batch_size": 32,
        "fairness.mode": mode}
  got, _ = _one_step(digits_config(method="meta_caat", **kw, **{
      "caat.direction": "adversarial_only", "caat.bound": bound, "caat.lam": 1.5,
      "fairness.enabled": True}), fair)
  want, _ = _one_step(digits_config(method="frl", **kw, **{"trades.beta": 1.5}), fair)
  _assert_close(got, want)
  plain, _ = _one_step(digits_config(method="trades", **kw, **{"trades.beta": 1.5}))
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  assert np.abs(flat(got) - flat(plain)).max() > 1e-6  # the mode did change the step


def _ctx_state(**overrides):
  run = train.Run(digits_config(method="meta_caat", **overrides),
                  Parallel("pmap", devices=jax.devices()[:1]))
  ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
  batch = next(iter(run.input.batches(0)))
  batch = {k: jnp.asarray(augment_lib.to_float01(v) if "image" in k else v)
           for k, v in batch.items()}
  return ctx, run.init_state(), batch


def test_meta_loss_carries_frl_class_weights():
  """Defect 4: with fairness on, the robust meta loss is FRL's weighted loss
  on the meta batch, sum w0 CE / sum w0 + lam sum w1 KL / sum w1 (SPEC 7,
  Eqs. A.119-A.121), computed here by hand."""
  ctx, state, batch = _ctx_state(**{"attack.num_steps": 2})
  fair, lam = _fair(seed=1), 0.7
  fn = objective.meta_loss_fn("robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="current",
                         factors=fairness.factors_fn("reweight"))
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
  unweighted = objective.meta_loss_fn("robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="current")(
      state, attack_fn, batch, k, None, fair)(state.params)
  assert abs(float(unweighted) - want) > 1e-4


def test_meta_adversaries_at_the_lookahead_model_are_constants():
  """Defect 3: with adversary_at='lookahead' the meta loss at W_hat attacks
  W_hat itself, and its gradient has no path through the attack: it equals
  the gradient of the loss with those adversaries held fixed."""
  ctx, state, batch = _ctx_state(**{"attack.num_steps": 3})
  lam, k = 1.0, jax.random.PRNGKey(7)
  attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
  w_hat = jax.tree.map(lambda p: p * 1.05 + 0.01, state.params)  # another model
  fn = objective.meta_loss_fn("robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="lookahead")(
      state, attack_fn, batch, k, None, None)
  xm, ym = batch["meta_image"], batch["meta_label"]
  f_hat = ctx.eval_logits_fn(w_hat, state.batch_stats)
  fixed_adv = perturb.adversaries(ctx, f_hat, xm, ym, f_hat(xm), ctx.full_eps(xm.shape[0]), k)

  def by_hand(params):
    lm, bs = ctx.train_logits(params, state.batch_stats, xm)
    la, _ = ctx.train_logits(params, bs, fixed_adv)
    return (losses.cross_entropy(lm, ym) + lam * losses.kl_divergence(lm, la)).mean()

  np.testing.assert_allclose(fn(w_hat), by_hand(w_hat), rtol=1e-6)
  _assert_close(jax.grad(fn)(w_hat), jax.grad(by_hand)(w_hat), rtol=1e-4, atol=1e-7)
  # made at W_hat, not at W: the 'current' choice gives another loss
  current = objective.meta_loss_fn("robust", lam, ctx, perturb.meta_perturbations(ctx), adversary_at="current")(
      state, attack_fn, batch, k, None, None)
  assert abs(float(current(w_hat)) - float(fn(w_hat))) > 1e-6


def test_meta_batches_are_augmented_with_their_own_keys():
  """Defect 10: the meta batch goes through the training batch's on-device
  augmentation (crop + flip on CIFAR-shaped data), with keys of its own."""
  ctx = base.StepContext(model=None, tx=None, attack=base.AttackSettings(0.03, 1, 0.01),
                         num_classes=10, augment="crop_flip", axis_name=None)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
           "label": np.arange(4, dtype=np.int32),
           "meta_image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
           "meta_label": np.arange(4, dtype=np.int32)}
  seen = {}

  def method_step(state, b, key):
    seen.update(b)
    return state, {}

  from caat_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  st = state_lib.TrainState(step=jnp.int32(3), params={"w": jnp.zeros(2)}, batch_stats={},
                            opt_state=(), rng=jax.random.PRNGKey(1), extra={})
  base.train_step(st, batch, method_step=method_step, ctx=ctx)
  aug_key, _ = jax.random.split(jax.random.fold_in(st.rng, st.step))
  meta_keys = base.sample_keys(jax.random.fold_in(aug_key, 0x3E7A), 4, None)
  want = augment_lib.random_crop_flip(augment_lib.to_float01(jnp.asarray(batch["meta_image"])),
                                      meta_keys)
  np.testing.assert_allclose(seen["meta_image"], want, atol=1e-6)  # x / 255 vs x * (1 / 255)
  assert not np.array_equal(seen["meta_image"], augment_lib.to_float01(batch["meta_image"]))


def _load(spec):
  """A config file's get_config(variant), as ``--config=path:variant`` loads it."""
  path, _, arg = spec.partition(":")
  sys.path.insert(0, ROOT)
  try:
    module_spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  finally:
    sys.path.remove(ROOT)


@pytest.mark.parametrize("name", ["cifar10_meta_caat", "digits_meta_caat"])
def test_ablation_variants_build_valid_configs(name):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  want = {"setting1": ("adversarial_only", "fixed"), "setting2": ("adversarial_only", "grad"),
          "setting3": ("combined", "fixed"), "setting4": ("combined", "grad"),
          "without": ("rule", "fixed")}
  for arg, (direction, bound) in want.items():
    c = _load(f"{path}:{arg}")
    assert (c.caat.direction, c.caat.bound) == (direction, bound), arg
    config_lib.validate(c)
  c = _load(f"{path}:features=110111")
  assert tuple(c.caat.feature_mask) == (1, 1, 0, 1, 1, 1)
  with pytest.raises(ValueError, match="six 0/1 digits"):
    _load(f"{path}:features=11011")


def test_table5_noise_is_flip2_and_frl_uses_the_reference_numbers():
  for name in ("cifar10_meta_caat_noisy", "cifar10_reinforce_caat_noisy"):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    doc = open(path).read()
    table5 = [line for line in doc.splitlines() if "# Table 5" in line][0]
    variant = table5.split(f"{name}.py:")[1].split()[0]
    assert _load(f"{path}:{variant}").data.noise_type == "flip2"
    assert _load(f"{path}:pairflip:0.2").data.noise_type == "pairflip"
  frl = _load(os.path.join(ROOT, "configs", "cifar10_frl.py"))
  assert (frl.optimizer.learning_rate, frl.trades.beta) == (0.001, 1.5)
