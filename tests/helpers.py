"""Small configs, problems and checks shared by the tests."""

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, config_lib, metrics, train
from caat_jax import checkpointing as ckpt_lib
from caat_jax.data import augment as augment_lib
from caat_jax.parallel import Parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_module(name):
  """The module of ``configs/<name>.py``, loaded from its file."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def digits_config(**overrides):
  """configs/digits.py shrunk to seconds: 1 epoch, 2-step attacks, 200 test points."""
  c = config_module("digits").get_config()
  c.suite = ()
  c.method = "pgd_at"
  c.model_width = 8
  c.num_epochs = 1
  c.batch_size = 64
  c.attack.num_steps = 2
  c.eval.attacks = ("pgd3",)
  c.eval.num_examples = 200
  c.eval.batch_size = 200
  c.log_every_steps = 5
  # The method settings the tests were written against (the main job's
  # matched KL weights, grad bound and digits-scale bound set are not
  # what these mechanism tests exercise; a test sets what it needs).
  c.caat.lam = 1.0
  c.caat.bound = "fixed"
  c.reinforce.lam = 0.005
  c.reinforce.k = 20
  c.reinforce.bound_set = tuple(range(3, 16))
  for key, value in overrides.items():
    config_lib.set_dotted(c, key, value)
  return c


def restore_final_state(workdir, config):
  """The newest checkpoint of ``workdir`` as (host TrainState, step)."""
  template = train.Run(config).init_state()
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  try:
    state, step = ckpt.restore(template, move_aside=False)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, state), step


# --- runs and subprocesses ---------------------------------------------------


def records(workdir, drop=(), keep_timing=False):
  """The records of ``workdir/metrics.jsonl``, without the keys in ``drop``
  nor (unless ``keep_timing``) the timings that differ between identical
  runs (``metrics.TIMING_KEYS`` but the step rate, which callers drop)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  if not keep_timing:
    drop = set(drop) | (set(metrics.TIMING_KEYS) - {"steps_per_sec"})
  return [{k: v for k, v in r.items() if k not in drop} for r in recs]


def subprocess_env(num_devices):
  """os.environ for a child Python on ``num_devices`` CPU devices that imports
  this checkout; other XLA flags of the parent are kept."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", ""))
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"{flags.strip()} --xla_force_host_platform_device_count={num_devices}".strip(),
  )
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


# --- pytrees and keys --------------------------------------------------------


def snapshot(path):
  """{relative path: sha256} of every file under ``path`` (what a failure
  must leave unchanged)."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def flat(tree):
  """The leaves of ``tree`` as one numpy vector."""
  return np.concatenate([np.ravel(l) for l in jax.tree.leaves(tree)])


def tree_dist(a, b):
  """Euclidean distance between two pytrees of the same structure, in float64."""
  return float(
    np.sqrt(
      sum(
        np.sum((np.asarray(u, np.float64) - np.asarray(v)) ** 2)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
      )
    )
  )


def assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def sample_keys(key, b):
  """Per-sample keys ``fold_in(key, i)``, i < b, as the methods derive them."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))


def keys_for(n, seed=0):
  """n attack keys split from ``PRNGKey(seed)``."""
  return jax.random.split(jax.random.PRNGKey(seed), n)


# --- N devices = 1 -----------------------------------------------------------


def _train_steps(method, backend, num_devices, steps=2, **overrides):
  config = digits_config(method=method, **{"parallel.backend": backend, **overrides})
  run = train.Run(config, Parallel(backend, devices=jax.devices()[:num_devices]))
  rstate = run.parallel.replicate(run.init_state())
  batches = run.input.batches(epoch=0)
  metrics = []
  for _ in range(steps):
    rstate, m = run.train_step(rstate, run.parallel.shard(next(batches)))
    metrics.append(run.parallel.fetch(m))
  return run.parallel.fetch(rstate), metrics


def check_devices_agree(method, backends=("pmap", "shard_map"), **overrides):
  """Two steps of ``method`` on 8 devices (each of ``backends``) land where
  one device lands, up to rounding (a small fraction of the update itself)."""
  init, _ = _train_steps(method, "pmap", 1, steps=0, **overrides)
  ref, ref_metrics = _train_steps(method, "pmap", 1, **overrides)
  update = tree_dist(ref.params, init.params)
  assert update > 1e-3  # training really moved the parameters
  for backend in backends:
    state, metrics = _train_steps(method, backend, 8, **overrides)
    assert int(state.step) == 2
    assert tree_dist(state.params, ref.params) < 1e-2 * update, backend
    assert tree_dist(state.batch_stats, ref.batch_stats) < 1e-2 * (
      tree_dist(ref.batch_stats, init.batch_stats) + 1e-6
    ), backend
    assert tree_dist(state.extra, ref.extra) <= 1e-2 * (tree_dist(ref.extra, init.extra) + 1e-6), (
      backend
    )
    for m, r in zip(metrics, ref_metrics):
      np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-3)
      for k in r:
        if "acc" in k:
          np.testing.assert_allclose(m[k], r[k], atol=2.5 / 64)


# --- attack problems ---------------------------------------------------------

# Small AutoAttack budgets: enough iterations to break points, seconds to run.
TINY_AA = {
  "apgd-ce": {"num_iters": 6},
  "apgd-t": {"num_iters": 6, "num_target_classes": 3},
  "fab-t": {"num_iters": 6, "num_target_classes": 3},
  "square": {"num_queries": 30},
}


EPS_MARGIN = 0.05  # points whose distance is within 5% of eps are left out


def linear_problem(num_classes: int, *, n: int = 128, seed: int = 0, disjoint: bool = False):
  """A linear classifier on 8x8x1 inputs in [0.3, 0.7] labelled by itself.

  ``disjoint``: each class's weights live on their own pixels, so one
  perturbation (down on y's pixels, up on everyone else's) is optimal
  against every class at once.
  Returns (logits_fn, x [n, 8, 8, 1], y [n], dist [n] the exact minimal
  L-inf perturbation).
  """
  rng = np.random.default_rng(seed)
  d = 64
  w = rng.normal(size=(d, num_classes))
  if disjoint:
    block = d // num_classes
    mask = np.zeros((d, num_classes))
    for c in range(num_classes):
      mask[c * block : (c + 1) * block, c] = 1.0
    w = w * mask
  b = 0.5 * rng.normal(size=num_classes)
  x = rng.uniform(0.3, 0.7, size=(n, d))
  z = x @ w + b
  y = np.argmax(z, -1)
  gaps = (z[np.arange(n), y][:, None] - z) / np.maximum(_l1_diffs(w, y), 1e-12)
  gaps[np.arange(n), y] = np.inf
  dist = gaps.min(-1)
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w32 + b32
  return logits_fn, jnp.asarray(x.reshape(n, 8, 8, 1), jnp.float32), jnp.asarray(y), dist


def _l1_diffs(w, y):
  """||w_y - w_t||_1 for every point and class; [n, C]."""
  return np.abs(w[:, y][:, :, None] - w[:, None, :]).sum(0)


def eps_and_subset(dist, x, y, quantile=0.5):
  """An eps at a quantile of the distances; drops the points too close to it."""
  eps = float(np.quantile(dist, quantile))
  keep = np.abs(dist - eps) > EPS_MARGIN * eps
  return eps, x[keep], y[keep], dist[keep]


# --- the first training attack of a real step --------------------------------


class _Seen(Exception):
  """Raised by the stand-in attack with the bounds and signs it was given."""


_STATES = {}


def first_training_attack(config):
  """(run, state, batch, key, eps [n], sign [n]) of the first training attack
  of one real step: the step is traced up to that call, where a stand-in
  attack stops it, and only that part is compiled."""
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
  batch = next(iter(run.input.batches(0)))
  batch = {
    k: jnp.asarray(augment_lib.to_float01(v) if "image" in k else v) for k, v in batch.items()
  }
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


# --- training pieces written out by hand -------------------------------------
# They call ``attacks.pgd`` directly and write CE and KL with log_softmax, so
# they share neither ``methods.perturb`` nor ``losses`` with the code under test.


def hand_attack(ctx, logits_fn, x, y, key, adversary: bool):
  """The training attacks of docs/method.md §2 by hand: adversaries ascend
  KL(f(x) || f(x')), anti-adversaries descend CE(f(x'), y), from x + 0.001 N
  with sample i's key fold_in(key, i)."""
  b = x.shape[0]
  ones = jnp.ones((b,), jnp.float32)
  kind = attacks.LOSS_KL if adversary else attacks.LOSS_CE
  return attacks.pgd(
    logits_fn,
    x,
    y,
    eps=ctx.attack.eps * ones,
    step_size=ctx.attack.step_size * ones,
    num_steps=ctx.attack.num_steps,
    keys=sample_keys(key, b),
    sign=ones if adversary else -ones,
    loss_kind=jnp.full((b,), kind, jnp.int32),
    clean_logits=logits_fn(x),
    start="gaussian",
  )


def hand_ce(logits, y):
  lp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]


def hand_kl(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per sample."""
  lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
  return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def hand_forward(ctx, params, batch_stats, x):
  return ctx.train_logits(params, batch_stats, x)[0]


def truncate_checkpoint(workdir, step):
  """Cuts every array data file of checkpoint ``step`` in half (a half-written save)."""
  files = glob.glob(
    os.path.join(ckpt_lib.checkpoint_dir(workdir), str(step), "state", "**", "d", "*"),
    recursive=True,
  )
  assert files
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)
