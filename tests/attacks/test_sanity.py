"""The final check (verify.py) and the reference's sanity warnings (sanity.py).

Each warning is triggered by a model built to trigger it and stays silent
on one that is not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax.attacks import sanity, verify

C = 10


def _linear(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=(16, C)), jnp.float32)
  b = jnp.asarray(rng.normal(size=C), jnp.float32)
  return lambda x: scale * (x.reshape(x.shape[0], -1) @ w + b)


def _data(f, n=12, seed=1):
  x = jnp.asarray(np.random.default_rng(seed).uniform(0.3, 0.7, (n, 4, 4, 1)), jnp.float32)
  return x, jnp.argmax(f(x), -1)  # every point correct clean


def _honest_attack(f, x, y):
  """The exact attack towards the runner-up on a linear model: ``x - eps
  sign(w_y - w_t)``, kept where it misclassifies, with eps the median of the
  distances so that about half the points break. Returns (eps, x_adv, robust)."""
  n = len(y)
  w = jax.jacobian(lambda v: f(v[None])[0])(x[0]).reshape(C, -1)  # the same for every x
  z = f(x)
  t = jnp.argsort(z, -1)[:, -2]
  dw = w[y] - w[t]
  dist = (z[jnp.arange(n), y] - z[jnp.arange(n), t]) / jnp.sum(jnp.abs(dw), -1)
  eps = float(jnp.median(dist))
  cand = jnp.clip(x - eps * jnp.sign(dw).reshape(x.shape), 0.0, 1.0)
  broken = jnp.argmax(f(cand), -1) != y
  return eps, jnp.where(broken[:, None, None, None], cand, x), ~broken


def test_an_honest_attack_passes_the_check():
  f = _linear()
  x, y = _data(f)
  eps, x_adv, robust = _honest_attack(f, x, y)
  assert 0 < int(jnp.sum(~robust)) < len(y)  # some broken, some not
  checked, summary = verify.verify(f, x, y, x_adv, eps, robust)
  np.testing.assert_array_equal(checked, robust)
  assert summary == dict(summary, in_box=True, finite=True, flag_mismatch=0, num_points=len(y))
  assert summary["max_linf"] <= eps + 1e-6
  assert verify.problems(summary, eps) == []
  verify.assert_valid(summary, eps)


def test_the_check_catches_a_wrong_attack():
  """A point outside the ball, one outside the box, a NaN, and a
  non-adversarial point flagged as broken."""
  f = _linear()
  x, y = _data(f)
  eps, x_adv, robust = _honest_attack(f, x, y)
  broken = np.flatnonzero(~np.asarray(robust))
  kept = np.flatnonzero(np.asarray(robust))
  # 1: a broken point's example pushed out of the ball (still misclassified:
  # a larger step along the same direction).
  far = x[broken[0]] + 3.0 * (x_adv[broken[0]] - x[broken[0]])
  bad = x_adv.at[broken[0]].set(far)
  _, s = verify.verify(f, x, y, bad, eps, robust)
  assert s["max_linf"] > eps + 1e-6 and s["flag_mismatch"] == 1  # the claim does not count
  with pytest.raises(verify.VerificationError, match="outside the L-inf ball"):
    verify.assert_valid(s, eps)
  # 2: a robust point flagged as broken (its "example" is the clean input).
  lie = robust.at[kept[0]].set(False)
  checked, s = verify.verify(f, x, y, x_adv, eps, lie)
  assert s["flag_mismatch"] == 1 and bool(checked[kept[0]])
  assert any("disagrees" in p for p in verify.problems(s, eps))
  # 3: out of [0, 1] and non-finite.
  _, s = verify.verify(f, x, y, x_adv.at[kept[1], 0, 0, 0].set(-1e-3), 1.0, robust)
  assert not s["in_box"] and s["finite"]
  _, s = verify.verify(f, x, y, x_adv.at[kept[1], 0, 0, 0].set(jnp.nan), eps, robust)
  assert not s["finite"] and any("not finite" in p for p in verify.problems(s, eps))


def test_partial_summaries_merge_across_batches_and_ignore_padding():
  f = _linear()
  x, y = _data(f)
  eps, x_adv, robust = _honest_attack(f, x, y)
  x_adv = x_adv.at[3].set(jnp.clip(x[3] + 0.2, 0, 1))  # out of the ball
  robust = robust.at[3].set(False)
  _, whole = verify.verify(f, x, y, x_adv, eps, robust)
  fn = jax.jit(lambda *a: verify.verify_batch(f, *a))
  # Two batches of 8, the second padded with 4 copies (valid = False).
  parts = []
  for lo in (0, 8):
    sl = slice(lo, lo + 8)
    pad = lambda v: jnp.concatenate([v[sl], v[: 8 - len(v[sl])]])
    valid = jnp.arange(8) < len(y[sl])
    parts.append(fn(pad(x), pad(y), pad(x_adv), eps, pad(robust), valid)[1])
  assert verify.merge_summaries(parts) == whole
  # Per-device partials (a leading device axis) merge the same way.
  stacked = jax.tree.map(lambda *v: jnp.stack(v), *parts)
  assert verify.merge_summaries([stacked]) == whole


def test_check_randomized():
  f = _linear()
  x, y = _data(f)
  assert sanity.check_randomized(f, x, y) == []
  calls = iter(range(100))
  noisy = lambda v: f(v) + 0.1 * jax.random.normal(jax.random.PRNGKey(next(calls)), (len(v), C))
  assert "randomised" in sanity.check_randomized(noisy, x, y)[0]


def test_check_output_range():
  f = _linear()
  x, _ = _data(f)
  assert sanity.check_output_range(f(x)) == []
  assert "probabilities" in sanity.check_output_range(jax.nn.softmax(f(x)))[0]
  assert "bfloat16" in sanity.check_output_range(f(x).astype(jnp.bfloat16))[0]
  assert sanity.float32_logits(lambda v: f(v).astype(jnp.bfloat16))(x).dtype == jnp.float32


def test_check_zero_gradients():
  f = _linear()
  x, y = _data(f)
  assert int(sanity.zero_gradient_count(f, x, y)) == 0
  assert sanity.check_zero_gradients(0, len(y)) == []
  # Gradient masking on half the points: their input is cut from the graph.
  masked = lambda v: f(jnp.where(v[:, :1, :1, :1] > 0.5, jax.lax.stop_gradient(v), v))
  n = int(sanity.zero_gradient_count(masked, x, y))
  assert n == int(jnp.sum(x[:, 0, 0, 0] > 0.5)) > 0
  assert f"{n} of {len(y)} points" in sanity.check_zero_gradients(n, len(y))[0]


def test_check_square_sr():
  ok = {"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.449}
  assert sanity.check_square_sr(ok) == []
  bad = dict(ok, square=0.40)
  assert "Square Attack lowered the robust accuracy by 5.00%" in sanity.check_square_sr(bad)[0]
  assert sanity.check_square_sr({"clean": 0.9, "square": 0.1}) == []  # nothing to compare


def test_check_num_classes_refuses_dlr_with_too_few_classes():
  assert sanity.check_num_classes(10, ("apgd-ce", "apgd-t", "fab-t", "square")) == []
  with pytest.raises(ValueError, match="has 3 classes.*at least 4"):
    sanity.check_num_classes(3, ("apgd-ce", "apgd-t"))
  with pytest.raises(ValueError, match="has 2 classes.*at least 3"):
    sanity.check_num_classes(2, ("apgd-dlr",))
  assert sanity.check_num_classes(3, ("apgd-dlr", "fab-t"), fab_targets=2) == []
  assert "only 4 exist" in sanity.check_num_classes(5, ("fab-t",))[0]
  # The ensemble refuses before running anything.
  f3 = lambda v: v.reshape(v.shape[0], -1)[:, :3]
  from caat_jax.attacks import autoattack  # pylint: disable=g-import-not-at-top

  x = jnp.full((2, 4, 4, 1), 0.5)
  with pytest.raises(ValueError, match="3 classes"):
    autoattack.autoattack(
      f3, x, jnp.zeros(2, jnp.int32), eps=0.1, keys=jax.random.split(jax.random.PRNGKey(0), 2)
    )


def test_check_clean_accuracy():
  assert sanity.check_clean_accuracy(None, 0.8) == []
  assert sanity.check_clean_accuracy(0.8, 0.8) == []
  assert "dropped from 80.00% to 70.00%" in sanity.check_clean_accuracy(0.8, 0.7)[0]


def test_preflight_on_a_good_and_a_bad_model():
  f = _linear()
  x, y = _data(f)
  assert sanity.preflight(f, x, y, ("apgd-ce", "apgd-t", "fab-t", "square")) == []
  probs = lambda v: jax.nn.softmax(f(v))
  found = sanity.preflight(probs, x, y, ("apgd-ce", "apgd-t"))
  assert any("probabilities" in w for w in found)
