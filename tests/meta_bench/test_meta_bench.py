"""``python -m caat_jax.meta_bench`` end to end on a tiny noisy digits run,
and its flags refused up front."""

import functools
import json
import math
import os
import subprocess
import sys

import pytest

from caat_jax import checkpointing as ckpt_lib
from caat_jax import meta_bench, methods
from caat_jax.meta_bench import capture, cost, report
from caat_jax.parallel import REPLICATED, SHARDED
from tests.helpers import ROOT, digits_config, snapshot


def _config():
  return digits_config(
    method="meta_caat",
    **{"meta.batch_size": 32, "data.noise_type": "uniform", "data.noise_rate": 0.4},
  )


def _real_step_meta_grad_norm(config, run, state, batch) -> float:
  """The meta-gradient norm the trainer's own jitted step reports with
  ``nested_grad`` on ``state`` and ``batch``."""
  step = functools.partial(
    methods.train_step,
    method_step=run.method.make_step(cost.variant_config(config, "nested_grad"), run.ctx),
    ctx=run.ctx,
  )
  wrapped = run.parallel.wrap(step, (REPLICATED, SHARDED), (REPLICATED, REPLICATED))
  _, metrics = wrapped(run.parallel.replicate(state), run.parallel.shard(batch))
  return float(run.parallel.fetch(metrics)["meta_grad_norm"])


@pytest.mark.slow  # trains one tiny epoch, compiles 3 whole steps and 4 meta parts: ~3 min of CPU
def test_meta_bench_writes_every_column_and_scores_exact_variants_exact(tmp_path):
  c = _config()
  work = str(tmp_path)
  result = meta_bench.run_meta_bench(
    c, ["jvp"], work, checkpoints=["early"], num_keys=2, repeats=1, log=lambda s: None
  )
  rows = result["rows"]
  assert [r["variant"] for r in rows] == ["nested_grad", "jvp"]
  for r in rows:
    for key, _, _ in report.COLUMNS:
      assert key in r, key
    for key in ("cosine", "rel_error", "eff_lr_ratio", "spearman_c", "sign_agreement"):
      assert math.isfinite(r[key]), key
    for key in ("meta_s", "step_s", "meta_compile_s", "step_compile_s"):
      assert r[key] > 0, key
    assert r["meta_peak_bytes"] > 0 and r["meta_flops"] > 0 and r["step_flops"] > 0
    assert 0.0 <= r["auroc_noisy"] <= 1.0  # 40% label noise: both classes in the batch
    assert r["units_F"] > r["meta_units_F"] > 0
  ref, jvp = rows
  assert ref["cosine"] == 1.0 and ref["rel_error"] == 0.0 and ref["meta_ratio"] == 1.0
  assert jvp["cosine"] >= 1 - 1e-6
  assert jvp["spearman_c"] >= 0.999
  # each variant's own executable: the JVP's differs from the nested reverse pass
  assert jvp["meta_flops"] != ref["meta_flops"]
  # the §11 accounting: look-ahead 9 + objective + JVP 6 vs + the reverse
  # pass to the weights 3 (a JVP's tangents), both on the training batch
  assert jvp["meta_units_F"] == pytest.approx(ref["meta_units_F"] + 3.0)  # training batch
  # the files
  with open(os.path.join(work, "meta_bench.json")) as f:
    saved = json.load(f)
  assert [r["variant"] for r in saved["rows"]] == ["nested_grad", "jvp"]
  with open(os.path.join(work, "meta_bench.md")) as f:
    text = f.read()
  assert "| ckpt |" in text and "| jvp |" in text.replace("  ", " ")
  assert os.path.getsize(os.path.join(work, "meta_bench.png")) > 1000

  # The captured problem is the trainer's: the jitted step's own
  # meta-gradient norm on the same state and batch equals the probe's.
  run = capture.make_run(c)
  step = result["checkpoints"]["early"]
  state, batch = capture.restore(run, work, step), capture.next_batch(run, step)
  assert ref["grad_norm"] == pytest.approx(
    _real_step_meta_grad_norm(c, run, state, batch), rel=1e-4
  )
  # A second call reuses the finished run instead of training it again: the
  # same checkpoints, and not one file of the run rewritten.
  before = snapshot(os.path.join(work, capture.RUN_DIR))
  assert step in capture.train_or_restore(run, work, log=lambda s: None)
  assert snapshot(os.path.join(work, capture.RUN_DIR)) == before
  # A variant's option changed in the config is a changed run: refused, the
  # run untouched, and the advice names the row syntax that measures it.
  changed = _config()
  with changed.unlocked():
    changed.meta.layer_scope = "subset"
  with pytest.raises(ckpt_lib.IncompatibleConfigError) as err:
    meta_bench.run_meta_bench(changed, ["layerwise"], work, checkpoints=["early"], log=print)
  assert snapshot(os.path.join(work, capture.RUN_DIR)) == before
  text = meta_bench.runner.incompatible_message(err.value)
  assert "meta.layer_scope: checkpoint 'full' -> now 'subset'" in text
  assert "allow_config_change" not in text and "layerwise[layer_scope=subset]" in text


def test_flags_and_arguments_are_refused_up_front(tmp_path):
  def run(*flags):
    return subprocess.run(
      [sys.executable, "-m", "caat_jax.meta_bench", "--config=tests/small_config.py", *flags],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=ROOT),
      timeout=300,
    )

  bad = run(f"--workdir={tmp_path}", "--variants=jvp,fast")
  assert bad.returncode == 1
  lines = bad.stderr.strip().splitlines()
  assert "--variants contains 'fast'; valid: nested_grad, jvp" in lines[-1]
  assert not os.path.exists(os.path.join(tmp_path, "run"))  # nothing trained
  with pytest.raises(meta_bench.runner.config_lib.ConfigError, match="--checkpoints contains"):
    meta_bench.check_checkpoints(["early", "end"])
  with pytest.raises(meta_bench.runner.config_lib.ConfigError, match="--variants is empty"):
    meta_bench.check_variants([])


def test_a_run_with_no_meta_gradient_step_is_refused_before_training(tmp_path):
  # traces one whole step: about 15 s on a shared 2-core machine
  c = digits_config(method="meta_caat", **{"caat.direction": "rule"})
  with pytest.raises(meta_bench.runner.config_lib.ConfigError, match="takes no meta-gradient"):
    meta_bench.run_meta_bench(c, ["jvp"], str(tmp_path), log=lambda s: None)
  assert not os.path.exists(os.path.join(tmp_path, "run"))
