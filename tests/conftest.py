"""8 fake CPU devices for every test, and fixtures shared across test files."""

import os
import re
import shutil
import tempfile

import pytest

# Appended, not set: a machine that already sets XLA_FLAGS (common with GPUs)
# keeps its flags and still gets the 8 devices, unless it names a count itself.
# Must run before JAX is imported.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if not re.search(r"--xla_force_host_platform_device_count=", _FLAGS):
  os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole test run, shared by the
# xdist workers and every `python -m caat_jax...` the tests start (they
# inherit os.environ): the same small programs are compiled by many tests
# and subprocesses, and a cache hit loads in a fraction of the compile time.
# Fresh per run, made by the first process to import this file (the xdist
# controller, whose environment the workers inherit) and removed by it at
# the end; a run that sets JAX_COMPILATION_CACHE_DIR itself keeps its own.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="caat_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
  del session
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def setup():
  """(ctx without a device axis, initial state, first float batch) of one
  small Meta-CAAT Run: the hand computations of the objective and baseline
  tests start from it."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from caat_jax import train  # pylint: disable=g-import-not-at-top
  from caat_jax.data import augment as augment_lib  # pylint: disable=g-import-not-at-top
  from caat_jax.parallel import Parallel  # pylint: disable=g-import-not-at-top
  from tests.helpers import digits_config  # pylint: disable=g-import-not-at-top

  config = digits_config(
    method="meta_caat", batch_size=32, **{"attack.num_steps": 1, "meta.batch_size": 16}
  )
  run = train.Run(config, Parallel("pmap", devices=jax.devices()[:1]))
  ctx = dataclasses.replace(run.ctx, model=run.eval_model, axis_name=None)
  batch = next(iter(run.input.batches(0)))
  batch = {
    k: jnp.asarray(augment_lib.to_float01(v) if "image" in k else v) for k, v in batch.items()
  }
  return ctx, jax.jit(run.init_state)(), batch  # one compile, not one per op
