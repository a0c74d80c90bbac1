"""N devices compute what one device computes on the same global batch
(DESIGN convention 8), for every method and both backends.

Exact equality is not expected: convolutions over a batch of 8 and of 64
round differently, and PGD's sign() turns a 1e-7 difference in a near-zero
input-gradient entry into a different step. So the test compares the
8-device drift from the 1-device run with the size of the update itself: a
real bug (a missing pmean, device-local BatchNorm statistics, per-device
random keys) makes them the same order; rounding keeps the ratio below 1%.
"""

import jax
import numpy as np
import pytest

from caat_jax import methods, train
from caat_jax.parallel import Parallel
from tests.helpers import digits_config


def _train(method, backend, num_devices, steps=2, **overrides):
  config = digits_config(method=method, **{"parallel.backend": backend, **overrides})
  run = train.Run(config, Parallel(backend, devices=jax.devices()[:num_devices]))
  rstate = run.parallel.replicate(run.init_state())
  batches = run.input.batches(epoch=0)
  metrics = []
  for _ in range(steps):
    rstate, m = run.train_step(rstate, run.parallel.shard(next(batches)))
    metrics.append(run.parallel.fetch(m))
  return run.parallel.fetch(rstate), metrics


def _dist(a, b):
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: np.sum((np.asarray(x, np.float64) - y) ** 2), a, b))
  return float(np.sqrt(sum(leaves)))


def check_devices_agree(method, **overrides):
  init, _ = _train(method, "pmap", 1, steps=0, **overrides)
  ref, ref_metrics = _train(method, "pmap", 1, **overrides)
  update = _dist(ref.params, init.params)
  assert update > 1e-3  # training really moved the parameters
  for backend in ("pmap", "shard_map"):
    state, metrics = _train(method, backend, 8, **overrides)
    assert int(state.step) == 2
    assert _dist(state.params, ref.params) < 1e-2 * update, backend
    assert _dist(state.batch_stats, ref.batch_stats) < 1e-2 * (
        _dist(ref.batch_stats, init.batch_stats) + 1e-6), backend
    assert _dist(state.extra, ref.extra) <= 1e-2 * (_dist(ref.extra, init.extra) + 1e-6), backend
    for m, r in zip(metrics, ref_metrics):
      np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-3)
      for k in r:
        if "acc" in k:
          np.testing.assert_allclose(m[k], r[k], atol=2.5 / 64)


@pytest.mark.parametrize("method", methods.METHODS)
def test_eight_devices_equal_one(method):
  check_devices_agree(method)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["nested_grad", "k_step"])
def test_meta_variants_eight_devices_equal_one(variant):
  """The variants that differentiate through the cross-device mean of the
  look-ahead gradient (the jvp default never does)."""
  check_devices_agree("meta_caat", **{"meta.variant": variant, "meta.k": 2})
