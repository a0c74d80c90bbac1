"""The train state: one pytree holding everything a run needs to continue.

Plain data only (arrays and nested dicts), so the same object is jitted,
replicated over devices, and written by orbax without conversion.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Classifier, optimiser and method state.

  Attributes:
    step: int32 scalar, number of optimiser steps taken.
    params: classifier parameters (``variables['params']``).
    batch_stats: BatchNorm running statistics (``variables['batch_stats']``).
    opt_state: optax state of the classifier optimiser.
    rng: the run's base PRNG key (uint32 [2]); steps derive theirs with
      ``fold_in(rng, step)`` so no key is ever carried forward.
    extra: method-specific state (strategy / weighting net and its optimiser
      state, per-class running statistics, fairness multipliers); a dict so
      that a method adds state without touching the trainer.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  extra: dict[str, PyTree]

  @property
  def variables(self) -> dict[str, PyTree]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def create(
  variables: dict[str, PyTree],
  tx: optax.GradientTransformation,
  rng: jax.Array,
  extra: dict[str, PyTree] | None = None,
) -> TrainState:
  """A fresh state at step 0 from initialised model variables."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(variables["params"]),
    rng=rng,
    extra=extra or {},
  )


NONFINITE_STATE = "nonfinite_state"  # the train step's per-step metric


def nonfinite_flag(state: TrainState) -> jax.Array:
  """Float 0/1: does any floating leaf of the classifier or method state
  hold NaN or Inf? (Cheap next to a step; reported per step.)"""
  leaves = jax.tree.leaves((state.params, state.batch_stats, state.extra))
  flags = [
    ~jnp.all(jnp.isfinite(leaf)) for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]
  return jnp.any(jnp.stack(flags)).astype(jnp.float32)
