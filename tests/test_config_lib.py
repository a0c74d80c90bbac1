"""Every config file loads and validates; bad values fail with the promised message."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from caat_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if "def get_config" in open(p).read())  # not helper modules


def load(path):
  sys.path.insert(0, ROOT)
  try:
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
  finally:
    sys.path.remove(ROOT)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_file_loads_and_validates(path):
  config = load(path)
  config_lib.validate(config, num_devices=1)
  assert load(path).to_dict() == config.to_dict()  # deterministic


def test_every_variant_only_overrides_default_keys():
  default = load(os.path.join(ROOT, "configs", "default.py"))
  flat = lambda d, p="": {k2: v2 for k, v in d.items() for k2, v2 in (
      flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(f"{p}{k}", v)])}
  keys = set(flat(default.to_dict()))
  for path in CONFIG_FILES:
    assert set(flat(load(path).to_dict())) == keys, path


@pytest.mark.parametrize("key,value,message", [
    ("method", "magic", "config.method='magic' is not valid; choose one of: 'natural'"),
    ("model", "vgg", "config.model='vgg' is not valid; choose one of: 'small_cnn'"),
    ("data.name", "mnist", "config.data.name='mnist' is not valid; choose one of: 'digits'"),
    ("attack.eps", -0.1, "config.attack.eps=-0.1 is not valid: must be in [0, 1]"),
    ("data.noise_type", "sym", "config.data.noise_type='sym'"),
    ("data.noise_rate", 1.5, "config.data.noise_rate=1.5 is not valid: must be in [0, 1)"),
    ("optimizer.schedule", "step", "config.optimizer.schedule='step'"),
    ("parallel.backend", "pjit", "config.parallel.backend='pjit'"),
    ("eval.attacks", ("pgd20", "apgd"), "config.eval.attacks contains 'apgd'"),
])
def test_invalid_values_name_the_key(key, value, message):
  config = load(os.path.join(ROOT, "configs", "digits.py"))
  config_lib.set_dotted(config, key, value)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config, num_devices=1)
  assert message in str(e.value)


def test_batch_not_divisible_by_devices():
  config = load(os.path.join(ROOT, "configs", "digits.py"))
  config.batch_size = 100
  with pytest.raises(config_lib.ConfigError, match=r"config.batch_size=100 is not divisible "
                     r"by the number of devices \(8\)"):
    config_lib.validate(config, num_devices=8)


def test_cli_rejects_bad_value_before_any_work(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "caat_jax.main", "--config=configs/digits.py",
       f"--workdir={tmp_path}", "--config.method=pgd_ta"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.method='pgd_ta' is not valid" in proc.stderr
  assert not os.listdir(tmp_path)  # nothing written


def test_cli_missing_tfds_dataset_fails_fast_with_prepare_command(tmp_path):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  proc = subprocess.run(
      [sys.executable, "-m", "caat_jax.main", "--config=configs/cifar10.py",
       f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={data_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"python -m caat_jax.data.prepare --dataset=cifar10 --data_dir={data_dir}" in proc.stderr


def test_derived_keys_follow_one_way():
  """eval.eps follows attack.eps and data.seed follows seed, but overriding
  the derived key must not move the key it follows (a shared reference did:
  --config.eval.eps=... silently changed the training bound)."""
  c = load(os.path.join(ROOT, "configs", "digits.py"))
  c.attack.eps, c.seed = 0.2, 7
  assert (c.eval.eps, c.data.seed) == (0.2, 7)
  c.eval.eps, c.data.seed = 0.05, 3
  assert (c.attack.eps, c.seed) == (0.2, 7)
  cfg = config_lib.apply_overrides(load(os.path.join(ROOT, "configs", "digits.py")),
                                   ["--config.eval.eps=0.05"])
  assert (cfg.attack.eps, cfg.eval.eps) == (0.1, 0.05)
