"""N devices compute what one device computes on the same global batch
(the multi-device convention: a step's result does not depend on how the
global batch is split), for every method and both backends.

Exact equality is not expected: convolutions over a batch of 8 and of 64
round differently, and PGD's sign() turns a 1e-7 difference in a near-zero
input-gradient entry into a different step. So the test compares the
8-device drift from the 1-device run with the size of the update itself: a
real bug (a missing pmean, device-local BatchNorm statistics, per-device
random keys) makes them the same order; rounding keeps the ratio below 1%."""

import os

import jax
import pytest

from caat_jax import methods
from tests.helpers import check_devices_agree


@pytest.mark.parametrize("method", methods.METHODS)
def test_eight_devices_equal_one(method):
  check_devices_agree(method)


@pytest.mark.slow
@pytest.mark.parametrize("variant, backend", [("nested_grad", "pmap"), ("k_step", "shard_map")])
def test_meta_variants_eight_devices_equal_one(variant, backend):
  """The variants that differentiate through the cross-device mean of the
  look-ahead gradient (the jvp default never does), one backend each (pmap
  is built on shard_map; both backends run every method in the test above)."""
  check_devices_agree("meta_caat", backends=(backend,), **{"meta.variant": variant, "meta.k": 2})


def test_conftest_gives_eight_devices():
  """tests/conftest.py appends the device count to an existing XLA_FLAGS."""
  assert jax.device_count() == 8, os.environ.get("XLA_FLAGS")
