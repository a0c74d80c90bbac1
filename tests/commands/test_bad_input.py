"""Bad input ends in one clear line: no traceback, the message
names the key, file or value and what would be valid, and an existing
workdir is left as it was.

Each case runs through the real CLI where it is reachable there, and the
pieces are tested directly so that they stand on their own."""

import errno
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from caat_jax import checkpointing as ckpt_lib
from caat_jax.checkpointing import workdir as workdir_lib
from caat_jax.data import sources, transforms
from tests.helpers import ROOT, snapshot, subprocess_env

_FAST = [
  "--config=configs/digits.py",
  "--config.num_epochs=1",
  "--config.suite=()",
  "--config.method=natural",
]


def _cli(workdir, *extra, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "caat_jax.main", f"--workdir={workdir}", *_FAST, *extra],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _assert_clear_failure(res, *needles, code=1, max_lines=6):
  err = res.stderr
  assert res.returncode == code, err
  assert "Traceback" not in err, err
  # Progress bars (tqdm, on stderr while training) are not messages.
  lines = [l for l in err.splitlines() if l.strip() and not re.search(r"\d+%\|", l)]
  assert 1 <= len(lines) <= max_lines, err
  for needle in needles:
    assert needle in err, (needle, err)


def _unwritable_dir(tmp_path):
  """A directory this process cannot create files in (root ignores modes)."""
  if os.geteuid() == 0:
    return "/sys"  # sysfs refuses new files even to root
  d = tmp_path / "ro"
  d.mkdir()
  d.chmod(0o500)
  return str(d)


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_check_names_the_workdir_and_what_is_valid(tmp_path, kind):
  path = str(tmp_path / "f") if kind == "file" else _unwritable_dir(tmp_path)
  if kind == "file":
    with open(path, "w") as f:
      f.write("keep")
  with pytest.raises(workdir_lib.WorkdirError) as e:
    workdir_lib.check(path)
  msg = str(e.value)
  assert path in msg and "\n" not in msg
  assert ("is a file" if kind == "file" else "not writable") in msg
  assert "pass a directory" in msg
  if kind == "file":
    with open(path) as f:
      assert f.read() == "keep"


def test_check_creates_a_missing_workdir_and_leaves_an_existing_one_alone(tmp_path):
  assert workdir_lib.check(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
  (tmp_path / "a" / "b" / "x").write_text("keep")
  before = snapshot(str(tmp_path / "a"))
  workdir_lib.check(str(tmp_path / "a" / "b"))
  assert snapshot(str(tmp_path / "a")) == before


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_cli_bad_workdir(tmp_path, kind):
  path = str(tmp_path / "f") if kind == "file" else _unwritable_dir(tmp_path)
  if kind == "file":
    with open(path, "w") as f:
      f.write("not a directory")
  res = _cli(path)
  _assert_clear_failure(res, path)
  if kind == "file":
    with open(path) as f:
      assert f.read() == "not a directory"


_HOLD = textwrap.dedent("""
    import sys, time
    from caat_jax.checkpointing import workdir
    with workdir.lock(sys.argv[1]):
      print("held", flush=True)
      time.sleep(120)
""")


@pytest.fixture
def held_workdir(tmp_path):
  """A workdir locked by another live process; yields (path, its pid)."""
  path = str(tmp_path / "run")
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLD, path],
    cwd=ROOT,
    env=subprocess_env(1),
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert proc.stdout.readline().strip() == "held"
    yield path, proc.pid
  finally:
    proc.kill()
    proc.wait()


def test_lock_refuses_a_second_run_naming_the_holder(held_workdir):
  path, pid = held_workdir
  before = snapshot(path)
  with pytest.raises(workdir_lib.WorkdirError) as e:
    with workdir_lib.lock(path):
      pytest.fail("took a held lock")
  msg = str(e.value)
  assert f"pid {pid}" in msg and socket.gethostname() in msg and "since" in msg
  assert "another --workdir" in msg
  assert snapshot(path) == before


def test_lock_disabled_is_a_no_op(held_workdir):
  path, _ = held_workdir
  with workdir_lib.lock(path, enabled=False):  # e.g. process 1 of a multi-host run
    pass


def _dead_pid():
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


@pytest.mark.parametrize("flock_works", [True, False])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, monkeypatch, flock_works):
  path = str(tmp_path)
  pid = _dead_pid()
  with open(os.path.join(path, workdir_lib.LOCK_FILE), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": pid, "since": "2026-01-01T00:00:00"}, f)
  if not flock_works:  # e.g. a network filesystem without flock

    def no_flock(fd, op):
      raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lib.fcntl, "flock", no_flock)
  with caplog.at_level("WARNING"):
    with workdir_lib.lock(path):
      with open(os.path.join(path, workdir_lib.LOCK_FILE)) as f:
        assert json.load(f)["pid"] == os.getpid()
  assert any(
    f"pid {pid}" in r.getMessage() and "taking over" in r.getMessage() for r in caplog.records
  )
  # Released: the record is cleared, the next run starts without a warning.
  assert os.path.getsize(os.path.join(path, workdir_lib.LOCK_FILE)) == 0


def test_without_flock_a_live_holder_on_this_host_still_refuses(tmp_path, monkeypatch):
  path = str(tmp_path)
  with open(os.path.join(path, workdir_lib.LOCK_FILE), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getppid(), "since": "x"}, f)
  monkeypatch.setattr(
    workdir_lib.fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.ENOLCK, "no"))
  )
  with pytest.raises(workdir_lib.WorkdirError, match=f"pid {os.getppid()}"):
    with workdir_lib.lock(path):
      pass


def test_cli_refuses_a_held_workdir(held_workdir):
  path, pid = held_workdir
  before = snapshot(path)
  res = _cli(path)
  _assert_clear_failure(res, path, f"pid {pid}")
  assert snapshot(path) == before


def test_meta_per_class_names_the_smallest_class():
  labels = np.array([0] * 9 + [1] * 4 + [2] * 7)
  with pytest.raises(transforms.DataConfigError) as e:
    transforms.meta_split_indices(labels, 5, 3, np.random.default_rng(0))
  assert isinstance(e.value, ValueError)
  assert str(e.value) == (
    "data.meta_per_class=5 is more than class 1 has: 4 training "
    "examples (the smallest class). Use data.meta_per_class <= 4."
  )


def test_cli_meta_per_class_too_large(tmp_path):
  res = _cli(str(tmp_path), "--config.data.meta_per_class=1000")
  _assert_clear_failure(
    res, "data.meta_per_class=1000", "training examples", "data.meta_per_class <="
  )


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  from tests.data.test_data import CaatTestTiny  # pylint: disable=g-import-not-at-top

  base = str(tmp_path_factory.mktemp("tfds"))
  CaatTestTiny(data_dir=base, file_format="array_record").download_and_prepare()
  return base


def _bad_json(vdir):
  with open(os.path.join(vdir, "dataset_info.json"), "w") as f:
    f.write("{not json")


def _train_records(vdir):
  files = glob.glob(os.path.join(vdir, "*-train.array_record-*"))
  assert files
  return files


def _truncate(vdir):
  for f in _train_records(vdir):
    os.truncate(f, os.path.getsize(f) // 2)


def _garble(vdir):
  for f in _train_records(vdir):
    with open(f, "r+b") as fh:
      fh.seek(100)
      fh.write(b"\0" * 300)


def _delete(vdir):
  for f in _train_records(vdir):
    os.remove(f)


@pytest.mark.parametrize(
  "damage",
  [_bad_json, _truncate, _garble, _delete],
  ids=["dataset_info", "short_records", "corrupt_records", "missing_records"],
)
def test_corrupt_tfds_dataset_names_the_directory_and_the_prepare_command(
  tiny_tfds, tmp_path, monkeypatch, damage
):
  data_dir = str(tmp_path / "data")
  shutil.copytree(tiny_tfds, data_dir)
  damage(glob.glob(os.path.join(data_dir, "caat_test_tiny", "*"))[0])
  monkeypatch.setattr(sources, "TFDS_NAMES", {**sources.TFDS_NAMES, "cifar10": "caat_test_tiny"})
  before = snapshot(data_dir)
  with pytest.raises(sources.DatasetUnreadableError) as e:
    sources.load_tfds_split("cifar10", "train", data_dir)
  msg = str(e.value)
  assert isinstance(e.value, sources.DatasetNotFoundError)  # main.py maps it to exit 1
  assert os.path.join(data_dir, "caat_test_tiny") in msg and "cannot be read" in msg
  assert f"python -m caat_jax.data.prepare --dataset=cifar10 --data_dir={data_dir}" in msg
  assert len(msg.splitlines()) == 2
  assert snapshot(data_dir) == before


def test_missing_tfds_split_says_which_exist(tiny_tfds, monkeypatch):
  monkeypatch.setattr(sources, "TFDS_NAMES", {**sources.TFDS_NAMES, "cifar10": "caat_test_tiny"})
  with pytest.raises(sources.DatasetNotFoundError, match=r"no split 'validation' \(found"):
    sources.load_tfds_split("cifar10", "validation", tiny_tfds)


def test_cli_corrupt_tfds_dataset_info(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  version = str(tfds.builder_cls("cifar10").VERSION)
  vdir = tmp_path / "data" / "cifar10" / version
  vdir.mkdir(parents=True)
  (vdir / "dataset_info.json").write_text("{not json")
  res = _cli(
    str(tmp_path / "run"),
    "--config.data.name=cifar10",
    f"--config.data.data_dir={tmp_path / 'data'}",
  )
  _assert_clear_failure(
    res,
    str(tmp_path / "data" / "cifar10"),
    "cannot be read",
    "python -m caat_jax.data.prepare --dataset=cifar10",
  )
  assert (vdir / "dataset_info.json").read_text() == "{not json"


def _tiny_state(width=4, n=30, dtype=np.float32):
  return {
    "params": {f"layer_{i:02d}": np.full((3, width), i, dtype) for i in range(n)},
    "step": np.int32(7),
  }


def _tiny_config():
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict({"seed": 0})


def _saved(directory, steps, **kw):
  ckpt = ckpt_lib.Checkpointer(directory, keep=5, async_save=False)
  for s in steps:
    ckpt.save(s, _tiny_state(**kw), _tiny_config())
  ckpt.close()


@pytest.mark.parametrize(
  "change, shown",
  [
    (dict(width=5), "params.layer_00: checkpoint (3, 4) float32 -> now (3, 5) float32"),
    (dict(dtype=np.float16), "params.layer_00: checkpoint (3, 4) float32 -> now (3, 4) float16"),
    (dict(n=31), "params.layer_30: checkpoint missing -> now (3, 4) float32"),
  ],
)
def test_changed_parameter_shapes_are_refused(tmp_path, change, shown):
  directory = str(tmp_path / "ck")
  _saved(directory, [1])
  before = snapshot(directory)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    with pytest.raises(ckpt_lib.IncompatibleConfigError) as e:
      ckpt.restore(_tiny_state(**change), config=_tiny_config(), allow_config_change=True)
  finally:
    ckpt.close()
  msg = str(e.value)
  assert shown in msg and "--allow_config_change never allows" in msg
  assert len(msg.splitlines()) <= 6
  assert snapshot(directory) == before


def _truncate_step(directory, step):
  files = glob.glob(os.path.join(directory, str(step), "state", "**", "d", "*"), recursive=True)
  assert files
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def test_evaluation_falls_back_to_an_older_readable_step(tmp_path):
  directory = str(tmp_path / "ck")
  _saved(directory, [1, 2, 3])
  _truncate_step(directory, 3)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    assert ckpt.restore(_tiny_state(), max_step=3, move_aside=False)[1] == 2
    assert ckpt.restore(_tiny_state(), max_step=1, move_aside=False)[1] == 1
    with pytest.raises(ckpt_lib.CheckpointError):  # an explicit step: no fallback
      ckpt.restore(_tiny_state(), step=3, move_aside=False)
  finally:
    ckpt.close()
  assert os.path.isdir(os.path.join(directory, "3"))  # evaluation moves nothing


_RESTORE_TRUNCATED = textwrap.dedent("""
    import sys, time
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from caat_jax import checkpointing
    from tests.commands.test_bad_input import _tiny_state
    ckpt = checkpointing.Checkpointer(sys.argv[1], async_save=False)
    print(ckpt.restore(_tiny_state(), move_aside=False)[1])
    ckpt.close()
    time.sleep(1)  # the stray read callbacks arrive after the restore
""")


def test_truncated_checkpoint_fallback_warns_in_one_line(tmp_path):
  directory = str(tmp_path / "ck")
  _saved(directory, [1, 2])
  _truncate_step(directory, 2)
  res = subprocess.run(
    [sys.executable, "-c", _RESTORE_TRUNCATED, directory],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 0 and res.stdout.strip() == "1", res.stderr
  lines = [l for l in res.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, res.stderr
  assert "step 2" in lines[0] and "unreadable" in lines[0] and "trying an older one" in lines[0]
  assert "Event loop is closed" not in res.stderr and "never retrieved" not in res.stderr


def test_failed_restore_noise_is_dropped_under_load(tmp_path):
  """Timing decides which echo appears (the slower the machine, the more
  'never retrieved' ones): several restores at once make both likely."""
  directory = str(tmp_path / "ck")
  _saved(directory, [1, 2])
  _truncate_step(directory, 2)
  script = _RESTORE_TRUNCATED.replace("time.sleep(1)", "time.sleep(0)")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", script, directory],
      cwd=ROOT,
      env=subprocess_env(1),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(4)
  ]
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == "1", err
    assert len([l for l in err.splitlines() if l.strip()]) == 1, err


def test_failed_background_save_is_reported_at_once(tmp_path, monkeypatch):
  from orbax.checkpoint._src.checkpointers import async_checkpointer  # pylint: disable=g-import-not-at-top

  directory = str(tmp_path / "ck")
  ckpt = ckpt_lib.Checkpointer(directory, keep=2)
  ckpt.save(1, _tiny_state(), _tiny_config())
  ckpt.save(2, _tiny_state(), _tiny_config())
  ckpt.wait()
  before = snapshot(directory)

  def disk_full(*args, **kwargs):  # the background write of the data fails
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", disk_full)
  ckpt.save(3, _tiny_state(), _tiny_config())
  deadline = time.time() + 30
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    while time.time() < deadline:  # what the trainer does once per step
      ckpt.check_for_errors()
      time.sleep(0.01)
  ckpt.close()  # quiet: the error was reported once
  msg = str(e.value)
  assert "\n" not in msg
  assert f"saving step 3 to {directory} failed" in msg
  assert "No space left on device" in msg and "GiB free of" in msg
  assert "(steps [1, 2]) are kept" in msg
  assert not glob.glob(os.path.join(directory, "*orbax-checkpoint-tmp*"))
  assert snapshot(directory) == before  # the older checkpoints, untouched


def test_check_for_errors_is_silent_while_saves_succeed(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=2)
  for s in range(1, 5):
    ckpt.save(s, _tiny_state(), _tiny_config())
    ckpt.check_for_errors()
  ckpt.close()
  assert ckpt.all_steps() == [3, 4]


class _NoPreemption:
  def reached_preemption(self, step):
    return False


@pytest.mark.parametrize(
  "sig, reason, code", [(signal.SIGINT, "SIGINT", 130), (signal.SIGTERM, "SIGTERM", 143)]
)
def test_signals_stop_at_the_next_step_with_their_exit_code(sig, reason, code, capfd):
  before = signal.getsignal(sig)
  with ckpt_lib.PreemptionWatcher(_NoPreemption()) as watcher:
    assert watcher.should_stop(1) is None
    os.kill(os.getpid(), sig)
    time.sleep(0.05)
    assert watcher.should_stop(2) == reason
  assert signal.getsignal(sig) is before  # the previous handler is back
  err = ckpt_lib.Preempted(2, reason)
  assert err.exit_code == code
  assert "saved a checkpoint at step 2" in str(err)
  if sig == signal.SIGINT:
    assert "interrupted (SIGINT)" in str(err)
    assert "Ctrl-C again to stop at once" in capfd.readouterr().err


def test_second_ctrl_c_stops_at_once():
  with ckpt_lib.PreemptionWatcher(_NoPreemption()):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One epoch of natural training on digits, checkpoints at steps 10, 15, 20."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  res = _cli(workdir, "--config.checkpoint_every_steps=5", timeout=600)
  assert res.returncode == 0, res.stderr
  return workdir


@pytest.mark.slow
def test_cli_allow_config_change_never_changes_parameter_shapes(trained):
  before = snapshot(trained)
  res = _cli(
    trained, "--config.checkpoint_every_steps=5", "--config.model_width=32", "--allow_config_change"
  )
  _assert_clear_failure(
    res, "params.", "-> now", "--allow_config_change never allows", max_lines=10
  )  # the allowed-change warning comes first
  assert snapshot(trained) == before


@pytest.mark.slow
def test_cli_truncated_checkpoint_warns_in_one_line(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  os.remove(os.path.join(workdir, "eval.json"))  # evaluate again: run on from 15
  _truncate_step(ckpt_lib.checkpoint_dir(workdir), 20)
  res = _cli(workdir, "--config.checkpoint_every_steps=5", timeout=600)
  assert res.returncode == 0, res.stderr
  assert "Event loop is closed" not in res.stderr and "Traceback" not in res.stderr
  warnings = [l for l in res.stderr.splitlines() if "unreadable" in l]
  assert len(warnings) == 2, res.stderr  # the fallback, and the move aside


def _wait_for_checkpoint(proc, workdir, timeout=300):
  deadline = time.time() + timeout
  pattern = os.path.join(ckpt_lib.checkpoint_dir(workdir), "*", "commit_success.txt")
  while not glob.glob(pattern):
    assert proc.poll() is None, proc.stderr.read()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.01)


@pytest.mark.slow
def test_cli_ctrl_c_saves_and_exits_130(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "caat_jax.main",
      f"--workdir={workdir}",
      *_FAST,
      "--config.num_epochs=3",
      "--config.checkpoint_every_steps=2",
    ],
    cwd=ROOT,
    env=subprocess_env(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for_checkpoint(proc, workdir)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err
  assert "interrupted (SIGINT): saved a checkpoint at step" in err
  assert "Traceback" not in err


_DISK_FULL_AT_15 = textwrap.dedent("""
    import errno, os, runpy, sys
    from orbax.checkpoint._src.checkpointers import async_checkpointer as ac
    real = ac._background_wait_for_commit_futures
    def write(directory, *args, **kwargs):  # the disk fills up while step 15 is written
      if os.path.basename(str(directory)) == "15":
        raise OSError(errno.ENOSPC, "No space left on device")
      return real(directory, *args, **kwargs)
    ac._background_wait_for_commit_futures = write
    sys.argv = ["caat_jax.main"] + sys.argv[1:]
    runpy.run_module("caat_jax.main", run_name="__main__")
""")


@pytest.mark.slow
def test_cli_failed_save_keeps_older_checkpoints_and_no_tmp_dir(tmp_path):
  workdir = str(tmp_path / "run")
  res = subprocess.run(
    [
      sys.executable,
      "-c",
      _DISK_FULL_AT_15,
      f"--workdir={workdir}",
      *_FAST,
      "--config.checkpoint_every_steps=5",
    ],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=600,
  )
  ckdir = ckpt_lib.checkpoint_dir(workdir)
  _assert_clear_failure(
    res,
    f"saving step 15 to {ckdir} failed",
    "No space left on device",
    "GiB free of",
    "(steps [5, 10]) are kept",
  )
  assert sorted(os.listdir(ckdir)) == ["10", "5"]  # no *.orbax-checkpoint-tmp* left
