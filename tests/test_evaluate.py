"""caat_jax.evaluate: loading a run (falling back past unreadable checkpoints),
one document per attack, bad attack names from the command line, old
checkpoints."""

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from caat_jax import checkpointing as ckpt_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from caat_jax import evaluate, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import ROOT, digits_config, truncate_checkpoint

TINY = {"apgd-ce": {"num_iters": 5}}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  """One epoch (20 steps) of natural training, checkpoints at 10, 15, 20."""
  workdir = str(tmp_path_factory.mktemp("short"))
  train.train_and_evaluate(
    digits_config(method="natural", checkpoint_every_steps=5, keep_checkpoints=3), workdir
  )
  return workdir


def test_load_run_falls_back_past_an_unreadable_checkpoint(short_run, tmp_path, caplog):
  workdir = shutil.copytree(short_run, str(tmp_path / "run"))
  truncate_checkpoint(workdir, 20)
  with caplog.at_level("WARNING"):
    _, _, step = evaluate.load_run(workdir)
  assert step == 15
  lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(lines) == 1 and "[20]" in lines[0] and "step 15" in lines[0]
  assert os.path.exists(os.path.join(ckpt_lib.checkpoint_dir(workdir), "20"))  # left alone
  for s in (10, 15):
    truncate_checkpoint(workdir, s)
  with pytest.raises(ckpt_lib.CheckpointError, match="no readable checkpoint in .*checkpoints"):
    evaluate.load_run(workdir)


@pytest.mark.slow  # about 40 s on 2 busy cores
def test_an_individual_attack_gets_its_own_document(short_run, tmp_path):
  out = str(tmp_path / "out")
  docs, _ = evaluate.evaluate_checkpoint(
    short_run, ["apgd-ce"], num_examples=16, aa_options=TINY, out_dir=out, progress=False
  )
  with open(os.path.join(out, "eval_apgd-ce.json")) as f:
    doc = json.load(f)
  assert doc == json.loads(json.dumps(docs[0]))
  assert doc["attack"] == "apgd-ce" and len(doc["per_class"]["robust"]) == 10
  assert doc["verification"]["num_points"] == 16 and doc["verification"]["flag_mismatch"] == 0
  assert isinstance(doc["warnings"], list) and doc["step"] == 20


@pytest.mark.parametrize("attacks", [",", "pgd20,apgd"])
def test_bad_attack_names_are_one_line_from_the_command_line(attacks, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  res = subprocess.run(
    [sys.executable, "-m", "caat_jax.evaluate", f"--workdir={tmp_path}", f"--attacks={attacks}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 1
  err = res.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --attacks"), res.stderr
  for name in ("pgd<k>", "'autoattack'", "'apgd-ce'", "'apgd-t'", "'fab-t'", "'square'"):
    assert name in err[0]


def test_old_checkpoint_without_added_keys_evaluates_and_resumes(tmp_path):
  """A checkpoint written before a config key existed: evaluation and resume
  fill the key with its old-behaviour value (``checkpoint.ADDED_KEYS``),
  which must be today's default; without that both failed on the missing key."""
  config = digits_config(method="natural", num_epochs=2)
  workdir = str(tmp_path / "old")
  run = train.Run(config)
  old = config.copy_and_resolve_references()
  with old.unlocked():
    for key in ckpt_lib.ADDED_KEYS:
      *path, leaf = key.split(".")
      node = old
      for part in path:
        node = node[part]
      assert node[leaf] == ckpt_lib.ADDED_KEYS[key], key  # old behaviour = default
      del node[leaf]
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  state = run.init_state()
  state = state.replace(step=np.asarray(run.steps_per_epoch, state.step.dtype))
  ckpt.save(run.steps_per_epoch, state, old)
  ckpt.close()
  _, _, step = evaluate.load_run(workdir)
  assert step == run.steps_per_epoch
  docs = train.train_and_evaluate(config, workdir)  # resumes at epoch 1 without complaint
  assert docs and docs[0]["step"] == 2 * run.steps_per_epoch
