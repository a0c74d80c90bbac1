"""Faults that used to end noisily or misleadingly (issue 28, section 3),
through the real command line: the exit code, the one expected line on
stderr and no traceback, and what was written before left intact."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import ROOT, snapshot, subprocess_env

_TINY = [
  "--config=configs/digits.py",
  "--config.num_epochs=1",
  "--config.suite=()",
  "--config.method=natural",
  "--config.model_width=4",
  "--config.eval.num_examples=60",
  "--config.eval.attacks=('pgd2',)",
  "--config.checkpoint_every_steps=5",
]


def _python(*args, timeout=300, **kwargs):
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=timeout,
    **kwargs,
  )


def _main(workdir, *extra, timeout=300):
  return _python("-m", "caat_jax.main", f"--workdir={workdir}", *_TINY, *extra, timeout=timeout)


def _messages(stderr):
  """stderr's non-blank lines less progress bars (tqdm, and its cursor moves)."""
  lines = (re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", l) for l in stderr.splitlines())
  return [l for l in lines if l.strip() and not re.search(r"\d+it \[|\d+%\|", l)]


def _assert_one_line(res, code, *needles):
  """Exit ``code``, no traceback, exactly one message line holding ``needles``."""
  assert res.returncode == code, res.stderr
  assert "Traceback" not in res.stderr, res.stderr
  messages = _messages(res.stderr)
  assert len(messages) == 1, res.stderr
  for needle in needles:
    assert needle in messages[0], (needle, messages[0])
  return messages[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run (20 steps, checkpoints at 10, 15, 20, eval.json)."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  res = _main(workdir)
  assert res.returncode == 0, res.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "15", "20"]
  return workdir


def _copy(src, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst


# --- 7. two experiment runners sharing one experiment --------------------------

_HOLD = textwrap.dedent("""
    import sys
    from caat_jax.checkpointing import workdir
    with workdir.lock(sys.argv[1]):
      print("held", flush=True)
      sys.stdin.read()  # until the test closes stdin
""")


def test_a_run_held_by_another_runner_is_not_reported_failed(tmp_path):
  exp = str(tmp_path / "exp")
  held = os.path.join(exp, "pgd-at", "seed0")
  os.makedirs(held)
  with open(os.path.join(held, "metrics.jsonl"), "w") as f:
    f.write('{"step": 5, "train/loss": 2.0}\n')
  # Seed 1 cannot run at all (its workdir is a file): a real failure.
  with open(os.path.join(exp, "pgd-at", "seed1"), "w") as f:
    f.write("not a directory\n")
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD, held],
    cwd=ROOT,
    env=subprocess_env(1),
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    before = snapshot(exp)
    cmd = ["-m", "caat_jax.experiments", "run", "digits_table1", f"--workdir={exp}"]
    res = _python(*cmd, "--rows=pgd-at", "--seeds=2")
    alone = _python(*cmd, "--rows=pgd-at", "--seeds=1")  # only the held run
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  # The held run: one progress line on stdout, not a failure.
  assert res.returncode == 1, res.stderr  # seed 1 failed
  assert "Traceback" not in res.stderr
  assert f"pgd-at seed 0: held by another runner (pid {holder.pid} on host" in res.stdout
  assert "left to it" in res.stdout
  assert "seed 0: FAILED" not in res.stderr + res.stdout
  failures = [l for l in _messages(res.stderr) if ": FAILED: " in l]
  assert len(failures) == 1 and "pgd-at seed 1: FAILED" in failures[0], res.stderr
  assert "digits_table1: 2 runs: 0 done, 1 failed (pgd-at/seed1), 1 elsewhere (held by " in (
    res.stderr
  )
  # With nothing failed, the summary says so and the exit status is 0.
  assert alone.returncode == 0, alone.stderr
  assert _messages(alone.stderr) == []
  assert "digits_table1: 1 runs: 0 done, 0 failed, 1 elsewhere (held by another runner: " in (
    alone.stdout
  )
  # The held run's files untouched (its lock record is cleared by its holder).
  drop_lock = lambda snap: {k: v for k, v in snap.items() if not k.endswith(".lock")}
  assert drop_lock(snapshot(exp)) == drop_lock(before)


# --- 6. plots names what it skips ----------------------------------------------


def test_plots_names_each_skipped_file_and_counts_skipped_lines(tmp_path):
  from tests.plots.test_plots import _write_run  # pylint: disable=import-outside-toplevel

  root = str(tmp_path / "exp")
  seed0, seed1 = (os.path.join(root, "rowA", f"seed{k}") for k in (0, 1))
  _write_run(seed0, 0, 0)  # each metrics.jsonl ends in a line cut short by a kill
  _write_run(seed1, 0, 1)
  path0 = os.path.join(seed0, "metrics.jsonl")
  with open(path0) as f:
    lines = f.readlines()
  lines.insert(1, "#!garbage{\n")  # line 2
  with open(path0, "w") as f:
    f.writelines(lines)
  with open(os.path.join(seed1, "eval.json"), "w") as f:
    f.write("[{not json")
  before = snapshot(root)

  res = _python("-m", "caat_jax.plots", f"--workdir={root}", f"--out={tmp_path / 'fig'}")

  assert res.returncode == 0, res.stderr
  assert "Traceback" not in res.stderr
  messages = _messages(res.stderr)
  assert messages == [
    f"plots: {path0}: skipped 2 unreadable line(s) of 6 (line(s) 2, 6)",
    f"plots: {seed1}/metrics.jsonl: skipped 1 unreadable line(s) of 5 (line(s) 5)",
    f"plots: skipped {seed1}/eval.json: JSONDecodeError: Expecting property name enclosed in "
    "double quotes: line 1 column 3 (char 2)",
  ], res.stderr
  assert "per_class_errors" in res.stdout  # the figures were drawn from the rest
  assert snapshot(root) == before


# --- 4. a model change on resume -----------------------------------------------


def test_a_model_change_on_resume_offers_only_what_works(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  before = snapshot(workdir)

  res = _main(workdir, "--config.model_width=8")

  assert res.returncode == 1, res.stderr
  assert "Traceback" not in res.stderr
  messages = _messages(res.stderr)
  assert messages[0].startswith("error: the checkpoint at step 20 in "), res.stderr
  assert "  model_width: checkpoint 4 -> now 8" in messages, res.stderr
  assert messages[-1].startswith(
    "They change the model's parameters (params.BatchNorm_0.bias: checkpoint (4,) float32 "
    "-> now (8,) float32 and 25 more)"
  ), res.stderr
  assert messages[-1].endswith(
    "which no resume can carry over (--allow_config_change neither): use the original "
    "values or another --workdir."
  ), res.stderr
  assert len(messages) == 3, res.stderr
  assert "pass --allow_config_change" not in res.stderr
  # (That --allow_config_change is then refused: test_bad_input's
  # test_cli_allow_config_change_never_changes_parameter_shapes.)
  # A change that keeps every shape is still offered the flag.
  seed = _main(workdir, "--config.seed=1")
  assert seed.returncode == 1 and "Traceback" not in seed.stderr
  assert "pass --allow_config_change to resume anyway" in seed.stderr
  assert snapshot(workdir) == before


# --- 5. evaluate on a run whose checkpoints are all unreadable -----------------


def test_evaluate_with_every_checkpoint_unreadable_says_each_step_in_full(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  ckdir = os.path.join(workdir, "checkpoints")
  for f in glob.glob(os.path.join(ckdir, "*", "state", "**", "d", "*"), recursive=True):
    os.truncate(f, os.path.getsize(f) // 2)  # data files cut short
  before = snapshot(workdir)

  res = _python(
    "-m", "caat_jax.evaluate", f"--workdir={workdir}", "--attacks=pgd2", "--num_examples=60"
  )

  assert res.returncode == 1, res.stderr
  assert "Traceback" not in res.stderr
  messages = _messages(res.stderr)
  assert messages[0] == (
    f"error: no readable checkpoint in {ckdir} (tried steps [20, 15, 10]); nothing was evaluated:"
  ), res.stderr
  assert len(messages) == 5, res.stderr  # the first line, one per step, the advice
  for line, step in zip(messages[1:4], (20, 15, 10)):
    assert line.startswith(f"  step {step}: ValueError: OUT_OF_RANGE: "), line
    # The reason in full: it ends as tensorstore's message does, not cut off.
    assert re.search(r"is not valid for value of size \d+$", line), line
  assert messages[4] == (
    "Put readable checkpoints back in that directory (from a copy), or evaluate another copy "
    "of the run with --checkpoint=DIR."
  )
  assert "CheckpointError" not in res.stderr  # not nested
  assert "start a new run" not in res.stderr  # the trainer's advice
  assert snapshot(workdir) == before


# --- 3. a resume after a preemption at a save -------------------------------------


def test_a_resume_removes_the_temporary_folder_of_a_save_cut_short(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  ckdir = os.path.join(workdir, "checkpoints")
  # Killed while saving step 20: orbax had not renamed its temporary folder.
  tmp = os.path.join(ckdir, "20.orbax-checkpoint-tmp-1764750000")
  os.rename(os.path.join(ckdir, "20"), tmp)
  for f in glob.glob(os.path.join(tmp, "**", "commit_success.txt"), recursive=True):
    os.remove(f)
  os.remove(os.path.join(workdir, "eval.json"))
  # Not orbax's temporary step folders: left alone.
  for name in ("notes.orbax-checkpoint-tmp", "mine"):
    os.makedirs(os.path.join(ckdir, name))
  kept = {n: snapshot(os.path.join(ckdir, n)) for n in ("10", "15")}

  res = _main(workdir)

  assert res.returncode == 0, res.stderr
  assert "Traceback" not in res.stderr
  # The only message: the records after step 15 are written again.
  (message,) = _messages(res.stderr)
  assert message.endswith(
    "metrics.jsonl: dropped 2 record(s) after step 15 (the resumed run writes them again)"
  ), res.stderr
  assert sorted(os.listdir(ckdir)) == ["10", "15", "20", "mine", "notes.orbax-checkpoint-tmp"]
  assert {n: snapshot(os.path.join(ckdir, n)) for n in ("10", "15")} == kept
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)[0]["step"] == 20  # resumed from 15, trained to the end


# --- 1. disk full during a save --------------------------------------------------

# Runs each stage in one private mount namespace (``unshare -rm``: no root
# needed where unprivileged user namespaces are allowed) holding a small
# tmpfs as the run's checkpoints/ folder, resized between the stages (the
# user "frees some space"). Per stage: rc<k>, err<k>, ls<k> (the folder).
_DISK_FULL = r"""
set -u
ck="$WORKDIR/checkpoints"
mount -t tmpfs -o size=$1 tmpfs "$ck" || exit 99
shift
k=0
for size in "$@" ""; do
  k=$((k + 1))
  "$PYTHON" -m caat_jax.main --workdir="$WORKDIR" $FLAGS >"$OUT/out$k" 2>"$OUT/err$k"
  echo $? >"$OUT/rc$k"
  ls -A "$ck" >"$OUT/ls$k"
  cp "$WORKDIR/metrics.jsonl" "$OUT/metrics$k" 2>/dev/null
  [ -n "$size" ] && { mount -o remount,size=$size "$ck" || exit 98; }
done
exit 0
"""


def _unshare_reason():
  """Why a private tmpfs cannot be mounted here ('' if it can)."""
  if not shutil.which("unshare"):
    return "no unshare command"
  try:
    res = subprocess.run(
      ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
      capture_output=True,
      text=True,
      timeout=30,
    )
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"unshare failed: {e}"
  if res.returncode:
    return f"cannot mount a private tmpfs (unshare -rm): {res.stderr.strip()}"
  return ""


def _disk_full_stages(tmp_path, *sizes):
  """Runs the tiny run once per size (the first the tmpfs's size at start);
  returns [(rc, stderr, listing, metrics.jsonl lines)] per stage."""
  reason = _unshare_reason()
  if reason:
    pytest.skip(f"a full disk needs a small private tmpfs: {reason}")
  workdir, out = tmp_path / "run", tmp_path / "out"
  (workdir / "checkpoints").mkdir(parents=True)
  out.mkdir()
  env = dict(
    subprocess_env(1),
    WORKDIR=str(workdir),
    OUT=str(out),
    PYTHON=sys.executable,
    FLAGS=" ".join(_TINY),
  )
  res = subprocess.run(
    ["unshare", "-rm", "sh", "-c", _DISK_FULL, "sh", *sizes],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert res.returncode == 0, res.stderr
  stages = []
  for k in range(1, len(sizes) + 1):
    read = lambda name: (out / f"{name}{k}").read_text() if (out / f"{name}{k}").exists() else ""
    stages.append(
      (int(read("rc")), read("err"), read("ls").split(), read("metrics").splitlines(True))
    )
  return workdir, stages


def test_disk_full_at_the_first_save_is_one_true_line(tmp_path):
  workdir, [(rc, err, listing, _)] = _disk_full_stages(tmp_path, "20k")
  ckdir = os.path.join(workdir, "checkpoints")
  line = _assert_one_line(
    subprocess.CompletedProcess([], rc, "", err),
    1,
    f"error: saving step 5 to {ckdir} failed (ValueError: RESOURCE_EXHAUSTED: ",
    "free of 20.0 KiB).",
    "No checkpoint of this run was saved before: free some space and run the same command "
    "again (it starts from the beginning).",
  )
  assert "are kept" not in line  # there are none
  assert "Event loop is closed" not in err
  assert listing == []  # no half-written temporary folder left


@pytest.mark.slow
def test_disk_full_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path):
  # 20 KiB: the first save fails; 160 KiB holds one or two checkpoints (about
  # 100 KiB each on disk), not three; then 10 MiB, room for all.
  workdir, stages = _disk_full_stages(tmp_path, "20k", "160k", "10m")
  ckdir = os.path.join(workdir, "checkpoints")
  (rc1, err1, ls1, _), (rc2, err2, ls2, metrics2), (rc3, err3, ls3, metrics3) = stages
  _assert_one_line(
    subprocess.CompletedProcess([], rc1, "", err1), 1, "No checkpoint of this run was saved"
  )
  assert ls1 == [] and "Event loop is closed" not in err1
  # Stage 2 starts afresh (the records stage 1 logged are dropped, said in a
  # warning), saves what fits, and fails at the next save.
  assert rc2 == 1 and "Traceback" not in err2 and "Event loop is closed" not in err2
  messages = _messages(err2)
  assert len(messages) == 2 and "dropped" in messages[0] and "after step 0" in messages[0], err2
  m = re.fullmatch(
    # The data (tensorstore: ValueError) or the metadata (OSError) fails first.
    rf"error: saving step (\d+) to {re.escape(ckdir)} failed \((ValueError|OSError): "
    r".*No space left on device.*; [\d.]+ (KiB|bytes) free of 160\.0 KiB\)\. The previous "
    r"checkpoints \(steps \[([\d, ]+)\]\) are kept: free some space and run the same command "
    r"again to resume\.",
    messages[1],
  )
  assert m, messages[1]
  failed, kept = int(m.group(1)), [int(k) for k in m.group(4).split(", ")]
  assert sorted(int(n) for n in ls2) == kept and failed > max(kept)  # no temporary folder
  # With space again: resumes from the newest kept checkpoint and finishes.
  assert rc3 == 0, err3
  assert "Traceback" not in err3
  assert ls3 == ["10", "15", "20"]
  upto = lambda lines: [l for l in lines if json.loads(l)["step"] <= max(kept)]
  assert upto(metrics3) == upto(metrics2) and upto(metrics2)  # written before: intact
  assert '"eval/' in metrics3[-1]
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)[0]["step"] == 20


# --- 2. SIGTERM after the last training step -------------------------------------


@pytest.mark.slow
def test_sigterm_after_the_last_step_saves_exits_143_and_the_rerun_evaluates(tmp_path):
  workdir = str(tmp_path / "run")
  # A final evaluation long enough to be caught in it (compiling the attack).
  flags = ["--config.eval.num_examples=200"]
  proc = subprocess.Popen(
    [sys.executable, "-m", "caat_jax.main", f"--workdir={workdir}", *_TINY, *flags],
    cwd=ROOT,
    env=subprocess_env(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  last = os.path.join(workdir, "checkpoints", "20", "commit_success.txt")
  deadline = time.time() + 300
  while not os.path.exists(last):  # the last step is trained and its checkpoint committed
    assert proc.poll() is None, proc.stderr.read()
    assert time.time() < deadline, "no checkpoint of the last step appeared"
    time.sleep(0.005)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)

  res = subprocess.CompletedProcess([], proc.returncode, "", err)
  _assert_one_line(
    res,
    143,
    "caat_jax: preempted (SIGTERM): saved a checkpoint at step 20 and stopped; run the same "
    "command again to resume.",
  )
  assert not os.path.exists(os.path.join(workdir, "eval.json"))  # not evaluated
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    before = f.readlines()
  assert not any('"eval/' in l for l in before)
  ckpt_before = snapshot(os.path.join(workdir, "checkpoints"))

  rerun = _main(workdir, *flags)

  assert rerun.returncode == 0, rerun.stderr
  assert "Traceback" not in rerun.stderr and _messages(rerun.stderr) == [], rerun.stderr
  with open(os.path.join(workdir, "eval.json")) as f:
    assert [(d["attack"], d["step"], d["num_examples"]) for d in json.load(f)] == [
      ("pgd2", 20, 200)
    ]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    after = f.readlines()
  assert after[: len(before)] == before and len(after) == len(before) + 1
  assert '"eval/pgd2/' in after[-1]
  assert snapshot(os.path.join(workdir, "checkpoints")) == ckpt_before  # nothing retrained
