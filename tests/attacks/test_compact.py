"""The compacting driver: buckets, and the same results as autoattack()."""

import jax
import numpy as np
import pytest

from caat_jax.attacks import autoattack, compact
from tests.helpers import TINY_AA, keys_for, linear_problem


def test_bucket_sizes_and_plan():
  assert compact.bucket_sizes(256, 8) == [256, 128, 64, 32, 16, 8]
  assert compact.bucket_sizes(64, 1, multiple=8) == [64, 32, 16, 8]  # never below a device each
  assert compact.bucket_sizes(24, 4, multiple=8) == [24, 16, 8]
  with pytest.raises(ValueError, match="multiple"):
    compact.bucket_sizes(100, 8, multiple=8)
  # a CPU's ladder (ratio 4): fewer sizes to compile, padding still under
  # one smallest bucket
  assert compact.bucket_sizes(512, 8, ratio=4) == [512, 128, 32, 8]
  assert compact.bucket_sizes(96, 8, multiple=8, ratio=4) == [96, 24, 8]
  with pytest.raises(ValueError, match="ratio 1"):
    compact.bucket_sizes(64, 8, ratio=1)
  assert [compact.bucket_ratio(p) for p in ("slots", "calls", "auto")] == [4, 2, 4]  # auto: CPU
  coarse = compact.bucket_sizes(512, 8, ratio=4)
  for n in range(1, 600):
    p = compact.plan(n, coarse)
    assert 0 <= sum(p) - n < coarse[-1] and set(p) <= set(coarse)
  sizes = compact.bucket_sizes(64, 8)
  assert compact.plan(0, sizes) == []
  assert compact.plan(200, sizes) == [64, 64, 64, 8]
  assert compact.plan(13, sizes) == [8, 8]
  assert compact.plan(1, sizes) == [8]
  for n in range(1, 300):  # every point has a slot; padding under one smallest bucket
    p = compact.plan(n, sizes)
    assert 0 <= sum(p) - n < sizes[-1]
  # pack='calls': as few calls as fixed batches of 64, the rest in the
  # smallest bucket that holds it
  assert compact.plan(200, sizes, "calls") == [64, 64, 64, 8]
  assert compact.plan(126, sizes, "calls") == [64, 64]
  assert compact.plan(13, sizes, "calls") == [16]
  assert compact.plan(33, sizes, "calls") == [64]
  assert compact.plan(0, sizes, "calls") == []
  for n in range(1, 300):
    p = compact.plan(n, sizes, "calls")
    assert len(p) == -(-n // 64) and sum(p) >= n
    assert not [s for s in sizes if sum(p) - p[-1] + s >= n and s < p[-1]]  # none smaller fits
    assert len(p) <= len(compact.plan(n, sizes))


def test_pack_resolves_by_backend_and_rejects_bad_names(monkeypatch):
  assert compact.resolve_pack("calls") == "calls" and compact.resolve_pack("slots") == "slots"
  assert compact.resolve_pack("auto") == "slots"  # the tests run on CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert compact.resolve_pack("auto") == "calls"
  with pytest.raises(ValueError, match="'fewest'.*auto, slots, calls"):
    compact.resolve_pack("fewest")
  with pytest.raises(ValueError, match="'auto'.*resolve"):
    compact.plan(10, [8, 4], "auto")


def test_compaction_gives_autoattacks_results_exactly_two_attacks():
  """The default-suite version: APGD-T (re-packed between targets) then
  Square, buckets of 8 and 4, filled for fewest slots and for fewest calls."""
  f, x, y, dist = linear_problem(10, n=12, seed=6)
  eps = float(np.quantile(dist, 0.6))
  keys = keys_for(len(y), seed=3)
  attacks = ("apgd-t", "square")
  res, stages = jax.jit(
    lambda x, y, k: autoattack.autoattack(
      f, x, y, eps=eps, keys=k, options=TINY_AA, attacks=attacks
    )
  )(x, y, keys)
  stats = {}
  for pack in ("slots", "calls"):
    x_adv, robust, got, stats[pack] = compact.autoattack_compact(
      compact.local_runner(f, TINY_AA),
      np.asarray(x),
      np.asarray(y),
      eps=eps,
      keys=keys,
      clean_correct=np.asarray(stages["clean"]),
      num_classes=10,
      options=TINY_AA,
      attacks=attacks,
      batch_size=8,
      min_size=4,
      pack=pack,
    )
    for name in got:
      np.testing.assert_array_equal(got[name], np.asarray(stages[name]), err_msg=name)
    np.testing.assert_array_equal(x_adv, np.asarray(res.x_adv))
    assert 0 < int(robust.sum()) < len(y)
    assert stats[pack]["apgd-t"]["points"] < 3 * len(y)  # later targets saw fewer points
    sq = stats[pack]["square"]  # one run: its calls and slots are plan's for its points
    assert [sq["calls"], sq["slots"]] == [
      len(compact.plan(sq["points"], [8, 4], pack)),
      sum(compact.plan(sq["points"], [8, 4], pack)),
    ]
  for name in attacks:  # same points; 'calls' never makes more calls nor fewer slots
    s_, c_ = stats["slots"][name], stats["calls"][name]
    assert s_["points"] == c_["points"]
    assert c_["calls"] <= s_["calls"] and c_["slots"] >= s_["slots"]
  assert sum(v["calls"] for v in stats["calls"].values()) < sum(
    v["calls"] for v in stats["slots"].values()
  )


@pytest.mark.slow
def test_compaction_gives_autoattacks_results_exactly():
  """Same keys, same flags at every stage, same examples; and the attacks
  after the first see only the points still robust."""
  f, x, y, dist = linear_problem(10, n=20, seed=6)
  eps = float(np.quantile(dist, 0.7))  # most points break, some survive
  y = y.at[0].set((y[0] + 1) % 10)  # one point misclassified clean
  keys = keys_for(len(y), seed=3)
  res, stages = jax.jit(
    lambda x, y, k: autoattack.autoattack(f, x, y, eps=eps, keys=k, options=TINY_AA)
  )(x, y, keys)
  x_adv, robust, got, stats = compact.autoattack_compact(
    compact.local_runner(f, TINY_AA),
    np.asarray(x),
    np.asarray(y),
    eps=eps,
    keys=keys,
    clean_correct=np.asarray(stages["clean"]),
    num_classes=10,
    options=TINY_AA,
    batch_size=8,
    min_size=4,
  )
  assert list(got) == ["clean", *autoattack.STANDARD]
  for name in got:
    np.testing.assert_array_equal(got[name], np.asarray(stages[name]), err_msg=name)
  np.testing.assert_array_equal(robust, np.asarray(res.robust))
  np.testing.assert_array_equal(x_adv, np.asarray(res.x_adv))
  # Between 1 and n - 1 points left after APGD-CE: the later attacks ran on them only.
  left = int(got["apgd-ce"].sum())
  assert 0 < left < int(got["clean"].sum())
  assert stats["apgd-ce"]["points"] == int(got["clean"].sum())
  assert stats["square"]["points"] == int(got["fab-t"].sum())
  assert stats["square"]["slots"] <= -(-int(got["fab-t"].sum()) // 4) * 4
  # Re-packing between targets: each APGD-T run sees the points left by the previous.
  assert stats["apgd-t"]["points"] <= 3 * left


def test_nothing_left_to_attack_skips_the_attacks():
  f, x, y, _ = linear_problem(10, n=8, seed=1)
  calls = []
  runner = lambda name, *a: calls.append(name)
  _, robust, stages, stats = compact.autoattack_compact(
    runner,
    np.asarray(x),
    np.asarray(y),
    eps=0.1,
    keys=keys_for(8),
    clean_correct=np.zeros(8, bool),
    num_classes=10,
    batch_size=8,
  )
  assert calls == [] and not robust.any()
  assert all(s["points"] == 0 for s in stats.values())


@pytest.mark.slow
def test_pmap_runner_matches_the_local_runner():
  """Buckets split over the 8 fake devices give the local runner's results."""
  f, x, y, dist = linear_problem(10, n=24, seed=2)
  eps = float(np.quantile(dist, 0.7))
  keys = keys_for(len(y), seed=5)
  clean = np.ones(len(y), bool)
  kw = dict(
    eps=eps,
    keys=keys,
    clean_correct=clean,
    num_classes=10,
    options=TINY_AA,
    batch_size=16,
    attacks=("apgd-ce", "square"),
  )
  local = compact.autoattack_compact(
    compact.local_runner(f, TINY_AA), np.asarray(x), np.asarray(y), min_size=8, **kw
  )
  sharded = compact.autoattack_compact(
    compact.pmap_runner(f, TINY_AA), np.asarray(x), np.asarray(y), min_size=8, multiple=8, **kw
  )
  np.testing.assert_array_equal(local[1], sharded[1])
  np.testing.assert_array_equal(local[0], sharded[0])
