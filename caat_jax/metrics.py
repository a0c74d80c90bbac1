"""What a run writes as it goes: ``metrics.jsonl`` and TensorBoard events,
the mean of each logging window, and the NaN/Inf guards.
"""

import json
import logging
import os
import time

import jax
import numpy as np

from caat_jax.state import NONFINITE_STATE

# Record keys that measure time (they differ between identical runs): the
# step rate, and the time steps wait for their batch (``streaming.WaitTimer``)
# and the streamed input's delivered rate.
TIMING_KEYS = ("steps_per_sec", "input/wait_ms", "input/wait_fraction", "input/images_per_sec")


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

      self._tb = SummaryWriter(os.path.join(self._workdir, "tb"), purge_step=self._purge_step)
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

  def drop_after(self, step: int, final_step: int | None = None) -> None:
    """Removes the records of steps after ``step``, and unreadable lines.

    On resume from step s, records after s were written by the process that
    stopped (it ran on past its last checkpoint); the resumed run writes them
    again, so dropping them keeps ``metrics.jsonl`` as an uninterrupted run
    writes it. TensorBoard events after s are purged by the next events file
    (see ``_tensorboard``).

    A line that is not a whole record (cut short by a crash while appending,
    or overwritten) is dropped too, and the warning says what becomes of
    what it held, judged from the record before it: after a record of a step
    past s it was of a step past s (written again); in a run finished
    before (s = ``final_step``) after the records of s it held the final
    evaluation (written again by ``train``, from ``eval.json`` or by
    evaluating); otherwise it is lost (training does not go back).
    """
    if not self.enabled:
      return
    self._purge_step = int(step) + 1
    after, torn = self._rewrite(lambda rec: rec["step"] <= step, step)
    if after:
      logging.warning(
        "metrics.jsonl: dropped %d record(s) after step %d (the resumed run writes them again)",
        after,
        step,
      )
    finished = final_step is not None and step == final_step
    final = [n for n, prev in torn if finished and prev == step]
    lost = [(n, prev) for n, prev in torn if not (finished and prev == step)]
    if final:
      logging.warning(
        "metrics.jsonl: dropped unreadable line %s (cut short or overwritten) after the records "
        "of the last step %d: it held the final evaluation, which this run writes again",
        ", ".join(map(str, final)),
        step,
      )
    if lost:
      where = ", ".join(f"{n} (after step {p})" if p is not None else str(n) for n, p in lost)
      logging.warning(
        "metrics.jsonl: dropped %d unreadable line(s) (cut short or overwritten): line %s; "
        "what they held is not written again, unless it was a record of a step after %d "
        "or the final evaluation",
        len(lost),
        where,
        step,
      )

  def drop_eval_at(self, step: int) -> None:
    """Removes the evaluation records of ``step`` (before one replaces them)."""
    if self.enabled:
      self._rewrite(
        lambda rec: not (rec["step"] == step and any(k.startswith("eval/") for k in rec))
      )

  def has_eval_at(self, step: int) -> bool:
    """Whether ``metrics.jsonl`` holds an evaluation record of ``step``."""
    if not self.enabled:
      return True
    self._jsonl.flush()
    with open(self._path) as f:
      for line in f:
        rec = _parse(line)
        if rec is not None and rec["step"] == step and any(k.startswith("eval/") for k in rec):
          return True
    return False

  def _rewrite(self, keep_record, step: int | None = None) -> tuple[int, list]:
    """Keeps the readable records ``keep_record`` accepts.

    Returns (how many readable records went, [(line number, step of the
    readable record before it or None)] of the unreadable lines that are
    not after a record of a step past ``step``; those after one count with
    the records that went).

    The file is rewritten to a temporary copy and renamed over the original,
    so a kill during this leaves either the old or the new file, never half
    of one.
    """
    self._jsonl.close()
    with open(self._path) as f:
      lines = f.readlines()
    keep, went, torn, prev = [], 0, [], None
    for n, line in enumerate(lines, start=1):
      rec = _parse(line)
      if rec is None:
        if step is not None and prev is not None and prev > step:
          went += 1
        else:
          torn.append((n, prev))
        continue
      prev = rec["step"]
      if keep_record(rec):
        keep.append(line if line.endswith("\n") else line + "\n")
      else:
        went += 1
    if len(keep) != len(lines):
      tmp = self._path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self._path)
    self._jsonl = open(self._path, "a")
    return went, torn

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _parse(line: str) -> dict | None:
  """The record of one ``metrics.jsonl`` line, or None if it is not a whole one."""
  try:
    rec = json.loads(line)
  except json.JSONDecodeError:
    return None
  if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
    return None
  return rec


class Window:
  """The device metrics of the steps since the last record."""

  def __init__(self):
    self._pending, self._t0 = [], time.time()

  def add(self, step_metrics) -> None:
    self._pending.append(step_metrics)

  def flush(
    self, fetch, step: int, steps_per_epoch: int, schedule, *, on_bad_state=None, note=lambda: ""
  ) -> dict | None:
    """The window's record (None if empty); starts a new one.

    ``fetch`` brings replicated device values to the host (one sync per
    window, not per step). Each step's metrics are checked: a NaN/Inf metric
    raises ``NonFiniteLossError`` naming the first step it appeared in and
    ``note()`` (what is kept; asked for only then); a step whose update left
    the state non-finite (its ``nonfinite_state`` flag) calls
    ``on_bad_state(step)``.
    """
    if not self._pending:
      return None
    fetched = fetch(self._pending)
    first = step - len(fetched) + 1
    for s, m in enumerate(fetched, start=first):
      if on_bad_state is not None and m.get(NONFINITE_STATE, 0) > 0:
        on_bad_state(s)
      for k, v in m.items():
        if np.ndim(v) == 0 and not np.isfinite(v):
          raise NonFiniteLossError(
            f"metric 'train/{k}' is {float(v)} at step {s}; stopping. "
            f"{note()}(lower the learning rate or check the data)"
          )
    fetched = [{k: v for k, v in m.items() if k != NONFINITE_STATE} for m in fetched]
    record = mean_metrics(fetched)
    record.update(
      epoch=(step - 1) // steps_per_epoch,
      lr=float(schedule(step - 1)),
      steps_per_sec=len(self._pending) / max(time.time() - self._t0, 1e-9),
    )
    self._pending, self._t0 = [], time.time()
    return record


def mean_metrics(fetched: list[dict]) -> dict:
  """Mean over steps of each metric; per-class arrays stay lists.

  ``ratio/<name>/num`` and ``ratio/<name>/den`` pairs (``base.ratio_metric``)
  are summed over the steps and written as ``train/<name> = num / den`` (NaN
  written as None where nothing was seen, e.g. a class absent from the window).
  """
  record = {}
  for k in fetched[0]:
    if k.startswith("ratio/"):
      if k.endswith("/num"):
        name = k[len("ratio/") : -len("/num")]
        num = np.sum([m[k] for m in fetched], axis=0)
        den = np.sum([m[f"ratio/{name}/den"] for m in fetched], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
          v = np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)
        record[f"train/{name}"] = [
          None if np.isnan(e) else round(float(e), 6) for e in np.atleast_1d(v)
        ]
      continue
    v = np.mean([m[k] for m in fetched], axis=0)
    record[f"train/{k}"] = float(v) if np.ndim(v) == 0 else np.round(v, 6).tolist()
  return record


def check_finite_state(step: int, state, note: str = "") -> None:
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
        f"without saving it. {note}".strip()
      )


def eval_record(docs: list[dict], epoch: int) -> dict:
  rec = {"epoch": epoch}
  for d in docs:
    for agg in ("avg", "worst"):
      for k, v in d[agg].items():
        rec[f"eval/{d['attack']}/{k}_{agg}"] = v
    rec[f"eval/{d['attack']}/per_class"] = d["per_class"]
  return rec
