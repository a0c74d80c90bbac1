"""The evaluation's AutoAttack path: compaction on the run's devices, the
final check, the sanity warnings, the class-count refusal.
Also AutoAttack 'rand' on the evaluator's devices, and evaluation's
definition of a robust point (correct clean and attacked)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import attacks, data, evaluators, train
from caat_jax.evaluators import Evaluator, ensemble, named_attacks
from caat_jax.parallel import Parallel
from tests.helpers import TINY_AA, digits_config, linear_problem


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
  split = data.ArraySplit(
    images=np.asarray(x),
    labels=np.asarray(y, np.int32),
    clean_labels=np.asarray(y, np.int32),
    source_index=np.arange(n),
  )
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
  res = jax.jit(
    lambda x, y, k: attacks.run_attack(
      "apgd-t", f, x, y, eps=eps, keys=k, active=clean, **TINY_AA["apgd-t"]
    )
  )(x, y, keys)
  out, info = ev.run(
    variables, split, ["apgd-t"], eps=eps, step_size=eps / 4, batch_size=16, aa_options=TINY_AA
  )
  np.testing.assert_array_equal(out["apgd-t"], np.asarray(res.robust & clean))
  assert 0 < out["apgd-t"].sum() < out["natural"].sum()
  assert info["stats"]["apgd-t"]["apgd-t"]["points"] < 3 * int(
    clean.sum()
  )  # later targets saw fewer


@pytest.mark.slow
def test_compacted_autoattack_equals_the_uncompacted_ensemble():
  """Same keys as the per-batch path (fold_in of the test index), same flags
  after every attack, whatever the batch size; on pmap and shard_map."""
  ev, variables, split, f, x, y, dist = _setup()
  eps = float(np.quantile(dist, 0.6))
  keys = named_attacks.aa_keys(np.arange(len(y)))
  res, stages = jax.jit(
    lambda x, y, k: attacks.run_autoattack(f, x, y, eps=eps, keys=k, options=TINY_AA)
  )(x, y, keys)
  kw = dict(eps=eps, step_size=eps / 4, aa_options=TINY_AA)
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
  docs, out = ev.evaluate(
    variables,
    split,
    ["pgd5", "apgd-ce"],
    10,
    eps=eps,
    step_size=eps / 4,
    batch_size=16,
    aa_options=TINY_AA,
  )
  for d in docs:
    assert set(d["verification"]) == {"max_linf", "in_box", "finite", "flag_mismatch", "num_points"}
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
  docs, out = ev.evaluate(
    variables, split, ["apgd-ce"], 10, eps=eps, step_size=0.01, batch_size=16, aa_options=TINY_AA
  )
  v = docs[0]["verification"]
  assert v["max_linf"] > eps and v["flag_mismatch"] == int(out["natural"].sum()) > 0
  np.testing.assert_array_equal(out["apgd-ce"], out["natural"])  # the final check wins
  assert docs[0]["avg"]["boundary"] == 0.0
  text = " ".join(docs[0]["warnings"])
  assert "outside the L-inf ball" in text and "re-classified flag is used" in text


def test_softmax_outputs_are_warned_about_in_the_document():
  ev, variables, split, *_ = _setup(softmax=True)
  docs, _ = ev.evaluate(
    variables, split, ["square"], 10, eps=0.05, step_size=0.01, batch_size=16, aa_options=TINY_AA
  )
  assert any("probabilities" in w for w in docs[0]["warnings"])


def test_fewer_than_four_classes_refuses_before_any_attack_runs(monkeypatch):
  def never(*a, **k):
    raise AssertionError("an attack ran")

  monkeypatch.setattr(ensemble, "make_runner", never)
  monkeypatch.setattr(named_attacks, "eval_fn", never)
  ev, variables, split, *_ = _setup(num_classes=3)
  with pytest.raises(ValueError, match="3 classes: APGD-T"):
    ev.run(variables, split, ["autoattack"], eps=0.05, step_size=0.01, batch_size=16)
  with pytest.raises(ValueError, match="3 classes"):
    named_attacks.check_num_classes(["pgd20", "apgd-t"], 3)
  assert named_attacks.check_num_classes(["pgd20", "apgd-ce"], 3) == []


def test_a_bfloat16_run_is_evaluated_in_float32():
  """docs/method.md §9: attacks and re-classification run the model in float32, whatever
  compute dtype the run trained with."""
  run = train.Run(digits_config(method="natural", dtype="bfloat16"))
  assert run.model.dtype == jnp.bfloat16
  assert run.eval_model.dtype == jnp.float32 and run.evaluator.model is run.eval_model


def test_autoattack_rand_on_the_evaluators_devices():
  """autoattack-rand = APGD-CE then APGD-DLR on the still-robust points, with
  the fixed-batch attacks' flags on the same keys; its document has both
  stages and no randomised-model check (a deterministic model here)."""
  ev, variables, split, f, x, y, dist = _setup(n=16)
  eps = float(np.quantile(dist, 0.6))
  tiny = {"apgd-ce": {"num_iters": 6}, "apgd-dlr": {"num_iters": 6}}
  keys = named_attacks.aa_keys(np.arange(len(y)))
  res, stages = jax.jit(
    lambda x, y, k: attacks.run_autoattack(
      f,
      x,
      y,
      eps=eps,
      keys=k,
      attacks=attacks.RAND,
      options=named_attacks.ensemble_options("autoattack-rand", tiny),
    )
  )(x, y, keys)
  docs, out = ev.evaluate(
    variables,
    split,
    ["autoattack-rand"],
    10,
    eps=eps,
    step_size=eps / 4,
    batch_size=16,
    aa_options=tiny,
  )
  np.testing.assert_array_equal(out["autoattack-rand"], np.asarray(res.robust))
  np.testing.assert_array_equal(out["autoattack-rand/apgd-ce"], np.asarray(stages["apgd-ce"]))
  assert 0 < out["autoattack-rand"].sum() < out["natural"].sum()
  (d,) = docs
  assert list(d["stages"]) == ["apgd-ce", "apgd-dlr"]
  assert d["verification"]["flag_mismatch"] == 0 and d["warnings"] == []


class _Flagged(nn.Module):
  """Two classes on images [B, 1, 2, 1]: logit_1 = a (x1 - 0.5), logit_0 = 0,
  so the prediction is 1 iff x1 > 0.5. Pixel x0 is a flag, unused by the
  logits: where it is above 0.5 the input gradient of x1 is reversed (same
  value, gradient -a), so PGD, ascending CE by the gradient's sign, moves x1
  *toward* the true class: a misclassified point within eps of the boundary
  is classified correctly after the attack."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    a = self.param("a", nn.initializers.constant(10.0), ())
    x0, x1 = x[:, 0, 0, 0], x[:, 0, 1, 0]
    s = jnp.where(x0 > 0.5, -1.0, 1.0)
    z1 = s * a * x1 + jax.lax.stop_gradient((1.0 - s) * a * x1) - 0.5 * a
    return jnp.stack([jnp.zeros_like(z1), z1], axis=-1)


def test_robust_means_correct_clean_and_attacked():
  """PGD-5 with eps 0.1, step 0.05 moves x1 by exactly eps (the steps cover
  the ball from any start): away from the true class on plain points,
  toward it on flagged ones. Points misclassified clean but correct after the
  attack (C and F) must count as non-robust, as the paper's exists-delta
  definition says; FRL's attacked-only count would call them robust."""
  # (label, x1, flag): clean correct?, attacked correct?
  points = [
    (1, 0.70, 0.1),  # A: yes, yes (x1 -> 0.60)
    (1, 0.55, 0.1),  # B: yes, no  (-> 0.45)
    (1, 0.45, 0.9),  # C: no,  yes (-> 0.55, flagged)
    (1, 0.30, 0.1),  # G: no,  no  (-> 0.20)
    (0, 0.30, 0.1),  # D: yes, yes (-> 0.40)
    (0, 0.45, 0.1),  # E: yes, no  (-> 0.55)
    (0, 0.55, 0.9),
  ]  # F: no,  yes (-> 0.45, flagged)
  labels = np.array([p[0] for p in points], np.int32)
  images = np.array([[[[p[2]], [p[1]]]] for p in points], np.float32)
  model = _Flagged()
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(images))
  batch = {
    "image": jnp.asarray(images),
    "label": jnp.asarray(labels),
    "index": jnp.arange(len(points)),
  }
  out = evaluators.eval_fn(
    variables, batch, model=model, attack_names=("pgd5",), eps=0.1, step_size=0.05, unroll=True
  )
  clean_ok = np.array([True, True, False, False, True, True, False])
  attacked_ok = np.array([True, False, True, False, True, False, True])
  np.testing.assert_array_equal(out["natural"], clean_ok)
  np.testing.assert_array_equal(out["pgd5"], clean_ok & attacked_ok)
  outcomes = {k: np.asarray(v) for k, v in out.items()}
  outcomes["label"] = labels
  doc = evaluators.report(outcomes, 2, attack="pgd5", eps=0.1)
  # by hand, per class (%): class 0 = D, E, F; class 1 = A, B, C, G
  nat = [100 * 1 / 3, 100 * 2 / 4]  # F; C, G
  rob = [100 * 2 / 3, 100 * 3 / 4]  # E, F; B, C, G
  np.testing.assert_allclose(doc["per_class"]["natural"], nat, atol=1e-3)
  np.testing.assert_allclose(doc["per_class"]["robust"], rob, atol=1e-3)
  np.testing.assert_allclose(doc["per_class"]["boundary"], np.subtract(rob, nat), atol=1e-3)
  np.testing.assert_allclose(doc["avg"]["robust"], np.mean(rob), atol=1e-3)
  np.testing.assert_allclose(doc["worst"]["robust"], 75.0, atol=1e-3)
  np.testing.assert_allclose(doc["worst"]["boundary"], 100 / 3, atol=1e-3)
  # FRL's attacked-only count would give robust errors [1/3, 2/4] and zero
  # boundary errors: C and F are what tells the definitions apart
  assert (~attacked_ok & (labels == 1)).sum() / 4 * 100 < rob[1]
