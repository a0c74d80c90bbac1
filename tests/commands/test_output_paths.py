"""Output paths every command names (``--workdir``, ``--out``, ``--out_dir``,
``--figures``) are checked before any work: a file where a folder must be,
a folder that cannot be written, an empty path, each end in exit status 1
and one ``error:`` line on stderr naming the flag, no traceback, and nothing
created or changed (no workdir, no ``.lock``, no result file).

A regular file in the path fails for every user; the read-only-folder
variant (chmod 0o555) is skipped as root, whom chmod does not stop."""

import concurrent.futures
import hashlib
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, subprocess_env

_DIGITS = f"--config={os.path.join(ROOT, 'configs', 'digits.py')}"
_THEORY = ["--case=variance", "--eta=1", "--eps=0.1", "--K=2"]

# (name, module, args, flag the line must name); {f} is a regular file,
# {d} an existing directory (the case's working directory).
FILE_CASES = [
  ("main workdir under a file", "main", [_DIGITS, "--workdir={f}/run"], "--workdir"),
  ("main workdir is a file", "main", [_DIGITS, "--workdir={f}"], "--workdir"),
  ("main empty workdir", "main", [_DIGITS, "--workdir="], "--workdir"),
  (
    "main batch larger than the data",
    "main",
    [_DIGITS, "--workdir={d}/new/run", "--config.batch_size=100000"],
    "config.batch_size",
  ),
  ("bench out under a file", "caat_jax.bench", [_DIGITS, "--out={f}/b.json"], "--out"),
  ("bench out is a folder", "caat_jax.bench", [_DIGITS, "--out={d}"], "--out"),
  (
    "evaluate out_dir under a file",
    "caat_jax.evaluate",
    ["--workdir={d}", "--out_dir={f}/eval"],
    "--out_dir",
  ),
  ("plots out under a file", "caat_jax.plots", ["--workdir={d}", "--out={f}/figs"], "--out"),
  ("plots workdir is a file", "caat_jax.plots", ["--workdir={f}"], "--workdir"),
  (
    "prepare data_dir under a file",
    "caat_jax.data.prepare",
    ["--dataset=cifar10", "--data_dir={f}/tfds"],
    "--data_dir",
  ),
  ("theory figures under a file", "caat_jax.theory", [*_THEORY, "--figures={f}/figs"], "--figures"),
  (
    "experiments run workdir is a file",
    "caat_jax.experiments",
    ["run", "digits_table1", "--workdir={f}"],
    "--workdir",
  ),
  (
    "experiments report out under a file",
    "caat_jax.experiments",
    ["report", "digits_table1", "--workdir={d}", "--out={f}/report"],
    "--out",
  ),
]

# {ro} is a folder made read-only (0o555).
READ_ONLY_CASES = [
  ("main workdir in a read-only folder", "main", [_DIGITS, "--workdir={ro}/run"], "--workdir"),
  ("bench out in a read-only folder", "caat_jax.bench", [_DIGITS, "--out={ro}/b.json"], "--out"),
  (
    "experiments report out in a read-only folder",
    "caat_jax.experiments",
    ["report", "digits_table1", "--workdir={d}", "--out={ro}/report"],
    "--out",
  ),
  (
    "theory figures in a read-only folder",
    "caat_jax.theory",
    [*_THEORY, "--figures={ro}/figs"],
    "--figures",
  ),
]


def _tree(path):
  """Every entry under ``path`` (names, kinds, file contents) as one digest."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    h.update(f"D {root}\n".encode())
    for f in sorted(files):
      p = os.path.join(root, f)
      h.update(f"F {p}\n".encode())
      with open(p, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _run(case, tmp):
  name, module, args, _ = case
  d = os.path.join(tmp, name.replace(" ", "_"))
  os.makedirs(d)
  f = os.path.join(d, "a_file")
  with open(f, "w") as fh:
    fh.write("an earlier result")
  ro = os.path.join(d, "read_only")
  os.makedirs(ro)
  os.chmod(ro, 0o555)
  args = [a.format(f=f, d=d, ro=ro) for a in args]
  module = module if module.startswith("caat_jax.") else f"caat_jax.{module}"
  before = _tree(d)
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=d,  # a stray .lock in the working directory shows as a change
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    stdin=subprocess.DEVNULL,
  )
  after = _tree(d)
  os.chmod(ro, 0o755)
  return proc, before, after


def _check(cases, tmp):
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    results = list(pool.map(lambda c: _run(c, tmp), cases))
  failures = []
  for (name, _, _, flag), (proc, before, after) in zip(cases, results):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    problems = []
    if proc.returncode != 1:
      problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
      problems.append("a traceback")
    if len(lines) != 1 or not lines[0].startswith("error: "):
      problems.append(f"{len(lines)} stderr lines")
    elif flag not in lines[0]:
      problems.append(f"{flag} not named")
    if before != after:
      problems.append("something was created or changed")
    if problems:
      failures.append(f"{name}: {', '.join(problems)}\n{proc.stderr[-1500:]}")
  assert not failures, "\n\n".join(failures)


def test_a_file_in_an_output_path_is_refused_before_any_work(tmp_path):
  _check(FILE_CASES, str(tmp_path))


@pytest.mark.skipif(
  hasattr(os, "geteuid") and os.geteuid() == 0,
  reason="runs as root: chmod 0o555 does not stop root writing, so the folder is writable "
  "and nothing is refused; the unwritable branch is tested for every user by faking "
  "os.access (test below) and the file-in-path cases",
)
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path):
  _check(READ_ONLY_CASES, str(tmp_path))


def test_output_checks_create_nothing(tmp_path):
  from caat_jax import cli

  f = tmp_path / "f"
  f.write_text("x")
  cli.check_output_dir("workdir", str(tmp_path / "a" / "b"))  # can be created: passes
  cli.check_output_file("out", str(tmp_path / "a" / "b.json"))
  assert sorted(os.listdir(tmp_path)) == ["f"]
  for check, path, text in (
    (cli.check_output_dir, "", "is empty"),
    (cli.check_output_dir, str(f), "is a file"),
    (cli.check_output_dir, str(f / "x" / "y"), f"{f} is a file"),
    (cli.check_output_file, str(tmp_path), "is a directory"),
    (cli.check_output_file, str(f / "x.json"), "is a file"),
  ):
    with pytest.raises(cli.OutputPathError, match=text):
      check("flag", path)
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
  """The permission branch, for root too (whom chmod does not stop): the
  folder reported as not writable by ``os.access``."""
  from caat_jax import cli

  ro = str(tmp_path / "ro")
  os.makedirs(ro)
  real = os.access
  monkeypatch.setattr(cli.os, "access", lambda p, mode: p != ro and real(p, mode))
  for check, path, text in (
    (cli.check_output_dir, ro, "is not writable"),
    (
      cli.check_output_dir,
      os.path.join(ro, "run", "x"),
      f"cannot be created: {ro} is not writable",
    ),
    (cli.check_output_file, os.path.join(ro, "b.json"), f"its folder {ro} is not writable"),
  ):
    with pytest.raises(cli.OutputPathError, match=text):
      check("out", path)
  assert os.listdir(ro) == []
