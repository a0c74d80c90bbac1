"""The trainer: ``Run`` wires a config into data, model, method step and
evaluator (the composition root); ``train_and_evaluate`` is the loop.

The trainer never knows which method runs (data flows one way: a method never
calls back into the trainer): the method's factory builds the step, its epoch
hook asks for validation errors and gets them as data.
"""

import contextlib
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from caat_jax import checkpointing as ckpt_lib
from caat_jax import (
  config_lib,
  data,
  evaluators,
  methods,
  metrics,
  models,
  optim,
  pipeline,
  streaming,
)
from caat_jax import state as state_lib
from caat_jax.checkpointing import workdir as workdir_lib
from caat_jax.data import DatasetNotFoundError
from caat_jax.data.transforms import DataConfigError
from caat_jax.parallel import REPLICATED, SHARDED, Parallel

# What ``train_and_evaluate`` refuses, or stops with, in a message of one
# line meant for the user (the command lines print it and exit 1).
USER_ERRORS = (
  workdir_lib.WorkdirError,
  DataConfigError,
  DatasetNotFoundError,
  config_lib.ConfigError,
  metrics.NonFiniteLossError,
  ckpt_lib.IncompatibleConfigError,
  ckpt_lib.CheckpointError,
)


def resolve_unroll(setting) -> bool:
  s = str(setting).lower()
  return jax.default_backend() == "cpu" if s == "auto" else s == "true"


class Run:
  """Everything built from a config: data, model, method step, evaluator."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    parallel: Parallel | None = None,
    dataset: data.Dataset | None = None,
  ):
    self.parallel = parallel or Parallel(config.parallel.backend)
    config_lib.validate(config, self.parallel.num_devices)
    self.config = config
    self.dataset = ds = dataset if dataset is not None else data.load_dataset(config.data)
    self.method = methods.get(config.method)
    # In memory, or streamed (ImageNet): one interface (caat_jax.streaming).
    self.input = streaming.make_train_input(ds, config, meta=self.method.meta_batch(config))
    self.steps_per_epoch = self.input.steps_per_epoch
    if self.steps_per_epoch == 0:
      raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} is larger than the training set "
        f"({len(ds.train)} examples); use at most {len(ds.train)}."
      )
    self.total_steps = self.steps_per_epoch * config.num_epochs
    axis = self.parallel.axis_name
    model_kwargs = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std)
    if config.model == "small_cnn":
      model_kwargs["width"] = config.model_width
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    self.model = models.get_model(config.model, axis_name=axis, dtype=dtype, **model_kwargs)
    # Evaluation (and attacks on the final model) always computes in float32.
    self.eval_model = models.get_model(
      config.model, axis_name=None, dtype=jnp.float32, **model_kwargs
    )
    self.tx, self.schedule = optim.make_optimizer(
      config.optimizer, self.steps_per_epoch, config.num_epochs
    )
    self.unroll = resolve_unroll(config.attack.unroll)
    self.ctx = methods.StepContext(
      model=self.model,
      tx=self.tx,
      attack=methods.base.AttackSettings.from_config(
        config.attack, self.unroll, mean=ds.mean, std=ds.std
      ),
      num_classes=ds.num_classes,
      class_counts=tuple(int(c) for c in ds.class_counts),
      augment=ds.augment,
      axis_name=axis,
      schedule=self.schedule,
      steps_per_epoch=self.steps_per_epoch,
    )
    step = functools.partial(
      methods.train_step, method_step=self.method.make_step(config, self.ctx), ctx=self.ctx
    )
    self.train_step = self.parallel.wrap(
      step, (REPLICATED, SHARDED), (REPLICATED, REPLICATED), donate_argnums=(0,)
    )
    self.evaluator = evaluators.Evaluator(self.parallel, self.eval_model, self.unroll)

  def init_state(self) -> state_lib.TrainState:
    """A fresh single-copy state (``init_from`` applied)."""
    key = jax.random.PRNGKey(self.config.seed)
    init_key, extra_key = jax.random.split(jax.random.fold_in(key, 0x1417))
    dummy = jnp.zeros((1,) + self.dataset.image_shape, jnp.float32)
    variables = self.eval_model.init(init_key, dummy, train=False)
    state = state_lib.create(
      variables, self.tx, key, self.method.init_extra(self.config, self.ctx, extra_key)
    )
    if self.config.init_from:
      loaded = ckpt_lib.load_variables(self.config.init_from, state)
      state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"])
    return state

  def evaluate(self, rstate, split=None, progress=False) -> list[dict]:
    """Per-class documents (docs/method.md §9), one per ``config.eval.attacks`` entry."""
    c = self.config
    return self.evaluator.documents(
      rstate.variables,
      split if split is not None else self.dataset.test,
      c.eval,
      self.dataset.num_classes,
      progress=progress,
      labels={"method": c.method, "dataset": c.data.name, "model": c.model},
    )

  def epoch_start(self, rstate, epoch: int):
    """The method's epoch hook before ``epoch`` (the first included, as FRL's
    reference updates its multipliers), given the validation errors it asks for."""
    hook = self.method.epoch_hook
    request = hook.validation(self.config) if hook is not None else None
    if request is None:
      return rstate, {}
    attack, eps, step_size = request
    errors = self.evaluator.per_class_errors(
      rstate.variables,
      self.dataset.meta,
      attack,
      eps=eps,
      step_size=step_size,
      batch_size=self.config.eval.batch_size,
      num_classes=self.dataset.num_classes,
    )
    extra, record = hook.update(self.config, self.parallel.fetch(rstate.extra), errors, epoch)
    return rstate.replace(extra=self.parallel.replicate(extra)), record

  def steps(self, start: int):
    """(step number after the step, host-local batch) from ``start`` to the end."""
    spe = self.steps_per_epoch
    for epoch in range(start // spe, self.config.num_epochs):
      offset = start - epoch * spe if epoch == start // spe else 0
      for i, batch in enumerate(self.input.batches(epoch, start=offset)):
        yield epoch * spe + offset + i + 1, batch

  def device_steps(self, start: int):
    """``steps`` with each batch already on the devices, transferred
    ``config.data.prefetch`` steps ahead of the step that uses it."""
    depth = data.stream_setting(self.config.data, "prefetch")
    put = lambda item: (item[0], self.parallel.shard(item[1]))
    return streaming.prefetch(self.steps(start), put, depth)


def itstime(step: int, every: int) -> bool:
  """Periodic work due after ``step`` (``every`` 0: never)."""
  return every > 0 and step % every == 0


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> list[dict]:
  """Trains ``config.method``, resuming from ``workdir`` if it holds checkpoints.

  Writes ``metrics.jsonl``, TensorBoard events, ``checkpoints/`` and, at the
  end, ``eval.json`` (a list of docs/method.md §9 documents, one per attack).
  Returns the final evaluation documents.

  Resuming restores the newest readable checkpoint (an unreadable one is
  moved aside with a warning) and continues exactly as an uninterrupted run:
  same state, same data order (a function of the step), same metrics.jsonl.
  The checkpoint's config must equal ``config`` outside
  ``checkpoint.SAFE_TO_CHANGE`` unless ``allow_config_change``.

  Raises:
    metrics.NonFiniteLossError: a metric or the state became NaN/Inf (the
      last good checkpoint is kept).
    checkpoint.Preempted: SIGTERM or a preemption notice; a checkpoint of
      the step it names was saved (synchronously) before raising.
    checkpoint.IncompatibleConfigError, checkpoint.CheckpointError: see
      ``Checkpointer.restore``.
  """
  run = Run(config)
  is_main = jax.process_index() == 0
  spe, total = run.steps_per_epoch, run.total_steps
  with contextlib.ExitStack() as stack:
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    stack.callback(writer.close)
    ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=config.keep_checkpoints)
    stack.callback(ckpt.close)  # waits until the last good checkpoint is committed
    state = run.init_state()
    restored = ckpt.restore(state, config=config, allow_config_change=allow_config_change)
    if restored is not None:
      state, step0 = restored
      logging.info("resumed from %s at step %d", ckpt.directory, step0)
    start = int(state.step)
    writer.drop_after(start, final_step=total)
    rstate = run.parallel.replicate(state)
    del state
    watcher = stack.enter_context(ckpt_lib.PreemptionWatcher(ckpt))
    bar = stack.enter_context(
      tqdm(
        total=total,
        initial=start,
        disable=not is_main,
        desc=config.method,
        dynamic_ncols=True,
        unit="step",
      )
    )
    window = metrics.Window()
    input_wait = streaming.WaitTimer()  # the time steps wait for their batch
    if start == 0:
      rstate, record = run.epoch_start(rstate, 0)
      if record:
        writer.write(0, dict(record, epoch=0))

    def kept() -> str:
      steps = ckpt.all_steps()
      return (
        f"The last good checkpoint (step {max(steps)}) is kept in {ckpt.directory}. "
        if steps
        else "No checkpoint was saved yet. "
      )

    def bad_state(step: int) -> None:
      metrics.check_finite_state(step, run.parallel.fetch(rstate), kept())
      raise metrics.NonFiniteLossError(  # the state is finite again: say so all the same
        f"the train state held NaN/Inf after step {step}; stopping. {kept()}".strip()
      )

    def log(step: int) -> None:
      record = window.flush(
        run.parallel.fetch, step, spe, run.schedule, on_bad_state=bad_state, note=kept
      )
      if record is not None:
        record.update(input_wait.record())
        if isinstance(run.input, streaming.StreamingTrainInput):
          record["input/images_per_sec"] = run.input.throughput
        writer.write(step, record)
        bar.set_postfix(loss=f"{record['train/loss']:.3f}")

    for step, batch in input_wait.wrap(run.device_steps(start)):
      rstate, step_metrics = run.train_step(rstate, batch)
      window.add(step_metrics)
      bar.update(1)
      epoch, end_of_epoch = (step - 1) // spe, step % spe == 0
      # Periodic work, in one place. Logging ends a metrics window at every
      # checkpoint, so a resumed run averages over the same windows as an
      # uninterrupted one; an epoch's evaluation comes before its save, so a
      # checkpoint at an epoch's end implies its records are written.
      reason = watcher.should_stop(step)  # every step, on every process (collective)
      save_now = end_of_epoch or itstime(step, config.checkpoint_every_steps) or bool(reason)
      if itstime(step, config.log_every_steps) or save_now:
        log(step)
      if end_of_epoch and step < total:
        if itstime(epoch + 1, config.eval_every):
          writer.write(step, metrics.eval_record(run.evaluate(rstate), epoch))
        rstate, record = run.epoch_start(rstate, epoch + 1)
        if record:
          writer.write(step, dict(record, epoch=epoch + 1))
      if save_now:
        host_state = run.parallel.fetch(rstate)
        metrics.check_finite_state(step, host_state, kept())
        ckpt.save(step, host_state, config, force=bool(reason))
      if reason:
        ckpt.wait()  # the checkpoint is committed before the process exits
        raise ckpt_lib.Preempted(step, reason)
    ckpt.wait()
    step = max(start, total)
    # A preemption noticed from here on (the last checkpoint is committed)
    # stops before or during the final evaluation: the rerun does it.
    docs = _final_evaluation(
      run, rstate, workdir, writer, step, start == total, watcher.stop_at_once(step)
    )
  if is_main:
    print(f"\n{config.method} on {config.data.name} ({config.model}), step {step}:")
    print(evaluators.format_table(docs))
    print(evaluators.format_per_class(docs[-1]))
  return docs


def _final_evaluation(
  run: Run, rstate, workdir: str, writer, step: int, finished_before: bool, interruptible
) -> list[dict]:
  """The final evaluation documents, written to ``eval.json`` and metrics.

  ``interruptible``: a context manager around the evaluation itself (not
  the writes), within which a preemption stops at once.
  """
  config = run.config
  eval_path = os.path.join(workdir, "eval.json")
  docs = _saved_final_eval(eval_path, run, step) if finished_before else None
  if docs is None:
    is_main = jax.process_index() == 0
    with interruptible:
      docs = run.evaluate(rstate, progress=is_main)
    docs = [dict(d, step=step, step_size=config.eval.step_size) for d in docs]
    if is_main:
      writer.drop_eval_at(step)  # a finished run evaluated again: replace, not append
      writer.write(step, metrics.eval_record(docs, config.num_epochs - 1))
      evaluators.write_json(eval_path, docs)
  elif not writer.has_eval_at(step):  # its record was lost (a torn last line): from eval.json
    writer.write(step, metrics.eval_record(docs, config.num_epochs - 1))
  return docs


def _saved_final_eval(path: str, run: Run, step: int) -> list[dict] | None:
  """The final evaluation a finished run already wrote, if it still applies.

  A finished run started again (a suite resumed after a kill, say) reuses its
  ``eval.json`` when that holds this step's evaluation under the current
  ``config.eval`` (attacks, eps, step size, number of examples); otherwise
  it evaluates again. On several processes it always evaluates again: the
  evaluation is collective, and each process must decide alike.
  """
  if jax.process_count() > 1 or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      docs = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  c = run.config.eval
  num = pipeline.num_eval_points(run.dataset.test, c.num_examples)
  want = [(a, float(c.eps), float(c.step_size), num, step, run.config.method) for a in c.attacks]
  try:
    have = [
      (d["attack"], d["eps"], d["step_size"], d["num_examples"], d["step"], d["method"])
      for d in docs
    ]
  except (KeyError, TypeError):
    return None
  return docs if have == want else None
