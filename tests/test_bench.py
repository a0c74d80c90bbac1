"""The benchmark's cost accounting (docs/method.md §11) and a smoke run.

Speed itself is not asserted here (speed goals live in the benchmark's
output); what can be wrong is the accounting and the report's arithmetic."""

import jax
import jax.numpy as jnp
import pytest

from caat_jax import bench, config_lib
from tests.helpers import digits_config


def _cfg(method, **overrides):
  c = digits_config(method=method, **overrides)
  c.attack.num_steps = 10
  return c


def test_forward_units_match_spec_section_11():
  # docs/method.md §11: PGD-AT with K = 10 is 10 * 2F + 3F; TRADES / Reinforce-CAAT 27F.
  assert bench.forward_units(_cfg("pgd_at")) == 23.0
  assert bench.forward_units(_cfg("trades")) == 27.0
  assert bench.forward_units(_cfg("reinforce_caat", **{"reinforce.reward": "paper"})) == 27.0
  # the look-ahead reward adds, every reinforce.k steps, the meta batch's
  # robust objective (attack 20 + clean 1 + fwd/bwd 6, scaled by m / n) and
  # the JVP (4)
  la = _cfg(
    "reinforce_caat",
    **{"reinforce.reward": "lookahead", "reinforce.k": 20, "meta.batch_size": 32, "batch_size": 64},
  )
  assert bench.forward_units(la) == 27.0 + (27.0 * 32 / 64 + 4.0) / 20
  # Meta-CAAT, meta step every iteration, m = n, robust objective, jvp:
  # two attacks 40 + clean 1 + real update 9 + look-ahead 9 + meta attack 20
  # + meta clean 1 + meta fwd/bwd 6 + JVP 6 = 92F, i.e. 4.0x PGD-AT
  # (docs/method.md §11: "roughly 4-5x").
  mc = _cfg("meta_caat", **{"meta.batch_size": 64, "batch_size": 64})
  assert bench.forward_units(mc) == 92.0
  # the objective (on the meta batch) scales with m / n, the look-ahead and
  # the JVP (on the training batch) do not; the meta part with 1 / interval
  half = _cfg("meta_caat", **{"meta.batch_size": 32, "batch_size": 64, "meta.interval": 2})
  assert bench.forward_units(half) == 50.0 + (9.0 + 27.0 * 32 / 64 + 6.0) / 2


def test_meta_variant_costs_come_from_the_variants():
  # nested_grad: the reverse pass through the gradient to the weights, a
  # JVP's tangents without its primal (3F), instead of the JVP (6F);
  # first_order: no look-ahead gradient (9F); k_step, k = 2: twice the
  # look-ahead and its reverse pass to the weights, plus one Hessian-vector
  # product (18F) back to the first step. Meta batch = batch, interval 1.
  kw = {"meta.batch_size": 64, "batch_size": 64}
  units = lambda **o: bench.forward_units(_cfg("meta_caat", **kw, **o))
  assert units(**{"meta.variant": "nested_grad"}) == 92.0 - 3.0
  assert units(**{"meta.variant": "first_order"}) == 92.0 - 9.0
  assert units(**{"meta.variant": "k_step", "meta.k": 1}) == 92.0 - 3.0  # nested_grad
  assert units(**{"meta.variant": "k_step", "meta.k": 2}) == 50.0 + 2 * (9.0 + 3.0) + 18.0 + 27.0
  # Setting I (adversaries only) costs what TRADES costs; "rule" has both
  # attacks but no meta part
  assert units(**{"caat.direction": "adversarial_only"}) == 27.0
  assert units(**{"caat.direction": "rule"}) == 50.0


def test_run_bench_reports_ratios():
  c = _cfg("pgd_at")
  c.attack.num_steps = 2
  c.bench.methods = ("natural", "pgd_at")
  c.bench.num_steps = 2
  c.bench.batch_size = 16
  seen = []
  out = bench.run_bench(c, on_row=lambda r: seen.append(r["method"]))
  rows = {r["method"]: r for r in out["rows"]}
  assert set(rows) == {"natural", "pgd_at"}
  assert seen == ["natural", "pgd_at"]  # each row reported as it ends, in order
  assert rows["pgd_at"]["ratio_to_pgd_at"] == 1.0
  assert rows["natural"]["bound_ratio"] == pytest.approx(3.0 / 7.0)  # 3F / (2*2F + 3F)
  for r in rows.values():
    assert r["step_s"] > 0 and r["compile_s"] > 0
    assert r["images_per_s"] == pytest.approx(16 / r["step_s"])
    assert r["measured_over_bound"] == pytest.approx(r["ratio_to_pgd_at"] / r["bound_ratio"])
  # XLA's analysis joins every row: PGD-AT's step (two attack steps, then
  # the update) does more than the natural update
  for r in rows.values():
    assert r["xla_peak_bytes"] > 0 and r["xla_flops"] > 0
    n = jax.device_count()  # the step's program is one device's share of 16 images
    assert r["flops_per_image"] == pytest.approx(r["xla_flops"] * n / 16)
    assert r["achieved_flops_per_s"] == pytest.approx(r["xla_flops"] / r["step_s"])
    if jax.default_backend() == "cpu":
      assert r["peak_memory_bytes"] is None  # no allocator statistics on a CPU
      assert r["mfu"] is None  # no published peak for a CPU
  assert rows["pgd_at"]["xla_flops"] > rows["natural"]["xla_flops"]
  text = bench.format_rows(out)
  assert "pgd_at" in text and "peak MiB" in text and "GFLOP" in text and "MFU %" in text


def test_xla_cost_of_a_known_function():
  """A [32, 64] @ [64, 16] matmul: 2 * 32 * 64 * 16 FLOPs; its buffers: the
  two arguments and the output, at least (32 * 64 + 64 * 16 + 32 * 16) * 4 bytes."""
  from caat_jax.bench import xla  # pylint: disable=import-outside-toplevel

  a, b = jnp.ones((32, 64)), jnp.ones((64, 16))
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert xla.xla_flops(compiled) == pytest.approx(2 * 32 * 64 * 16, rel=0.05)
  assert xla.xla_peak_bytes(compiled) >= (32 * 64 + 64 * 16 + 32 * 16) * 4


def test_bench_entries_apply_overrides_and_name_bad_ones():
  c = _cfg("pgd_at")
  got = bench.bench_config(c, "meta_caat --config.meta.variant=first_order")
  assert got.meta.variant == "first_order"
  cfg = bench.bench_config(c, "pgd_at --config.attack.unroll=false --config.meta.batch_size=16")
  assert (cfg.method, cfg.attack.unroll, cfg.meta.batch_size) == ("pgd_at", "false", 16)
  assert cfg.batch_size == c.bench.batch_size
  with pytest.raises(config_lib.ConfigError, match="no config key 'attack.unrol'"):
    bench.bench_config(c, "pgd_at --config.attack.unrol=false")
  with pytest.raises(config_lib.ConfigError, match="meta.batch_size='x': expected a int"):
    bench.bench_config(c, "pgd_at --config.meta.batch_size=x")
  with pytest.raises(
    config_lib.ConfigError,
    match="bench entry 'meta_caat --config.meta.variant=fast'.*meta.variant",
  ):
    bench.bench_config(c, "meta_caat --config.meta.variant=fast")
  # a bad entry anywhere in the list stops the run before anything compiles
  c.bench.methods = ("pgd_at", "pgd_at --config.attack.unroll=maybe")
  with pytest.raises(config_lib.ConfigError, match="attack.unroll"):
    bench.run_bench(c)
  with pytest.raises(config_lib.ConfigError, match="--attacks contains 'apgd'"):
    bench.check_attack_args(["pgd20", "apgd"], [])
  with pytest.raises(config_lib.ConfigError, match="unknown model 'resnet18'"):
    bench.check_attack_args(["pgd20"], ["resnet18"])


def test_attack_bench_rows_on_both_models():
  # PreAct-ResNet-18 on digits-shaped inputs: only the path is exercised here
  # (its timing on CIFAR-10 shapes is the benchmark's business).
  c = _cfg("pgd_at")
  seen = []
  out = bench.run_attack_bench(
    c, ["pgd2", "apgd-ce"], ["small_cnn"], batch_size=4, on_row=seen.append, repeats=2
  )
  out_p = bench.run_attack_bench(c, ["pgd1"], ["preact_resnet18"], batch_size=2)
  rows = out["rows"] + out_p["rows"]
  assert [(r["model"], r["attack"]) for r in rows] == [
    ("small_cnn", "pgd2"),
    ("small_cnn", "apgd-ce"),
    ("preact_resnet18", "pgd1"),
  ]
  assert seen == out["rows"]
  for r in rows:
    assert r["broken"] == 0  # eps = 0: nothing may break
    assert r["s_per_1000"] > 0 and r["compile_s"] > 0
  assert rows[1]["compact"] and not rows[0]["compact"]
  assert [r["pack"] for r in rows] == ["fixed", "slots", "fixed"]  # 'auto' on a CPU: slots
  assert [r["calls"] for r in rows] == [1, 1, 1]
  # repeats=2: the first run reported apart, the steady state is the second
  assert [r["repeats"] for r in rows] == [2, 2, 1]
  assert rows[2]["first_s_per_1000"] == rows[2]["s_per_1000"]
  assert all(r["first_s_per_1000"] > 0 for r in rows)
  with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
    bench.bench_attack(c, {}, "pgd2", 4, repeats=0)  # before anything compiles
  text = bench.format_attack_rows(out)
  assert "apgd-ce" in text and "broken" in text


@pytest.mark.slow  # the reference's APGD-T budget, twice: about a minute
def test_attack_bench_compacted_and_fixed_batches_break_the_same_points():
  """At eps > 0 on a random model some points break: compaction computes
  fewer slots for the same count."""
  c = _cfg("pgd_at")
  kw = dict(eps=0.3, num_points=16)
  got = {
    comp: bench.run_attack_bench(c, ["apgd-t"], ["small_cnn"], batch_size=8, compact=comp, **kw)[
      "rows"
    ][0]
    for comp in (True, False)
  }
  assert got[True]["broken"] == got[False]["broken"] > 0
  assert got[True]["slots"] < got[False]["slots"] * 9  # fixed: every batch, every target


@pytest.mark.slow  # APGD-CE and APGD-DLR at the reference's 100 iterations, both paths
def test_bench_times_autoattack_rand_compacted_and_fixed_alike():
  """The benchmark runs autoattack-rand with its version's options on both
  paths: the same points break (APGD-CE then APGD-DLR, one restart each)."""
  from caat_jax import bench  # pylint: disable=import-outside-toplevel
  from tests.test_bench import _cfg  # pylint: disable=import-outside-toplevel

  got = {
    comp: bench.run_attack_bench(
      _cfg("pgd_at"),
      ["autoattack-rand"],
      ["small_cnn"],
      batch_size=8,
      compact=comp,
      eps=0.3,
      num_points=16,
    )["rows"][0]
    for comp in (True, False)
  }
  assert got[True]["broken"] == got[False]["broken"] > 0
  assert got[False]["slots"] == 2 * 16  # two attacks, one run each, every point
  assert got[True]["slots"] <= got[False]["slots"]
