"""APGD step by step against a NumPy transcription of the reference.

``_reference_run`` transcribes fra31/auto-attack ``autopgd_base.py``
``APGDAttack.attack_single_run`` (L-inf, CE loss) line by line in float64:
the start from injected noise, momentum 0.75 (1 at the first step), the
step-size check with both halving conditions (oscillation, and no
reduction last time with no improvement since), the restart from the best
point with its gradient. The JAX version runs in float64 too (x64 enabled
for the test), so both follow the same trajectory to rounding and every
iterate, step size and best loss is compared.

The model is a tanh MLP with 10 classes and a large eps, so the gradient's
sign changes between iterations and the box [0, 1] binds; the test asserts
that these happen and that both halving conditions fire.


Also: APGD-CE / APGD-T reach the exact robust accuracy of linear classifiers,
the step-size checkpoints, and EOT (the gradient averaged over draws of a
randomised model, AutoAttack's version 'rand')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import attacks
from caat_jax.attacks import apgd, apgd_attacks
from tests.helpers import eps_and_subset, keys_for, linear_problem

B, D, H, C = 48, 16, 12, 10


def _model(seed):
  rng = np.random.default_rng(seed)
  return dict(
    w1=rng.normal(size=(D, H)) * 1.5,
    b1=rng.normal(size=H) * 0.5,
    w2=rng.normal(size=(H, C)) * 2.0,
    b2=rng.normal(size=C) * 0.5,
  )


def _np_loss_grad(p, x, y):
  """CE loss [B], logits [B, C] and input gradient [B, D] of the MLP."""
  h = np.tanh(x @ p["w1"] + p["b1"])
  z = h @ p["w2"] + p["b2"]
  m = z.max(-1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
  loss = lse - z[np.arange(len(y)), y]
  soft = np.exp(z - lse[:, None])
  soft[np.arange(len(y)), y] -= 1.0
  grad = ((soft @ p["w2"].T) * (1.0 - h**2)) @ p["w1"].T
  return loss, z, grad


def _reference_run(p, x, y, eps, t, n_iter=100, thr_decr=0.75):
  """attack_single_run, L-inf, loss 'ce', eot_iter 1, x_init from noise t."""
  n_iter_2, n_iter_min, size_decr = (
    max(int(0.22 * n_iter), 1),
    max(int(0.06 * n_iter), 1),
    max(int(0.03 * n_iter), 1),
  )
  normalize = lambda v: v / (np.abs(v).max(-1, keepdims=True) + 1e-12)
  x_adv = np.clip(x + eps * normalize(t), 0.0, 1.0)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros((n_iter, len(y)))
  loss_indiv, logits, grad = _np_loss_grad(p, x_adv, y)
  grad_best = grad.copy()
  acc = logits.argmax(1) == y
  loss_best = loss_indiv.copy()
  step_size = 2.0 * eps * np.ones((len(y), 1))
  x_adv_old = x_adv.copy()
  k = n_iter_2
  counter3 = 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones(len(y))
  rec = dict(x_adv=[], step=[], loss=[], loss_best=[], reduce=[], osc=[], stall=[], sign=[])
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    x_adv_1 = x_adv + step_size * np.sign(grad)
    x_adv_1 = np.clip(np.minimum(np.maximum(x_adv_1, x - eps), x + eps), 0.0, 1.0)
    x_adv_1 = np.clip(
      np.minimum(np.maximum(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps),
      0.0,
      1.0,
    )
    x_adv = x_adv_1 + 0.0
    loss_indiv, logits, grad = _np_loss_grad(p, x_adv, y)
    rec["sign"].append(np.sign(grad))
    pred = logits.argmax(1) == y
    acc = np.minimum(acc, pred)
    x_best_adv[~pred] = x_adv[~pred]
    y1 = loss_indiv.copy()
    loss_steps[i] = y1
    ind = y1 > loss_best
    x_best[ind] = x_adv[ind]
    grad_best[ind] = grad[ind]
    loss_best[ind] = y1[ind]
    counter3 += 1
    osc = stall = fl = np.zeros(len(y), bool)
    if counter3 == k:
      tcount = np.zeros(len(y))
      for counter5 in range(k):  # negative indices wrap, as torch's do
        tcount += loss_steps[i - counter5] > loss_steps[i - counter5 - 1]
      osc = tcount <= k * thr_decr
      stall = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best) > 0
      fl = osc | stall
      reduced_last_check = fl.astype(float)
      loss_best_last_check = loss_best.copy()
      step_size[fl] /= 2.0
      x_adv[fl] = x_best[fl]
      grad[fl] = grad_best[fl]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
    for name, v in (
      ("x_adv", x_adv),
      ("step", step_size[:, 0]),
      ("loss", y1),
      ("loss_best", loss_best),
      ("reduce", fl),
      ("osc", osc),
      ("stall", stall),
    ):
      rec[name].append(np.array(v, copy=True))
  out = {k: np.stack(v) for k, v in rec.items()}
  return out, acc, x_best_adv


@pytest.mark.parametrize("seed", [3])  # a seed where both halving rules fire
def test_apgd_matches_the_reference_step_by_step(seed):
  p = _model(seed)
  rng = np.random.default_rng(100 + seed)
  x = rng.uniform(0.0, 1.0, (B, D))
  x[:, :4] = rng.choice([0.0, 0.02, 0.98, 1.0], (B, 4))  # near the box faces
  y = rng.integers(0, C, B)
  t = rng.uniform(-1.0, 1.0, (B, D))
  eps = 0.25
  ref, acc, x_best_adv = _reference_run(p, x, y, eps, t)

  with jax.enable_x64(True):
    pj = {k: jnp.asarray(v) for k, v in p.items()}
    f = lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ pj["w1"] + pj["b1"]) @ pj["w2"] + pj["b2"]
    img = lambda v: jnp.asarray(v.reshape(B, 4, 4, 1))
    keys = jax.random.split(jax.random.PRNGKey(0), B)
    got = jax.jit(lambda x, y, t: apgd.apgd_trajectory(f, x, y, eps=eps, keys=keys, noise=t))(
      img(x), jnp.asarray(y), img(t)
    )
    res, best = apgd.apgd_run(f, img(x), jnp.asarray(y), eps=eps, keys=keys, noise=img(t))
    got = jax.tree.map(np.asarray, got)
    assert got["x_adv"].dtype == np.float64

  np.testing.assert_allclose(
    got["x_start"].reshape(B, D),
    np.clip(x + eps * t / np.abs(t).max(-1, keepdims=True), 0, 1),
    atol=1e-12,
  )
  np.testing.assert_array_equal(got["reduce"], ref["reduce"])
  np.testing.assert_allclose(got["step"], ref["step"], rtol=1e-12)
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got["loss_best"], ref["loss_best"], rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got["x_adv"].reshape(100, B, D), ref["x_adv"], atol=1e-10)
  np.testing.assert_array_equal(np.asarray(res.robust), acc)
  np.testing.assert_allclose(np.asarray(res.x_adv).reshape(B, D), x_best_adv, atol=1e-10)
  np.testing.assert_allclose(np.asarray(best), ref["loss_best"][-1], rtol=1e-9)

  # The test exercises what it claims to.
  flips = np.mean(ref["sign"][1:] != ref["sign"][:-1])
  assert flips > 0.05, flips  # the gradient's sign changes between iterations
  assert ref["osc"].any() and ref["stall"].any() and (ref["stall"] & ~ref["osc"]).any()
  assert ((ref["x_adv"] == 0.0) | (ref["x_adv"] == 1.0)).mean() > 0.05  # the box binds
  assert (ref["x_adv"] == np.clip(x - eps, 0, 1)).any() and (
    ref["x_adv"] == np.clip(x + eps, 0, 1)
  ).any()
  # Reset to the best point at a halving: that iterate equals the best so far.
  i, b = np.argwhere(ref["reduce"])[0]
  assert ref["loss_best"][i, b] >= ref["loss"][: i + 1, b].max()


def test_step_size_checkpoints_match_the_reference():
  after, window = apgd.checkpoints(100)
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  assert after == [22, 41, 57, 70, 80, 87, 93, 99]
  assert window == [22, 19, 16, 13, 10, 7, 6, 6]
  # The reference's counter logic, independently: counter3 counts up to k.
  for n in (10, 37, 100, 250):
    k, k_min, decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    expect, counter = [], 0
    for i in range(n):
      counter += 1
      if counter == k:
        expect.append(i + 1)
        k, counter = max(k - decr, k_min), 0
    assert apgd.checkpoints(n)[0] == expect, n


@pytest.mark.parametrize("num_classes,disjoint", [(2, False), (10, True)])
def test_apgd_ce_reaches_the_exact_robust_accuracy(num_classes, disjoint):
  f, x, y, dist = linear_problem(num_classes, disjoint=disjoint)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  res = jax.jit(lambda x, y, k: apgd_attacks.apgd_ce(f, x, y, eps=eps, keys=k))(
    x, y, keys_for(len(y))
  )
  np.testing.assert_array_equal(np.asarray(res.robust), dist > eps)
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)
  broken = ~np.asarray(res.robust)
  assert np.all(np.argmax(np.asarray(f(res.x_adv)), -1)[broken] != np.asarray(y)[broken])


@pytest.mark.parametrize("num_classes,disjoint", [(2, False), (10, False)])
def test_apgd_t_reaches_the_exact_robust_accuracy(num_classes, disjoint):
  f, x, y, dist = linear_problem(num_classes, disjoint=disjoint, seed=1)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  res = jax.jit(lambda x, y, k: apgd_attacks.apgd_targeted(f, x, y, eps=eps, keys=k))(
    x, y, keys_for(len(y))
  )
  np.testing.assert_array_equal(np.asarray(res.robust), dist > eps)
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)


def test_apgd_is_per_sample_and_deterministic():
  f, x, y, dist = linear_problem(10, n=32, seed=2)
  eps = float(np.quantile(dist, 0.5))
  keys = keys_for(32, seed=3)
  run = jax.jit(lambda x, y, k: apgd_attacks.apgd_ce(f, x, y, eps=eps, keys=k, num_iters=20))
  full, again, half = run(x, y, keys), run(x, y, keys), run(x[:16], y[:16], keys[:16])
  np.testing.assert_array_equal(full.x_adv, again.x_adv)
  np.testing.assert_array_equal(full.x_adv[:16], half.x_adv)
  np.testing.assert_array_equal(full.robust[:16], half.robust)


# --- EOT ---------------------------------------------------------------------


EOT_CLASSES = 5  # the randomised model's classes (C above is the reference model's)


def _noisy_tanh_model(seed=0):
  """A randomised 2-layer tanh classifier on 8x8x1 inputs: the hidden units
  are multiplied by a fresh Bernoulli(0.7) mask per draw (dropout at test
  time), so gradients differ from draw to draw."""
  rng = np.random.default_rng(seed)
  w1 = jnp.asarray(rng.normal(size=(64, 16)) / 4, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(16, EOT_CLASSES)), jnp.float32)

  def fn(x, key):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1)
    mask = jax.random.bernoulli(key, 0.7, h.shape).astype(h.dtype)
    return (h * mask) @ w2

  return fn


def _inputs(n=4, seed=1):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(0.2, 0.8, size=(n, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, EOT_CLASSES, size=n), jnp.int32)
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n) + 100)
  return x, y, keys


def _ce(logits, y):
  return -jax.nn.log_softmax(logits)[y]


def test_eot_gradient_is_the_mean_over_draws_and_logits_the_last_draw():
  fn = _noisy_tanh_model()
  x, y, keys = _inputs()
  eot = 7
  value, logits, grad = apgd._loss_and_grad(apgd.Randomised(fn), "ce", eot)(x, y, y, keys)
  for b in range(len(y)):  # a slow loop over points and draws, one draw at a time
    draw_keys = [jax.random.fold_in(keys[b], j) for j in range(eot)]
    per_draw = [jax.grad(lambda xi, k=k: _ce(fn(xi[None], k)[0], y[b]))(x[b]) for k in draw_keys]
    np.testing.assert_allclose(grad[b], np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-6)
    last = fn(x[b][None], draw_keys[-1])[0]
    np.testing.assert_allclose(logits[b], last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value[b], _ce(last, y[b]), rtol=1e-5, atol=1e-6)
  # the draws really differ: one draw's gradient is not the mean
  one = apgd._loss_and_grad(apgd.Randomised(fn), "ce", 1)(x, y, y, keys)[2]
  assert float(jnp.max(jnp.abs(one - grad))) > 1e-3


def test_apgd_first_step_follows_the_eot_gradient_of_its_iteration_keys():
  """The start point's gradient is averaged over the draws keyed by the
  start (fold_in(key, tag + num_iters), then the draw); the first iterate is
  the projected sign step of 2 eps along it."""
  fn = _noisy_tanh_model(seed=3)
  x, y, keys = _inputs(seed=4)
  eps, iters, eot = 0.05, 4, 5
  noise = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, x.shape), jnp.float32)
  traj = apgd.apgd_trajectory(
    apgd.Randomised(fn), x, y, eps=eps, keys=keys, num_iters=iters, noise=noise, eot_iter=eot
  )
  x0 = np.asarray(traj["x_start"])
  for b in range(len(y)):
    k = jax.random.fold_in(keys[b], apgd._EOT_TAG + iters)
    g = np.mean(
      [
        jax.grad(lambda xi, j=j: _ce(fn(xi[None], jax.random.fold_in(k, j))[0], y[b]))(x0[b])
        for j in range(eot)
      ],
      axis=0,
    )
    want = np.clip(np.clip(x0[b] + 2 * eps * np.sign(g), x[b] - eps, x[b] + eps), 0, 1)
    np.testing.assert_allclose(traj["x_adv"][0, b], want, atol=1e-6)


def test_eot_on_a_deterministic_model_changes_nothing():
  f, x, y, dist = linear_problem(10, n=24, seed=2)
  eps = float(np.quantile(dist, 0.5))
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(len(y)))
  run = lambda e: attacks.apgd_ce(f, x, y, eps=eps, keys=keys, num_iters=10, eot_iter=e)
  a, b = run(1), run(20)
  np.testing.assert_array_equal(a.robust, b.robust)
  np.testing.assert_array_equal(a.x_adv, b.x_adv)
  assert 0 < int(a.robust.sum()) < len(y)
  with pytest.raises(ValueError, match="eot_iter=0; valid"):
    apgd._loss_and_grad(f, "ce", 0)
