"""Meta-CAAT's step switches over a few real steps (issue 11): the grad bound
computed inside the step (Eq. 26), ``meta.interval > 1``, and the momentum
look-ahead reading the real optimiser's buffer.

One run (grad bound, meta step every 3 steps, the official look-ahead with
momentum and weight decay) takes 7 steps on one device; each test reads
that trajectory and compares it with a hand computation. Slow: the fixture
compiles a whole Meta-CAAT step (about a minute on a loaded 2-core CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import metrics, train
from caat_jax.caat import features
from caat_jax.data import augment as augment_lib
from caat_jax.methods import meta_caat
from caat_jax.parallel import Parallel
from tests.helpers import digits_config

pytestmark = pytest.mark.slow
STEPS, INTERVAL = 7, 3


@pytest.fixture(scope="module")
def trajectory():
  """(run, states [STEPS + 1], step metrics [STEPS], host batches [STEPS])."""
  config = digits_config(method="meta_caat", batch_size=32, **{
      "attack.num_steps": 1, "meta.batch_size": 16, "caat.bound": "grad",
      "meta.interval": INTERVAL, "meta.lookahead": "sgd_momentum_wd"})
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


# -- 3. the grad bound inside the step ---------------------------------------

def _grad_bound_by_hand(run, state, batch, swap_keys=False):
  """Eq. 26 with SPEC 4's normalisation, written out: the step's keys
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
  z, _ = features.strategy_inputs(clean, y, run.ctx.class_counts, state.extra["stats"],
                                         config.caat, None, False)
  w = np.asarray(meta_caat.weighting_net(config).apply({"params": state.extra["wnet"]}, z))

  def start(k):
    noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, i), x.shape[1:]))
                      for i in range(b)])
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


# -- 4. the meta step every INTERVAL steps ------------------------------------

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
  adam_count = [int(np.asarray(leaf)) for leaf in jax.tree.leaves(states[-1].extra["wnet_opt"])
                if np.ndim(leaf) == 0]
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


# -- 5. the momentum look-ahead reads the optimiser's buffer ---------------------

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
      lambda p, mm, gg: p - lr7 * (opt.momentum * mm + gg + opt.weight_decay * p),
      s7.params, m, g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6), got, want)
  # the buffer matters: a zero buffer would miss lr mu m
  no_buffer = jax.tree.map(lambda p, gg: p - lr7 * (gg + opt.weight_decay * p), s7.params, g)
  gap = max(float(np.abs(np.asarray(a) - b).max())
            for a, b in zip(jax.tree.leaves(no_buffer), jax.tree.leaves(want)))
  assert gap > 100 * 2e-6
