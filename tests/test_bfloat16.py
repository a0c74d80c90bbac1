"""bfloat16 compute (config.dtype='bfloat16'): parameters, optimiser state and
perturbations stay float32, a step lands near the float32 step, and PGD's
per-step arithmetic does not lose small steps to bf16 rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import models
from caat_jax.attacks import pgd
from tests.helpers import _train_steps, tree_dist

STEP = 1e-3  # a quarter of bf16's spacing at 0.5 (2^-8): lost if x_adv were bf16
NUM_STEPS = 10


def _attack(dtype):
  model = models.get_model(
    "small_cnn", num_classes=10, mean=(0.5,), std=(0.25,), dtype=dtype, width=8
  )
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 1), minval=0.25, maxval=0.75)
  y = jnp.arange(16) % 10
  ref = models.get_model("small_cnn", num_classes=10, mean=(0.5,), std=(0.25,), width=8)
  variables = ref.init(jax.random.PRNGKey(1), x, train=False)
  logits_fn = lambda v: model.apply(variables, v, train=False)
  b = x.shape[0]
  x_adv = pgd(
    logits_fn,
    x,
    y,
    eps=jnp.full((b,), 1.0),  # no projection: every step counts
    step_size=jnp.full((b,), STEP),
    num_steps=NUM_STEPS,
    keys=jax.random.split(jax.random.PRNGKey(2), b),
    start="none",
    unroll=False,  # one compiled step: seconds of compilation instead of tens
  )
  return x, x_adv


def test_pgd_perturbation_stays_float32_and_within_a_step_of_float32():
  x, adv32 = _attack(jnp.float32)
  _, adv16 = _attack(jnp.bfloat16)
  assert adv16.dtype == jnp.float32
  d32, d16 = np.asarray(adv32 - x), np.asarray(adv16 - x)
  # Every pixel moved by a multiple of the step (no rounding of the input).
  np.testing.assert_allclose(np.abs(d16) / STEP, np.round(np.abs(d16) / STEP), atol=1e-2)
  assert np.abs(d16).max() == pytest.approx(NUM_STEPS * STEP, rel=1e-3)
  assert np.abs(d16 - d32).mean() < STEP  # less than one step apart, on average per pixel
  # The test can fail: the same steps taken in bf16 arithmetic are rounded
  # away (above 0.5) or doubled (below 0.5), off by more than a step.
  x16 = x.astype(jnp.bfloat16)
  moved = x16
  for _ in range(NUM_STEPS):
    moved = moved + jnp.asarray(STEP, jnp.bfloat16)
  err = np.abs(np.asarray((moved - x16).astype(jnp.float32)) - NUM_STEPS * STEP)
  assert err.mean() > STEP


@pytest.mark.slow  # 40-120 s on 2 busy cores (three runs each)
@pytest.mark.parametrize("method", ["pgd_at", "meta_caat"])
def test_bf16_step_close_to_float32_step(method):
  """Two steps: bf16 lands within 10% of the float32 update of the float32
  run (parameter distance), with the loss within 2%; every state leaf stays
  float32."""
  init, _ = _train_steps(method, "pmap", 1, steps=0)
  ref, ref_metrics = _train_steps(method, "pmap", 1)
  got, metrics = _train_steps(method, "pmap", 1, dtype="bfloat16")
  for leaf in jax.tree.leaves((got.params, got.opt_state, got.batch_stats, got.extra)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  update = tree_dist(ref.params, init.params)
  assert tree_dist(got.params, ref.params) < 0.1 * update
  for m, r in zip(metrics, ref_metrics):
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=2e-2)
