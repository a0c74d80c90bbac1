"""Meta-CAAT (docs/method.md §5) against independent computations.

One run (grad bound, meta step every 3 steps, the official look-ahead with
momentum and weight decay) takes 7 steps on one device; each test reads
that trajectory and compares it with a hand computation. Slow: the fixture
compiles a whole Meta-CAAT step (about a minute on a loaded 2-core CPU).

Also, on one step: Setting I equals TRADES with beta = lam, FRL's fairness
modes weigh as FRL does, meta batches are augmented with their own keys, the
anti-adversaries' bounds, the oracle direction; and through the real trainer
and across devices: the fixed directions ``rule`` (Table 9 "Without") and
``adversarial_only`` end to end, 8 devices against 1 with the grad bound and
with fairness on, fairness with re-margined bounds."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import bench, config_lib, data, metrics, train
from caat_jax.caat import bounds, fairness, features
from caat_jax.data import augment as augment_lib
from caat_jax.methods import base, meta_caat, strategy_stats
from caat_jax.parallel import Parallel
from tests.helpers import (
  assert_tree_close,
  digits_config,
  first_training_attack,
  records,
  sample_keys,
  tree_dist,
)

STEPS, INTERVAL = 7, 3


@pytest.fixture(scope="module")
def trajectory():
  """(run, states [STEPS + 1], step metrics [STEPS], host batches [STEPS])."""
  config = digits_config(
    method="meta_caat",
    batch_size=32,
    **{
      "attack.num_steps": 1,
      "meta.batch_size": 16,
      "caat.bound": "grad",
      "meta.interval": INTERVAL,
      "meta.lookahead": "sgd_momentum_wd",
    },
  )
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  rstate = run.parallel.replicate(jax.jit(run.init_state)())  # one compile, not one per op
  fetch = lambda tree: jax.tree.map(np.array, run.parallel.fetch(tree))  # copies
  states, step_metrics, batches = [fetch(rstate)], [], []
  it = run.input.batches(0)
  for _ in range(STEPS):
    batch = next(it)
    rstate, m = run.train_step(rstate, run.parallel.shard(batch))
    states.append(fetch(rstate))
    step_metrics.append(fetch(m))
    batches.append(batch)
  return run, states, step_metrics, batches


def _changed(a, b) -> bool:
  return any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _grad_bound_by_hand(run, state, batch, swap_keys=False):
  """Eq. 26 with the normalisation of docs/method.md §4, written out: the step's keys
  (fold_in(rng, step) -> augmentation / method key -> 4 keys -> sample i's
  fold_in(k, i)), start points x + 0.001 N clipped, input gradients of the
  summed KL / CE (the model is batch-independent in inference mode), L2 norms
  over the batch maximum, weights from the weighting net before this step's
  meta update."""
  config = run.config
  eps = config.attack.eps
  key = jax.random.fold_in(jnp.asarray(state.rng), jnp.asarray(state.step))
  _, method_key = jax.random.split(key)
  k_adv, k_at, _, _ = jax.random.split(method_key, 4)
  if swap_keys:
    k_adv, k_at = k_at, k_adv
  x = jnp.asarray(augment_lib.to_float01(batch["image"]))
  y = jnp.asarray(batch["label"])
  b = x.shape[0]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  f = lambda v: run.eval_model.apply(variables, v, train=False)
  clean = f(x)
  z, _ = features.strategy_inputs(
    clean, y, run.ctx.class_counts, state.extra["stats"], config.caat, None, False
  )
  w = np.asarray(meta_caat.weighting_net(config).apply({"params": state.extra["wnet"]}, z))

  def start(k):
    noise = np.stack(
      [np.asarray(jax.random.normal(jax.random.fold_in(k, i), x.shape[1:])) for i in range(b)]
    )
    return jnp.asarray(np.clip(np.asarray(x) + 0.001 * noise, 0.0, 1.0))

  def kl_sum(v):
    lp, lq = jax.nn.log_softmax(clean), jax.nn.log_softmax(f(v))
    return jnp.sum(jnp.exp(lp) * (lp - lq))

  def ce_sum(v):
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(f(v)), y[:, None], axis=-1))

  norm = lambda g: np.sqrt((np.asarray(g, np.float64).reshape(b, -1) ** 2).sum(-1))
  g_adv = norm(jax.grad(kl_sum)(start(k_adv)))
  g_at = norm(jax.grad(ce_sum)(start(k_at)))
  g_adv, g_at = g_adv / g_adv.max(), g_at / g_at.max()
  return (w[:, 0] * g_adv + w[:, 1] * g_at + 0.9) * eps, np.asarray(y)


@pytest.mark.parametrize("t", [0, 4])
@pytest.mark.slow  # the trajectory fixture compiles a whole Meta-CAAT step
def test_grad_bound_in_the_step_is_eq26_by_hand(trajectory, t):
  """The per-class sums of eps_i the step logs are those of Eq. 26 computed
  by hand on the same inputs and keys; eps_i lies in [0.9 eps, 1.9 eps]
  (alpha + beta = 1, each normalised norm <= 1) and varies.

  Tolerance: the KL gradient at x + 0.001 N is J^T (q - p) with q - p a
  difference of two nearly equal float32 softmaxes, so g_adv carries a
  relative rounding error of about 1e-3 once the model has trained a few
  steps (the compiled step and this eager computation differ by 0.2% at
  t = 4, the same inputs giving the same numbers eagerly). Another key or
  another mix moves the sums by far more (checked below)."""
  run, states, step_metrics, batches = trajectory
  eps, rtol = run.config.attack.eps, 5e-3
  want, y = _grad_bound_by_hand(run, states[t], batches[t])
  m = step_metrics[t]
  c = run.dataset.num_classes
  per_class_sums = np.bincount(y, want, c)
  np.testing.assert_allclose(m["ratio/eps_per_class/num"], per_class_sums, rtol=rtol)
  np.testing.assert_allclose(m["ratio/eps_per_class/den"], np.bincount(y, minlength=c))
  np.testing.assert_allclose(m["eps"], want.mean(), rtol=rtol)
  swapped, _ = _grad_bound_by_hand(run, states[t], batches[t], swap_keys=True)
  gap = np.abs(np.bincount(y, swapped, c) - per_class_sums) / np.maximum(per_class_sums, 1e-9)
  assert gap.max() > 4 * rtol
  assert want.min() >= 0.9 * eps - 1e-7 and want.max() <= 1.9 * eps + 1e-7
  per_class = metrics.mean_metrics([m])["train/eps_per_class"]
  seen = [v for v in per_class if v is not None]
  assert all(0.9 * eps - 1e-6 <= v <= 1.9 * eps + 1e-6 for v in seen)
  assert max(seen) - min(seen) > 0.01 * eps  # not the fixed bound
  assert want.max() - want.min() > 0.1 * eps


@pytest.mark.slow  # the trajectory fixture
def test_meta_interval(trajectory):
  """With interval 3 the weighting net and its Adam state change exactly at
  steps 0, 3, 6; the classifier changes at every step; the logged meta loss
  is the mean over the meta steps only."""
  _, states, step_metrics, _ = trajectory
  meta_steps = [t for t in range(STEPS) if t % INTERVAL == 0]
  for t in range(STEPS):
    before, after = states[t], states[t + 1]
    assert _changed(before.extra["wnet"], after.extra["wnet"]) == (t in meta_steps), t
    assert _changed(before.params, after.params), t
  adam_count = [
    int(np.asarray(leaf))
    for leaf in jax.tree.leaves(states[-1].extra["wnet_opt"])
    if np.ndim(leaf) == 0
  ]
  assert adam_count and all(n == len(meta_steps) for n in adam_count)
  den = np.array([float(m["ratio/meta_loss/den"][0]) for m in step_metrics])
  num = np.array([float(m["ratio/meta_loss/num"][0]) for m in step_metrics])
  norms = np.array([float(m["meta_grad_norm"]) for m in step_metrics])
  is_meta = np.isin(np.arange(STEPS), meta_steps)
  np.testing.assert_array_equal(den, is_meta.astype(float))
  assert np.all(num[is_meta] > 0) and np.all(num[~is_meta] == 0)
  assert np.all(norms[is_meta] > 0) and np.all(norms[~is_meta] == 0)
  record = metrics.mean_metrics(step_metrics)
  np.testing.assert_allclose(record["train/meta_loss"][0], num[is_meta].mean(), rtol=1e-5)


@pytest.mark.slow  # the trajectory fixture
def test_momentum_lookahead_reads_the_real_momentum(trajectory):
  """After 7 real steps, the look-ahead is W - lr (mu m + g + wd W) with m the
  real optimiser's momentum now. m is recovered from the trajectory alone:
  with coupled weight decay and heavy-ball momentum W_7 = W_6 - lr_6 m_7."""
  run, states, _, _ = trajectory
  opt = run.config.optimizer
  s6, s7 = states[-2], states[-1]
  assert int(s7.step) == STEPS
  lr6, lr7 = float(run.schedule(STEPS - 1)), float(run.schedule(STEPS))
  m = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) - b) / lr6, s6.params, s7.params)
  rng = np.random.default_rng(0)
  g = jax.tree.map(lambda p: rng.normal(size=np.shape(p)).astype(np.float32), s7.params)
  look = meta_caat._lookahead_fn("sgd_momentum_wd", opt)(s7, lr7)  # pylint: disable=protected-access
  got = look(s7.params, g)
  want = jax.tree.map(
    lambda p, mm, gg: p - lr7 * (opt.momentum * mm + gg + opt.weight_decay * p), s7.params, m, g
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6), got, want)
  # the buffer matters: a zero buffer would miss lr mu m
  no_buffer = jax.tree.map(lambda p, gg: p - lr7 * (gg + opt.weight_decay * p), s7.params, g)
  gap = max(
    float(np.abs(np.asarray(a) - b).max())
    for a, b in zip(jax.tree.leaves(no_buffer), jax.tree.leaves(want))
  )
  assert gap > 100 * 2e-6


# --- one step against independent computations -------------------------------


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


def _fair(num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "lambda0": jnp.asarray(rng.uniform(0, 0.05, num_classes), jnp.float32),
    "lambda1": jnp.asarray(rng.uniform(0, 0.05, num_classes), jnp.float32),
    "lambda2": jnp.asarray(rng.uniform(-0.3, 0.4, num_classes), jnp.float32),
    "baseline_w": jnp.asarray(fairness.baseline_reweight(rng.uniform(size=num_classes))),
  }


def test_setting1_is_trades_with_beta_lam():
  """Defect 11: adversaries only with a fixed bound runs no anti-adversary
  (no attack, no forward pass, no BatchNorm update from it) and is a TRADES
  step with beta = lam, same keys."""
  lam = 2.5
  kw = {"attack.num_steps": 3, "meta.batch_size": 32}
  got, m = _one_step(
    digits_config(
      method="meta_caat",
      **kw,
      **{"caat.direction": "adversarial_only", "caat.bound": "fixed", "caat.lam": lam},
    )
  )
  want, m_t = _one_step(digits_config(method="trades", **kw, **{"trades.beta": lam}))
  assert_tree_close(got, want)
  np.testing.assert_allclose(m["loss"], m_t["loss"], rtol=1e-5)
  assert "anti_acc" not in m
  # and it costs what TRADES costs in the benchmark's accounting
  c = digits_config(method="meta_caat", **{"caat.direction": "adversarial_only"})
  assert bench.forward_units(c) == bench.forward_units(digits_config(method="trades"))


@pytest.mark.parametrize(
  "mode",
  [
    m if m == "reweight_remargin" else pytest.param(m, marks=pytest.mark.slow)
    for m in fairness.MODES
  ],
)  # the default suite runs the mode with weights and margins
def test_meta_caat_fairness_modes_weigh_as_frl(mode):
  """Defect 5: with fairness on, each of FRL's four modes changes Meta-CAAT's
  loss exactly as FRL's (Setting I with FRL's bounds = FRL with beta = lam),
  from the same non-zero multipliers."""
  fair = _fair()
  bound = "remargin" if mode in fairness.MARGIN_MODES else "fixed"
  # a step size at which the bound binds, so class-wise bounds matter
  kw = {
    "attack.num_steps": 2,
    "attack.step_size": 0.08,
    "meta.batch_size": 32,
    "fairness.mode": mode,
  }
  got, _ = _one_step(
    digits_config(
      method="meta_caat",
      **kw,
      **{
        "caat.direction": "adversarial_only",
        "caat.bound": bound,
        "caat.lam": 1.5,
        "fairness.enabled": True,
      },
    ),
    fair,
  )
  want, _ = _one_step(digits_config(method="frl", **kw, **{"trades.beta": 1.5}), fair)
  assert_tree_close(got, want)
  plain, _ = _one_step(digits_config(method="trades", **kw, **{"trades.beta": 1.5}))
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  assert np.abs(flat(got) - flat(plain)).max() > 1e-6  # the mode did change the step


def test_meta_batches_are_augmented_with_their_own_keys():
  """Defect 10: the meta batch goes through the training batch's on-device
  augmentation (crop + flip on CIFAR-shaped data), with keys of its own."""
  ctx = base.StepContext(
    model=None,
    tx=None,
    attack=base.AttackSettings(0.03, 1, 0.01),
    num_classes=10,
    augment="crop_flip",
    axis_name=None,
  )
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
    "label": np.arange(4, dtype=np.int32),
    "meta_image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
    "meta_label": np.arange(4, dtype=np.int32),
  }
  seen = {}

  def method_step(state, b, key):
    seen.update(b)
    return state, {}

  from caat_jax import state as state_lib  # pylint: disable=g-import-not-at-top

  st = state_lib.TrainState(
    step=jnp.int32(3),
    params={"w": jnp.zeros(2)},
    batch_stats={},
    opt_state=(),
    rng=jax.random.PRNGKey(1),
    extra={},
  )
  base.train_step(st, batch, method_step=method_step, ctx=ctx)
  aug_key, _ = jax.random.split(jax.random.fold_in(st.rng, st.step))
  meta_keys = base.sample_keys(jax.random.fold_in(aug_key, 0x3E7A), 4, None)
  want = augment_lib.random_crop_flip(
    augment_lib.to_float01(jnp.asarray(batch["meta_image"])), meta_keys
  )
  np.testing.assert_allclose(seen["meta_image"], want, atol=1e-6)  # x / 255 vs x * (1 / 255)
  assert not np.array_equal(seen["meta_image"], augment_lib.to_float01(batch["meta_image"]))


def _meta_config(**overrides):
  return digits_config(
    method="meta_caat", batch_size=16, **{"attack.num_steps": 1, "meta.batch_size": 8, **overrides}
  )


@pytest.mark.parametrize("scale,cap", [(1.0, 0.0), (0.0, 0.0), (2.0, 1.5)])
def test_meta_caat_anti_bound_fixed(scale, cap):
  """Fixed bound: adversaries get attack.eps, anti-adversaries
  min(scale * attack.eps, cap * attack.eps) (cap 0: no cap); the defaults
  leave them alone."""
  config = _meta_config(**{"caat.anti_bound_scale": scale, "caat.anti_bound_cap": cap})
  *_, eps, sign = first_training_attack(config)
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
  config = _meta_config(
    **{"caat.bound": "grad", "caat.anti_bound_scale": scale, "caat.anti_bound_cap": cap}
  )
  run, state, batch, key, eps, _ = first_training_attack(config)
  # Eq. 26 directly, with the step's keys (key -> 4 keys) and weights
  x, y = batch["image"], batch["label"]
  f = lambda v: run.eval_model.apply(
    {"params": state.params, "batch_stats": state.batch_stats}, v, train=False
  )
  clean = f(x)
  z, _ = features.strategy_inputs(
    clean, y, run.ctx.class_counts, state.extra["stats"], config.caat, None, False
  )
  w = meta_caat.weighting_net(config).apply({"params": state.extra["wnet"]}, z)
  k_adv, k_at, _, _ = jax.random.split(key, 4)
  e = config.attack.eps
  eq26 = np.asarray(
    jax.jit(
      lambda: bounds.grad_based(
        f,
        x,
        y,
        clean,
        w[:, 0],
        w[:, 1],
        eps=e,
        adv_keys=sample_keys(k_adv, 16),
        at_keys=sample_keys(k_at, 16),
        point=config.caat.grad_bound_point,
        offset=config.caat.grad_bound_offset,
      )
    )()
  )
  # (float32 noise: the KL gradient at x + 0.001 N is a difference of near-equal terms)
  np.testing.assert_allclose(eps[:16], eq26, rtol=1e-3)
  np.testing.assert_allclose(eps[16:], np.minimum(scale * eq26, cap * e), rtol=1e-3)
  # and exactly, against the step's own Eq. 26 values
  capped = scale * eps[:16] > cap * e
  assert 0 < capped.sum() < 16, eq26 / e
  np.testing.assert_allclose(eps[16:][~capped], scale * eps[:16][~capped], rtol=1e-6)
  np.testing.assert_allclose(eps[16:][capped], cap * e, rtol=1e-6)


def test_oracle_direction_follows_the_corrupted_flag():
  """caat.direction='oracle' (the best fixed treatment under label noise): clean samples
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


# --- through the real trainer and across devices ----------------------------


@pytest.mark.parametrize("direction", ["rule", "adversarial_only"])
@pytest.mark.slow  # trains end to end
def test_fixed_directions_end_to_end(tmp_path, direction):
  """On digits with a long tail (imbalance 10): ``rule`` makes every sample of
  a head class (training count at or above the median count, computed here
  from the training labels) anti-adversarial and every tail sample
  adversarial, with the fixed bound; ``adversarial_only`` makes every sample
  adversarial. Neither takes a meta step; the run evaluates."""
  config = digits_config(
    method="meta_caat",
    **{"caat.direction": direction, "data.imbalance_factor": 10.0, "meta.batch_size": 32},
  )
  docs = train.train_and_evaluate(config, str(tmp_path))
  labels = data.load_dataset(config.data).train.labels
  counts = np.bincount(labels, minlength=10)
  assert counts[0] >= 5 * counts[9]  # really long-tailed
  head = counts >= np.median(counts)
  want = np.where(head, 0.0, 1.0) if direction == "rule" else np.ones(10)
  steps = [r for r in records(tmp_path) if "train/adv_ratio_per_class" in r]
  assert steps
  seen_head = seen_tail = False
  for r in steps:
    for c, (ratio, eps) in enumerate(zip(r["train/adv_ratio_per_class"], r["train/eps_per_class"])):
      if ratio is None:
        continue
      assert ratio == want[c], (r["step"] if "step" in r else r, c)
      np.testing.assert_allclose(eps, config.attack.eps, rtol=1e-5)
      seen_head |= bool(head[c])
      seen_tail |= not head[c]
    assert r["train/meta_grad_norm"] == 0.0
    assert r["train/meta_loss"] == [None]  # no meta step in the window
    assert ("train/anti_acc" in r) == (direction == "rule")
  assert seen_head and seen_tail
  assert os.path.exists(os.path.join(tmp_path, "eval.json"))
  assert np.isfinite(docs[0]["avg"]["robust"]) and docs[0]["num_examples"] > 0


def _train(num_devices, fair=None, steps=2, **overrides):
  config = digits_config(method="meta_caat", **{"meta.batch_size": 32, **overrides})
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:num_devices]))
  state = run.init_state()
  if fair is not None:
    state = state.replace(extra=dict(state.extra, fair=fair))
  init = jax.tree.map(np.array, state)
  rstate = run.parallel.replicate(state)
  batches = run.input.batches(epoch=0)
  out = []
  for _ in range(steps):
    rstate, m = run.train_step(rstate, run.parallel.shard(next(batches)))
    out.append(run.parallel.fetch(m))
  return init, run.parallel.fetch(rstate), out


def _agree(fair=None, eps_rtol=1e-3, **overrides):
  """One device and eight reach the same parameters (within 1% of the update,
  see test_parallel), the same per-class bounds and the same losses."""
  init, ref, ref_m = _train(1, fair, **overrides)
  _, got, got_m = _train(8, fair, **overrides)
  update = tree_dist(ref.params, init.params)
  assert update > 1e-3
  assert tree_dist(got.params, ref.params) < 1e-2 * update
  assert tree_dist(got.extra, ref.extra) <= 1e-2 * (tree_dist(ref.extra, init.extra) + 1e-6)
  for m, r in zip(got_m, ref_m):
    np.testing.assert_allclose(m["ratio/eps_per_class/den"], r["ratio/eps_per_class/den"])
    np.testing.assert_allclose(
      m["ratio/eps_per_class/num"], r["ratio/eps_per_class/num"], rtol=eps_rtol
    )
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-3)
  return ref_m


@pytest.mark.slow  # compiles Meta-CAAT on 1 and 8 devices
def test_grad_bound_eight_devices_equal_one():
  """The grad bound divides each norm by its maximum over the *global*
  batch: with a per-device maximum (8 samples each) eps would differ by
  tens of percent. The KL term's float32 cancellation (see
  the grad-bound step test above) allows 1% between differently compiled programs."""
  ref_m = _agree(eps_rtol=1e-2, **{"caat.bound": "grad"})
  num = np.asarray(ref_m[0]["ratio/eps_per_class/num"])
  den = np.asarray(ref_m[0]["ratio/eps_per_class/den"])
  per_class = num[den > 0] / den[den > 0]
  assert per_class.max() - per_class.min() > 1e-3  # not the fixed bound


@pytest.mark.slow  # compiles Meta-CAAT on 1 and 8 devices
def test_fairness_eight_devices_equal_one():
  """Fairness on (ReWeight + ReMargin) from non-zero multipliers: class
  weights normalised over the global batch, ReMargin bounds per class."""
  rng = np.random.default_rng(0)
  fair = {
    "lambda0": rng.uniform(0, 0.05, 10).astype(np.float32),
    "lambda1": rng.uniform(0, 0.05, 10).astype(np.float32),
    "lambda2": rng.uniform(-0.3, 0.4, 10).astype(np.float32),
  }
  fair = dict(jax.tree.map(np.asarray, fairness.init(10)), **fair)  # every key the state carries
  ref_m = _agree(
    fair,
    **{"fairness.enabled": True, "fairness.mode": "reweight_remargin", "caat.bound": "remargin"},
  )
  num = np.asarray(ref_m[0]["ratio/eps_per_class/num"])
  den = np.asarray(ref_m[0]["ratio/eps_per_class/den"])
  margins = np.clip(np.exp(2 * fair["lambda2"]), 0.98, 2.5)
  np.testing.assert_allclose(num[den > 0] / den[den > 0], 0.1 * margins[den > 0], rtol=1e-5)


def test_meta_caat_with_fairness_and_remargin_bounds(tmp_path):
  config = digits_config(
    method="meta_caat",
    num_epochs=2,
    **{
      "fairness.enabled": True,
      "caat.bound": "remargin",
      "fairness.attack_steps": 3,
      "meta.batch_size": 32,
    },
  )
  docs = train.train_and_evaluate(config, str(tmp_path))
  recs = records(tmp_path)
  fair = [r for r in recs if "fair/lambda2" in r]
  assert len(fair) == 2
  steps = [r for r in recs if "train/eps_per_class" in r]
  first_epoch = [r for r in steps if r["epoch"] == 0]
  second_epoch = [r for r in steps if r["epoch"] == 1]
  # each epoch runs with the ReMargin bounds of the update made before it
  # (epoch 0 included, as FRL's reference does)
  for epoch_records, update in ((first_epoch, fair[0]), (second_epoch, fair[1])):
    expected = config.attack.eps * np.clip(np.exp(2 * np.array(update["fair/lambda2"])), 0.98, 2.5)
    got = np.array(epoch_records[-1]["train/eps_per_class"], dtype=float)
    seen = ~np.isnan(got)
    np.testing.assert_allclose(got[seen], expected[seen], rtol=1e-5)
  assert not np.allclose(fair[0]["fair/lambda2"], 0)
  assert np.isfinite(docs[0]["avg"]["robust"])
  assert all(
    0.0 <= a <= 1.0 for a in second_epoch[-1]["train/adv_ratio_per_class"] if a is not None
  )
  # Fig. 8c's data: each filled bin's mean bound lies in its bin of [0, 2.5 eps]
  rec = second_epoch[-1]
  width = bounds.bound_max("remargin", config.attack.eps) / strategy_stats.NUM_BOUND_BINS
  filled = 0
  for k, (b, mg) in enumerate(zip(rec["train/bound_by_bound_bin"], rec["train/margin_by_bound"])):
    assert (b is None) == (mg is None)
    if b is not None:
      filled += 1
      assert k * width - 1e-6 <= b <= (k + 1) * width + 1e-6 and -1.0 <= mg <= 1.0
  assert filled >= 1
