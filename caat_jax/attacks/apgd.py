"""Auto-PGD, L-inf (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020).

APGD is PGD with momentum and a step size that adapts itself:

* start at ``x + eps * t / ||t||_inf`` with ``t ~ U(-1, 1)^d`` (a point on the
  ball's surface), clipped to [0, 1]; initial step ``2 * eps``;
* ``z = P(x_k + eta * sign(g_k))``,
  ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with momentum
  ``a = 0.75`` (``a = 1`` at the first step);
* at the checkpoints ``w_j`` (:func:`checkpoints`) the step is halved, and the
  iterate reset to the best point so far, for each example where the loss
  rose in at most ``rho = 0.75`` of the steps since the last checkpoint, or
  where neither the step was halved at the last checkpoint nor the best loss
  improved since.

The functions here follow the reference implementation (fra31/auto-attack,
``autopgd_base.py``) in its "standard" L-inf settings: 100 iterations, one
restart for APGD-CE, one restart for each of 9 target classes for APGD-T on
the targeted DLR loss, targets the 2nd, 3rd, ... largest clean logits.

Everything is per sample and shape-static: an example that is already broken
keeps being computed (its result is masked), so one compilation serves every
batch; per-sample PRNG keys make results independent of the batch size and
of the number of devices. The reference attacks only the still-robust
points of a batch; the outcome per point is the same here.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.attacks.common import AttackResult, LogitsFn, bcast, fold, linf_norm

LOSSES = ("ce", "dlr", "dlr_targeted")
_EOT_TAG = 0xE07  # a randomised model's draws at iteration i use fold_in(key, _EOT_TAG + i)


def checkpoints(num_iters: int) -> tuple[list[int], list[int]]:
  """The reference's step-size checkpoints for ``num_iters`` iterations.

  The first interval is ``max(int(0.22 N), 1)`` iterations; every next one is
  ``max(int(0.03 N), 1)`` shorter, down to a floor of ``max(int(0.06 N), 1)``.
  For N = 100 the checks come after 22, 41, 57, 70, 80, 87, 93 and 99
  iterations (the paper's w_j = ceil(p_j N), p = 0, 0.22, 0.41, ...).

  Returns:
    (after, window): the number of iterations done at each check and the
    length of the interval it closes (the loss history the oscillation test
    looks at).
  """
  k = max(int(0.22 * num_iters), 1)
  k_min = max(int(0.06 * num_iters), 1)
  decr = max(int(0.03 * num_iters), 1)
  after, window, done = [], [], 0
  while done + k <= num_iters:
    done += k
    after.append(done)
    window.append(k)
    k = max(k - decr, k_min)
  return after, window


class Randomised(NamedTuple):
  """A randomised classifier (the defences AutoAttack's version 'rand' is for).

  ``fn(x, key) -> logits`` draws the model's randomness from ``key`` (one
  draw per call; examples independent). APGD with ``eot_iter`` > 1 averages
  its input gradient over that many draws (expectation over
  transformation). Called without a key (clean accuracy, the other
  attacks) it uses one fixed draw.
  """

  fn: Callable[[jax.Array, jax.Array], jax.Array]

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return self.fn(x, jax.random.PRNGKey(0) if key is None else key)


def _loss_and_grad(logits_fn: LogitsFn, loss: str, eot_iter: int = 1):
  """``f(x_adv, labels, targets, keys) -> (loss [B], logits [B, C], grad [B, ...])``.

  The input gradient is taken per example (``vmap(grad)``), as in pgd.py.
  For a :class:`Randomised` model and ``eot_iter`` > 1 the gradient is the
  mean over ``eot_iter`` draws (keys folded from the per-sample ``keys``),
  the loss and logits those of the last draw, as the reference's
  ``attack_single_run`` does. A deterministic model's draws are all equal,
  so its gradient is computed once.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r}; valid: {', '.join(LOSSES)}")
  if eot_iter < 1:
    raise ValueError(f"eot_iter={eot_iter}; valid: an integer >= 1")
  randomised = isinstance(logits_fn, Randomised)

  def sample(xi, yi, ti, ki):
    logits = logits_fn(xi[None], ki) if randomised else logits_fn(xi[None])
    if loss == "ce":
      value = losses.cross_entropy(logits, yi[None])
    elif loss == "dlr":
      value = losses.dlr(logits, yi[None])
    else:
      value = losses.targeted_dlr(logits, yi[None], ti[None])
    return value[0], logits[0]

  vg = jax.vmap(jax.value_and_grad(sample, has_aux=True))

  def fn(x_adv, labels, targets, keys):
    if not randomised or eot_iter == 1:
      (value, logits), grad = vg(x_adv, labels, targets, keys)
      return value, logits, grad

    def draw(j, carry):
      (value, logits), grad = vg(x_adv, labels, targets, fold(keys, j))
      return value, logits, carry[2] + grad

    (value, logits), grad = vg(x_adv, labels, targets, fold(keys, 0))
    value, logits, grad = jax.lax.fori_loop(1, eot_iter, draw, (value, logits, grad))
    return value, logits, grad / eot_iter

  return fn


def apgd_run(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps: jax.Array,
  keys: jax.Array,
  loss: str = "ce",
  targets: jax.Array | None = None,
  num_iters: int = 100,
  rho: float = 0.75,
  unroll: int = 1,
  noise: jax.Array | None = None,
  eot_iter: int = 1,
) -> tuple[AttackResult, jax.Array]:
  """One APGD run from a random start (the reference's ``attack_single_run``).

  Args:
    logits_fn: the classifier in inference mode (examples independent).
    x: clean images [B, H, W, C] in [0, 1].
    labels: true labels [B] int.
    eps: L-inf bounds [B] in pixel units.
    keys: per-sample PRNG keys [B] for the start point.
    loss: 'ce', 'dlr' or 'dlr_targeted' (then ``targets`` [B] is required).
    num_iters: iterations (100 in the reference).
    rho: oscillation threshold of the step-size rule (0.75).
    unroll: unroll factor of the iteration loop (1: rolled, fastest compile).
    noise: [B, H, W, C] the start direction ``t`` (default ``U(-1, 1)^d`` drawn
      from ``keys``); tests inject it to compare with another implementation.
  Returns:
    (result, best_loss): ``result.x_adv`` is the last misclassified iterate
    (else the start point), ``result.robust`` whether every iterate including
    the start was classified correctly; ``best_loss`` [B] the highest loss
    reached.
  """
  s, _ = _apgd_loop(
    logits_fn,
    x,
    labels,
    eps=eps,
    keys=keys,
    loss=loss,
    targets=targets,
    num_iters=num_iters,
    rho=rho,
    unroll=unroll,
    noise=noise,
    trace=False,
    eot_iter=eot_iter,
  )
  result = AttackResult(jax.lax.stop_gradient(s["x_best_adv"]), s["correct"])
  return result, s["loss_best"]


def apgd_trajectory(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys,
  loss: str = "ce",
  targets=None,
  num_iters: int = 100,
  rho: float = 0.75,
  noise: jax.Array | None = None,
  eot_iter: int = 1,
) -> dict[str, jax.Array]:
  """:func:`apgd_run`'s state after every iteration, for step-by-step checks.

  Returns:
    dict of [num_iters, B, ...] arrays, row i the state after iteration i:
    ``x_adv`` (the next iterate's base point: the new point, or the best
    point where the step was halved), ``step`` [.., B], ``loss`` [.., B] (the
    loss at the new point), ``loss_best`` [.., B], ``reduce`` bool [.., B]
    (the step was halved at this iteration); plus ``x_start`` [B, H, W, C].
  """
  s0, hist = _apgd_loop(
    logits_fn,
    x,
    labels,
    eps=eps,
    keys=keys,
    loss=loss,
    targets=targets,
    num_iters=num_iters,
    rho=rho,
    unroll=1,
    noise=noise,
    trace=True,
    eot_iter=eot_iter,
  )
  return dict(hist, x_start=s0)


def _apgd_loop(
  logits_fn,
  x,
  labels,
  *,
  eps,
  keys,
  loss,
  targets,
  num_iters,
  rho,
  unroll,
  noise,
  trace,
  eot_iter=1,
):
  """The APGD iteration as a scan; ``trace`` also returns the per-step states
  (and then the start point in place of the final state)."""
  x = jax.lax.stop_gradient(x)
  batch = x.shape[0]
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
  targets = labels if targets is None else targets
  e = bcast(eps, x)
  loss_grad = _loss_and_grad(logits_fn, loss, eot_iter)
  draw_keys = lambda i: fold(keys, _EOT_TAG + i)  # the model's draws at iteration i

  def project(z):
    return jnp.clip(jnp.clip(z, x - e, x + e), 0.0, 1.0)

  if noise is None:
    t = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0))(keys)
  else:
    t = noise.astype(x.dtype)
  x_adv = jnp.clip(x + e * t / (bcast(linf_norm(t), x) + 1e-12), 0.0, 1.0)
  loss0, logits0, grad0 = loss_grad(x_adv, labels, targets, draw_keys(num_iters))

  after, window = checkpoints(num_iters)
  is_check = jnp.zeros((num_iters,), bool).at[jnp.array(after, jnp.int32) - 1].set(True)
  win = (
    jnp.zeros((num_iters,), jnp.int32)
    .at[jnp.array(after, jnp.int32) - 1]
    .set(jnp.array(window, jnp.int32))
  )
  rows = jnp.arange(num_iters)[:, None]

  init = dict(
    x_adv=x_adv,
    x_prev=x_adv,
    grad=grad0,
    grad_best=grad0,
    x_best=x_adv,
    x_best_adv=x_adv,
    loss_best=loss0,
    correct=losses.correct(logits0, labels),
    step=2.0 * eps,
    loss_steps=jnp.zeros((num_iters, batch), loss0.dtype),
    loss_best_last=loss0,
    reduced_last=jnp.ones((batch,), bool),
  )

  def body(i, s):
    x_cur = s["x_adv"]
    a = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)
    z = project(x_cur + bcast(s["step"], x) * jnp.sign(s["grad"]))
    x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - s["x_prev"]))
    value, logits, grad = loss_grad(x_new, labels, targets, draw_keys(i))

    pred_ok = losses.correct(logits, labels)
    x_best_adv = jnp.where(bcast(~pred_ok, x), x_new, s["x_best_adv"])
    loss_steps = s["loss_steps"].at[i].set(value)
    better = value > s["loss_best"]
    x_best = jnp.where(bcast(better, x), x_new, s["x_best"])
    grad_best = jnp.where(bcast(better, x), grad, s["grad_best"])
    loss_best = jnp.where(better, value, s["loss_best"])

    # Step-size check (only takes effect where is_check[i]). The loss rose
    # at step r if L[r] > L[r-1]; row 0 compares with the last row, still
    # zero, as in the reference's wrap-around indexing.
    k = win[i]
    rose = loss_steps > jnp.roll(loss_steps, 1, axis=0)
    in_window = (rows > i - k) & (rows <= i)
    count = jnp.sum(rose & in_window, axis=0)
    oscillating = count <= k.astype(x.dtype) * rho
    stalled = ~s["reduced_last"] & (s["loss_best_last"] >= loss_best)
    check = is_check[i]
    reduce = check & (oscillating | stalled)
    return (
      reduce,
      value,
      dict(
        x_adv=jnp.where(bcast(reduce, x), x_best, x_new),
        x_prev=x_cur,
        grad=jnp.where(bcast(reduce, x), grad_best, grad),
        grad_best=grad_best,
        x_best=x_best,
        x_best_adv=x_best_adv,
        loss_best=loss_best,
        correct=s["correct"] & pred_ok,
        step=jnp.where(reduce, 0.5 * s["step"], s["step"]),
        loss_steps=loss_steps,
        loss_best_last=jnp.where(check, loss_best, s["loss_best_last"]),
        reduced_last=jnp.where(check, reduce, s["reduced_last"]),
      ),
    )

  def scan_body(s, i):
    reduce, value, s = body(i, s)
    rec = None
    if trace:
      rec = dict(
        x_adv=s["x_adv"], step=s["step"], loss=value, loss_best=s["loss_best"], reduce=reduce
      )
    return s, rec

  s, hist = jax.lax.scan(scan_body, init, jnp.arange(num_iters), unroll=unroll)
  return (x_adv, hist) if trace else (s, None)
