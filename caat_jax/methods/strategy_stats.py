"""What the strategy did, per step: adversary ratio and bound per class and
per clean/corrupted sample (the paper's Figs. 9, 10, 13), and Fig. 8c's
bins of samples by bound. Meta-CAAT and Reinforce-CAAT log these, and
Reinforce-CAAT its policy's statistics and rewards (``reinforce_metrics``)."""

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.caat import reinforce
from caat_jax.methods import base

NUM_BOUND_BINS = 10  # Fig. 8c: samples binned by bound, equal bins over [0, largest bound]


def strategy_stats(
  alpha, eps, y, batch, num_classes, axis, *, clean_logits=None, eps_max: float | None = None
) -> dict:
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
    bins = jnp.clip(jnp.floor(eps / eps_max * NUM_BOUND_BINS), 0, NUM_BOUND_BINS - 1).astype(
      jnp.int32
    )
    margin = losses.probability_margin(jax.lax.stop_gradient(clean_logits), y)
    out.update(base.ratio_metric("margin_by_bound", margin, bins, NUM_BOUND_BINS, axis))
    out.update(base.ratio_metric("bound_by_bound_bin", eps, bins, NUM_BOUND_BINS, axis))
  return out


def reinforce_metrics(
  *,
  policy_logits,
  direction,
  eps,
  labels,
  batch,
  loss,
  logits_clean,
  logits_tilde,
  update_now,
  info,
  num_classes,
  axis,
  eps_max,
  clean_eval_logits,
) -> dict:
  """Reinforce-CAAT's scalars and per-group ratio metrics (``base.ratio_metric``):
  the curves of the paper's Figs. 9, 10, 13. ``logits_clean`` / ``logits_tilde`` are the
  training-mode logits of the clean and perturbed inputs, ``clean_eval_logits``
  the inference-mode ones the strategy was drawn from."""
  logits, y, clean = policy_logits, labels, clean_eval_logits
  alpha = (direction == reinforce.ADVERSARY).astype(jnp.float32)
  corrupted = base.corrupted_mask(batch, y).astype(jnp.int32)
  p_adv = jax.nn.softmax(reinforce.direction_logits(logits))[:, 0]
  ent = reinforce.entropies(logits)
  correct_t = losses.correct(logits_tilde, y)
  n_adv, n_at = base.psum(alpha.sum(), axis), base.psum((1 - alpha).sum(), axis)
  m = base.pmean(
    {
      "loss": loss,
      "alpha": alpha.mean(),
      "eps": eps.mean(),
      "clean_acc": losses.correct(logits_clean, y).mean(),
      "p_adv": p_adv.mean(),
      "entropy": ent["joint"].mean(),
      "entropy_direction": ent["direction"].mean(),
      "entropy_bound": ent["bound"].mean(),
    },
    axis,
  )
  # accuracy on each sample's own perturbation, per direction (0 if none drawn)
  m["adv_acc"] = base.psum((correct_t * alpha).sum(), axis) / jnp.maximum(n_adv, 1.0)
  m["anti_acc"] = base.psum((correct_t * (1 - alpha)).sum(), axis) / jnp.maximum(n_at, 1.0)
  m["policy_grad_norm"] = info["grad_norm"]
  m["policy_updated"] = update_now.astype(jnp.float32)
  # Fig. 8c: margins of the inference-mode logits the strategy was drawn from
  m.update(
    strategy_stats(alpha, eps, y, batch, num_classes, axis, clean_logits=clean, eps_max=eps_max)
  )
  ratio = lambda name, v, g, n: m.update(base.ratio_metric(name, v, g, n, axis))
  # per class, clean samples first then corrupted: entry y + C * corrupted
  cls_cn = y + num_classes * corrupted
  ratio("adv_ratio_class_clean_noisy", alpha, cls_cn, 2 * num_classes)
  ratio("eps_class_clean_noisy", eps, cls_cn, 2 * num_classes)
  ratio("p_adv_clean_noisy", p_adv, corrupted, 2)
  # bounds of adversaries (0) and anti-adversaries (1); then split by clean /
  # corrupted: entry 2 * corrupted + direction
  ratio("eps_per_direction", eps, direction, 2)
  ratio("eps_direction_clean_noisy", eps, 2 * corrupted + direction, 4)
  # rewards, on update steps only: per direction, and per clean / corrupted
  upd = update_now.astype(jnp.float32)
  gated = lambda name, v, g, n: m.update(
    {key: val * upd for key, val in base.ratio_metric(name, v, g, n, axis).items()}
  )
  gated("reward_per_direction", info["reward"], direction, 2)
  gated("paper_reward_per_direction", info["paper"], direction, 2)
  gated("lookahead_reward_per_direction", info["lookahead"], direction, 2)
  gated("lookahead_reward_clean_noisy", info["lookahead"], corrupted, 2)
  m["ratio/meta_loss/num"] = (info["meta_loss"] * upd)[None]
  m["ratio/meta_loss/den"] = upd[None]
  return m
