"""Two processes on loopback (4 CPU devices each, gloo collectives) train what
one process with 8 devices trains: same metrics, same parameters, same
evaluation; only process 0 writes.

Each process reads only its half of every global batch and of the
evaluation set (``pipeline.host_slice``); the step's named axis spans both
processes, so gradients and BatchNorm statistics are averaged globally.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import ROOT, digits_config, records, restore_final_state, subprocess_env

_ARGS = [
  "--config=tests/small_config.py",
  "--config.num_epochs=1",
  "--config.checkpoint_every_steps=10",
  "--config.log_every_steps=5",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, backend, devices, *extra):
  env = subprocess_env(devices)
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "caat_jax.main",
      f"--workdir={workdir}",
      *_ARGS,
      f"--config.parallel.backend={backend}",
      *extra,
    ],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(proc):
  try:
    out, err = proc.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  assert proc.returncode == 0, err[-5000:]
  return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_two_processes_equal_one(backend, tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  port = _free_port()
  procs = [
    _start(
      two,
      backend,
      4,
      f"--config.parallel.coordinator_address=127.0.0.1:{port}",
      "--config.parallel.num_processes=2",
      f"--config.parallel.process_id={i}",
    )
    for i in range(2)
  ]
  outs = [_finish(p) for p in procs]
  _finish(_start(one, backend, 8))

  # Only process 0 reports.
  assert "pgd_at on digits" in outs[0] and "pgd_at on digits" not in outs[1]
  ref, got = records(one), records(two)
  assert [r["step"] for r in got] == [r["step"] for r in ref]  # one writer, no duplicates
  for r, g in zip(ref, got):
    assert set(r) == set(g)
    for k, v in r.items():
      if k.startswith("train/") and isinstance(v, float):
        np.testing.assert_allclose(g[k], v, rtol=1e-4, atol=1e-5, err_msg=k)

  config = digits_config()
  (s1, step1), (s2, step2) = restore_final_state(one, config), restore_final_state(two, config)
  assert step1 == step2 == 20
  for a, b in zip(
    jax.tree.leaves((s1.params, s1.batch_stats)), jax.tree.leaves((s2.params, s2.batch_stats))
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)

  # The evaluation saw every test point once: per-class errors agree (up to
  # a point flipping on float noise: at most one point's worth in a class).
  with open(os.path.join(one, "eval.json")) as f, open(os.path.join(two, "eval.json")) as g:
    d1, d2 = json.load(f)[0], json.load(g)[0]
  assert d1["num_examples"] == d2["num_examples"] == 200
  for k in ("natural", "robust"):
    np.testing.assert_allclose(d2["per_class"][k], d1["per_class"][k], atol=100 / 15)


def test_distributed_requested_from_config_and_environment():
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top

  from caat_jax.parallel import distributed_requested  # pylint: disable=g-import-not-at-top

  cfg = lambda mode="auto", addr="": ConfigDict({"distributed": mode, "coordinator_address": addr})
  assert not distributed_requested(cfg(), environ={})
  assert distributed_requested(cfg(addr="10.0.0.1:1234"), environ={})
  assert distributed_requested(cfg(), environ={"SLURM_STEP_NUM_TASKS": "4"})
  # The batch script of a SLURM job is one task: it must not wait for peers.
  assert not distributed_requested(cfg(), environ={"SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"})
  assert distributed_requested(cfg(), environ={"TPU_WORKER_HOSTNAMES": "t-0,t-1"})
  assert not distributed_requested(cfg(), environ={"TPU_WORKER_HOSTNAMES": "t-0"})
  assert distributed_requested(cfg("on"), environ={})
  assert not distributed_requested(cfg("off", "10.0.0.1:1234"), environ={})
  with pytest.raises(ValueError, match="config.parallel.distributed='yes'"):
    distributed_requested(cfg("yes"), environ={})
