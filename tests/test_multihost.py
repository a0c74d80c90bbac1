"""The multi-host timeouts (``config.parallel.*_timeout_s``): validated with
one line naming the key, and passed to ``jax.distributed.initialize`` under
the installed JAX's own parameter names. The faults themselves are run with
two processes in tests/test_multiprocess_faults.py (slow)."""

import inspect
import subprocess
import sys

import jax
import pytest

from caat_jax import config_lib, multihost
from tests.helpers import ROOT, digits_config, subprocess_env


def test_timeouts_reach_jax_distributed_initialize_by_its_parameter_names():
  cfg = digits_config().parallel
  kwargs = multihost.initialize_kwargs(cfg)
  params = inspect.signature(jax.distributed.initialize).parameters
  assert set(kwargs) <= set(params)  # a renamed parameter would fail here, not at run time
  assert kwargs == {
    "initialization_timeout": 300,
    "heartbeat_timeout_seconds": 60,
    "shutdown_timeout_seconds": 60,
  }
  # Shorter than JAX's own defaults: a lost host stops the job in minutes.
  assert kwargs["heartbeat_timeout_seconds"] < params["heartbeat_timeout_seconds"].default
  assert kwargs["shutdown_timeout_seconds"] < params["shutdown_timeout_seconds"].default


@pytest.mark.parametrize("key", multihost.TIMEOUT_KEYS)
@pytest.mark.parametrize("value", [0, -5, 86401])
def test_bad_timeout_refused_naming_the_key(key, value):
  config = digits_config(**{f"parallel.{key}": value})
  with pytest.raises(
    config_lib.ConfigError, match=rf"config\.parallel\.{key}={value} is not valid"
  ):
    config_lib.validate(config)


def test_good_timeouts_accepted():
  config_lib.validate(digits_config(**{f"parallel.{k}": 1 for k in multihost.TIMEOUT_KEYS}))


def test_peer_lost_message_names_the_process():
  line = multihost.peer_lost_message([1])
  assert "process 1 of this multi-host job stopped responding" in line
  assert "\n" not in line


def test_cli_refuses_a_bad_timeout_in_one_line(tmp_path):
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "caat_jax.main",
      f"--workdir={tmp_path / 'run'}",
      "--config=tests/small_config.py",
      "--config.parallel.heartbeat_timeout_s=0",
    ],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 1
  lines = res.stderr.strip().splitlines()
  assert lines == [
    "error: config.parallel.heartbeat_timeout_s=0 is not valid: a whole number of "
    "seconds from 1 to 86400."
  ], res.stderr
  assert not (tmp_path / "run").exists()  # refused before the workdir is made
