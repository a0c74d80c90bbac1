"""caat_jax: adversarial training with adversaries and anti-adversaries in JAX."""
