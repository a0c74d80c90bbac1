"""docs/extending.md's "Adding a method" and "Adding a meta-gradient variant"
recipes, proved: the method is the recipe's own code, read from the document;
each is one new file plus one registry line in a copy of the package,
and the addition trains end to end (validation, checkpoints, the 8-device
pmap wrapper, final evaluation) and reports its benchmark cost, with no other
file edited."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT, subprocess_env

DOC = os.path.join(ROOT, "docs", "extending.md")


def _section(title):
  """The text of docs/extending.md's section ``## title``."""
  with open(DOC) as f:
    text = f.read()
  body = text.split(f"\n## {title}\n", 1)[1]
  return body.split("\n## ", 1)[0]


def _method_recipe():
  """(module path, module source, registry name) of "Adding a method"."""
  section = _section("Adding a method")
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  path = re.match(r"# (caat_jax/methods/\w+\.py)\n", code).group(1)
  name = re.search(r'`"(\w+)",` in `_MODULES` of `caat_jax/methods/__init__.py`', section).group(1)
  registered = re.search(r'base\.Method\(\s*"' + re.escape(name) + '"', code)
  assert os.path.basename(path) == name + ".py" and registered, section
  return path, code, name


# Appended to the recipe's module: a ``validate`` the recipe's text promises
# the trainer picks up (``Method.validate``); still one file.
VALIDATE = """
from caat_jax.checks import check


def validate(config):
  check("trades.beta", config.trades.beta < 100, config.trades.beta, "< 100")


METHOD = METHOD._replace(validate=validate)
"""

NEW_VARIANT = '''
import jax
from caat_jax.meta.problem import Variant


def scaled_first_order(problem, omega, params, scale=1.0):
  """Gradient alignment at W, scaled: -lr/n sum_i <g_meta, grad l_i> dw_i/dOmega."""
  w, weights_vjp = jax.vjp(problem.weights_fn, omega)
  meta_loss, g_meta = jax.value_and_grad(problem.meta_loss_fn)(params)
  g_meta = problem.pmean(g_meta)
  _, dots = jax.jvp(lambda p: problem.per_sample_fn(p)[0], (params,), (g_meta,))
  (grad,) = weights_vjp(-scale * problem.lr * dots / w.shape[0])
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


VARIANT = Variant("aligned", make=lambda k=1: (
    lambda problem, omega, params: scaled_first_order(problem, omega, params, scale=k)),
    cost=lambda c, k=1: c.objective + c.jvp + 0.5, options=("k",))
'''

SCRIPT = """
import json, os, sys
import caat_jax
assert caat_jax.__file__.startswith(sys.argv[1]), caat_jax.__file__
from caat_jax import bench, config_lib, train
from tests.helpers import digits_config

out = {}
method = sys.argv[3]
for name, overrides in [(method, {}), ("meta_caat", {"meta.variant": "aligned", "meta.k": 2})]:
  config = digits_config(method=name, batch_size=64, **overrides)
  config.data.test_fraction = 0.5  # fewer training steps
  workdir = os.path.join(sys.argv[2], name)
  docs = train.train_and_evaluate(config, workdir)
  out["kl_at" if name == method else name] = {
      "robust": docs[0]["avg"]["robust"], "units": bench.forward_units(config),
      "checkpoints": sorted(os.listdir(os.path.join(workdir, "checkpoints")))}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    out["kl_at" if name == method else name]["records"] = [json.loads(line) for line in f]
bad = digits_config(method=method)
bad.trades.beta = 1e3
try:
  config_lib.validate(bad)
except config_lib.ConfigError as e:
  out["bad"] = str(e)
print("RESULT" + json.dumps(out))
"""


def _copy_package(dst):
  shutil.copytree(
    os.path.join(ROOT, "caat_jax"),
    os.path.join(dst, "caat_jax"),
    ignore=shutil.ignore_patterns("__pycache__"),
  )
  shutil.copytree(
    os.path.join(ROOT, "configs"),
    os.path.join(dst, "configs"),
    ignore=shutil.ignore_patterns("__pycache__"),
  )
  os.makedirs(os.path.join(dst, "tests"))
  for f in ("__init__.py", "helpers.py"):
    shutil.copy(os.path.join(ROOT, "tests", f), os.path.join(dst, "tests", f))


def _add_registry_line(path, after, line):
  with open(path) as f:
    text = f.read()
  assert after in text, f"{path} has no {after!r}: docs/extending.md is out of date"
  with open(path, "w") as f:
    f.write(text.replace(after, after + line, 1))


@pytest.mark.slow  # about 90 s on 2 cores: two 8-device training runs in a subprocess
def test_new_method_and_meta_variant_are_one_file_and_one_line(tmp_path):
  pkg = str(tmp_path / "pkg")
  _copy_package(pkg)
  path, code, name = _method_recipe()
  with open(os.path.join(pkg, path), "w") as f:
    f.write(code + VALIDATE)
  _add_registry_line(
    os.path.join(pkg, "caat_jax", "methods", "__init__.py"), "_MODULES = (\n", f'    "{name}",\n'
  )
  variant = _section("Adding a meta-gradient variant")
  for promise in (
    "`VARIANT = Variant(name, make, cost, options)`",
    "`_MODULES` in `caat_jax/meta/__init__.py`",
    "`config.meta.variant=<name>`",
  ):
    assert promise in variant, f"docs/extending.md no longer says {promise}"
  with open(os.path.join(pkg, "caat_jax", "meta", "aligned.py"), "w") as f:
    f.write(textwrap.dedent(NEW_VARIANT))
  _add_registry_line(
    os.path.join(pkg, "caat_jax", "meta", "__init__.py"), "_MODULES = (\n", '    "aligned",\n'
  )
  env = dict(subprocess_env(8), PYTHONPATH=pkg)
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, pkg, str(tmp_path / "runs"), name],
    cwd=pkg,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top

  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  kl, mc = out["kl_at"], out["meta_caat"]
  # trained on 8 devices, checkpointed at the epoch's end, evaluated
  for r in (kl, mc):
    assert r["checkpoints"], r
    assert 0.0 <= r["robust"] <= 100.0
    losses = [rec["train/loss"] for rec in r["records"] if "train/loss" in rec]
    assert losses and all(v == v for v in losses)  # finite, logged
  # the benchmark reads each addition's own cost (2 attack steps of 2F)
  assert kl["units"] == 2 * 2 + 4.0
  assert mc["units"] > kl["units"]
  # the new variant's option (meta.k) and cost reach Meta-CAAT's accounting:
  # 2 attacks (8) + clean (1) + update (9) + meta part: objective 4+1+6 on
  # the meta batch (32 of 64) + jvp 6 + 0.5 on the training batch
  assert mc["units"] == 8 + 1 + 9 + 11 * 32 / 64 + 6 + 0.5
  # its validation runs with the rest
  assert "config.trades.beta=1000.0" in out["bad"]
