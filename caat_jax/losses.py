"""Per-example losses. Every function returns one value per example, shape [B];
reduce at the call site, so each method can weight its samples first
(CAAT's per-sample weights, FRL's class factors)."""

import jax
import jax.numpy as jnp


def _at_least_f32(x: jax.Array) -> jax.Array:
  """bfloat16 logits are upcast; float64 (tests, checks) stays float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """CE(softmax(logits), y). logits [B, C] float, labels [B] int -> [B]."""
  logp = jax.nn.log_softmax(_at_least_f32(logits))
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """KL(p || q) = sum_j p_j (log p_j - log q_j), from logits; [B, C] -> [B].

  TRADES' robust term is KL(f(x) || f(x')) with p = clean, q = perturbed.
  Gradients flow into both arguments; stop them at the call site if needed.
  """
  logp = jax.nn.log_softmax(_at_least_f32(p_logits))
  logq = jax.nn.log_softmax(_at_least_f32(q_logits))
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def probability_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """p_y - max_{j != y} p_j from softmax probabilities; [B, C], [B] -> [B]."""
  p = jax.nn.softmax(_at_least_f32(logits))
  p_y = jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, p.shape[-1], dtype=bool), -jnp.inf, p)
  return p_y - jnp.max(others, axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether argmax(logits) == y; [B, C], [B] -> bool [B]."""
  return jnp.argmax(logits, axis=-1) == labels


def _sorted_desc(logits: jax.Array, k: int) -> jax.Array:
  """The k largest logits per row, largest first; [B, C] -> [B, k]."""
  return -jnp.sort(-logits, axis=-1)[:, :k]


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of Logits Ratio (Croce & Hein, ICML 2020, Eq. 6); [B, C], [B] -> [B].

  ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2
  >= ...`` the sorted logits. Invariant to shifting and positively rescaling
  the logits. It needs three classes; with two the denominator is taken as 1
  (the plain logit margin; the reference refuses that case).
  """
  z = _at_least_f32(logits)
  z_y = jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), -jnp.inf, z)
  numer = z_y - jnp.max(others, axis=-1)
  if z.shape[-1] < 3:
    return -numer
  top = _sorted_desc(z, 3)
  return -numer / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted DLR (Croce & Hein, ICML 2020, Eq. 7); [B, C], [B], [B] -> [B].

  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. It needs four
  classes; with fewer the denominator is taken as 1 (plain targeted margin;
  the reference refuses that case).
  """
  z = _at_least_f32(logits)
  z_y = jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
  z_t = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
  if z.shape[-1] < 4:
    return -(z_y - z_t)
  top = _sorted_desc(z, 4)
  return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)
