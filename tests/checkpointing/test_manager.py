"""Surviving interruptions and bad state: exact resume after SIGKILL, a save
on SIGTERM, unreadable checkpoints, changed configs, NaN losses."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import checkpointing as ckpt_lib
from caat_jax import methods, metrics, train
from tests.helpers import (
  ROOT,
  digits_config,
  records,
  restore_final_state,
  subprocess_env,
  truncate_checkpoint,
)


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


def _committed_steps(workdir):
  """Steps whose checkpoint orbax has finished writing (renamed + marked)."""
  steps = []
  for d in glob.glob(os.path.join(ckpt_lib.checkpoint_dir(workdir), "*")):
    name = os.path.basename(d)
    if name.isdigit() and os.path.exists(os.path.join(d, "commit_success.txt")):
      steps.append(int(name))
  return steps


# The subprocess runs: tests/small_config.py (digits, small CNN, PGD-AT with a
# 2-step attack), 2 epochs = 40 steps, a checkpoint every 4 steps, on 2 fake
# CPU devices.
_MAIN_ARGS = [
  "--config=tests/small_config.py",
  "--config.num_epochs=2",
  "--config.checkpoint_every_steps=4",
  "--config.log_every_steps=2",
]


_KILL_AFTER = 12  # signal once a checkpoint at this step or later is committed


def _main(workdir, *extra):
  return subprocess.run(
    [sys.executable, "-m", "caat_jax.main", f"--workdir={workdir}", *_MAIN_ARGS, *extra],
    cwd=ROOT,
    env=subprocess_env(2),
    capture_output=True,
    text=True,
    timeout=600,
  )


def _run_and_signal(workdir, sig):
  """Starts a run, sends ``sig`` once a checkpoint >= _KILL_AFTER is committed."""
  proc = subprocess.Popen(
    [sys.executable, "-m", "caat_jax.main", f"--workdir={workdir}", *_MAIN_ARGS],
    cwd=ROOT,
    env=subprocess_env(2),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300
  while not any(s >= _KILL_AFTER for s in _committed_steps(workdir)):
    assert proc.poll() is None, "the run ended before it could be signalled:\n" + proc.stderr.read()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.01)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  res = _main(workdir)
  assert res.returncode == 0, res.stderr
  return workdir


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(straight_run, tmp_path):
  workdir = str(tmp_path)
  rc, _, err = _run_and_signal(workdir, signal.SIGKILL)
  assert rc == -signal.SIGKILL, err
  assert not os.path.exists(os.path.join(workdir, "eval.json"))  # really cut short
  killed_at = max(_committed_steps(workdir))
  assert _KILL_AFTER <= killed_at < 40

  res = _main(workdir)
  assert res.returncode == 0, res.stderr
  config = digits_config(num_epochs=2)
  state, step = restore_final_state(workdir, config)
  ref, ref_step = restore_final_state(straight_run, config)
  assert step == ref_step == 40
  # Everything: parameters, BatchNorm statistics, optimiser state, RNG, step.
  _assert_bitwise_equal(state, ref)
  # metrics.jsonl line for line (timing aside), evaluation identical.
  assert records(workdir, drop=("steps_per_sec",)) == records(straight_run, drop=("steps_per_sec",))
  with (
    open(os.path.join(workdir, "eval.json")) as f,
    open(os.path.join(straight_run, "eval.json")) as g,
  ):
    assert json.load(f) == json.load(g)


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resumes_identically(straight_run, tmp_path):
  workdir = str(tmp_path)
  rc, _, err = _run_and_signal(workdir, signal.SIGTERM)
  assert rc == ckpt_lib.EXIT_PREEMPTED == 143, err
  assert "preempted (SIGTERM)" in err and "saved a checkpoint at step" in err
  saved = max(_committed_steps(workdir))
  assert f"step {saved}" in err and saved < 40

  res = _main(workdir)
  assert res.returncode == 0, res.stderr
  config = digits_config(num_epochs=2)
  _assert_bitwise_equal(
    restore_final_state(workdir, config)[0], restore_final_state(straight_run, config)[0]
  )
  # The preemption save closes a logging window early; the per-step losses
  # are the same, so records at shared steps keep their lr and epoch.
  ref = {r["step"]: r for r in records(straight_run, drop=("steps_per_sec",)) if "train/loss" in r}
  got = {r["step"]: r for r in records(workdir, drop=("steps_per_sec",)) if "train/loss" in r}
  assert set(ref) <= set(got)
  assert all(got[s]["lr"] == ref[s]["lr"] for s in ref)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  """One epoch (20 steps) of natural training, checkpoints at 10, 15, 20."""
  workdir = str(tmp_path_factory.mktemp("short"))
  config = digits_config(method="natural", checkpoint_every_steps=5, keep_checkpoints=3)
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _copy(src, dst):
  subprocess.run(["cp", "-r", src, dst], check=True)
  return dst


def test_truncated_latest_checkpoint_falls_back_to_previous(short_run, tmp_path, caplog):
  config, src = short_run
  workdir = _copy(src, str(tmp_path / "run"))
  ckdir = ckpt_lib.checkpoint_dir(workdir)
  assert sorted(_committed_steps(workdir)) == [10, 15, 20]
  truncate_checkpoint(workdir, 20)

  template = train.Run(config).init_state()
  ckpt = ckpt_lib.Checkpointer(ckdir)
  with caplog.at_level("WARNING"):
    state, step = ckpt.restore(template, config=config)
  ckpt.close()
  assert step == 15 and int(state.step) == 15
  assert any("step 20" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
  # Moved aside (kept for inspection), so that step 20 can be saved again.
  assert not os.path.exists(os.path.join(ckdir, "20"))
  assert glob.glob(ckdir + "_unreadable/20.*")

  # Training on from step 15 reproduces the lost step 20 exactly.
  train.train_and_evaluate(config, workdir)
  _assert_bitwise_equal(
    restore_final_state(workdir, config)[0], restore_final_state(src, config)[0]
  )


def test_all_checkpoints_unreadable_raises_instead_of_starting_afresh(short_run, tmp_path):
  config, src = short_run
  workdir = _copy(src, str(tmp_path / "run"))
  for s in (10, 15, 20):
    truncate_checkpoint(workdir, s)
  with pytest.raises(ckpt_lib.CheckpointError, match="refusing to start afresh"):
    train.train_and_evaluate(config, workdir)
  assert sorted(_committed_steps(workdir)) == [10, 15, 20]  # nothing overwritten


def test_incompatible_config_names_the_keys(short_run):
  config, workdir = short_run
  changed = digits_config(
    method="natural",
    checkpoint_every_steps=5,
    keep_checkpoints=3,
    seed=7,
    **{"optimizer.learning_rate": 0.5},
  )
  template = train.Run(config).init_state()
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  try:
    with pytest.raises(ckpt_lib.IncompatibleConfigError) as e:
      ckpt.restore(template, config=changed)
    msg = str(e.value)
    assert "optimizer.learning_rate: checkpoint 0.05 -> now 0.5" in msg
    assert "seed: checkpoint 0 -> now 7" in msg
    assert "--allow_config_change" in msg
    assert "log_every_steps" not in msg
    # The explicit override resumes anyway.
    _, step = ckpt.restore(template, config=changed, allow_config_change=True)
    assert step == 20
    # Keys that do not change the trajectory may differ freely.
    safe = digits_config(
      method="natural",
      checkpoint_every_steps=3,
      keep_checkpoints=5,
      log_every_steps=1,
      **{"eval.num_examples": 100, "parallel.backend": "shard_map"},
    )
    assert ckpt.restore(template, config=safe)[1] == 20
  finally:
    ckpt.close()


def test_incompatible_config_makes_main_exit_with_the_message(tmp_path):
  workdir = str(tmp_path)
  args = ["--config=tests/small_config.py", "--config.method=natural", "--config.num_epochs=1"]
  run = lambda *extra: subprocess.run(
    [sys.executable, "-m", "caat_jax.main", f"--workdir={workdir}", *args, *extra],
    cwd=ROOT,
    env=subprocess_env(2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run().returncode == 0
  res = run("--config.model_width=16")
  assert res.returncode == 1
  assert "model_width: checkpoint 8 -> now 16" in res.stderr


def _inject(monkeypatch, at_step, what):
  """Makes steps from ``at_step`` on report a NaN loss, or step ``at_step``
  alone produce Inf parameters (its own loss still finite)."""
  real = methods.train_step

  def poisoned(state, batch, *, method_step, ctx):
    def bad_method_step(st, b, key):  # inside the train step, as a real fault is
      new_state, step_metrics = method_step(st, b, key)
      if what == "loss":
        bad = st.step + 1 >= at_step
        step_metrics = dict(step_metrics, loss=jnp.where(bad, jnp.nan, step_metrics["loss"]))
      else:
        bad = st.step + 1 == at_step
        new_state = new_state.replace(
          params=jax.tree.map(lambda p: jnp.where(bad, jnp.inf, p), new_state.params)
        )
      return new_state, step_metrics

    return real(state, batch, method_step=bad_method_step, ctx=ctx)

  monkeypatch.setattr(methods, "train_step", poisoned)


def test_nan_loss_stops_naming_step_and_metric(monkeypatch, tmp_path):
  _inject(monkeypatch, at_step=7, what="loss")
  config = digits_config(method="natural", checkpoint_every_steps=3, log_every_steps=5)
  # Noticed when the window (7-9) is logged, before step 9 would be saved;
  # named by the step the NaN appeared in, with the checkpoint that is kept.
  with pytest.raises(
    metrics.NonFiniteLossError,
    match=r"metric 'train/loss' is nan at step 7; .*checkpoint \(step 6\)",
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert max(_committed_steps(str(tmp_path))) == 6
  state, _ = restore_final_state(str(tmp_path), config)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_nan_parameters_are_never_saved(monkeypatch, tmp_path):
  _inject(monkeypatch, at_step=6, what="params")
  config = digits_config(method="natural", checkpoint_every_steps=3, log_every_steps=100)
  with pytest.raises(metrics.NonFiniteLossError, match=r"state\.params.* after step 6"):
    train.train_and_evaluate(config, str(tmp_path))
  assert max(_committed_steps(str(tmp_path))) == 3


def test_nan_before_any_checkpoint_says_none_is_kept(monkeypatch, tmp_path):
  # Inf parameters after step 2, noticed at the logging step 4 (no save yet):
  # the message names step 2 and says that no checkpoint exists.
  _inject(monkeypatch, at_step=2, what="params")
  config = digits_config(method="natural", log_every_steps=4)
  with pytest.raises(
    metrics.NonFiniteLossError, match=r"state\.params.* after step 2; .*No checkpoint was saved yet"
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert not _committed_steps(str(tmp_path))


def test_metric_writer_drops_records_after_the_restored_step(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  for s in (5, 10, 15):
    w.write(s, {"train/loss": float(s)})
  w._jsonl.write('{"step": 20, "train/lo')  # a line cut short by a kill
  w._jsonl.flush()
  w.drop_after(10)
  w.write(15, {"train/loss": 0.0})
  w.close()
  assert [
    (r["step"], r["train/loss"]) for r in records(str(tmp_path), drop=("steps_per_sec",))
  ] == [(5, 5.0), (10, 10.0), (15, 0.0)]


def _tb_events(tb_dir):
  """(file, step, tag or 'purge') of every event, files in creation order."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  out = []
  for name in sorted(os.listdir(tb_dir), key=lambda n: os.path.getmtime(os.path.join(tb_dir, n))):
    data = open(os.path.join(tb_dir, name), "rb").read()
    pos = 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      n = int.from_bytes(data[pos : pos + 8], "little")
      ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
      pos += 12 + n + 4
      if ev.HasField("session_log"):
        out.append((name, ev.step, "purge"))
      for v in ev.summary.value:
        out.append((name, ev.step, v.tag))
  return out


def test_resumed_tensorboard_events_purge_the_steps_run_again(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  for s in (5, 10, 15):
    w.write(s, {"train/loss": float(s)})
  w.close()
  time.sleep(1.1)  # tensorboardX names event files by the second
  w = metrics.MetricWriter(str(tmp_path))
  w.drop_after(10)
  w.write(15, {"train/loss": 0.0})
  w.close()
  events = _tb_events(str(tmp_path / "tb"))
  files = sorted({f for f, _, _ in events}, key=[f for f, _, _ in events].index)
  assert len(files) == 2
  first = [(s, t) for f, s, t in events if f == files[0]]
  second = [(s, t) for f, s, t in events if f == files[1]]
  assert first == [(5, "train/loss"), (10, "train/loss"), (15, "train/loss")]
  # TensorBoard drops every older event from the purge step (11) on
  assert second == [(11, "purge"), (15, "train/loss")]


def test_config_differences():
  old = {"seed": 0, "eval": {"eps": 0.1}, "optimizer": {"learning_rate": 0.1}}
  new = {"seed": 0, "eval": {"eps": 0.2}, "optimizer": {"learning_rate": 0.2}, "extra": 1}
  assert ckpt_lib.config_differences(old, new) == [
    ("extra", None, 1),
    ("optimizer.learning_rate", 0.1, 0.2),
  ]
