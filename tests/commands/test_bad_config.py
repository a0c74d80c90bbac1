"""Bad configs and flags through the real command lines each ends
in exit status 1 with one short ``error:`` message on stderr that names the
key, file or value, no traceback, before anything is compiled, and an
existing workdir is left exactly as it was.

The cases run as concurrent subprocesses (each pays for importing JAX)."""

import concurrent.futures
import hashlib
import os
import subprocess
import sys

from tests.helpers import ROOT, subprocess_env

_DIGITS = "--config=configs/digits.py"
_THEORY = ["--case=variance", "--eta=1", "--eps=0.1", "--K=2"]

# (name, module, args, text the message must contain)
CASES = [
  (
    "unknown key",
    "main",
    [_DIGITS, "--config.attack.epz=0.1"],
    "config.attack.epz is not a config key; did you mean config.attack.eps",
  ),
  ("unknown top key", "main", [_DIGITS, "--config.num_epoch=1"], "config.num_epochs"),
  ("missing file", "main", ["--config=configs/nope.py"], "no such file 'configs/nope.py'"),
  ("syntax error", "main", ["--config={tmp}/broken.py"], "syntax error in"),
  ("variant on a plain config", "main", [_DIGITS + ":nonsense"], "takes no ':variant'"),
  (
    "unknown variant",
    "main",
    ["--config=configs/digits_meta_caat.py:nonsense"],
    "config argument 'nonsense'",
  ),
  ("eps in levels", "main", [_DIGITS, "--config.attack.eps=8"], "8/255"),
  ("infinite eps", "main", [_DIGITS, "--config.eval.eps=inf"], "config.eval.eps=inf"),
  (
    "infinite lr",
    "main",
    [_DIGITS, "--config.optimizer.learning_rate=inf"],
    "config.optimizer.learning_rate=inf is not valid: must be a finite number",
  ),
  (
    "negative interval",
    "main",
    [_DIGITS, "--config.checkpoint_every_steps=-1"],
    "config.checkpoint_every_steps=-1",
  ),
  (
    "missing init_from",
    "main",
    [_DIGITS, "--config.init_from=/no/such/run"],
    "config.init_from='/no/such/run'",
  ),
  (
    "threat model",
    "main",
    [_DIGITS, "--config.attack.threat_model=normalised"],
    "config.attack.threat_model='normalised' is not valid; choose one of: 'pixel', "
    "'normalized', 'normalized_clip'",
  ),
  (
    "oracle without noise",
    "main",
    [_DIGITS, "--config.data.drop_corrupted=true"],
    "config.data.drop_corrupted=True drops the examples whose label noise changed, but "
    "config.data.noise_rate=0.0",
  ),
  (
    "noise rate without a noise type",
    "main",
    [_DIGITS, "--config.data.noise_rate=0.2"],
    "config.data.noise_rate=0.2 corrupts no label with config.data.noise_type='none'",
  ),
  (
    "anti-adversary cap without anti-adversaries",
    "main",
    [
      _DIGITS,
      "--config.method=meta_caat",
      "--config.caat.anti_bound_scale=0",
      "--config.caat.anti_bound_cap=2",
    ],
    "config.caat.anti_bound_cap=2.0 caps nothing with config.caat.anti_bound_scale=0",
  ),
  (
    "fairness switch no method reads",
    "main",
    [_DIGITS, "--config.suite=()", "--config.method=trades", "--config.fairness.enabled=true"],
    "config.fairness.enabled=True does nothing with config.method='trades'; only meta_caat, "
    "reinforce_caat read it",
  ),
  (
    "batch over devices",
    "main",
    [_DIGITS, "--config.batch_size=63"],
    "not divisible by the number of devices (8)",
  ),
  ("no attack", "evaluate", ["--attacks=,"], "--attacks names no attack"),
  ("bad attack", "evaluate", ["--attacks=pgd20,pgd"], "'autoattack'"),
  ("no checkpoint", "evaluate", ["--attacks=pgd20"], "no checkpoint"),
  (
    "bad bench entry",
    "bench",
    [_DIGITS, "--config.bench.methods=('pgd_at --config.x=1',)"],
    "no config key 'x'",
  ),
  # Each command's own flags: named, with the valid range, before any work.
  ("negative attack points", "bench", [_DIGITS, "--attack_points=-3"], "--attack_points=-3"),
  ("negative attack batch", "bench", [_DIGITS, "--attack_batch=-1"], "--attack_batch=-1"),
  ("negative attack eps", "bench", [_DIGITS, "--attack_eps=-0.1"], "--attack_eps=-0.1: must be"),
  ("nan attack eps", "bench", [_DIGITS, "--attack_eps=nan"], "--attack_eps=nan: must be"),
  ("zero eval batch", "evaluate", ["--batch_size=0"], "--batch_size=0: must be >= 1"),
  ("negative eval points", "evaluate", ["--num_examples=-1"], "--num_examples=-1: must be"),
  ("nan eval eps", "evaluate", ["--eps=nan"], "--eps=nan: must be in [0, 1]"),
  ("nan theory eta", "theory", _THEORY + ["--eta=nan"], "--eta: must be a finite number"),
  ("infinite theory K", "theory", _THEORY + ["--K=inf"], "--K: must be a finite number"),
  ("zero theory sigma", "theory", _THEORY + ["--sigma=0"], "--sigma: must be > 0"),
  ("infinite rho at eps 0", "theory", _THEORY + ["--eps=0", "--rho=inf"], "--rho: must be"),
  ("negative theory eps", "theory", _THEORY + ["--eps=-0.1"], "--eps: must satisfy"),
]


def _tree_digest(path):
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for f in sorted(files):
      p = os.path.join(root, f)
      h.update(p.encode())
      with open(p, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _run(case, tmp):
  name, module, args, _ = case
  workdir = os.path.join(tmp, name.replace(" ", "_"))
  os.makedirs(workdir)
  with open(os.path.join(workdir, "keep.txt"), "w") as f:
    f.write("an earlier run's file")
  args = [a.replace("{tmp}", tmp) for a in args]
  extra = [] if module == "bench" else [f"--workdir={workdir}"]
  if module == "bench":
    extra = [f"--out={os.path.join(workdir, 'bench.json')}"]
  if module == "theory":
    extra = []
  env = subprocess_env(8)
  before = _tree_digest(workdir)
  proc = subprocess.run(
    [sys.executable, "-m", f"caat_jax.{module}", *args, *extra],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    stdin=subprocess.DEVNULL,
  )
  return proc, before, _tree_digest(workdir)


def test_bad_configs_end_in_one_clear_line(tmp_path):
  with open(tmp_path / "broken.py", "w") as f:
    f.write("def get_config(:\n  return 1\n")
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    results = list(pool.map(lambda c: _run(c, str(tmp_path)), CASES))
  failures = []
  for (name, _, _, text), (proc, before, after) in zip(CASES, results):
    err = proc.stderr.strip().splitlines()
    problems = []
    if proc.returncode != 1:
      problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
      problems.append("a traceback")
    if len(err) > 3 or not err or not err[-1].startswith("error: "):
      problems.append(f"{len(err)} stderr lines")
    if text not in proc.stderr:
      problems.append(f"no {text!r}")
    if before != after:
      problems.append("the workdir changed")
    if problems:
      failures.append(f"{name}: {', '.join(problems)}\n{proc.stderr[-1500:]}")
  assert not failures, "\n\n".join(failures)
