"""FAB-T, targeted Fast Adaptive Boundary attack, L-inf (Croce & Hein, ICML 2020,
"Minimally distorted adversarial examples with a fast adaptive boundary attack").

FAB looks for the smallest perturbation that changes the decision. At each
iteration it linearises the target's logit difference
``f(x') = z_t(x') - z_y(x')`` at the current point ``x1`` and projects both
``x1`` and the original ``x0`` onto the hyperplane ``f = 0`` intersected
with the box [0, 1]^d (the L-inf-closest points, :func:`project_linf`),
giving steps ``d1`` and ``d2``. The next point is the convex combination

  ``x1 <- clip((x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha, 0, 1)``,
  ``alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)``,

with overshoot ``eta = 1.05``, ``alpha_max = 0.1``. When ``x1`` is
misclassified it is recorded if it is the closest so far, and pulled back
towards ``x0``: ``x1 <- x0 + beta (x1 - x0)``, ``beta = 0.9``.

AutoAttack's "standard" FAB-T (fra31/auto-attack ``fab_base.py``,
``fab_pt.py``): 9 target classes (2nd, 3rd, ... largest clean logit), 100
iterations and one run per target, from ``x0`` itself (the random start is
used only for restarts after the first). A point counts as broken only if
the perturbation found is at most ``eps``; later targets run on the points
not yet broken.

For a linear classifier the linearisation is exact, so FAB-T converges to
the minimal L-inf perturbation in closed form (tests check this).
"""

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.attacks.apgd_attacks import target_classes
from caat_jax.attacks.common import (
  AttackResult,
  LogitsFn,
  bcast,
  fold,
  initial,
  linf_norm,
  run_range,
)


def project_linf(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """L-inf-smallest step onto a hyperplane within the unit box.

  Solves ``min ||d||_inf`` s.t. ``w . (t + d) = b`` and ``t + d`` in [0, 1]^d,
  row by row. Where the box does not reach the hyperplane, returns the step
  to the box corner that comes closest to it (as the reference does).

  With ``c = |w.t - b|``, moving each coordinate by at most ``lam`` towards the
  hyperplane changes ``w.(t + d)`` by at most ``g(lam) = sum_i |w_i|
  min(lam, p_i)``, ``p_i`` the room left in the box in that direction. ``g`` is
  piecewise linear and nondecreasing with kinks at the sorted ``p_i``; the
  answer is ``lam* = g^{-1}(c)``, found by evaluating ``g`` at every kink.

  Args:
    t: points [N, d].
    w: normals [N, d].
    b: offsets [N].
  Returns:
    steps d [N, d], zero where ``w_i == 0``.
  """
  c = jnp.sum(w * t, axis=-1) - b
  w = jnp.where((c >= 0)[:, None], w, -w)
  c = jnp.abs(c)  # now the step must lower w.(t + d) by c
  up = w < 0  # coordinates that lower w.x by increasing
  room = jnp.where(up, 1.0 - t, t)
  direction = jnp.where(up, 1.0, -1.0).astype(t.dtype)
  aw = jnp.abs(w)

  order = jnp.argsort(room, axis=-1)
  room_s = jnp.take_along_axis(room, order, axis=-1)
  aw_s = jnp.take_along_axis(aw, order, axis=-1)
  cum_awp = jnp.cumsum(aw_s * room_s, axis=-1)
  cum_aw = jnp.cumsum(aw_s, axis=-1)
  total = cum_aw[:, -1:]
  g_kink = cum_awp + room_s * (total - cum_aw)  # g at each sorted room, nondecreasing
  k = jnp.sum(g_kink < c[:, None], axis=-1)  # lam* lies between kinks k-1 and k
  feasible = k < t.shape[-1]
  km1 = jnp.clip(k - 1, 0, t.shape[-1] - 1)[:, None]
  prev_awp = jnp.where(k > 0, jnp.take_along_axis(cum_awp, km1, axis=-1)[:, 0], 0.0)
  prev_aw = jnp.where(k > 0, jnp.take_along_axis(cum_aw, km1, axis=-1)[:, 0], 0.0)
  lam = jnp.maximum((c - prev_awp) / jnp.maximum(total[:, 0] - prev_aw, 1e-30), 0.0)
  reach = jnp.where(feasible[:, None], jnp.minimum(lam[:, None], room), room)
  return jnp.where(w != 0, direction * reach, 0.0)


def fab_run(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  targets: jax.Array,
  *,
  num_iters: int = 100,
  alpha_max: float = 0.1,
  eta: float = 1.05,
  beta: float = 0.9,
  start: jax.Array | None = None,
  unroll: int = 1,
) -> tuple[jax.Array, jax.Array]:
  """One targeted FAB run (the reference's ``attack_single_run``).

  Args:
    logits_fn: the classifier in inference mode.
    x: clean images [B, H, W, C] in [0, 1].
    labels, targets: [B] int; the attack pushes ``z_t`` above ``z_y``.
    num_iters, alpha_max, eta, beta: the reference's 100, 0.1, 1.05, 0.9.
    start: the first iterate [B, H, W, C] (default ``x``).
  Returns:
    (x_adv, norm): the closest misclassified point found [B, H, W, C] (``x``
    where none was found) and its L-inf distance [B] (inf where none).
  """
  x = jax.lax.stop_gradient(x)
  bsz = x.shape[0]
  x0 = x.reshape(bsz, -1)

  def diff(xi, yi, ti):
    z = logits_fn(xi[None])[0]
    return z[ti] - z[yi]

  diff_grad = jax.vmap(jax.value_and_grad(diff))

  def body(_, s):
    x1, adv, best = s
    f, g = diff_grad(x1, labels, targets)
    w = g.reshape(bsz, -1)
    b = jnp.sum(w * x1.reshape(bsz, -1), axis=-1) - f  # {x': w.x' = b} is f's zero set
    d = project_linf(
      jnp.concatenate([x1.reshape(bsz, -1), x0]), jnp.concatenate([w, w]), jnp.concatenate([b, b])
    )
    a = jnp.maximum(linf_norm(d), 1e-8)
    a1, a2 = a[:bsz], a[bsz:]
    alpha = bcast(jnp.clip(a1 / (a1 + a2), 0.0, alpha_max), x)
    d1, d2 = d[:bsz].reshape(x.shape), d[bsz:].reshape(x.shape)
    x1 = jnp.clip((x1 + eta * d1) * (1.0 - alpha) + (x + eta * d2) * alpha, 0.0, 1.0)
    is_adv = ~losses.correct(logits_fn(x1), labels)
    dist = linf_norm(x1 - x)
    better = is_adv & (dist < best)
    adv = jnp.where(bcast(better, x), x1, adv)
    best = jnp.where(better, dist, best)
    x1 = jnp.where(bcast(is_adv, x), x + (x1 - x) * beta, x1)
    return x1, adv, best

  x1 = x if start is None else start
  init = (x1, x, jnp.full((bsz,), jnp.inf, x.dtype))
  _, adv, best = jax.lax.fori_loop(0, num_iters, body, init, unroll=unroll)
  return jax.lax.stop_gradient(adv), best


def fab_targeted(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys: jax.Array,
  active: jax.Array | None = None,
  num_target_classes: int = 9,
  num_restarts: int = 1,
  num_iters: int = 100,
  alpha_max: float = 0.1,
  eta: float = 1.05,
  beta: float = 0.9,
  unroll: int = 1,
  runs=None,
) -> tuple[AttackResult, jax.Array]:
  """FAB-T as AutoAttack runs it: targets one after another, on the points
  not yet broken within ``eps``.

  Args:
    logits_fn, x, labels: as :func:`fab_run`.
    eps: L-inf bound, scalar or [B]; a point is broken if FAB finds a
      misclassified point within it.
    keys: [B] per-sample keys (used by restarts after the first only).
    active: bool [B], the points to attack (default all).
    num_target_classes: 9 (at most C - 1 are used).
    num_restarts: runs per target (1); runs after the first start from
      ``x + eps/2 * t / ||t||_inf``, ``t ~ U(-1, 1)^d``.
    runs: (first, stop): only runs first <= j < stop, run j being restart
      ``j % num_restarts`` of target rank ``j // num_restarts + 2`` (default all).
  Returns:
    (result, norm): ``result`` as for every attack; ``norm`` [B] the smallest
    L-inf norm of any misclassified point found in the runs made (inf if
    none), the attack's minimum-norm estimate.
  """
  clean_logits, start = initial(logits_fn, x, labels, active)
  bsz = x.shape[0]
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (bsz,))
  num_targets = min(num_target_classes, clean_logits.shape[-1] - 1)
  first, total = run_range(num_targets * num_restarts, runs)

  def run(j):
    t, r = j // num_restarts, j % num_restarts
    k = fold(fold(keys, t), r)
    noise = jax.vmap(lambda kk: jax.random.uniform(kk, x.shape[1:], x.dtype, -1.0, 1.0))(k)
    rand = jnp.clip(x + bcast(0.5 * eps, x) * noise / bcast(linf_norm(noise) + 1e-12, x), 0.0, 1.0)
    x1 = jnp.where(r > 0, rand, x)
    adv, norm = fab_run(
      logits_fn,
      x,
      labels,
      target_classes(clean_logits, t + 2),
      num_iters=num_iters,
      alpha_max=alpha_max,
      eta=eta,
      beta=beta,
      start=x1,
      unroll=unroll,
    )
    found = jnp.isfinite(norm)
    fooled = found & ~losses.correct(logits_fn(adv), labels) & (norm <= eps)
    return AttackResult(adv, ~fooled), norm

  def cond(c):
    j, res, _ = c
    return (j < total) & jnp.any(res.robust)

  def body(c):
    j, res, best = c
    new, norm = run(j)
    broken = res.robust & ~new.robust
    res = AttackResult(jnp.where(bcast(broken, x), new.x_adv, res.x_adv), res.robust & new.robust)
    best = jnp.where(start.robust, jnp.minimum(best, norm), best)
    return j + 1, res, best

  init = (first, start, jnp.full((bsz,), jnp.inf, x.dtype))
  _, res, best = jax.lax.while_loop(cond, body, init)
  return res, best
