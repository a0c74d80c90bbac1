"""The host loop: data, state and step in; metrics, evaluations and
checkpoints out. It never knows which method runs (DESIGN: data flows one way).
"""

import functools
import json
import logging
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from caat_jax import checkpoint as ckpt_lib
from caat_jax import config_lib, data, evaluate, methods, models, optim
from caat_jax import state as state_lib
from caat_jax.parallel import REPLICATED, SHARDED, Parallel


class NonFiniteLossError(FloatingPointError):
  """A training metric became NaN or Inf."""


class MetricWriter:
  """``metrics.jsonl`` (one JSON object per line) and TensorBoard events.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._workdir = workdir
    self._tb = None
    self._purge_step = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(self._path, "a")

  def _tensorboard(self):
    # Opened at the first write, after any ``drop_after``: a resumed run's
    # events file then starts with a purge marker, and TensorBoard discards
    # the older files' events from that step on, as metrics.jsonl drops them.
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(self._workdir, "tb"),
                               purge_step=self._purge_step)
    return self._tb

  def write(self, step: int, record: dict) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": int(step), **record}) + "\n")
    self._jsonl.flush()
    tb = self._tensorboard()
    for k, v in record.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        tb.add_scalar(k, v, step)
    tb.flush()

  def drop_after(self, step: int) -> None:
    """Removes the records of steps after ``step``.

    On resume from step s, records after s were written by the process that
    stopped (it ran on past its last checkpoint); the resumed run writes them
    again, so dropping them keeps ``metrics.jsonl`` as an uninterrupted run
    writes it. A line cut short by a kill is dropped too. TensorBoard events
    after s are purged by the next events file (see ``_tensorboard``).
    """
    if not self.enabled:
      return
    self._purge_step = int(step) + 1
    n = self._rewrite(lambda rec: int(rec.get("step", 0)) <= step)
    if n:
      logging.warning("metrics.jsonl: dropped %d records after step %d (resumed run "
                      "writes them again)", n, step)

  def drop_eval_at(self, step: int) -> None:
    """Removes the evaluation records of ``step`` (before one replaces them)."""
    if self.enabled:
      self._rewrite(lambda rec: not (int(rec.get("step", -1)) == step
                                     and any(k.startswith("eval/") for k in rec)))

  def _rewrite(self, keep_record) -> int:
    """Keeps the parseable records ``keep_record`` accepts; returns how many went.

    The file is rewritten to a temporary copy and renamed over the original,
    so a kill during this leaves either the old or the new file, never half
    of one.
    """
    self._jsonl.close()
    with open(self._path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if keep_record(rec):
        keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
      tmp = self._path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self._path)
    self._jsonl = open(self._path, "a")
    return len(lines) - len(keep)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training set in ``epoch``: a pure function of (seed, epoch),
  so a resumed run sees exactly the batches it would have seen."""
  return np.random.default_rng([seed, epoch, 0xDA7A]).permutation(num_examples)


def train_batches(split, *, batch_size: int, seed: int, epoch: int, start: int = 0,
                  meta=None, meta_batch_size: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This process's slices of the global batches ``start, start+1, ...`` of
  ``epoch`` (the incomplete last batch is dropped).

  With ``meta`` (an ArraySplit) each batch also carries ``meta_image`` /
  ``meta_label``: ``meta_batch_size`` distinct meta examples drawn afresh for
  every step from (seed, epoch, step-in-epoch), so resumption sees the same.
  """
  perm = epoch_permutation(len(split), seed, epoch)
  for i in range(start, len(split) // batch_size):
    idx = perm[i * batch_size:(i + 1) * batch_size]
    batch = {
        "image": split.images[idx],
        "label": split.labels[idx].astype(np.int32),
        "index": idx.astype(np.int32),
        "corrupted": split.corrupted[idx],
    }
    if meta is not None:
      rng = np.random.default_rng([seed, epoch, i, 0x3E7A])
      m = rng.choice(len(meta), meta_batch_size, replace=meta_batch_size > len(meta))
      batch["meta_image"] = meta.images[m]
      batch["meta_label"] = meta.labels[m].astype(np.int32)
    yield evaluate.host_slice(batch)


def resolve_unroll(setting) -> bool:
  s = str(setting).lower()
  return jax.default_backend() == "cpu" if s == "auto" else s == "true"


class Run:
  """Everything built from a config: data, model, method, compiled steps."""

  def __init__(self, config: ml_collections.ConfigDict, parallel: Parallel | None = None,
               dataset: data.Dataset | None = None):
    self.parallel = parallel or Parallel(config.parallel.backend)
    config_lib.validate(config, self.parallel.num_devices)
    self.config = config
    self.dataset = dataset if dataset is not None else data.load_dataset(config.data)
    ds = self.dataset
    self.steps_per_epoch = len(ds.train) // config.batch_size
    if self.steps_per_epoch == 0:
      raise config_lib.ConfigError(
          f"config.batch_size={config.batch_size} is larger than the training set "
          f"({len(ds.train)} examples); use at most {len(ds.train)}.")
    self.total_steps = self.steps_per_epoch * config.num_epochs
    axis = self.parallel.axis_name
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    model_kwargs = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std, dtype=dtype)
    if config.model == "small_cnn":
      model_kwargs["width"] = config.model_width
    self.model = models.get_model(config.model, axis_name=axis, **model_kwargs)
    self.eval_model = models.get_model(config.model, axis_name=None, **model_kwargs)
    self.tx, self.schedule = optim.make_optimizer(
        config.optimizer, self.steps_per_epoch, config.num_epochs)
    self.unroll = resolve_unroll(config.attack.unroll)
    self.method = methods.get(config.method)
    self.ctx = methods.StepContext(
        model=self.model, tx=self.tx, config=config, num_classes=ds.num_classes,
        class_counts=tuple(int(c) for c in ds.class_counts), augment=ds.augment,
        axis_name=axis, unroll=self.unroll, schedule=self.schedule)
    self.train_step = self.parallel.wrap(
        functools.partial(methods.train_step, method=self.method, ctx=self.ctx),
        (REPLICATED, SHARDED), (REPLICATED, REPLICATED), donate_argnums=(0,))
    self._eval_steps = {}

  def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches of ``epoch`` from batch ``start`` on."""
    meta = self.dataset.meta if self.method.meta_batch else None
    return train_batches(self.dataset.train, batch_size=self.config.batch_size,
                         seed=self.config.seed, epoch=epoch, start=start, meta=meta,
                         meta_batch_size=self.config.meta.batch_size)

  def init_state(self) -> state_lib.TrainState:
    """A fresh single-copy state (``init_from`` applied)."""
    key = jax.random.PRNGKey(self.config.seed)
    init_key, extra_key = jax.random.split(jax.random.fold_in(key, 0x1417))
    dummy = jnp.zeros((1,) + self.dataset.image_shape, jnp.float32)
    variables = self.eval_model.init(init_key, dummy, train=False)
    state = state_lib.create(variables, self.tx, key,
                             self.method.init_extra(self.ctx, extra_key))
    if self.config.init_from:
      loaded = ckpt_lib.load_variables(self.config.init_from, state)
      state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"])
    return state

  def eval_step_for(self, attacks: tuple[str, ...], eps: float, step_size: float):
    """The PGD evaluation step for these settings (the run's ``config.eval``,
    FRL's validation PGD-20, the evaluate CLI's sweeps), built once and cached."""
    key = (tuple(attacks), float(eps), float(step_size))
    if key not in self._eval_steps:
      cfg = ml_collections.ConfigDict(
          {"attacks": key[0], "eps": key[1], "step_size": key[2]})
      self._eval_steps[key] = evaluate.make_eval_step(
          self.parallel, self.eval_model, cfg, self.unroll)
    return self._eval_steps[key]

  def evaluate(self, replicated_state, split=None, progress=False) -> list[dict]:
    """Per-class documents (SPEC 9), one per configured attack."""
    c = self.config
    outcomes = evaluate.run_eval(
        self.parallel, self.eval_step_for(c.eval.attacks, c.eval.eps, c.eval.step_size),
        replicated_state.variables,
        split if split is not None else self.dataset.test,
        batch_size=c.eval.batch_size, num_examples=c.eval.num_examples,
        progress=progress)
    return [evaluate.report(outcomes, self.dataset.num_classes, attack=a, eps=c.eval.eps,
                            method=c.method, dataset=c.data.name, model=c.model)
            for a in c.eval.attacks]


def _mean_metrics(fetched: list[dict]) -> dict:
  """Mean over steps of each metric; per-class arrays stay lists.

  ``ratio/<name>/num`` and ``ratio/<name>/den`` pairs (``base.ratio_metric``)
  are summed over the steps and written as ``train/<name> = num / den`` (NaN
  written as None where nothing was seen, e.g. a class absent from the window).
  """
  record = {}
  for k in fetched[0]:
    if k.startswith("ratio/"):
      if k.endswith("/num"):
        name = k[len("ratio/"):-len("/num")]
        num = np.sum([m[k] for m in fetched], axis=0)
        den = np.sum([m[f"ratio/{name}/den"] for m in fetched], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
          v = np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)
        record[f"train/{name}"] = [None if np.isnan(e) else round(float(e), 6)
                                   for e in np.atleast_1d(v)]
      continue
    v = np.mean([m[k] for m in fetched], axis=0)
    record[f"train/{k}"] = float(v) if np.ndim(v) == 0 else np.round(v, 6).tolist()
  return record


def _check_finite(step: int, record: dict) -> None:
  """Raises ``NonFiniteLossError`` naming the step and the first NaN/Inf metric.

  Every process sees the same (replicated) metrics, so all of them stop
  together rather than some waiting forever in a collective.
  """
  for k, v in record.items():
    if isinstance(v, float) and not np.isfinite(v):
      raise NonFiniteLossError(
          f"metric {k!r} is {v} at step {step}; stopping. The last good checkpoint "
          "is kept in WORKDIR/checkpoints (lower the learning rate or check the data).")


def _check_finite_state(step: int, state) -> None:
  """Refuses to checkpoint a host-side state holding NaN or Inf.

  A finite loss at step s does not imply finite parameters after update s
  (e.g. an Inf gradient); saving those would replace the last good checkpoint
  with a poisoned one.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      raise NonFiniteLossError(
          f"state{jax.tree_util.keystr(path)} holds NaN/Inf after step {step}; stopping "
          "without saving it. The last good checkpoint is kept in WORKDIR/checkpoints.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> list[dict]:
  """Trains ``config.method``, resuming from ``workdir`` if it holds checkpoints.

  Writes ``metrics.jsonl``, TensorBoard events, ``checkpoints/`` and, at the
  end, ``eval.json`` (a list of SPEC-9 documents, one per attack).
  Returns the final evaluation documents.

  Resuming restores the newest readable checkpoint (an unreadable one is
  moved aside with a warning) and continues exactly as an uninterrupted run:
  same state, same data order (a function of the step), same metrics.jsonl.
  The checkpoint's config must equal ``config`` outside
  ``checkpoint.SAFE_TO_CHANGE`` unless ``allow_config_change``.

  Raises:
    NonFiniteLossError: a metric or the state became NaN/Inf (the last good
      checkpoint is kept).
    checkpoint.Preempted: SIGTERM or a preemption notice; a checkpoint of
      the step it names was saved (synchronously) before raising.
    checkpoint.IncompatibleConfigError, checkpoint.CheckpointError: see
      ``Checkpointer.restore``.
  """
  run = Run(config)
  is_main = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=is_main)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=config.keep_checkpoints)
  state = run.init_state()
  try:
    restored = ckpt.restore(state, config=config, allow_config_change=allow_config_change)
  except BaseException:
    ckpt.close()
    writer.close()
    raise
  if restored is not None:
    state, step0 = restored
    logging.info("resumed from %s at step %d", ckpt.directory, step0)
  start_step = int(state.step)
  writer.drop_after(start_step)
  rstate = run.parallel.replicate(state)
  del state

  spe, total = run.steps_per_epoch, run.total_steps
  bar = tqdm(total=total, initial=start_step, disable=not is_main, desc=config.method,
             dynamic_ncols=True, unit="step")
  pending: list = []
  t0 = time.time()
  step = start_step

  def log_pending() -> None:
    """Writes the mean metrics of the steps since the last record."""
    nonlocal pending, t0
    if not pending:
      return
    record = _mean_metrics(run.parallel.fetch(pending))
    record.update(epoch=(step - 1) // spe, lr=float(run.schedule(step - 1)),
                  steps_per_sec=len(pending) / max(time.time() - t0, 1e-9))
    _check_finite(step, record)
    writer.write(step, record)
    bar.set_postfix(loss=f"{record['train/loss']:.3f}")
    pending, t0 = [], time.time()

  def save(force: bool = False) -> None:
    # Logging first ends a metrics window at every checkpoint, so a resumed
    # run averages over the same windows as an uninterrupted one, and it
    # checks every loss up to this step before anything is written.
    log_pending()
    host_state = run.parallel.fetch(rstate)
    _check_finite_state(step, host_state)
    ckpt.save(step, host_state, config, force=force)

  def stop_if_preempted() -> None:
    # Called once per step on every process (the multi-host preemption
    # check is a collective).
    reason = watcher.should_stop(step)
    if reason:
      save(force=True)
      ckpt.wait()  # the checkpoint is committed before the process exits
      raise ckpt_lib.Preempted(step, reason)

  with ckpt_lib.PreemptionWatcher(ckpt.manager) as watcher:
    try:
      while step < total:
        epoch, offset = divmod(step, spe)
        for batch in run.batches(epoch, start=offset):
          rstate, metrics = run.train_step(rstate, run.parallel.shard(batch))
          pending.append(metrics)
          step += 1
          bar.update(1)
          if step % config.log_every_steps == 0:
            log_pending()
          if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
            save()
          if step % spe:  # at an epoch's end, after its evaluation and save
            stop_if_preempted()
        # End of an epoch. Evaluate before saving: a checkpoint at an epoch's
        # end then implies its evaluation is already in metrics.jsonl.
        log_pending()
        if run.method.on_epoch_end is not None:
          rstate, record = run.method.on_epoch_end(run, rstate, epoch)
          if record:
            writer.write(step, dict(record, epoch=epoch))
        if config.eval_every and (epoch + 1) % config.eval_every == 0 and step < total:
          docs = run.evaluate(rstate)
          writer.write(step, _eval_record(docs, epoch))
        save()
        stop_if_preempted()
    except BaseException:
      bar.close()
      ckpt.close()  # waits until the last good checkpoint is committed
      writer.close()
      raise
  bar.close()
  ckpt.wait()

  eval_path = os.path.join(workdir, "eval.json")
  docs = _saved_final_eval(eval_path, run, step) if start_step == total else None
  if docs is None:
    docs = [dict(d, step=step, step_size=config.eval.step_size)
            for d in run.evaluate(rstate, progress=is_main)]
    if is_main:
      writer.drop_eval_at(step)  # a finished run evaluated again: replace, not append
      writer.write(step, _eval_record(docs, config.num_epochs - 1))
      evaluate.write_json(eval_path, docs)
  if is_main:
    print(f"\n{config.method} on {config.data.name} ({config.model}), step {step}:")
    print(evaluate.format_table(docs))
    print(evaluate.format_per_class(docs[-1]))
  ckpt.close()
  writer.close()
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
  n_test = len(run.dataset.test)
  num = min(c.num_examples, n_test) if c.num_examples else n_test
  want = [(a, float(c.eps), float(c.step_size), num, step, run.config.method)
          for a in c.attacks]
  try:
    have = [(d["attack"], d["eps"], d["step_size"], d["num_examples"], d["step"], d["method"])
            for d in docs]
  except (KeyError, TypeError):
    return None
  return docs if have == want else None


def _eval_record(docs: list[dict], epoch: int) -> dict:
  rec = {"epoch": epoch}
  for d in docs:
    for agg in ("avg", "worst"):
      for k, v in d[agg].items():
        rec[f"eval/{d['attack']}/{k}_{agg}"] = v
    rec[f"eval/{d['attack']}/per_class"] = d["per_class"]
  return rec
