"""What every method shares: the interface, the step context, keys, forward
passes, the gradient update, and the wrapper that derives keys and augments.

A method is a module under ``methods/`` exporting ``METHOD = base.Method(...)``
(and one line in ``methods._MODULES``). Its ``make_step(config, ctx)`` reads
the config once and returns a pure per-device step

    step(state, batch, key) -> (state, metrics)

run under ``pmap`` or ``shard_map`` with the named axis ``ctx.axis_name``:
gradients are averaged over that axis here and BatchNorm averages its batch
statistics over it (the model is built with the same axis name), so N devices
compute what one device computes on the global batch. Every choice a config
makes (direction, bound, weighting, meta-gradient variant) is taken when the
step is built, so the traced step reads straight through.
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
from caat_jax.state import NONFINITE_STATE, TrainState, nonfinite_flag

Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, dict, jax.Array], tuple[TrainState, Metrics]]
STEP_RULES = ("fixed", "eps_frac")
THREAT_MODELS = ("pixel", "normalized", "normalized_clip")


def threat(threat_model: str, mean=(), std=()) -> tuple[Any, tuple[Any, Any]]:
  """``(scale, box)`` of the training attacks' threat model (``attacks.pgd``).

  ``pixel``: bounds and steps in pixel units, box [0, 1] (docs/method.md §1).
  ``normalized``: the official code's bound: it attacks (x - mean) / std, so
  every bound, step and start noise is multiplied by the channel's std;
  box [0, 1]. ``normalized_clip``: that, and its clip of the normalised
  input to [0, 1], i.e. the pixel box [mean, mean + std] per channel
  (intersected with [0, 1]), which moves every pixel outside it however
  small the bound. ``mean`` / ``std``: the dataset's per-channel statistics.
  """
  if threat_model == "pixel":
    return 1.0, (0.0, 1.0)
  if not std:
    raise ValueError(f"attack.threat_model={threat_model!r} needs the dataset's mean and std")
  if threat_model == "normalized":
    return tuple(std), (0.0, 1.0)
  if threat_model == "normalized_clip":
    lo = tuple(min(max(m, 0.0), 1.0) for m in mean)
    hi = tuple(min(max(m + s, 0.0), 1.0) for m, s in zip(mean, std))
    return tuple(std), (lo, hi)
  raise ValueError(f"attack.threat_model={threat_model!r}; valid: {', '.join(THREAT_MODELS)}")


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """The training-time PGD (docs/method.md §2), read once from ``config.attack``.

  Attributes:
    eps: the L-inf bound (pixel units under the ``pixel`` threat model).
    num_steps: K.
    step_size: the fixed step (``step_rule == 'fixed'``).
    step_rule: 'fixed' (``step_size``) or 'eps_frac' (``eps_i / 4``).
    unroll: unroll the attack loop (fast on CPU).
    scale: per-channel multiplier of every bound, step and start noise (a
      float, or a tuple of C); per-sample bounds ``eps_i`` stay in the
      configured units and are scaled inside the attack (``threat``).
    box: (lo, hi) the attack clips to, floats or tuples of C.
  """

  eps: float
  num_steps: int
  step_size: float
  step_rule: str = "fixed"
  unroll: bool = True
  scale: Any = 1.0
  box: tuple[Any, Any] = (0.0, 1.0)

  @classmethod
  def from_config(cls, attack_cfg, unroll: bool, mean=(), std=()) -> "AttackSettings":
    """``mean`` / ``std``: the dataset's per-channel statistics (needed by
    the ``normalized`` threat models)."""
    scale, box = threat(attack_cfg.threat_model, mean, std)
    return cls(
      eps=float(attack_cfg.eps),
      num_steps=int(attack_cfg.num_steps),
      step_size=float(attack_cfg.step_size),
      step_rule=attack_cfg.step_rule,
      unroll=unroll,
      scale=scale,
      box=box,
    )

  def step_sizes(self, eps: jax.Array) -> jax.Array:
    """Per-sample PGD step: fixed ``step_size`` or ``eps_i / 4``."""
    if self.step_rule == "eps_frac":
      return eps / 4.0
    return jnp.full_like(eps, self.step_size)


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
  """What a step needs from the run besides its own config (static).

  Attributes:
    model: the classifier, built with ``axis_name`` for cross-device BatchNorm.
    tx: the classifier optimiser.
    attack: the training-time attack settings.
    num_classes: number of classes.
    class_counts: training-set count per class, a tuple (static).
    augment: 'none' or 'crop_flip' (on-device augmentation of training images).
    axis_name: the device axis name of pmap / shard_map.
    schedule: the classifier's learning-rate schedule (step -> lr), for
      look-ahead steps.
    steps_per_epoch: optimiser steps per epoch (0: unknown), for per-epoch
      statistics inside the step.
  """

  model: nn.Module
  tx: optax.GradientTransformation
  attack: AttackSettings
  num_classes: int
  class_counts: tuple[int, ...] = ()
  augment: str = "none"
  axis_name: str | None = "batch"
  schedule: Callable[[jax.Array], jax.Array] | None = None
  steps_per_epoch: int = 0

  def new_epoch(self, step: jax.Array) -> jax.Array:
    """Whether ``step`` is the first of an epoch after the first epoch."""
    if not self.steps_per_epoch:
      return jnp.asarray(False)
    return (step > 0) & (step % self.steps_per_epoch == 0)

  # -- forward passes -------------------------------------------------------
  def train_logits(self, params, batch_stats, x) -> tuple[jax.Array, Any]:
    """Training-mode forward (batch statistics); returns logits and new stats."""
    logits, mutated = self.model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return logits, mutated.get("batch_stats", batch_stats)

  def eval_logits_fn(self, params, batch_stats) -> Callable[[jax.Array], jax.Array]:
    """Inference-mode classifier with frozen parameters, for attacks (docs/method.md §1)."""
    variables = jax.lax.stop_gradient({"params": params, "batch_stats": batch_stats})
    return lambda x: self.model.apply(variables, x, train=False)

  def full_eps(self, batch: int) -> jax.Array:
    """[B] copies of the configured bound."""
    return jnp.full((batch,), self.attack.eps, jnp.float32)

  def pgd(self, logits_fn, x, y, keys, *, eps, start, **kwargs) -> jax.Array:
    """The training-time PGD (inference-mode ``logits_fn``), per-sample ``keys``,
    under the configured threat model."""
    a = self.attack
    return attacks.pgd(
      logits_fn,
      x,
      y,
      eps=eps,
      step_size=a.step_sizes(eps),
      num_steps=a.num_steps,
      keys=keys,
      start=start,
      unroll=a.unroll,
      scale=a.scale,
      box=a.box,
      **kwargs,
    )

  def sample_keys(self, key: jax.Array, local_batch: int) -> jax.Array:
    return sample_keys(key, local_batch, self.axis_name)


class EpochHook(NamedTuple):
  """Host-side work a method asks for before every epoch, the first included
  (FRL's multipliers, as its reference updates them).

  Attributes:
    validation: ``config -> (attack, eps, step_size)`` the per-class errors it
      needs on the validation (meta) set, or None for no hook in this run.
    update: ``(config, extra, errors, epoch) -> (extra, record)``: ``extra`` is
      the method's ``state.extra`` as host numpy, ``errors`` a dict of per-class
      fractions ``{'natural': [C], 'robust': [C]}``; ``record`` goes to
      metrics.jsonl.
  """

  validation: Callable[[ml_collections.ConfigDict], tuple[str, float, float] | None]
  update: Callable[..., tuple[dict, dict]]


def _no_extra(config, ctx, key) -> dict:
  del config, ctx, key
  return {}


def _valid(config) -> None:
  del config


class Method(NamedTuple):
  """A training method.

  Attributes:
    name: registry name (``config.method``).
    make_step: ``(config, ctx) -> step(state, batch, key) -> (state, metrics)``.
    cost: ``config -> F``, forward-pass units per training example of one
      step (docs/method.md §11), the benchmark's bound.
    init_extra: ``(config, ctx, key) -> dict``, the initial ``state.extra``.
    validate: ``config -> None``, raises ``checks.ConfigError`` naming the key.
    epoch_hook: optional ``EpochHook``.
    meta_batch: ``config -> bool``, whether each batch must carry
      ``meta_image`` / ``meta_label`` (``config.meta.batch_size`` clean meta
      examples).
    needs_meta_set: ``config -> bool``, whether the run needs a meta /
      validation set (``data.meta_per_class >= 1``).
    switches: the boolean config keys (outside its own section) the method
      reads; one set True with no method of the run reading it is refused
      (``config_lib.validate``: it would do nothing).
  """

  name: str
  make_step: Callable[[ml_collections.ConfigDict, StepContext], StepFn]
  cost: Callable[[ml_collections.ConfigDict], float]
  init_extra: Callable[[ml_collections.ConfigDict, StepContext, jax.Array], dict] = _no_extra
  validate: Callable[[ml_collections.ConfigDict], None] = _valid
  epoch_hook: EpochHook | None = None
  meta_batch: Callable[[ml_collections.ConfigDict], bool] = lambda config: False
  needs_meta_set: Callable[[ml_collections.ConfigDict], bool] = lambda config: False
  switches: tuple[str, ...] = ()


def attack_units(config) -> float:
  """F per example of one training-time attack pass: K steps of ~2F (docs/method.md §11)."""
  return 2.0 * config.attack.num_steps


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


def corrupted_mask(batch, labels: jax.Array) -> jax.Array:
  """bool [B]: which samples' training labels the noise changed (the
  batch's ``corrupted`` field; all False when the data has none)."""
  return batch.get("corrupted", jnp.zeros(labels.shape, bool))


def ratio_metric(
  name: str, values: jax.Array, groups: jax.Array, num_groups: int, axis_name: str | None
) -> Metrics:
  """Per-group mean of ``values`` over the global batch, as a summable pair.

  Returns ``{'ratio/<name>/num': [G], 'ratio/<name>/den': [G]}``; the trainer
  sums both over the logging window and writes ``train/<name> = num / den``,
  an exact mean over every sample seen (groups: classes, or clean/corrupted).
  """
  onehot = jax.nn.one_hot(groups, num_groups)
  return {
    f"ratio/{name}/num": psum(onehot.T @ values.astype(jnp.float32), axis_name),
    f"ratio/{name}/den": psum(onehot.sum(0), axis_name),
  }


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
    **changes,
  )


def train_step(
  state: TrainState, batch: dict, *, method_step: StepFn, ctx: StepContext
) -> tuple[TrainState, Metrics]:
  """The step the trainer wires: derive keys, augment on device, run the method.

  ``batch``: ``image`` [b, H, W, C] (uint8 or float in [0, 1]), ``label`` [b]
  int32, plus whatever the data pipeline adds (``index``, ``corrupted``,
  ``meta_image`` / ``meta_label``).
  """
  key = jax.random.fold_in(state.rng, state.step)
  aug_key, method_key = jax.random.split(key)

  def augment(images, k):
    images = augment_lib.to_float01(images)
    if ctx.augment == "none":
      return images
    return augment_lib.augment_fn(ctx.augment)(
      images, sample_keys(k, images.shape[0], ctx.axis_name)
    )

  batch = dict(batch, image=augment(batch["image"], aug_key))
  if "meta_image" in batch:  # augmented as the training batch (the official
    # code and Meta-Weight-Net do), with keys of its own
    batch["meta_image"] = augment(batch["meta_image"], jax.random.fold_in(aug_key, 0x3E7A))
  new_state, metrics = method_step(state, batch, method_key)
  # Checked by the trainer at every logging step, so a NaN/Inf in the state
  # is reported at the step whose update made it (not at the next save).
  metrics[NONFINITE_STATE] = nonfinite_flag(new_state)
  return new_state, metrics
