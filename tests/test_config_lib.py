"""Every config file loads and validates; bad values fail with the promised
message; the ablation and Table 5 configs hold what the paper states."""

import glob
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from caat_jax import config_lib
from tests.helpers import ROOT, config_module, digits_config

CONFIG_FILES = sorted(
  p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if "def get_config" in open(p).read()
)  # not helper modules


def load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_file_loads_and_validates(path):
  config = load(path)
  config_lib.validate(config, num_devices=1)
  assert load(path).to_dict() == config.to_dict()  # deterministic


def test_every_variant_only_overrides_default_keys():
  default = load(os.path.join(ROOT, "configs", "default.py"))
  flat = lambda d, p="": {
    k2: v2
    for k, v in d.items()
    for k2, v2 in (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(f"{p}{k}", v)])
  }
  keys = set(flat(default.to_dict()))
  for path in CONFIG_FILES:
    assert set(flat(load(path).to_dict())) == keys, path


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("method", "magic", "config.method='magic' is not valid; choose one of: 'natural'"),
    ("model", "vgg", "config.model='vgg' is not valid; choose one of: 'small_cnn'"),
    ("data.name", "mnist", "config.data.name='mnist' is not valid; choose one of: 'digits'"),
    ("attack.eps", -0.1, "config.attack.eps=-0.1 is not valid: must be in [0, 1]"),
    ("data.noise_type", "sym", "config.data.noise_type='sym'"),
    ("data.noise_rate", 1.5, "config.data.noise_rate=1.5 is not valid: must be in [0, 1)"),
    ("optimizer.schedule", "step", "config.optimizer.schedule='step'"),
    ("parallel.backend", "pjit", "config.parallel.backend='pjit'"),
    ("eval.attacks", ("pgd20", "apgd"), "config.eval.attacks contains 'apgd'"),
  ],
)
def test_invalid_values_name_the_key(key, value, message):
  config = load(os.path.join(ROOT, "configs", "digits.py"))
  config_lib.set_dotted(config, key, value)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config, num_devices=1)
  assert message in str(e.value)


def test_batch_not_divisible_by_devices():
  config = load(os.path.join(ROOT, "configs", "digits.py"))
  config.batch_size = 100
  with pytest.raises(
    config_lib.ConfigError,
    match=r"config.batch_size=100 is not divisible "
    r"by the number of devices \(8\)",
  ):
    config_lib.validate(config, num_devices=8)


def test_cli_rejects_bad_value_before_any_work(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "caat_jax.main",
      "--config=configs/digits.py",
      f"--workdir={tmp_path}",
      "--config.method=pgd_ta",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "config.method='pgd_ta' is not valid" in proc.stderr
  assert not os.listdir(tmp_path)  # nothing written


def test_cli_missing_tfds_dataset_fails_fast_with_prepare_command(tmp_path):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "caat_jax.main",
      "--config=configs/cifar10.py",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data.data_dir={data_dir}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
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
  cfg = config_lib.apply_overrides(
    load(os.path.join(ROOT, "configs", "digits.py")), ["--config.eval.eps=0.05"]
  )
  assert (cfg.attack.eps, cfg.eval.eps) == (0.1, 0.05)


def _load(spec):
  """A config file's get_config(variant), as ``--config=path:variant`` loads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name", ["cifar10_meta_caat", "digits_meta_caat"])
def test_ablation_variants_build_valid_configs(name):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  want = {
    "setting1": ("adversarial_only", "fixed"),
    "setting2": ("adversarial_only", "grad"),
    "setting3": ("combined", "fixed"),
    "setting4": ("combined", "grad"),
    "without": ("rule", "fixed"),
  }
  for arg, (direction, bound) in want.items():
    c = _load(f"{path}:{arg}")
    assert (c.caat.direction, c.caat.bound) == (direction, bound), arg
    config_lib.validate(c)
  c = _load(f"{path}:features=110111")
  assert tuple(c.caat.feature_mask) == (1, 1, 0, 1, 1, 1)
  with pytest.raises(ValueError, match="six 0/1 digits"):
    _load(f"{path}:features=11011")


def test_table5_noise_is_flip2_and_frl_uses_the_reference_numbers():
  for name in ("cifar10_meta_caat_noisy", "cifar10_reinforce_caat_noisy"):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    doc = open(path).read()
    table5 = [line for line in doc.splitlines() if "# Table 5" in line][0]
    variant = table5.split(f"{name}.py:")[1].split()[0]
    assert _load(f"{path}:{variant}").data.noise_type == "flip2"
    assert _load(f"{path}:pairflip:0.2").data.noise_type == "pairflip"
  frl = _load(os.path.join(ROOT, "configs", "cifar10_frl.py"))
  assert (frl.optimizer.learning_rate, frl.trades.beta) == (0.001, 1.5)


def test_configs_load_and_validate():
  variants = {
    "cifar10_reinforce_caat": [()],
    "svhn_reinforce_caat": [()],
    "cifar10_reinforce_caat_noisy": [(), ("pairflip:0.2",)],
    "cifar10_reinforce_caat_lt": [(), ("10",)],
    "digits_reinforce_caat": [(), ("noisy",), ("lt",)],
  }
  for name, args in variants.items():
    for arg in args:
      c = config_module(name).get_config(*arg)
      assert c.method == "reinforce_caat" and len(c.reinforce.bound_set) == 13
      assert c.reinforce.reward == "lookahead" and c.data.meta_per_class >= 1
      config_lib.validate(c, num_devices=1)
  assert config_module("cifar10_reinforce_caat").get_config().reinforce.lam == 0.005
  assert config_module("svhn_reinforce_caat").get_config().reinforce.lam == 0.1
  for key, value in [
    ("reinforce.baseline", "mean"),
    ("reinforce.k", 0),
    ("reinforce.reward", "lookahed"),
    ("reinforce.reward_mix", -1.0),
    ("reinforce.optimizer", "rmsprop"),
    ("reinforce.bound_set", ()),
  ]:
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
      config_lib.validate(digits_config(method="reinforce_caat", **{key: value}))


@pytest.mark.parametrize(
  "key,value,message",
  [
    (
      "attack.threat_model",
      "normalised",
      "config.attack.threat_model='normalised' is not valid; choose one of: 'pixel', "
      "'normalized', 'normalized_clip'",
    ),
    ("caat.anti_bound_scale", -0.5, "config.caat.anti_bound_scale=-0.5 is not valid: must be >= 0"),
    ("caat.anti_bound_cap", -1.0, "config.caat.anti_bound_cap=-1.0 is not valid: must be >= 0"),
    (
      "caat.weights",
      "binary",
      "config.caat.weights='binary' is not valid; choose one of: 'soft', 'hard'",
    ),
  ],
)
def test_bad_values_name_the_key(key, value, message):
  config = digits_config(method="meta_caat", **{key: value})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  assert message in str(err.value)
  assert "\n" not in str(err.value)


def test_config_files_load_from_any_working_directory(tmp_path):
  """A config that builds on a sibling (svhn -> cifar10 -> default) loads with
  another working directory and nothing of the repository on sys.path."""
  script = (
    "import sys\n"
    "from caat_jax import cli\n"
    f"assert {ROOT!r} not in sys.path\n"
    f"config, error = cli.load_config({os.path.join(ROOT, 'configs', 'svhn.py')!r}, root='/')\n"
    "assert error is None, error\n"
    "print(config.data.name, config.model, config.optimizer.learning_rate)\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  out = subprocess.run(
    [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["svhn", "preact_resnet18", "0.01"]


def test_config_sibling_is_loaded_once():
  from caat_jax import config_files

  here = os.path.join(ROOT, "configs", "svhn.py")
  first = config_files.sibling(here, "default")
  assert config_files.sibling(here, "default") is first
  assert first.get_config().to_dict() == config_module("default").get_config().to_dict()
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_files.sibling(here, "nope")
