"""What every method's per-device step shares: context, keys, forward passes,
the gradient update, and the common wrapper that derives keys and augments.

A method is a pure per-device function

    method_step(state, batch, key, ctx) -> (state, metrics)

run under ``pmap`` or ``shard_map`` with the named axis ``ctx.axis_name``:
gradients are averaged over that axis here and BatchNorm averages its batch
statistics over it (the model is built with the same axis name), so N devices
compute what one device computes on the global batch.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from caat_jax import attacks
from caat_jax.data import augment as augment_lib
from caat_jax.state import TrainState

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
  """Static settings of a step (closed over, never traced).

  Attributes:
    model: the classifier, built with ``axis_name`` for cross-device BatchNorm.
    tx: the classifier optimiser.
    config: the run config (read-only inside the step).
    num_classes: number of classes.
    class_counts: training-set count per class, a tuple (static).
    augment: 'none' or 'crop_flip' (on-device augmentation of training images).
    axis_name: the device axis name of pmap / shard_map.
    unroll: unroll attack loops (fast on CPU).
    schedule: the classifier's learning-rate schedule (step -> lr), for
      look-ahead steps.
  """

  model: nn.Module
  tx: optax.GradientTransformation
  config: ml_collections.ConfigDict
  num_classes: int
  class_counts: tuple[int, ...] = ()
  augment: str = "none"
  axis_name: str = "batch"
  unroll: bool = True
  schedule: Callable[[jax.Array], jax.Array] | None = None

  # -- forward passes -------------------------------------------------------
  def train_logits(self, params, batch_stats, x) -> tuple[jax.Array, Any]:
    """Training-mode forward (batch statistics); returns logits and new stats."""
    logits, mutated = self.model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True,
        mutable=["batch_stats"])
    return logits, mutated.get("batch_stats", batch_stats)

  def eval_logits_fn(self, params, batch_stats) -> Callable[[jax.Array], jax.Array]:
    """Inference-mode classifier with frozen parameters, for attacks (SPEC 1)."""
    variables = jax.lax.stop_gradient({"params": params, "batch_stats": batch_stats})
    return lambda x: self.model.apply(variables, x, train=False)

  # -- attack settings ------------------------------------------------------
  def step_sizes(self, eps: jax.Array) -> jax.Array:
    """Per-sample PGD step: fixed ``attack.step_size`` or ``eps_i / 4``."""
    a = self.config.attack
    if a.step_rule == "eps_frac":
      return eps / 4.0
    return jnp.full_like(eps, a.step_size)

  def attack(self, state: TrainState, x, y, key, *, eps, start, **kwargs) -> jax.Array:
    """The training-time PGD on the current classifier (inference mode)."""
    return attacks.pgd(
        self.eval_logits_fn(state.params, state.batch_stats), x, y,
        eps=eps, step_size=self.step_sizes(eps),
        num_steps=self.config.attack.num_steps,
        keys=sample_keys(key, x.shape[0], self.axis_name),
        start=start, unroll=self.unroll, **kwargs)


class Method(NamedTuple):
  """A training method: a per-device step and the state it adds.

  Attributes:
    name: registry name (``config.method``).
    step: the per-device step.
    init_extra: (ctx, key) -> initial ``state.extra`` entries of this method.
    on_epoch_end: optional host-side hook ``(run, replicated_state, epoch) ->
      (replicated_state, record)`` run after every epoch (FRL's Lagrangian
      update on the validation set); ``record`` goes to metrics.jsonl.
    meta_batch: whether each batch must carry ``meta_image`` / ``meta_label``,
      ``config.meta.batch_size`` examples from the clean meta set.
  """

  name: str
  step: Callable[[TrainState, dict, jax.Array, StepContext], tuple[TrainState, Metrics]]
  init_extra: Callable[[StepContext, jax.Array], dict] = lambda ctx, key: {}
  on_epoch_end: Callable | None = None
  meta_batch: bool = False


def sample_keys(key: jax.Array, local_batch: int, axis_name: str | None) -> jax.Array:
  """One key per sample, indexed by its position in the *global* batch.

  Randomness keyed by global position (not by device) is what makes N devices
  reproduce one device: sample i gets ``fold_in(key, i)`` wherever it runs.
  """
  offset = 0
  if axis_name is not None:
    offset = jax.lax.axis_index(axis_name) * local_batch
  idx = offset + jnp.arange(local_batch)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def pmean(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def psum(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def ratio_metric(name: str, values: jax.Array, groups: jax.Array, num_groups: int,
                 axis_name: str | None) -> Metrics:
  """Per-group mean of ``values`` over the global batch, as a summable pair.

  Returns ``{'ratio/<name>/num': [G], 'ratio/<name>/den': [G]}``; the trainer
  sums both over the logging window and writes ``train/<name> = num / den``,
  an exact mean over every sample seen (groups: classes, or clean/corrupted).
  """
  onehot = jax.nn.one_hot(groups, num_groups)
  return {f"ratio/{name}/num": psum(onehot.T @ values.astype(jnp.float32), axis_name),
          f"ratio/{name}/den": psum(onehot.sum(0), axis_name)}


def apply_gradients(
    state: TrainState, grads, batch_stats, ctx: StepContext, **changes
) -> TrainState:
  """Averages ``grads`` over devices and takes one optimiser step."""
  grads = pmean(grads, ctx.axis_name)
  updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
  return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
      **changes)


def train_step(
    state: TrainState, batch: dict, *, method: Method, ctx: StepContext
) -> tuple[TrainState, Metrics]:
  """The step the trainer wires: derive keys, augment on device, run the method.

  ``batch``: ``image`` [b, H, W, C] (uint8 or float in [0, 1]), ``label`` [b]
  int32, plus whatever the data pipeline adds (``index``, ``corrupted``).
  """
  key = jax.random.fold_in(state.rng, state.step)
  aug_key, method_key = jax.random.split(key)
  images = augment_lib.to_float01(batch["image"])
  if ctx.augment != "none":
    keys = sample_keys(aug_key, images.shape[0], ctx.axis_name)
    images = augment_lib.augment_fn(ctx.augment)(images, keys)
  batch = dict(batch, image=images)
  if "meta_image" in batch:  # clean meta examples: converted, not augmented
    batch["meta_image"] = augment_lib.to_float01(batch["meta_image"])
  return method.step(state, batch, method_key, ctx)
