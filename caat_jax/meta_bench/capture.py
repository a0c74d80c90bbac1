"""A real run, and the meta-gradient problem of its steps at chosen checkpoints.

``train_or_restore`` trains the configured run with caat_jax's trainer (or
finds it already trained in the workdir), saving a checkpoint every tenth of
training and keeping them all. ``capture`` runs the method's real step, built
by the method itself from the run's config, once at a restored checkpoint on
the batch the next step would take, with the step's own keys, and stops it
when it hands its ``MetaProblem`` to the meta-gradient variant: a capturing
variant is registered in ``meta.VARIANTS`` for the duration and named as
``config.meta.variant`` (the method's code is not touched). The step runs
eagerly on one device (BatchNorm without a device axis: one device computes
what N compute on the global batch), so the captured problem's functions close
over concrete arrays and every variant can be evaluated on exactly the same
problem (``probe``).
"""

import contextlib
import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import checkpointing as ckpt_lib
from caat_jax import config_lib, data, meta, methods, train

CAPTURE = "_meta_bench_capture"
CHECKPOINTS = ("early", "mid", "late")
RUN_DIR = "run"


class Captured(NamedTuple):
  """One Meta-CAAT step's meta-gradient problem at a checkpoint.

  Attributes:
    problem: the ``meta.MetaProblem`` the step built (``axis_name`` None).
    omega: the weighting net's parameters the step would differentiate.
    params: the classifier parameters W.
    corrupted: bool [B], which training labels the noise changed (None
      without label noise in the config).
    step: the checkpoint's step (the captured step is step + 1).
    checkpoint: its name (``early`` / ``mid`` / ``late``).
    state: the restored single-copy TrainState (host arrays).
    batch: the host batch of the captured step.
  """

  problem: meta.MetaProblem
  omega: Any
  params: Any
  corrupted: np.ndarray | None
  step: int
  checkpoint: str
  state: Any
  batch: dict


class _Stop(Exception):
  """Raised by the capturing variant to stop the step at its meta-gradient."""

  def __init__(self, problem, omega, params):
    super().__init__("meta_bench capture")
    self.problem, self.omega, self.params = problem, omega, params


def _capturing_variant(problem, omega, params):
  raise _Stop(problem, omega, params)


@contextlib.contextmanager
def capturing_variant():
  """``meta.VARIANTS[CAPTURE]`` registered for the duration."""
  meta.VARIANTS[CAPTURE] = meta.Variant(
    CAPTURE, make=lambda: _capturing_variant, cost=lambda costs: 0.0, reuses_lookahead=True
  )
  try:
    yield
  finally:
    meta.VARIANTS.pop(CAPTURE, None)


SCHEDULES = ("lookahead", "reuse_step")


def capture_config(config, schedule: str = "lookahead"):
  """``config`` with the capturing variant, a meta step at every step and,
  where the config has a ``meta.schedule``, ``schedule``: the look-ahead
  schedule (the problem every variant answers), or ``reuse_step`` (the
  problem whose look-ahead point is the step's real update)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.meta.variant = CAPTURE
    cfg.meta.interval = 1
    if "schedule" in cfg.meta:
      cfg.meta.schedule = schedule
  return cfg


def train_config(config):
  """The run's config as trained here: a checkpoint every tenth of training
  (unless the config sets ``checkpoint_every_steps``), all of them kept
  (both keys may change between a run and its resumption)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.keep_checkpoints = max(int(cfg.keep_checkpoints), 10**6)
  return cfg


def _single_device_ctx(run):
  return dataclasses.replace(run.ctx, model=run.model.clone(axis_name=None), axis_name=None)


def _step_fn(config, run, schedule: str = "lookahead"):
  ctx = _single_device_ctx(run)
  step = run.method.make_step(capture_config(config, schedule), ctx)
  return functools.partial(methods.train_step, method_step=step, ctx=ctx)


def check_takes_meta_step(config, run) -> None:
  """Raises ``ConfigError`` unless the configured method hands a
  ``MetaProblem`` to ``config.meta.variant`` at every step (checked by
  tracing one step, before any training)."""
  state = run.init_state()
  batch = next(iter(run.input.batches(0)))
  with capturing_variant():
    try:
      jax.eval_shape(_step_fn(config, run), state, batch)
    except _Stop:
      return
  raise config_lib.ConfigError(
    f"config.method={config.method!r} (caat.direction={config.caat.direction!r}) takes no "
    "meta-gradient step through config.meta.variant; use a method and direction that do "
    "(e.g. configs/digits_meta_caat.py, caat.direction='combined')"
  )


def check_rows_trace(run, configs: dict) -> None:
  """Traces the whole step once per ``{row name: config}`` (``jax.eval_shape``,
  before any training): ``ConfigError`` naming the row for one the model
  refuses (e.g. layerwise's ``meta.layers`` naming a module it lacks)."""
  if not configs:
    return
  state = run.init_state()
  batch = next(iter(run.input.batches(0)))
  ctx = _single_device_ctx(run)
  for name, cfg in configs.items():
    step = functools.partial(
      methods.train_step, method_step=run.method.make_step(cfg, ctx), ctx=ctx
    )
    try:
      jax.eval_shape(step, state, batch)
    except (ValueError, KeyError, TypeError) as e:
      raise config_lib.ConfigError(
        f"--variants: {name!r} cannot run on config.model={cfg.model!r}: {e}"
      ) from None


def checkpoint_steps(saved: list[int], total: int, names) -> dict[str, int]:
  """The saved step each name stands for: ``early`` the first saved,
  ``mid`` the one nearest half-way, ``late`` the last before the end (the
  end itself only if nothing else is saved: a schedule that decays to 0
  makes the last step's look-ahead, and so its meta-gradient, vanish)."""
  if not saved:
    raise ValueError("no checkpoint saved")
  before_end = [s for s in saved if s < total] or saved
  pick = {
    "early": saved[0],
    "mid": min(saved, key=lambda s: (abs(s - total / 2), s)),
    "late": before_end[-1],
  }
  return {n: pick[n] for n in names}


def make_run(config):
  """The ``train.Run`` of ``config`` as trained here (``train_config``),
  with a checkpoint every tenth of training unless the config sets
  ``checkpoint_every_steps``."""
  cfg = train_config(config)
  run = train.Run(cfg)
  if not cfg.checkpoint_every_steps:
    with cfg.unlocked():
      cfg.checkpoint_every_steps = max(1, math.ceil(run.total_steps / 10))
  return run


def train_or_restore(run, workdir: str, log=print) -> list[int]:
  """Trains ``run.config`` into ``workdir/run`` with the trainer (resuming,
  or reusing a finished run, from what is there); returns the saved steps."""
  run_dir = f"{workdir}/{RUN_DIR}"
  log(f"meta_bench: training {run.config.method} into {run_dir} ({run.total_steps} steps)")
  train.train_and_evaluate(run.config, run_dir)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(run_dir), async_save=False)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def restore(run, workdir: str, step: int):
  """The single-copy state saved at ``step`` in ``workdir/run``."""
  ckpt = ckpt_lib.Checkpointer(
    ckpt_lib.checkpoint_dir(f"{workdir}/{RUN_DIR}"), async_save=False, keep=10**6
  )
  try:
    state, _ = ckpt.restore(run.init_state(), step=step, move_aside=False)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, state)


def next_batch(run, step: int) -> dict:
  """The host batch the step after ``step`` takes (for the last step, the
  first batch of the epoch that would follow)."""
  spe = run.steps_per_epoch
  return next(iter(run.input.batches(step // spe, start=step % spe)))


def capture(
  config, run, state, batch, *, step: int = 0, checkpoint: str = "", schedule: str = "lookahead"
) -> Captured:
  """The ``MetaProblem`` of the step ``state`` takes on ``batch`` (eagerly),
  under Meta-CAAT's ``schedule`` (``reuse_step``: its ``lookahead_point`` is
  the real update)."""
  state = jax.tree.map(jnp.asarray, state)
  with capturing_variant():
    try:
      _step_fn(config, run, schedule)(state, batch)
    except _Stop as stop:
      got = stop
    else:
      raise config_lib.ConfigError(
        f"config.method={config.method!r} took no meta-gradient step through config.meta.variant"
      )
  noisy = "corrupted" in batch and data.has_label_noise(config.data)
  return Captured(
    problem=dataclasses.replace(got.problem, axis_name=None),
    omega=got.omega,
    params=got.params,
    corrupted=np.asarray(batch["corrupted"], bool) if noisy else None,
    step=step,
    checkpoint=checkpoint,
    state=state,
    batch=batch,
  )
