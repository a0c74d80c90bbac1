"""What the strategy did, per step: adversary ratio and bound per class and
per clean/corrupted sample (the paper's Figs. 9, 10, 13), and Fig. 8c's
bins of samples by bound. Meta-CAAT and Reinforce-CAAT log these."""

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.methods import base

NUM_BOUND_BINS = 10  # Fig. 8c: samples binned by bound, equal bins over [0, largest bound]


def strategy_stats(alpha, eps, y, batch, num_classes, axis, *, clean_logits=None,
                   eps_max: float | None = None) -> dict:
  """Adversary ratio (mean alpha) and mean bound per class, and split by
  clean (0) / corrupted (1) training labels: the paper's Figs. 9, 10, 13.

  With ``clean_logits`` and ``eps_max``, also Fig. 8c's data: the samples
  binned by their bound (``NUM_BOUND_BINS`` equal bins over [0, eps_max],
  larger bounds in the last), each bin's mean clean probability margin
  (``margin_by_bound``) and mean bound (``bound_by_bound_bin``).
  """
  corrupted = base.corrupted_mask(batch, y).astype(jnp.int32)
  out = {}
  out.update(base.ratio_metric("adv_ratio_per_class", alpha, y, num_classes, axis))
  out.update(base.ratio_metric("eps_per_class", eps, y, num_classes, axis))
  out.update(base.ratio_metric("adv_ratio_clean_noisy", alpha, corrupted, 2, axis))
  out.update(base.ratio_metric("eps_clean_noisy", eps, corrupted, 2, axis))
  if clean_logits is not None and eps_max:
    bins = jnp.clip(jnp.floor(eps / eps_max * NUM_BOUND_BINS), 0,
                    NUM_BOUND_BINS - 1).astype(jnp.int32)
    margin = losses.probability_margin(jax.lax.stop_gradient(clean_logits), y)
    out.update(base.ratio_metric("margin_by_bound", margin, bins, NUM_BOUND_BINS, axis))
    out.update(base.ratio_metric("bound_by_bound_bin", eps, bins, NUM_BOUND_BINS, axis))
  return out
