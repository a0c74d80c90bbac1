"""The diagnostic switches of issue 17 (Meta-CAAT under label noise):

1. ``attack.threat_model``: the official code's normalised-space bound (and
   clip) for the training attacks only;
2. ``caat.anti_bound_scale`` / ``caat.anti_bound_cap``: the anti-adversaries'
   bounds;
3. ``caat.weights='hard'``: one direction per sample, straight-through
   meta-gradient;
4. ``data.drop_corrupted``: the oracle that trains on the clean-label
   examples only.

Each switch is checked against a computation written out here, so a switch
that is ignored (or wired to the wrong place) fails. Attacks on a linear
model saturate their bound, which makes the per-channel bounds visible.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from caat_jax import attacks, config_lib, methods, train
from caat_jax.data import augment as augment_lib
from caat_jax.methods import base, perturb
from caat_jax.parallel import Parallel
from tests.helpers import digits_config

# a three-channel setting where every bound stays inside [0, 1]
MEAN = (0.2, 0.5, 0.6)
STD = (0.1, 0.2, 0.3)
EPS, B, SHAPE = 0.1, 8, (4, 4, 3)


def _keys(key, b):
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))


def _attack_cfg(threat_model, **kw):
  cfg = dict(eps=EPS, step_size=EPS / 4, step_rule="fixed", num_steps=10,
             threat_model=threat_model)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _ctx(threat_model, **kw):
  attack = base.AttackSettings.from_config(_attack_cfg(threat_model, **kw), unroll=True,
                                           mean=MEAN, std=STD)
  return base.StepContext(model=None, tx=None, attack=attack, num_classes=5, axis_name=None)


def _linear():
  """A linear classifier that normalises inside, as the models do."""
  w = jax.random.normal(jax.random.PRNGKey(0), (int(np.prod(SHAPE)), 5))
  mean, std = jnp.asarray(MEAN), jnp.asarray(STD)
  return lambda x: ((x - mean) / std).reshape(x.shape[0], -1) @ w


def _data(lo=0.3, hi=0.7):
  x = jax.random.uniform(jax.random.PRNGKey(1), (B,) + SHAPE, minval=lo, maxval=hi)
  y = jnp.arange(B) % 5
  return x, y


# -- 1. attack.threat_model ----------------------------------------------------

def _training_attacks(ctx, f, x, y):
  """Every kind of training attack: PGD-AT's (CE, uniform start), and the
  fused KL adversaries and CE anti-adversaries of TRADES / FRL / CAAT."""
  eps = ctx.full_eps(B)
  pgd_at = ctx.pgd(f, x, y, _keys(jax.random.PRNGKey(2), B), eps=eps, start="uniform")
  adv, anti = perturb.adversaries_and_anti(ctx, f, x, y, f(x), eps, jax.random.PRNGKey(3),
                                        jax.random.PRNGKey(4))
  return {"pgd_at": pgd_at, "adversary": adv, "anti_adversary": anti}


@pytest.mark.parametrize("threat_model", ["pixel", "normalized"])
def test_training_attack_bound_per_channel(threat_model):
  """``normalized``: channel c's perturbation reaches eps * std_c and never
  exceeds it; ``pixel``: every channel's reaches eps."""
  ctx, f = _ctx(threat_model), _linear()
  x, y = _data()
  bound = np.full(3, EPS) if threat_model == "pixel" else EPS * np.asarray(STD)
  for name, x_adv in _training_attacks(ctx, f, x, y).items():
    d = np.abs(np.asarray(x_adv) - np.asarray(x)).reshape(-1, 3)
    np.testing.assert_allclose(d.max(0), bound, rtol=1e-5, err_msg=name)
    assert np.all(d <= bound + 1e-6), name
    # saturated: most pixels sit on their channel's bound
    assert np.mean(np.isclose(d, bound, rtol=1e-4)) > 0.8, name


def _official_by_hand(f_norm, x, y, key, *, adversary):
  """The official ``caat_adv`` on normalised inputs u = (x - mean) / std
  (eps, step and the [0, 1] clip in u units, start u + 0.001 N), mapped back
  to pixels. One difference, ours: the start is projected before its first
  gradient, as SPEC 2 does in pixel space."""
  mean, std = np.asarray(MEAN), np.asarray(STD)
  u = (np.asarray(x, np.float64) - mean) / std
  noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, i), SHAPE))
                    for i in range(B)])
  clean = f_norm(jnp.asarray(u, jnp.float32))

  def loss(v):
    lv = jax.nn.log_softmax(f_norm(v))
    if adversary:  # KL(f(x) || f(x'))
      lp = jax.nn.log_softmax(clean)
      return jnp.sum(jnp.exp(lp) * (lp - lv))
    return -jnp.sum(jnp.take_along_axis(lv, jnp.asarray(y)[:, None], axis=-1))

  proj = lambda v: np.clip(np.clip(v, u - EPS, u + EPS), 0.0, 1.0)
  v = proj(u + 0.001 * noise)
  for _ in range(10):
    g = np.asarray(jax.grad(loss)(jnp.asarray(v, jnp.float32)))
    v = proj(v + (1 if adversary else -1) * EPS / 4 * np.sign(g))
  return mean + std * v


def test_normalized_clip_is_the_official_attack_in_pixels():
  """``normalized_clip``: the official attack on normalised inputs, mapped to
  pixels: bound eps * std_c, and every pixel clipped to [mean_c, mean_c +
  std_c] (which moves pixels far outside the eps-ball when x lies outside)."""
  ctx, f = _ctx("normalized_clip"), _linear()
  x, y = _data(0.0, 1.0)
  w = jax.random.normal(jax.random.PRNGKey(0), (int(np.prod(SHAPE)), 5))
  f_norm = lambda u: u.reshape(u.shape[0], -1) @ w  # the same classifier on u
  adv, anti = perturb.adversaries_and_anti(ctx, f, x, y, f(x), ctx.full_eps(B),
                                        jax.random.PRNGKey(3), jax.random.PRNGKey(4))
  # adversaries_and_anti keys sample i with fold_in(key, i)
  for got, key, adversary in ((adv, 3, True), (anti, 4, False)):
    want = _official_by_hand(f_norm, x, y, jax.random.PRNGKey(key), adversary=adversary)
    np.testing.assert_allclose(got, want, atol=2e-5)
  lo, hi = np.asarray(MEAN), np.asarray(MEAN) + np.asarray(STD)
  a = np.asarray(adv).reshape(-1, 3)
  assert np.all(a >= lo - 1e-6) and np.all(a <= hi + 1e-6)
  d = np.abs(a - np.asarray(x).reshape(-1, 3))
  assert d.max() > 0.3  # the clip, not the bound (at most 0.03), moved these


@pytest.mark.slow
def test_threat_model_reaches_every_training_attack(monkeypatch):
  """Every method's training attacks (Meta-CAAT's meta batch, Reinforce-CAAT's
  reward batch and the grad bound's start points included) get the threat
  model's scale and box, traced through each real step (no compile; the
  other switches ride along, so every combination here builds)."""
  calls = []
  real_pgd, real_start = attacks.pgd, attacks.random_start

  def pgd(*args, **kw):
    calls.append(("pgd", kw.get("scale"), kw.get("box")))
    return real_pgd(*args, **kw)

  def random_start(x, eps, keys, kind, scale=1.0, box=(0.0, 1.0)):
    calls.append(("start", scale, box))
    return real_start(x, eps, keys, kind, scale, box)

  monkeypatch.setattr(attacks, "pgd", pgd)
  monkeypatch.setattr(attacks, "random_start", random_start)
  cases = [("pgd_at", {}, 1), ("trades", {}, 1), ("frl", {}, 1),
           ("meta_caat", {"caat.bound": "grad", "meta.objective": "official"}, 2),
           ("meta_caat", {"meta.adversary_at": "current", "caat.weights": "hard",
                          "caat.anti_bound_scale": 0.5, "caat.anti_bound_cap": 1.0}, 2),
           ("reinforce_caat", {"reinforce.k": 1, "caat.anti_bound_scale": 0.0}, 2)]
  for name, overrides, num_pgd in cases:
    config = digits_config(method=name, batch_size=16, **{
        "attack.num_steps": 1, "meta.batch_size": 8,
        "attack.threat_model": "normalized_clip", **overrides})
    run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
    std, mean = run.dataset.std, run.dataset.mean
    ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
    batch = next(iter(run.input.batches(0)))
    batch = {k: augment_lib.to_float01(v) if "image" in k else v for k, v in batch.items()}
    state = jax.eval_shape(run.init_state)
    calls.clear()
    jax.eval_shape(run.method.make_step(config, ctx), state, batch, jax.random.PRNGKey(0))
    assert sum(c[0] == "pgd" for c in calls) == num_pgd, (name, calls)
    if overrides.get("caat.bound") == "grad":
      assert sum(c[0] == "start" for c in calls) == 2, calls
    for _, scale, box in calls:
      np.testing.assert_allclose(scale, std, err_msg=name)
      np.testing.assert_allclose(box[0], mean, err_msg=name)
      np.testing.assert_allclose(box[1], np.minimum(np.add(mean, std), 1.0), err_msg=name)


@pytest.mark.slow
def test_threat_model_leaves_evaluation_in_pixels(monkeypatch):
  """Evaluation attacks stay in pixel space (default scale and box) whatever
  the training threat model."""
  calls = []
  real_pgd = attacks.pgd

  def pgd(*args, **kw):
    calls.append(set(kw))
    return real_pgd(*args, **kw)

  monkeypatch.setattr(attacks, "pgd", pgd)
  config = digits_config(**{"attack.threat_model": "normalized_clip",
                            "eval.num_examples": 32, "eval.batch_size": 32})
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  assert run.ctx.attack.scale == run.dataset.std  # the training attacks do get it
  run.evaluate(run.parallel.replicate(jax.jit(run.init_state)()))
  assert calls
  for kw in calls:
    assert "scale" not in kw and "box" not in kw


@pytest.mark.parametrize("key,value,message", [
    ("attack.threat_model", "normalised",
     "config.attack.threat_model='normalised' is not valid; choose one of: 'pixel', "
     "'normalized', 'normalized_clip'"),
    ("caat.anti_bound_scale", -0.5, "config.caat.anti_bound_scale=-0.5 is not valid: must "
     "be >= 0"),
    ("caat.anti_bound_cap", -1.0, "config.caat.anti_bound_cap=-1.0 is not valid: must be >= 0"),
    ("caat.weights", "binary",
     "config.caat.weights='binary' is not valid; choose one of: 'soft', 'hard'"),
])
def test_bad_values_name_the_key(key, value, message):
  config = digits_config(method="meta_caat", **{key: value})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  assert message in str(err.value)
  assert "\n" not in str(err.value)


def test_threat_model_needs_the_statistics():
  with pytest.raises(ValueError, match="attack.threat_model='normalized' needs"):
    base.AttackSettings.from_config(_attack_cfg("normalized"), unroll=True)
  assert methods.base.THREAT_MODELS == ("pixel", "normalized", "normalized_clip")


# -- 2. caat.anti_bound_scale / caat.anti_bound_cap --------------------------

class _Seen(Exception):
  """Raised by the stand-in attack with the bounds and signs it was given."""


_STATES = {}


def _first_attack(config):
  """(run, state, batch, key, eps [n], sign [n]) of the first training attack
  of one real step: the step is traced up to that call, where a stand-in
  attack stops it, and only that part is compiled."""
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
  batch = next(iter(run.input.batches(0)))
  batch = {k: jnp.asarray(augment_lib.to_float01(v) if "image" in k else v)
           for k, v in batch.items()}
  key = jax.random.PRNGKey(5)
  if config.method not in _STATES:  # the knobs do not change the initial state
    _STATES[config.method] = jax.jit(run.init_state)()
  state = _STATES[config.method]
  step = run.method.make_step(config, ctx)

  def stand_in(logits_fn, x, y, *, eps, sign=None, **kw):
    raise _Seen(eps, sign)

  def up_to_the_attack(state, batch, key):
    try:
      step(state, batch, key)
    except _Seen as seen:  # the tracers belong to this trace: return them
      return seen.args
    raise AssertionError("the step made no attack")

  real = attacks.pgd
  attacks.pgd = stand_in
  try:
    eps, sign = jax.jit(up_to_the_attack)(state, batch, key)
  finally:
    attacks.pgd = real
  return run, state, batch, key, np.asarray(eps), np.asarray(sign)


def _meta_config(**overrides):
  return digits_config(method="meta_caat", batch_size=16, **{
      "attack.num_steps": 1, "meta.batch_size": 8, **overrides})


@pytest.mark.parametrize("scale,cap", [(1.0, 0.0), (0.0, 0.0), (2.0, 1.5)])
def test_meta_caat_anti_bound_fixed(scale, cap):
  """Fixed bound: adversaries get attack.eps, anti-adversaries
  min(scale * attack.eps, cap * attack.eps) (cap 0: no cap); the defaults
  leave them alone."""
  config = _meta_config(**{"caat.anti_bound_scale": scale, "caat.anti_bound_cap": cap})
  *_, eps, sign = _first_attack(config)
  e = config.attack.eps
  want_at = scale * e if cap == 0 else min(scale * e, cap * e)
  np.testing.assert_array_equal(sign, np.repeat([1.0, -1.0], 16))
  np.testing.assert_allclose(eps[:16], e, rtol=1e-6)
  np.testing.assert_allclose(eps[16:], want_at, rtol=1e-6)


def test_meta_caat_anti_bound_grad():
  """Grad bound (Eq. 26): the adversaries get Eq. 26's bounds, computed here
  from the step's weights and keys; the anti-adversaries those times the
  scale, capped at cap * attack.eps, a cap that binds for some samples and
  not for others."""
  from caat_jax.caat import bounds, features  # pylint: disable=g-import-not-at-top
  from caat_jax.methods import meta_caat  # pylint: disable=g-import-not-at-top
  scale, cap = 1.5, 2.4  # Eq. 26's bounds here are 1.3 to 1.9 attack.eps
  config = _meta_config(**{"caat.bound": "grad", "caat.anti_bound_scale": scale,
                           "caat.anti_bound_cap": cap})
  run, state, batch, key, eps, _ = _first_attack(config)
  # Eq. 26 directly, with the step's keys (key -> 4 keys) and weights
  x, y = batch["image"], batch["label"]
  f = lambda v: run.eval_model.apply({"params": state.params,
                                      "batch_stats": state.batch_stats}, v, train=False)
  clean = f(x)
  z, _ = features.strategy_inputs(clean, y, run.ctx.class_counts, state.extra["stats"],
                                         config.caat, None, False)
  w = meta_caat.weighting_net(config).apply({"params": state.extra["wnet"]}, z)
  k_adv, k_at, _, _ = jax.random.split(key, 4)
  e = config.attack.eps
  eq26 = np.asarray(jax.jit(lambda: bounds.grad_based(
      f, x, y, clean, w[:, 0], w[:, 1], eps=e, adv_keys=_keys(k_adv, 16),
      at_keys=_keys(k_at, 16), point=config.caat.grad_bound_point,
      offset=config.caat.grad_bound_offset))())
  # (float32 noise: the KL gradient at x + 0.001 N is a difference of near-equal terms)
  np.testing.assert_allclose(eps[:16], eq26, rtol=1e-3)
  np.testing.assert_allclose(eps[16:], np.minimum(scale * eq26, cap * e), rtol=1e-3)
  # and exactly, against the step's own Eq. 26 values
  capped = scale * eps[:16] > cap * e
  assert 0 < capped.sum() < 16, eq26 / e
  np.testing.assert_allclose(eps[16:][~capped], scale * eps[:16][~capped], rtol=1e-6)
  np.testing.assert_allclose(eps[16:][capped], cap * e, rtol=1e-6)


@pytest.mark.parametrize("scale,cap", [(0.5, 0.0), (0.5, 0.1)])
def test_reinforce_caat_anti_bound(scale, cap):
  """Reinforce-CAAT: the drawn bound (one choice, 12/255) for adversaries;
  min(scale * 12/255, cap * attack.eps) for anti-adversaries (0.1 * 0.1
  binds)."""
  config = digits_config(method="reinforce_caat", batch_size=16, **{
      "attack.num_steps": 1, "reinforce.reward": "paper", "reinforce.bound_set": (12,),
      "caat.anti_bound_scale": scale, "caat.anti_bound_cap": cap})
  *_, eps, sign = _first_attack(config)
  drawn = 12 / 255
  want_at = scale * drawn if cap == 0 else min(scale * drawn, cap * config.attack.eps)
  assert 0 < np.sum(sign > 0) < 16  # both directions drawn
  np.testing.assert_allclose(eps[sign > 0], drawn, rtol=1e-6)
  np.testing.assert_allclose(eps[sign < 0], want_at, rtol=1e-6)


def test_anti_bound_scale_zero_is_the_clean_input():
  """Bound 0: the anti-adversary is the clean input exactly, so the
  anti-adversarial term is CE on x."""
  ctx, f = _ctx("pixel"), _linear()
  x, y = _data()
  adv, anti = perturb.adversaries_and_anti(ctx, f, x, y, f(x), ctx.full_eps(B),
                                        jax.random.PRNGKey(3), jax.random.PRNGKey(4),
                                        jnp.zeros((B,)))
  np.testing.assert_array_equal(anti, x)
  assert np.abs(np.asarray(adv) - np.asarray(x)).max() > 0.09


# -- 3. caat.weights = 'hard' --------------------------------------------------

def _weights(weights, seed=0, n=32):
  """(fn(omega) -> [n, 2] as Meta-CAAT builds it, omega) on random features."""
  from caat_jax.methods import meta_caat  # pylint: disable=g-import-not-at-top
  config = digits_config(method="meta_caat", **{"caat.weights": weights, "caat.hidden": 8})
  z = jax.random.normal(jax.random.PRNGKey(seed), (n, 6)) * 2.0
  y = jnp.arange(n) % 10
  net = meta_caat.weighting_net(config)
  omega = net.init(jax.random.PRNGKey(1), z)["params"]
  # centre the output bias so that about half the samples choose each direction
  alpha = net.apply({"params": omega}, z)[:, 0]
  shift = jnp.median(jnp.log(alpha) - jnp.log1p(-alpha)) + 0.01
  omega["Dense_1"]["bias"] = omega["Dense_1"]["bias"] + jnp.array([0.0, shift])
  fn = meta_caat.weights_fn(config, tuple(range(10, 20)))
  return (lambda om: fn(om, z, y, jnp.zeros(n, bool))), omega


def test_hard_weights_are_one_direction_per_sample():
  soft, omega = _weights("soft")
  hard, _ = _weights("hard")
  w, ws = np.asarray(hard(omega)), np.asarray(soft(omega))
  assert set(np.unique(w)) == {0.0, 1.0}
  np.testing.assert_array_equal(w[:, 0], (ws[:, 0] >= ws[:, 1]).astype(np.float32))
  np.testing.assert_array_equal(w[:, 1], 1.0 - w[:, 0])
  assert 0 < w[:, 0].sum() < len(w)  # both directions occur here
  assert not np.all(np.isin(ws, (0.0, 1.0)))


def _meta_problem(weights_fn, quadratic: bool):
  """A tiny look-ahead problem: W in R^5, per-sample terms
  L_ik = 0.5 ||A_ik W - b_ik||^2, meta loss <c, W> (+ 0.5 ||W||^2 if
  ``quadratic``)."""
  from caat_jax import meta  # pylint: disable=g-import-not-at-top
  n, d = 32, 5
  ka, kb, kc = jax.random.split(jax.random.PRNGKey(7), 3)
  a = jax.random.normal(ka, (n, 2, 3, d))
  b = jax.random.normal(kb, (n, 2, 3))
  c = jax.random.normal(kc, (d,))

  def per_sample_fn(w):
    r = jnp.einsum("nkjd,d->nkj", a, w) - b
    return 0.5 * jnp.sum(r ** 2, -1), None

  def meta_loss_fn(w):
    return c @ w + (0.5 * w @ w if quadratic else 0.0)

  return meta.MetaProblem(weights_fn=weights_fn, per_sample_fn=per_sample_fn,
                          lookahead_fn=meta.sgd_lookahead(0.1), meta_loss_fn=meta_loss_fn,
                          lr=0.1), jnp.linspace(-1.0, 1.0, d), c, per_sample_fn


@pytest.mark.parametrize("variant", [
    pytest.param("nested_grad", marks=pytest.mark.slow), "jvp", "first_order",
    pytest.param("k_step", marks=pytest.mark.slow)])
def test_hard_meta_gradient_is_straight_through(variant):
  """With a meta loss linear in W, d meta / d w does not depend on w, so the
  straight-through meta-gradient of the hard weights equals the soft one,
  and both equal J_soft^T v, v_ik = -lr / n <c, grad L_ik(W)>, written out
  here. With a quadratic meta loss the hard forward weights change the
  look-ahead W_hat, and the two differ."""
  from caat_jax import meta  # pylint: disable=g-import-not-at-top
  soft, omega = _weights("soft")
  hard, _ = _weights("hard")
  cfg = ml_collections.ConfigDict({"variant": variant, "k": 1})
  fn = meta.make(cfg)
  grads = {}
  for name, wf in (("soft", soft), ("hard", hard)):
    problem, params, c, per_sample_fn = _meta_problem(wf, quadratic=False)
    grads[name] = fn(problem, omega, params)[0]
  per_term = jax.jacrev(lambda w: per_sample_fn(w)[0])(params)  # [n, 2, d]
  v = -0.1 / 32 * jnp.einsum("nkd,d->nk", per_term, c)
  _, vjp = jax.vjp(soft, omega)
  (by_hand,) = vjp(v)
  leaves = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  assert np.linalg.norm(leaves(grads["hard"])) > 1e-4
  np.testing.assert_allclose(leaves(grads["hard"]), leaves(by_hand), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(leaves(grads["soft"]), leaves(by_hand), rtol=1e-4, atol=1e-7)
  if variant == "first_order":
    return  # the meta gradient at W: the forward weights never enter it
  quad = {name: leaves(fn(_meta_problem(wf, quadratic=True)[0], omega, params)[0])
          for name, wf in (("soft", soft), ("hard", hard))}
  assert np.abs(quad["hard"] - quad["soft"]).max() > 1e-3 * np.abs(quad["soft"]).max()


# -- 4. data.drop_corrupted ----------------------------------------------------

def test_drop_corrupted_keeps_the_clean_labels_only():
  """Digits, 40% uniform noise: no corrupted example is left, the kept ones
  are exactly the noisy split's uncorrupted ones (about 60% of it), and the
  meta and test splits are untouched."""
  from caat_jax import data  # pylint: disable=g-import-not-at-top
  cfg = digits_config(**{"data.noise_type": "uniform", "data.noise_rate": 0.4}).data
  noisy = data.load_dataset(cfg)
  cfg.drop_corrupted = True
  oracle = data.load_dataset(cfg)
  assert noisy.train.corrupted.any() and not oracle.train.corrupted.any()
  keep = ~noisy.train.corrupted
  np.testing.assert_array_equal(oracle.train.source_index, noisy.train.source_index[keep])
  np.testing.assert_array_equal(oracle.train.labels, noisy.train.clean_labels[keep])
  assert abs(len(oracle.train) / len(noisy.train) - 0.6) < 0.05
  for split in ("meta", "test"):
    np.testing.assert_array_equal(getattr(oracle, split).source_index,
                                  getattr(noisy, split).source_index)


@pytest.mark.parametrize("overrides", [{}, {"data.noise_rate": 0.4},
                                       {"data.noise_type": "uniform"}])
def test_drop_corrupted_needs_noise(overrides):
  config = digits_config(**{"data.drop_corrupted": True, **overrides})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  message = str(err.value)
  assert "config.data.drop_corrupted=True" in message and "config.data.noise_rate=" in message
  assert "\n" not in message


def test_oracle_direction_follows_the_corrupted_flag():
  """caat.direction='oracle' (issue 17's best fixed treatment): clean samples
  adversarial, corrupted ones anti-adversarial, whatever the features; it
  refuses a run without label noise."""
  from caat_jax.methods import meta_caat  # pylint: disable=g-import-not-at-top
  noisy = {"data.noise_type": "uniform", "data.noise_rate": 0.4}
  config = digits_config(method="meta_caat", **{"caat.direction": "oracle", **noisy})
  config_lib.validate(config)
  fn = meta_caat.weights_fn(config, tuple(range(10, 20)))
  corrupted = jnp.array([True, False, False, True, False])
  z = jax.random.normal(jax.random.PRNGKey(0), (5, 6))
  w = np.asarray(fn(None, z, jnp.arange(5), corrupted))
  np.testing.assert_array_equal(w, [[0, 1], [1, 0], [1, 0], [0, 1], [1, 0]])
  with pytest.raises(config_lib.ConfigError, match="caat.direction='oracle'.*noise_rate=0.0"):
    config_lib.validate(digits_config(method="meta_caat", **{"caat.direction": "oracle"}))
