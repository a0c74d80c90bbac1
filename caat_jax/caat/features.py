"""The six per-sample training characteristics zeta (paper Section 4.2, docs/method.md §3).

All are computed from the *clean* logits in inference mode, so they cost one
forward pass that the KL target needs anyway. Feature standardisation uses
running (bias-corrected exponential moving) statistics carried in the train
state, updated each step with the global batch (not a normalisation layer):
the weighting net then sees inputs of a stable scale whatever the dataset,
and the statistics survive checkpoints with the rest of the state.
"""

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.checks import check

NUM_FEATURES = 6
FEATURE_NAMES = (
  "loss",
  "margin",
  "onehot_distance",
  "entropy",
  "class_proportion",
  "class_avg_loss",
)


def features(
  clean_logits: jax.Array, labels: jax.Array, class_proportion: jax.Array, class_avg_loss: jax.Array
) -> jax.Array:
  """zeta for a batch (Eqs. 18-24).

  Args:
    clean_logits: [B, C] logits of the clean inputs.
    labels: [B] int labels.
    class_proportion: [C], N_c / N of the training set.
    class_avg_loss: [C], per-class average loss (``class_average_loss``).
  Returns:
    [B, 6]: CE loss; probability margin p_y - max_{j!=y} p_j; ||onehot(y) - p||_2;
    entropy -sum p log2 p (positive); class proportion; class-average loss.
  """
  logits = jax.lax.stop_gradient(clean_logits).astype(jnp.float32)
  p = jax.nn.softmax(logits)
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  ce = losses.cross_entropy(logits, labels)
  margin = losses.probability_margin(logits, labels)
  dist = jnp.linalg.norm(onehot - p, axis=-1)
  logp2 = jax.nn.log_softmax(logits) / jnp.log(2.0)
  entropy = -jnp.sum(p * logp2, axis=-1)
  return jnp.stack(
    [ce, margin, dist, entropy, class_proportion[labels], class_avg_loss[labels]], axis=-1
  )


def init_running_stats(num_classes: int) -> dict[str, jax.Array]:
  """Zeroed statistics: per-class loss sums of this and the last epoch, and
  the feature moments."""
  z = jnp.zeros((num_classes,), jnp.float32)
  return {
    "class_loss_sum": z,
    "class_loss_count": z,  # the current epoch so far
    "class_loss_prev": z,  # each class's average over the previous epoch
    "has_prev": jnp.zeros((), jnp.float32),  # 1 once an epoch has ended
    "feat_mean": jnp.zeros((NUM_FEATURES,), jnp.float32),
    "feat_sq": jnp.zeros((NUM_FEATURES,), jnp.float32),
    "feat_count": jnp.zeros((), jnp.float32),
  }


def _gsum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def start_epoch(stats: dict, new_epoch: jax.Array) -> dict:
  """At an epoch's first step: the finished epoch's per-class averages become
  feature 6 and the sums restart. A class unseen last epoch keeps its value."""
  seen = stats["class_loss_count"] > 0
  avg = stats["class_loss_sum"] / jnp.maximum(stats["class_loss_count"], 1.0)
  rolled = dict(
    stats,
    class_loss_prev=jnp.where(seen, avg, stats["class_loss_prev"]),
    class_loss_sum=jnp.zeros_like(avg),
    class_loss_count=jnp.zeros_like(avg),
    has_prev=jnp.ones_like(stats["has_prev"]),
  )
  return jax.tree.map(lambda a, b: jnp.where(new_epoch, a, b), rolled, stats)


def class_average_loss(stats: dict) -> jax.Array:
  """Feature 6 per class, [C]: the average loss over the previous epoch, or,
  during the first epoch, the running average so far (0 for an unseen class)."""
  running = stats["class_loss_sum"] / jnp.maximum(stats["class_loss_count"], 1.0)
  return jnp.where(stats["has_prev"] > 0, stats["class_loss_prev"], running)


def add_class_loss(
  stats: dict, loss: jax.Array, labels: jax.Array, num_classes: int, axis_name: str | None
) -> dict:
  """Adds the global batch's per-sample losses to this epoch's class sums."""
  onehot = jax.nn.one_hot(labels, num_classes)
  return dict(
    stats,
    class_loss_sum=stats["class_loss_sum"] + _gsum(onehot.T @ loss, axis_name),
    class_loss_count=stats["class_loss_count"] + _gsum(onehot.sum(0), axis_name),
  )


def standardise(
  stats: dict, zeta: jax.Array, momentum: float, axis_name: str | None
) -> tuple[jax.Array, dict]:
  """Updates the running moments with the global batch, then standardises.

  Bias-corrected EMA (as Adam's moments): after t updates the estimate is
  ``m_t / (1 - momentum^t)``, so early steps are not pulled towards 0.
  Returns (standardised zeta [B, 6], new stats).
  """
  n = _gsum(jnp.asarray(zeta.shape[0], jnp.float32), axis_name)
  mean = _gsum(zeta.sum(0), axis_name) / n
  sq = _gsum((zeta**2).sum(0), axis_name) / n
  m = momentum * stats["feat_mean"] + (1 - momentum) * mean
  s = momentum * stats["feat_sq"] + (1 - momentum) * sq
  t = stats["feat_count"] + 1
  corr = 1 - momentum**t
  mu, var = m / corr, jnp.maximum(s / corr - (m / corr) ** 2, 0.0)
  z = (zeta - mu) / jnp.sqrt(var + 1e-6)
  return z, dict(stats, feat_mean=m, feat_sq=s, feat_count=t)


def strategy_inputs(
  clean_logits: jax.Array,
  labels: jax.Array,
  class_counts,
  stats: dict,
  caat_cfg,
  axis_name: str | None,
  new_epoch: jax.Array | bool = False,
) -> tuple[jax.Array, dict]:
  """What Meta-CAAT's and Reinforce-CAAT's strategy nets see.

  zeta from the clean logits (feature 6 from the class-loss statistics,
  rolled over first when ``new_epoch``), standardised with the running
  moments (updated here), times ``caat.feature_mask``; the batch's feature-1
  losses (inference-mode CE, the same loss) are then added to this epoch's
  class sums. Returns ([B, 6] inputs, new stats).
  """
  stats = start_epoch(stats, jnp.asarray(new_epoch))
  counts = jnp.asarray(class_counts, jnp.float32)
  zeta = features(clean_logits, labels, counts / counts.sum(), class_average_loss(stats))
  z, stats = standardise(stats, zeta, caat_cfg.feature_momentum, axis_name)
  stats = add_class_loss(stats, zeta[:, 0], labels, len(class_counts), axis_name)
  return z * jnp.asarray(caat_cfg.feature_mask, jnp.float32), stats


def validate_features(config) -> None:
  """The ``caat.feature_*`` keys the strategy nets' inputs use (docs/method.md §3)."""
  c = config.caat
  check(
    "caat.feature_mask",
    len(c.feature_mask) == 6 and all(v in (0, 1) for v in c.feature_mask),
    c.feature_mask,
    "six 0/1 entries",
  )
  check("caat.feature_momentum", 0 <= c.feature_momentum < 1, c.feature_momentum, "in [0, 1)")
