"""N devices compute what one device computes on the same global batch
(DESIGN convention 8), for every method and both backends."""

import jax
import numpy as np
import pytest

from caat_jax import methods, train
from caat_jax.parallel import Parallel
from tests.helpers import digits_config


def _train(method, backend, num_devices, steps=2):
  config = digits_config(method=method, **{"parallel.backend": backend})
  run = train.Run(config, Parallel(backend, devices=jax.devices()[:num_devices]))
  rstate = run.parallel.replicate(run.init_state())
  batches = train.train_batches(run.dataset.train, batch_size=config.batch_size,
                                seed=0, epoch=0)
  metrics = []
  for _ in range(steps):
    rstate, m = run.train_step(rstate, run.parallel.shard(next(batches)))
    metrics.append(run.parallel.fetch(m))
  return run.parallel.fetch(rstate), metrics


@pytest.mark.parametrize("method", methods.METHODS)
def test_eight_devices_equal_one(method):
  ref_state, ref_metrics = _train(method, "pmap", 1)
  for backend in ("pmap", "shard_map"):
    state, metrics = _train(method, backend, 8)
    assert int(state.step) == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 state.params, ref_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 state.batch_stats, ref_state.batch_stats)
    for m, r in zip(metrics, ref_metrics):
      for k in r:
        np.testing.assert_allclose(m[k], r[k], rtol=1e-4, atol=1e-5)
  # and training really moved the parameters
  init = _train(method, "pmap", 1, steps=0)[0]
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref_state.params, init.params)
  assert max(jax.tree.leaves(moved)) > 1e-4
