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
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from caat_jax.attacks import apgd

B, D, H, C = 48, 16, 12, 10


def _model(seed):
  rng = np.random.default_rng(seed)
  return dict(w1=rng.normal(size=(D, H)) * 1.5, b1=rng.normal(size=H) * 0.5,
              w2=rng.normal(size=(H, C)) * 2.0, b2=rng.normal(size=C) * 0.5)


def _np_loss_grad(p, x, y):
  """CE loss [B], logits [B, C] and input gradient [B, D] of the MLP."""
  h = np.tanh(x @ p["w1"] + p["b1"])
  z = h @ p["w2"] + p["b2"]
  m = z.max(-1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
  loss = lse - z[np.arange(len(y)), y]
  soft = np.exp(z - lse[:, None])
  soft[np.arange(len(y)), y] -= 1.0
  grad = ((soft @ p["w2"].T) * (1.0 - h ** 2)) @ p["w1"].T
  return loss, z, grad


def _reference_run(p, x, y, eps, t, n_iter=100, thr_decr=0.75):
  """attack_single_run, L-inf, loss 'ce', eot_iter 1, x_init from noise t."""
  n_iter_2, n_iter_min, size_decr = (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1),
                                     max(int(0.03 * n_iter), 1))
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
    x_adv_1 = np.clip(np.minimum(np.maximum(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a),
                                            x - eps), x + eps), 0.0, 1.0)
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
    for name, v in (("x_adv", x_adv), ("step", step_size[:, 0]), ("loss", y1),
                    ("loss_best", loss_best), ("reduce", fl), ("osc", osc), ("stall", stall)):
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
        img(x), jnp.asarray(y), img(t))
    res, best = apgd.apgd_run(f, img(x), jnp.asarray(y), eps=eps, keys=keys, noise=img(t))
    got = jax.tree.map(np.asarray, got)
    assert got["x_adv"].dtype == np.float64

  np.testing.assert_allclose(got["x_start"].reshape(B, D), np.clip(x + eps * t / np.abs(t).max(
      -1, keepdims=True), 0, 1), atol=1e-12)
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
  assert (ref["x_adv"] == np.clip(x - eps, 0, 1)).any() and (ref["x_adv"] == np.clip(x + eps, 0, 1)).any()
  # Reset to the best point at a halving: that iterate equals the best so far.
  i, b = np.argwhere(ref["reduce"])[0]
  assert ref["loss_best"][i, b] >= ref["loss"][: i + 1, b].max()
