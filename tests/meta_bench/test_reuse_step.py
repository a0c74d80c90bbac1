"""meta_bench's ``<variant>@reuse_step`` rows: the variant on the same step
captured under Meta-CAAT's ``meta.schedule=reuse_step`` (its look-ahead
point the real update), scored against the exact look-ahead gradient."""

import functools

import jax
import numpy as np
import pytest

from caat_jax import config_lib, methods
from caat_jax.meta_bench import capture, cost, probe, runner
from tests.helpers import digits_config, flat


def _config(lookahead):
  return digits_config(
    method="meta_caat",
    batch_size=32,
    **{"attack.num_steps": 1, "meta.batch_size": 16, "meta.lookahead": lookahead},
  )


def _captures(config):
  run = capture.make_run(config)
  state = jax.tree.map(np.asarray, run.init_state())
  # a non-zero momentum buffer, as any step after the first has
  state = state.replace(
    opt_state=jax.tree.map(lambda x: np.full_like(x, 1e-3) if x.ndim else x, state.opt_state)
  )
  batch = next(iter(run.input.batches(0)))
  return (
    run,
    state,
    batch,
    capture.capture(config, run, state, batch),
    capture.capture(config, run, state, batch, schedule="reuse_step"),
  )


@pytest.mark.slow  # two eager Meta-CAAT steps, one compiled step, eight meta parts
def test_reuse_step_rows_measure_the_real_update_as_look_ahead():
  # The look-ahead the official code takes (SGD with momentum and weight
  # decay) is the real update: then reuse_step answers the exact problem.
  config = _config("sgd_momentum_wd")
  run, state, batch, cap, reuse = _captures(config)
  # the captured look-ahead point is the real update the trainer's step takes
  ctx = capture._single_device_ctx(run)  # pylint: disable=protected-access
  method_step = run.method.make_step(cost.variant_config(config, "jvp@reuse_step"), ctx)
  new, _ = jax.jit(functools.partial(methods.train_step, method_step=method_step, ctx=ctx))(
    state, batch
  )
  np.testing.assert_allclose(
    flat(reuse.problem.lookahead_point), flat(new.params), rtol=1e-5, atol=1e-7
  )
  assert cap.problem.lookahead_point is None and reuse.problem.lookahead_point is not None
  rows = probe.probe_checkpoint(
    cap, ["jvp@reuse_step"], config.meta, keys=[], repeats=1, reuse_cap=reuse
  )
  assert [r["variant"] for r in rows] == ["nested_grad", "jvp@reuse_step"]
  assert rows[1]["cosine"] >= 1 - 1e-5 and rows[1]["rel_error"] < 1e-3

  # Meta-Weight-Net's plain SGD look-ahead is not the real update (no
  # momentum, no decay): the reuse_step gradient then differs, a little.
  config = _config("sgd")
  run, state, batch, cap, reuse = _captures(config)
  _, r = probe.probe_checkpoint(
    cap, ["jvp@reuse_step"], config.meta, keys=[], repeats=1, reuse_cap=reuse
  )
  assert 0.5 < r["cosine"] < 1 - 1e-5 and r["rel_error"] > 1e-3


def test_reuse_step_names_are_checked_before_training():
  runner.check_variants(["jvp@reuse_step", "nested_grad"])
  with pytest.raises(config_lib.ConfigError, match=r"'jvq@reuse_step'.*<name>@reuse_step"):
    runner.check_variants(["jvq@reuse_step"])
  assert cost.split_name("jvp@reuse_step") == ("jvp", "reuse_step")
  assert cost.split_name("jvp") == ("jvp", None)
  c = cost.variant_config(_config("sgd"), "layerwise@reuse_step")
  assert c.meta.variant == "layerwise" and c.meta.schedule == "reuse_step"
