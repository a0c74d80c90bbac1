"""Square Attack, L-inf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020).

A score-based random search that needs only the logits, never a gradient:

* start from vertical stripes ``x + eps * s`` with ``s`` in {-1, +1}, one sign
  per (column, channel), clipped to [0, 1];
* at query i, add ``2 eps * c`` (one random sign per channel) on a random
  ``size x size`` window to the best point so far, project back onto the
  ball and [0, 1], and keep the candidate if the margin loss
  ``z_y - max_{j != y} z_j`` went down (or the point became misclassified);
* the window's area is the fraction ``p`` of the image, ``p`` falling from
  ``p_init = 0.8`` as the reference's schedule says (:func:`p_schedule`).

AutoAttack's "standard" settings: 5000 queries, ``p_init = 0.8``, one restart,
the schedule not rescaled to the number of queries. Differences from the
reference (fra31/auto-attack ``square.py``), none of which changes an
example's distribution of outcomes: the window position and colours are
drawn per example from the example's own key (the reference draws one per
batch), and an example stops being updated once it is misclassified, as in
the reference, but the batch runs until every example is broken or the
queries are spent.

Kept from the reference: the window's corner is drawn from
``[0, h - size)`` (``floor(U * (h - size))``), so after the initial stripes
the last row and column are changed only by a full-size window; on 32x32
images this matters little, on 8x8 digits noticeably.
"""

import math

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.attacks.common import AttackResult, LogitsFn, bcast

# (iteration bound, divisor of p_init): p = p_init / div for it <= bound.
_P_STEPS = (
  (10, 1),
  (50, 2),
  (200, 4),
  (500, 8),
  (1000, 16),
  (2000, 32),
  (4000, 64),
  (6000, 128),
  (8000, 256),
)


def p_schedule(
  it: int, p_init: float = 0.8, num_queries: int = 5000, rescale: bool = False
) -> float:
  """The reference's fraction of pixels changed at query ``it`` (``p_selection``).

  p_init for it <= 10, halving at 10, 50, 200, 500, 1000, 2000, 4000, 6000
  and 8000 queries (p_init / 512 beyond). ``rescale`` stretches the schedule
  to ``num_queries`` as if there were 10000 (AutoAttack turns it off).
  """
  if rescale:
    it = int(it / num_queries * 10000)
  for bound, div in _P_STEPS:
    if it <= bound:
      return p_init / div
  return p_init / 512


def window_sizes(image_hw: tuple[int, int], p_init: float = 0.8) -> list[int]:
  """Square side for each level of the schedule (level = number of halvings).

  ``max(int(round(sqrt(p * h * w))), 1)`` capped at ``min(h, w)``, computed in
  Python exactly as the reference does.
  """
  h, w = image_hw
  return [
    min(max(int(round(math.sqrt(p_init / div * h * w))), 1), min(h, w))
    for div in [d for _, d in _P_STEPS] + [512]
  ]


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """z_y - max_{j != y} z_j; [B, C], [B] -> [B] (<= 0: misclassified)."""
  z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  z_y = jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), -jnp.inf, z)
  return z_y - jnp.max(others, axis=-1)


def initial_stripes(x: jax.Array, eps: jax.Array, keys: jax.Array) -> jax.Array:
  """The start: ``clip(x + eps * s)``, ``s`` in {-1, +1} one sign per (column,
  channel) drawn from each point's key: vertical stripes. x [B, H, W, C],
  eps [B], keys [B] -> [B, H, W, C]."""
  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x5A))(keys)
  stripes = jax.vmap(lambda k: _rand_sign(k, (1, x.shape[2], x.shape[3]), x.dtype))(init_keys)
  return jnp.clip(x + bcast(eps, x) * stripes, 0.0, 1.0)


def _rand_sign(key, shape, dtype):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def window_size(
  i: jax.Array,
  image_hw: tuple[int, int],
  p_init: float = 0.8,
  num_queries: int = 5000,
  rescale: bool = False,
) -> jax.Array:
  """The square's side at query ``i`` (traced int), from :func:`p_schedule`."""
  sizes = jnp.array(window_sizes(image_hw, p_init), jnp.int32)
  bounds = jnp.array([bd for bd, _ in _P_STEPS], jnp.int32)
  it = (i * 10000) // num_queries if rescale else i
  return sizes[jnp.sum(it > bounds)]


def proposal(
  x_best: jax.Array, x: jax.Array, eps: jax.Array, keys: jax.Array, i: jax.Array, size: jax.Array
) -> jax.Array:
  """Query ``i``'s candidate: ``x_best`` plus ``2 eps * colour`` on one
  ``size x size`` window, one random sign per channel, projected onto the
  ball and [0, 1]. The window's corner is ``floor(U * (h - size))`` per axis.
  Per point from its key folded with ``i``; [B, H, W, C] -> [B, H, W, C]."""
  _, h, w, c = x.shape
  e = bcast(eps, x)
  ks = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, i), 3))(keys)
  vh = jnp.floor(jax.vmap(jax.random.uniform)(ks[:, 0]) * (h - size)).astype(jnp.int32)
  vw = jnp.floor(jax.vmap(jax.random.uniform)(ks[:, 1]) * (w - size)).astype(jnp.int32)
  colour = jax.vmap(lambda k: _rand_sign(k, (1, 1, c), x.dtype))(ks[:, 2])
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  vh, vw = vh[:, None, None, None], vw[:, None, None, None]
  window = (rows >= vh) & (rows < vh + size) & (cols >= vw) & (cols < vw + size)
  z = x_best + jnp.where(window, 2.0 * e * colour, 0.0)
  return jnp.clip(jnp.clip(z, x - e, x + e), 0.0, 1.0)


def accept(
  m_new: jax.Array, m_min: jax.Array, loss_min: jax.Array, attacked: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The reference's accept rule on [B] margins: an attacked point takes the
  candidate if its margin loss went down, or if the candidate is
  misclassified (margin <= 0). Returns (improved, m_min, loss_min)."""
  improved = attacked & (m_new < loss_min)
  loss_min = jnp.where(improved, m_new, loss_min)
  improved |= attacked & (m_new <= 0)
  m_min = jnp.where(improved, m_new, m_min)
  return improved, m_min, loss_min


def square(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys: jax.Array,
  active: jax.Array | None = None,
  num_queries: int = 5000,
  p_init: float = 0.8,
  rescale_schedule: bool = False,
) -> AttackResult:
  """Square Attack on the margin loss, L-inf, untargeted.

  Args:
    logits_fn: the classifier; only evaluated, never differentiated.
    x: clean images [B, H, W, C] in [0, 1].
    labels: [B] int.
    eps: L-inf bound, scalar or [B].
    keys: [B] per-sample PRNG keys.
    active: bool [B], the points to attack (default all).
    num_queries: iterations after the initial stripes (5000).
    p_init: initial fraction of pixels changed per query (0.8).
    rescale_schedule: stretch the p schedule to ``num_queries`` (False in
      AutoAttack).
  Returns:
    AttackResult: ``robust`` = clean-correct & active & the final point is
    classified correctly.
  """
  x = jax.lax.stop_gradient(x)
  b, h, w, c = x.shape
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (b,))
  robust0 = losses.correct(logits_fn(x), labels)
  if active is not None:
    robust0 &= active

  x_best = initial_stripes(x, eps, keys)
  m0 = margin(logits_fn(x_best), labels)

  def cond(s):
    i, _, m, _ = s
    return (i < num_queries) & jnp.any((m > 0) & robust0)

  def body(s):
    i, x_best, m_min, loss_min = s
    size = window_size(i, (h, w), p_init, num_queries, rescale_schedule)
    x_new = proposal(x_best, x, eps, keys, i, size)
    m_new = margin(logits_fn(x_new), labels)  # the margin loss is the margin
    improved, m_min, loss_min = accept(m_new, m_min, loss_min, (m_min > 0) & robust0)
    x_best = jnp.where(bcast(improved, x), x_new, x_best)
    return i + 1, x_best, m_min, loss_min

  _, x_best, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), x_best, m0, m0))
  broken = robust0 & ~losses.correct(logits_fn(x_best), labels)
  return AttackResult(jnp.where(bcast(broken, x), x_best, x), robust0 & ~broken)
