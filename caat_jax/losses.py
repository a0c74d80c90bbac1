"""Per-example losses. Every function returns one value per example, shape [B];
reduce at the call site (DESIGN convention 6)."""

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
