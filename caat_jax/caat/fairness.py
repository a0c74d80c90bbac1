"""FRL's Lagrangian multipliers (Xu et al., ICML 2021; paper Eq. 19; docs/method.md §7).

Once per epoch, per-class natural error e_c and boundary error b_c on the
validation set (fractions in [0, 1]) update three multiplier vectors:

  g0 = e - mean(e) - tau1,   g1 = b - mean(b) - tau2
  lambda0 += r1 g0           (ReWeight, natural term)
  lambda1 += 2 r1 g1         (ReWeight, boundary term)
  lambda2 += r2 g1           (ReMargin, unprojected)

lambda0, lambda1 are clipped at 0 and rescaled to sum to ``lim`` when their
sum exceeds it; r1 halves every ``halve_every`` epochs.
"""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax.checks import check, choice

MODES = ("reweight", "remargin", "reweight_remargin", "baseline_reweight")
MARGIN_MODES = ("remargin", "reweight_remargin")  # modes with class-wise bounds


def init(num_classes: int) -> dict[str, jax.Array]:
  """Zero multipliers, and uniform Baseline-ReWeight class weights."""
  z = jnp.zeros((num_classes,), jnp.float32)
  return {
    "lambda0": z,
    "lambda1": z,
    "lambda2": z,
    "baseline_w": jnp.full((num_classes,), 1.0 / num_classes, jnp.float32),
  }


def _project(lam: np.ndarray, lim: float) -> np.ndarray:
  lam = np.maximum(lam, 0.0)
  s = lam.sum()
  return lam * (lim / s) if s > lim else lam


def update(
  lams: dict,
  natural_err: np.ndarray,
  boundary_err: np.ndarray,
  *,
  epoch: int,
  r1: float = 0.05,
  r2: float = 0.2,
  tau1: float = 0.07,
  tau2: float = 0.07,
  lim: float = 0.5,
  halve_every: int = 40,
) -> dict[str, np.ndarray]:
  """One Lagrangian step (host side, numpy) before training ``epoch`` (0-based).
  Errors are fractions, [C] each."""
  e, b = np.asarray(natural_err, np.float64), np.asarray(boundary_err, np.float64)
  g0 = e - e.mean() - tau1
  g1 = b - b.mean() - tau2
  # The reference (frlrw.py) numbers epochs from 1 and halves r1 before the
  # update of every epoch divisible by 40: here ``epoch`` is 0-based.
  lr = r1 * 0.5 ** ((epoch + 1) // halve_every)
  l0 = _project(np.asarray(lams["lambda0"], np.float64) + lr * g0, lim)
  l1 = _project(np.asarray(lams["lambda1"], np.float64) + 2 * lr * g1, lim)
  l2 = np.asarray(lams["lambda2"], np.float64) + r2 * g1
  return dict(
    lams,
    **{k: v.astype(np.float32) for k, v in (("lambda0", l0), ("lambda1", l1), ("lambda2", l2))},
  )


def class_weights(lam: jax.Array) -> jax.Array:
  """w_c = 1/C + lambda_c - mean_j lambda_j; [C] -> [C] (sums to 1)."""
  return 1.0 / lam.shape[0] + lam - jnp.mean(lam)


MARGIN_RANGE = (0.98, 2.5)  # ReMargin's multipliers are clipped to this range


def margin_multipliers(lambda2: jax.Array) -> jax.Array:
  """ReMargin eps multipliers m_c = clip(exp(2 lambda2_c), 0.98, 2.5)."""
  return jnp.clip(jnp.exp(2.0 * lambda2), *MARGIN_RANGE)


def sample_factors(class_w: jax.Array, labels: jax.Array, axis_name: str | None) -> jax.Array:
  """Per-sample factors that turn a plain batch mean into FRL's weighted mean.

  ``mean_i(f_i * l_i) == sum_i w_{y_i} l_i / sum_i w_{y_i}`` over the global
  batch: f_i = w_{y_i} * B / sum_j w_{y_j}.
  """
  w = class_w[labels]
  total, count = w.sum(), jnp.asarray(labels.shape[0], jnp.float32)
  if axis_name is not None:
    total, count = jax.lax.psum(total, axis_name), jax.lax.psum(count, axis_name)
  return w * count / total


def baseline_reweight(robust_err: np.ndarray, factor: float = 2.0) -> np.ndarray:
  """Baseline ReWeight: the class with the largest validation robust error gets
  ``factor`` times the weight of the others; weights sum to 1. [C] -> [C]."""
  w = np.ones_like(np.asarray(robust_err, np.float64))
  w[int(np.argmax(robust_err))] = factor
  return (w / w.sum()).astype(np.float32)


def _ones_factors(lams, labels, axis_name):
  del lams, axis_name
  ones = jnp.ones(labels.shape, jnp.float32)
  return ones, ones


def _reweight_factors(lams, labels, axis_name):
  return (
    sample_factors(class_weights(lams["lambda0"]), labels, axis_name),
    sample_factors(class_weights(lams["lambda1"]), labels, axis_name),
  )


def _baseline_factors(lams, labels, axis_name):
  f = sample_factors(lams["baseline_w"], labels, axis_name)
  return f, f


def factors_fn(mode: str | None):
  """The per-sample loss factors of ``mode`` (None: fairness off).

  Returns ``fn(multipliers, labels [B], axis_name) -> (f0 [B], f1 [B])``,
  the factors of the natural (CE) and boundary (KL) terms, so that a batch
  mean of ``f * l`` is FRL's class-weighted mean. Chosen once when a step is
  built; ones for ``remargin`` (which changes bounds, not weights) and off.
  """
  if mode in ("reweight", "reweight_remargin"):
    return _reweight_factors
  if mode == "baseline_reweight":
    return _baseline_factors
  return _ones_factors


def validate_fairness(config) -> None:
  """The ``fairness`` block (docs/method.md §7)."""
  f = config.fairness
  choice("fairness.mode", f.mode, MODES)
  check("fairness.attack_steps", f.attack_steps >= 1, f.attack_steps, ">= 1")
  check("fairness.step_size", f.step_size > 0, f.step_size, "> 0")
  check("fairness.halve_every", f.halve_every >= 1, f.halve_every, ">= 1")
  check("fairness.lim", f.lim > 0, f.lim, "> 0")


# The epoch hook (methods wrap these two in ``base.EpochHook``).


def epoch_validation(config, always: bool = False):
  """PGD-``fairness.attack_steps`` (CE, uniform start, eps ``attack.eps``, step
  ``fairness.step_size``) on the validation set, when fairness is on (or
  ``always``, for FRL itself)."""
  f = config.fairness
  if not (f.enabled or always):
    return None
  return f"pgd{f.attack_steps}", float(config.attack.eps), float(f.step_size)


def epoch_update(config, extra: dict, errors: dict, epoch: int) -> tuple[dict, dict]:
  """FRL's Lagrangian step from per-class validation errors (fractions)."""
  f = config.fairness
  nat, rob = errors["natural"], errors["robust"]
  new = update(
    extra["fair"],
    nat,
    rob - nat,
    epoch=epoch,
    r1=f.r1,
    r2=f.r2,
    tau1=f.tau1,
    tau2=f.tau2,
    lim=f.lim,
    halve_every=f.halve_every,
  )
  if f.mode == "baseline_reweight":
    new["baseline_w"] = baseline_reweight(rob, f.baseline_factor)
  record = {f"fair/{k}": np.round(v, 6).tolist() for k, v in new.items()}
  record.update(
    {
      "fair/val_natural_err": np.round(nat, 6).tolist(),
      "fair/val_boundary_err": np.round(rob - nat, 6).tolist(),
    }
  )
  return dict(extra, fair=new), record
