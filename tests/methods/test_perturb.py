"""The training attacks (docs/method.md §2): ``attack.threat_model`` (the
official code's normalised-space bound and clip, for the training attacks
only), an anti-bound scale of zero, and the fused attack against separate
attacks. Each is checked against a computation written out here."""

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from caat_jax import attacks, losses, methods, train
from caat_jax.caat import reinforce
from caat_jax.data import augment as augment_lib
from caat_jax.methods import base, perturb
from caat_jax.parallel import Parallel
from tests.helpers import digits_config, sample_keys

# a three-channel setting where every bound stays inside [0, 1]
MEAN = (0.2, 0.5, 0.6)


STD = (0.1, 0.2, 0.3)


EPS, B, SHAPE = 0.1, 8, (4, 4, 3)


def _attack_cfg(threat_model, **kw):
  cfg = dict(eps=EPS, step_size=EPS / 4, step_rule="fixed", num_steps=10, threat_model=threat_model)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _ctx(threat_model, **kw):
  attack = base.AttackSettings.from_config(
    _attack_cfg(threat_model, **kw), unroll=True, mean=MEAN, std=STD
  )
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


def _training_attacks(ctx, f, x, y):
  """Every kind of training attack: PGD-AT's (CE, uniform start), and the
  fused KL adversaries and CE anti-adversaries of TRADES / FRL / CAAT."""
  eps = ctx.full_eps(B)
  pgd_at = ctx.pgd(f, x, y, sample_keys(jax.random.PRNGKey(2), B), eps=eps, start="uniform")
  adv, anti = perturb.adversaries_and_anti(
    ctx, f, x, y, f(x), eps=eps, k_adv=jax.random.PRNGKey(3), k_at=jax.random.PRNGKey(4)
  )
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
  gradient, as docs/method.md §2 does in pixel space."""
  mean, std = np.asarray(MEAN), np.asarray(STD)
  u = (np.asarray(x, np.float64) - mean) / std
  noise = np.stack(
    [np.asarray(jax.random.normal(jax.random.fold_in(key, i), SHAPE)) for i in range(B)]
  )
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
  adv, anti = perturb.adversaries_and_anti(
    ctx, f, x, y, f(x), eps=ctx.full_eps(B), k_adv=jax.random.PRNGKey(3), k_at=jax.random.PRNGKey(4)
  )
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
  cases = [
    ("pgd_at", {}, 1),
    ("trades", {}, 1),
    ("frl", {}, 1),
    ("meta_caat", {"caat.bound": "grad", "meta.objective": "official"}, 2),
    (
      "meta_caat",
      {
        "meta.adversary_at": "current",
        "caat.weights": "hard",
        "caat.anti_bound_scale": 0.5,
        "caat.anti_bound_cap": 1.0,
      },
      2,
    ),
    ("reinforce_caat", {"reinforce.k": 1, "caat.anti_bound_scale": 0.0}, 2),
  ]
  for name, overrides, num_pgd in cases:
    config = digits_config(
      method=name,
      batch_size=16,
      **{
        "attack.num_steps": 1,
        "meta.batch_size": 8,
        "attack.threat_model": "normalized_clip",
        **overrides,
      },
    )
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
  config = digits_config(
    **{"attack.threat_model": "normalized_clip", "eval.num_examples": 32, "eval.batch_size": 32}
  )
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  assert run.ctx.attack.scale == run.dataset.std  # the training attacks do get it
  run.evaluate(run.parallel.replicate(jax.jit(run.init_state)()))
  assert calls
  for kw in calls:
    assert "scale" not in kw and "box" not in kw


def test_threat_model_needs_the_statistics():
  with pytest.raises(ValueError, match="attack.threat_model='normalized' needs"):
    base.AttackSettings.from_config(_attack_cfg("normalized"), unroll=True)
  assert methods.base.THREAT_MODELS == ("pixel", "normalized", "normalized_clip")


def test_anti_bound_scale_zero_is_the_clean_input():
  """Bound 0: the anti-adversary is the clean input exactly, so the
  anti-adversarial term is CE on x."""
  ctx, f = _ctx("pixel"), _linear()
  x, y = _data()
  adv, anti = perturb.adversaries_and_anti(
    ctx,
    f,
    x,
    y,
    f(x),
    eps=ctx.full_eps(B),
    k_adv=jax.random.PRNGKey(3),
    k_at=jax.random.PRNGKey(4),
    eps_at=jnp.zeros((B,)),
  )
  np.testing.assert_array_equal(anti, x)
  assert np.abs(np.asarray(adv) - np.asarray(x)).max() > 0.09


def test_fused_attack_equals_separate_attacks():
  """One PGD pass with per-sample sign, bound and loss gives each sample what
  the adversarial (KL ascent) and anti-adversarial (CE descent) attacks give
  when run on their own samples."""
  config = digits_config(method="reinforce_caat", **{"attack.num_steps": 5})
  ctx = base.StepContext(
    model=None,
    tx=None,
    num_classes=10,
    axis_name=None,
    attack=base.AttackSettings.from_config(config.attack, unroll=True),
  )
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
    fused = perturb.perturb(
      ctx,
      fn,
      x,
      y,
      clean,
      eps=jnp.asarray(eps),
      keys=keys,
      adversary=jnp.asarray(direction) == reinforce.ADVERSARY,
    )

    def separate(idx, kind, sign):
      e = eps[idx]
      return attacks.pgd(
        fn,
        x[idx],
        y[idx],
        eps=e,
        step_size=ctx.attack.step_sizes(e),
        num_steps=5,
        keys=keys[idx],
        sign=jnp.full(idx.shape, sign),
        loss_kind=jnp.full(idx.shape, kind),
        clean_logits=clean[idx],
        start="gaussian",
        unroll=True,
      )

    kl = lambda v: losses.kl_divergence(clean, fn(v))
    ce = lambda v: losses.cross_entropy(fn(v), y)
    return dict(
      fused=fused,
      adv=separate(adv, attacks.LOSS_KL, 1.0),
      anti=separate(anti, attacks.LOSS_CE, -1.0),
      kl=kl(fused),
      kl_corner=kl(corner),
      ce=ce(fused),
      ce_corner=ce(corner),
      ce_clean=ce(x),
    )

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
