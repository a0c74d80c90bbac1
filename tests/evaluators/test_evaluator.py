"""The evaluation's AutoAttack path: compaction on the run's devices, the
final check, the sanity warnings, the class-count refusal."""

import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp

from caat_jax import attacks, data
from caat_jax.evaluators import Evaluator, ensemble
from caat_jax.evaluators import named_attacks
from caat_jax.parallel import Parallel
from tests.test_aa_compact import TINY
from tests.test_autoattack import linear_problem


class Linear(nn.Module):
  """``z = x W + b`` on flattened inputs; ``softmax`` returns probabilities."""
  num_classes: int = 10
  softmax: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    z = nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
    return jax.nn.softmax(z) if self.softmax else z


def _setup(num_classes=10, n=16, seed=6, softmax=False, backend="pmap"):
  """An evaluator over the 8 fake devices on ``linear_problem``'s classifier."""
  f, x, y, dist = linear_problem(num_classes, n=n, seed=seed)
  b = f(jnp.zeros((1, 8, 8, 1)))[0]
  w = f(jnp.eye(64).reshape(64, 8, 8, 1)) - b  # [64, C]
  variables = {"params": {"Dense_0": {"kernel": w, "bias": b}}}
  split = data.ArraySplit(images=np.asarray(x), labels=np.asarray(y, np.int32),
                          clean_labels=np.asarray(y, np.int32), source_index=np.arange(n))
  parallel = Parallel(backend)
  ev = Evaluator(parallel, Linear(num_classes, softmax), unroll=False)
  return ev, parallel.replicate(variables), split, f, x, y, dist


def test_compacted_apgd_t_equals_the_uncompacted_attack():
  """The default-suite version: APGD-T alone, re-packed between its targets
  over the 8 devices, gives the fixed-batch attack's flags on the same keys."""
  ev, variables, split, f, x, y, dist = _setup(n=12)
  eps = float(np.quantile(dist, 0.6))
  keys = attacks.autoattack.stage_keys(named_attacks.aa_keys(np.arange(len(y))), 0)
  clean = jnp.argmax(f(x), -1) == y
  res = jax.jit(lambda x, y, k: attacks.run_attack(
      "apgd-t", f, x, y, eps=eps, keys=k, active=clean, **TINY["apgd-t"]))(x, y, keys)
  out, info = ev.run(variables, split, ["apgd-t"], eps=eps, step_size=eps / 4, batch_size=16,
                     aa_options=TINY)
  np.testing.assert_array_equal(out["apgd-t"], np.asarray(res.robust & clean))
  assert 0 < out["apgd-t"].sum() < out["natural"].sum()
  assert info["stats"]["apgd-t"]["apgd-t"]["points"] < 3 * int(clean.sum())  # later targets saw fewer


@pytest.mark.slow
def test_compacted_autoattack_equals_the_uncompacted_ensemble():
  """Same keys as the per-batch path (fold_in of the test index), same flags
  after every attack, whatever the batch size; on pmap and shard_map."""
  ev, variables, split, f, x, y, dist = _setup()
  eps = float(np.quantile(dist, 0.6))
  keys = named_attacks.aa_keys(np.arange(len(y)))
  res, stages = jax.jit(lambda x, y, k: attacks.run_autoattack(
      f, x, y, eps=eps, keys=k, options=TINY))(x, y, keys)
  kw = dict(eps=eps, step_size=eps / 4, aa_options=TINY)
  out, info = ev.run(variables, split, ["autoattack"], batch_size=16, **kw)
  np.testing.assert_array_equal(out["autoattack"], np.asarray(res.robust))
  for name in attacks.STANDARD:
    np.testing.assert_array_equal(out[f"autoattack/{name}"], np.asarray(stages[name]), name)
  assert 0 < out["autoattack"].sum() < out["natural"].sum()  # some break, some survive
  assert info["verification"]["autoattack"]["flag_mismatch"] == 0
  assert info["verification"]["autoattack"]["max_linf"] <= eps + 1e-6
  # later attacks saw only the points still robust
  st = info["stats"]["autoattack"]
  assert st["square"]["points"] == int(stages["fab-t"].sum()) < len(y)
  small = ev.run(variables, split, ["autoattack"], batch_size=8, **kw)[0]
  np.testing.assert_array_equal(small["autoattack"], out["autoattack"])
  ev_sm, variables_sm = _setup(backend="shard_map")[:2]
  sm = ev_sm.run(variables_sm, split, ["autoattack"], batch_size=16, **kw)[0]
  np.testing.assert_array_equal(sm["autoattack"], out["autoattack"])


def test_documents_carry_the_final_check_for_every_attack():
  ev, variables, split, f, x, y, dist = _setup()
  eps = float(np.quantile(dist, 0.5))
  docs, out = ev.evaluate(variables, split, ["pgd5", "apgd-ce"], 10, eps=eps,
                          step_size=eps / 4, batch_size=16, aa_options=TINY)
  for d in docs:
    assert set(d["verification"]) == {"max_linf", "in_box", "finite", "flag_mismatch",
                                      "num_points"}
    assert d["verification"]["num_points"] == len(y)
    assert d["verification"]["flag_mismatch"] == 0 and d["warnings"] == []
    assert d["verification"]["max_linf"] <= eps + 1e-6
    assert d["compute_dtype"] == "float32"
  assert "stages" in docs[1] and "compaction" in docs[1]
  assert out["apgd-ce"].sum() < out["natural"].sum()


def test_a_broken_attack_is_caught_and_overruled(monkeypatch):
  """An attack that claims every point broken with examples outside the
  ball: the re-classification keeps the clean-correct points robust."""
  def broken(variables, batch, runs, *, model, name, options):
    del variables, runs, model, name, options
    x_adv = jnp.clip(batch["x"] + 3.0 * batch["eps"][:, None, None, None], 0.0, 1.0)
    return x_adv, jnp.zeros_like(batch["active"])
  monkeypatch.setattr(ensemble, "_per_device_attack", broken)
  ev, variables, split, f, x, y, dist = _setup()
  eps = 0.05
  docs, out = ev.evaluate(variables, split, ["apgd-ce"], 10, eps=eps, step_size=0.01,
                          batch_size=16, aa_options=TINY)
  v = docs[0]["verification"]
  assert v["max_linf"] > eps and v["flag_mismatch"] == int(out["natural"].sum()) > 0
  np.testing.assert_array_equal(out["apgd-ce"], out["natural"])  # the final check wins
  assert docs[0]["avg"]["boundary"] == 0.0
  text = " ".join(docs[0]["warnings"])
  assert "outside the L-inf ball" in text and "re-classified flag is used" in text


def test_softmax_outputs_are_warned_about_in_the_document():
  ev, variables, split, *_ = _setup(softmax=True)
  docs, _ = ev.evaluate(variables, split, ["square"], 10, eps=0.05, step_size=0.01,
                        batch_size=16, aa_options=TINY)
  assert any("probabilities" in w for w in docs[0]["warnings"])


def test_fewer_than_four_classes_refuses_before_any_attack_runs(monkeypatch):
  def never(*a, **k):
    raise AssertionError("an attack ran")
  monkeypatch.setattr(ensemble, "make_runner", never)
  monkeypatch.setattr(eval_attacks, "eval_fn", never)
  ev, variables, split, *_ = _setup(num_classes=3)
  with pytest.raises(ValueError, match="3 classes: APGD-T"):
    ev.run(variables, split, ["autoattack"], eps=0.05, step_size=0.01, batch_size=16)
  with pytest.raises(ValueError, match="3 classes"):
    named_attacks.check_num_classes(["pgd20", "apgd-t"], 3)
  assert named_attacks.check_num_classes(["pgd20", "apgd-ce"], 3) == []


def test_names_and_their_one_line_error():
  named_attacks.check_names(["pgd20", "autoattack", "apgd-ce", "apgd-t", "fab-t", "square"])
  for bad in (["apgd"], [], ["pgd0"]):
    with pytest.raises(ValueError) as e:
      named_attacks.check_names(bad, "--attacks")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--attacks")
    for name in ("pgd<k>", "autoattack", "apgd-ce", "apgd-t", "fab-t", "square"):
      assert name in msg


def test_a_bfloat16_run_is_evaluated_in_float32():
  """SPEC 9: attacks and re-classification run the model in float32, whatever
  compute dtype the run trained with."""
  from caat_jax import train  # pylint: disable=g-import-not-at-top
  from tests.helpers import digits_config  # pylint: disable=g-import-not-at-top
  run = train.Run(digits_config(method="natural", dtype="bfloat16"))
  assert run.model.dtype == jnp.bfloat16
  assert run.eval_model.dtype == jnp.float32 and run.evaluator.model is run.eval_model
