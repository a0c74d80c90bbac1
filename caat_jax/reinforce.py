"""REINFORCE for Reinforce-CAAT's strategy net (paper Eqs. 32-35, SPEC 6).

Pure functions, independent of any classifier, so the estimator can be
checked on a toy problem with a known expected reward.

The policy is factorised, ``p(s_i | zeta_i) = p(dir_i | zeta_i) p(k_i | zeta_i)``
(direction 0 = adversary, 1 = anti-adversary; ``k_i`` indexes the bound set).
The strategy net ascends

  J(Omega) = J+(Omega) - J-(Omega)
           = E_x E_s [ 1{dir = adv} L0(x, s) - 1{dir = anti} L1(x, s) ]

with ``L0 = CE(f(x), y) + lam KL(f(x) || f(x_adv))`` and
``L1 = CE(f(x_at), y)``. Eq. 34's estimate on a batch of n samples is

  grad J ~= 1/n sum_i r_i grad log p(s_i | zeta_i),
  r_i = L0_i if s_i is an adversary, -L1_i if an anti-adversary,

i.e. both sums of Eq. 34 divided by the *whole* batch size n, as the paper
writes it. That is the unbiased estimate of grad (J+ - J-); dividing each sum
by its own count (a mean over the adversaries only) would be a ratio estimate,
biased whenever the direction probabilities move.

Read this way, the direction part of J is maximised by the all-adversary
policy: for every sample L0 >= 0 >= -L1, so raising p(adv) never lowers J.
A baseline leaves that expected gradient unchanged (it only reduces
variance); only the entropy bonus (0 in the paper) or a slow update (K) holds
the policy away from it. Watch ``train/p_adv`` and ``train/entropy_direction``.
"""

import jax
import jax.numpy as jnp

ADVERSARY, ANTI_ADVERSARY = 0, 1
BASELINES = ("none", "batch_mean", "ema")


def sample(keys: jax.Array, dir_logits: jax.Array,
           bound_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Draws each sample's strategy from its own key.

  Args:
    keys: [B] per-sample keys (``base.sample_keys``: keyed by global batch
      position, so N devices draw what one device draws).
    dir_logits: [B, 2] direction logits.
    bound_logits: [B, K] bound logits.
  Returns:
    direction [B] int32 (0 adversary, 1 anti-adversary), bound index [B] int32.
  """
  def one(key, dl, bl):
    kd, kb = jax.random.split(key)
    return jax.random.categorical(kd, dl), jax.random.categorical(kb, bl)
  d, k = jax.vmap(one)(keys, dir_logits, bound_logits)
  return d.astype(jnp.int32), k.astype(jnp.int32)


def log_prob(dir_logits: jax.Array, bound_logits: jax.Array, direction: jax.Array,
             bound: jax.Array) -> jax.Array:
  """log p(s_i | zeta_i) = log p(dir_i) + log p(k_i), shape [B]."""
  pick = lambda logits, a: jnp.take_along_axis(
      jax.nn.log_softmax(logits, axis=-1), a[:, None], axis=-1)[:, 0]
  return pick(dir_logits, direction) + pick(bound_logits, bound)


def entropy(logits: jax.Array) -> jax.Array:
  """Entropy in nats of each row's categorical, [B, K] -> [B]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def rewards(direction: jax.Array, l0: jax.Array, l1: jax.Array) -> jax.Array:
  """Eq. 34's per-sample weight r_i: ``L0_i`` for an adversary (J+ is
  maximised), ``-L1_i`` for an anti-adversary (J- is minimised). [B] -> [B],
  without gradient (the classifier's losses are constants for Omega)."""
  r = jnp.where(direction == ADVERSARY, l0, -l1)
  return jax.lax.stop_gradient(r.astype(jnp.float32))


def _gsum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def leave_one_out_baseline(r: jax.Array, axis_name: str | None) -> jax.Array:
  """b_i = mean of the *other* samples' rewards in the global batch, [B].

  Independent of sample i's own action, so subtracting it keeps the estimate
  unbiased (a plain batch mean including r_i would not, by O(1/n)).
  """
  n = _gsum(jnp.asarray(r.shape[0], jnp.float32), axis_name)
  total = _gsum(r.sum(), axis_name)
  return (total - r) / jnp.maximum(n - 1.0, 1.0)


def init_ema() -> dict[str, jax.Array]:
  """Zeroed running reward mean (for ``baseline='ema'``)."""
  return {"mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}


def ema_value(ema: dict, momentum: float) -> jax.Array:
  """Bias-corrected running mean (as Adam's moments); 0 before any update."""
  corr = 1.0 - momentum ** ema["count"]
  return jnp.where(ema["count"] > 0, ema["mean"] / jnp.maximum(corr, 1e-12), 0.0)


def ema_update(ema: dict, r: jax.Array, momentum: float, axis_name: str | None) -> dict:
  """Adds the global batch's mean reward to the running mean."""
  n = _gsum(jnp.asarray(r.shape[0], jnp.float32), axis_name)
  batch_mean = _gsum(r.sum(), axis_name) / n
  return {"mean": momentum * ema["mean"] + (1.0 - momentum) * batch_mean,
          "count": ema["count"] + 1.0}


def advantages(r: jax.Array, kind: str, *, ema: dict | None = None,
               momentum: float = 0.9, axis_name: str | None = None) -> jax.Array:
  """r_i minus a baseline that does not depend on sample i's action. [B].

  kind: 'none' (the paper), 'batch_mean' (leave-one-out mean of the global
  batch) or 'ema' (running mean of earlier steps' batch-mean rewards, read
  *before* this step's rewards enter it).
  """
  if kind == "none":
    return r
  if kind == "batch_mean":
    return r - leave_one_out_baseline(r, axis_name)
  if kind == "ema":
    return r - ema_value(ema, momentum)
  raise ValueError(f"baseline={kind!r}; valid: {', '.join(BASELINES)}")


def objective(dir_logits: jax.Array, bound_logits: jax.Array, direction: jax.Array,
              bound: jax.Array, adv: jax.Array, entropy_bonus: float = 0.0) -> jax.Array:
  """The surrogate whose gradient is Eq. 34's estimate (to be *ascended*).

  ``mean_i stop_gradient(adv_i) log p(s_i | zeta_i)
  + entropy_bonus * mean_i (H(p(dir | zeta_i)) + H(p(k | zeta_i)))``.

  Differentiate w.r.t. the policy parameters through the logits. The mean is
  over the local batch: averaging the gradient over devices (``pmean``) gives
  the global-batch 1/n of Eq. 34. The entropy term (0 in the paper) is an
  exact gradient, not an estimate; it keeps the policy from collapsing.

  Args:
    dir_logits, bound_logits: [B, 2], [B, K] as functions of Omega.
    direction, bound: [B] the sampled actions.
    adv: [B] rewards or advantages (treated as constants).
    entropy_bonus: weight of the entropy bonus.
  Returns:
    a scalar.
  """
  lp = log_prob(dir_logits, bound_logits, direction, bound)
  value = jnp.mean(jax.lax.stop_gradient(adv) * lp)
  if entropy_bonus:
    value = value + entropy_bonus * jnp.mean(entropy(dir_logits) + entropy(bound_logits))
  return value
