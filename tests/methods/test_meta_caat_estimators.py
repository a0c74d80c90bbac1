"""Meta-CAAT with the meta-gradient estimators of issue 24 (docs/method.md §5).

``meta.schedule=reuse_step`` against an independent computation: its meta
step equals the ``lookahead`` schedule's with the official look-ahead (SGD,
momentum from the real buffer, coupled weight decay), because the real
update it reuses *is* that look-ahead; its real update is the one a step
without a meta update takes (the weights one step stale). Also: the new
variants run inside a real Meta-CAAT step on the small CNN (its module
names, the variant key), their costs and their configuration errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from caat_jax import bench, config_lib, train
from caat_jax.checks import ConfigError
from caat_jax.parallel import Parallel
from tests.helpers import check_devices_agree, digits_config

KW = {
  "batch_size": 32,
  "attack.num_steps": 1,
  "meta.batch_size": 16,
  "meta.lookahead": "sgd_momentum_wd",
  "optimizer.schedule": "constant",
}


def _start(run):
  """Step 1 (odd), a non-zero momentum buffer: the state every run starts from."""
  state = run.init_state()
  trace = jax.tree.map(
    lambda p: 0.01 * jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), state.params
  )
  opt = optax.tree_utils.tree_set(state.opt_state, trace=trace)
  opt = optax.tree_utils.tree_set(opt, count=jnp.ones((), jnp.int32))
  return state.replace(step=jnp.ones_like(state.step), opt_state=opt)


def _step(config, state=None):
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  state = _start(run) if state is None else state
  batch = next(iter(run.input.batches(0)))
  rstate, metrics = run.train_step(run.parallel.replicate(state), run.parallel.shard(batch))
  fetch = lambda t: jax.tree.map(np.asarray, run.parallel.fetch(t))
  return state, fetch(rstate), fetch(metrics)


def _leaves_close(a, b, rtol, atol):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _gap(a, b):
  return max(
    float(np.abs(np.asarray(u) - v).max()) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


@pytest.mark.slow  # three Meta-CAAT step compiles (about 1-2 min on a loaded 2-core CPU)
def test_reuse_step_is_the_lookahead_schedule_with_the_real_update_as_lookahead():
  state, look, m_look = _step(digits_config(method="meta_caat", **KW))
  _, reuse, m_reuse = _step(
    digits_config(method="meta_caat", **KW, **{"meta.schedule": "reuse_step"}), state
  )
  # a step that takes no meta update (interval 2 at the odd step 1): the real
  # update with the current weights, computed by the lookahead schedule's code
  _, stale, m_stale = _step(digits_config(method="meta_caat", **KW, **{"meta.interval": 2}), state)
  assert m_stale["ratio/meta_loss/den"].sum() == 0 and m_reuse["ratio/meta_loss/den"].sum() == 1

  # the meta step: the same meta gradient (Adam's first moment is 0.1 g), the same meta loss
  mu = lambda s: optax.tree_utils.tree_get(s.extra["wnet_opt"], "mu")
  scale = max(float(np.abs(l).max()) for l in jax.tree.leaves(mu(look)))
  assert scale > 0
  _leaves_close(mu(reuse), mu(look), rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(
    m_reuse["ratio/meta_loss/num"], m_look["ratio/meta_loss/num"], rtol=1e-5
  )
  # Adam's first step is g / (|g| + 1e-8): components with |g| ~ 1e-8 move by
  # a fraction of the step that float32 rounding of g shifts
  _leaves_close(reuse.extra["wnet"], look.extra["wnet"], rtol=1e-5, atol=5e-6)
  assert _gap(reuse.extra["wnet"], state.extra["wnet"]) > 1e-4  # Omega moved

  # the real update: with the weights before the meta step (one step stale)
  _leaves_close(reuse.params, stale.params, rtol=1e-5, atol=1e-7)
  # (the momentum buffer, |trace| up to ~0.1: float32 noise of two programs)
  _leaves_close(reuse.opt_state, stale.opt_state, rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(m_reuse["alpha"], m_stale["alpha"], rtol=1e-4)
  assert _gap(reuse.params, look.params) > 1e-6  # which is not the lookahead schedule's


@pytest.mark.slow  # one Meta-CAAT step compile per variant
@pytest.mark.parametrize(
  "overrides",
  [
    {"meta.variant": "layerwise"},  # the small CNN's head, the exact look-ahead
    {"meta.variant": "layerwise", "meta.layers": "last_block", "meta.layer_scope": "subset"},
    {"meta.variant": "neumann", "meta.neumann_steps": 2},
    {"meta.variant": "evograd", "meta.evograd_sigma": 0.01},
    {"meta.variant": "jvp", "meta.fd_eps": 0.01},
  ],
)
def test_new_variants_take_a_meta_caat_step(overrides):
  config = digits_config(method="meta_caat", **KW, **overrides)
  config_lib.validate(config)
  state, new, m = _step(config)
  assert np.isfinite(m["meta_grad_norm"]).all() and float(np.max(m["meta_grad_norm"])) > 0
  assert _gap(new.extra["wnet"], state.extra["wnet"]) > 1e-4


def test_reuse_step_cost_saves_the_lookahead():
  base_cfg = digits_config(method="meta_caat", **KW)
  reuse = digits_config(method="meta_caat", **KW, **{"meta.schedule": "reuse_step"})
  # the look-ahead's 9F, on the training batch (not scaled to the meta batch)
  assert bench.forward_units(reuse) == bench.forward_units(base_cfg) - 9.0
  layer = digits_config(method="meta_caat", **KW, **{"meta.variant": "layerwise"})
  assert bench.forward_units(layer) == bench.forward_units(base_cfg) - 3.0


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"meta.schedule": "every_step"}, r"config.meta.schedule='every_step'"),
    (
      {"meta.schedule": "reuse_step", "meta.variant": "nested_grad"},
      r"config.meta.variant='nested_grad'",
    ),
    (
      {"meta.schedule": "reuse_step", "meta.variant": "first_order"},
      r"config.meta.variant='first_order'",
    ),
    ({"meta.schedule": "reuse_step", "meta.variant": "evograd"}, r"config.meta.variant='evograd'"),
    ({"meta.schedule": "reuse_step", "meta.variant": "neumann"}, r"meta.schedule='reuse_step'"),
    (
      {"meta.schedule": "reuse_step", "meta.variant": "layerwise", "meta.layer_scope": "subset"},
      r"config.meta.variant='layerwise'",
    ),
    (
      {"meta.schedule": "reuse_step", "optimizer.nesterov": True},
      r"config.optimizer.nesterov=True",
    ),
    ({"meta.fd_eps": -1.0}, r"config.meta.fd_eps=-1.0"),
    ({"meta.variant": "layerwise", "meta.layer_scope": "top"}, r"config.meta.layer_scope='top'"),
    ({"meta.variant": "neumann", "meta.neumann_steps": -2}, r"config.meta.neumann_steps=-2"),
    ({"meta.variant": "evograd", "meta.evograd_k": 1}, r"config.meta.evograd_k=1"),
  ],
)
def test_bad_combinations_name_the_key(overrides, match):
  config = digits_config(method="meta_caat", **overrides)
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(config)


def test_valid_reuse_combinations_pass():
  for overrides in (
    {},
    {"meta.variant": "layerwise"},
    {"meta.variant": "neumann", "meta.neumann_steps": 0},
    {"meta.fd_eps": 0.01},
  ):
    config_lib.validate(
      digits_config(method="meta_caat", **overrides, **{"meta.schedule": "reuse_step"})
    )


@pytest.mark.slow  # compiles Meta-CAAT on 1 and 8 devices
@pytest.mark.parametrize(
  "backend, overrides",
  [
    # the same perturbations on every device, the scores averaged over the global batch
    ("shard_map", {"meta.variant": "evograd", "meta.evograd_sigma": 0.01, "meta.evograd_tau": 1.0}),
    # (extended: run with -m extended; CI's slow step keeps within its time)
    pytest.param(
      "pmap", {"meta.variant": "neumann", "meta.neumann_steps": 2}, marks=pytest.mark.extended
    ),
    pytest.param(
      "pmap",
      {"meta.variant": "layerwise", "meta.layer_scope": "subset"},
      marks=pytest.mark.extended,
    ),
    ("pmap", {"meta.schedule": "reuse_step"}),
  ],
)
def test_eight_devices_equal_one(backend, overrides):
  # One backend per case (the variant's cross-device semantics are the
  # method's; that both backends run the same program is
  # tests/test_parallel.py's, for every method): CI's slow step keeps
  # within its time.
  check_devices_agree("meta_caat", backends=(backend,), **{"attack.num_steps": 1, **overrides})
