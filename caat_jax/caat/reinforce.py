"""REINFORCE for Reinforce-CAAT's strategy net (paper Eqs. 32-35, docs/method.md §6).

Pure functions, independent of any classifier, so the estimator can be
checked on a toy problem with a known expected reward.

The policy is one categorical over the 2 x K strategies s = (dir, k)
(direction 0 = adversary, 1 = anti-adversary; ``k`` indexes the bound set),
given by joint logits [B, 2, K] (``strategy.PolicyNet``). The strategy net
ascends the expected reward with the score-function estimate

  grad J ~= 1/n sum_i A_i grad log p(s_i | zeta_i),   A_i = r_i - b_i,

over the *whole* batch (n), as Eq. 34 writes it; dividing each direction's
sum by its own count would be a ratio estimate, biased whenever the
direction probabilities move. Two rewards (``reinforce.reward``):

* ``paper`` (Eq. 34 literally): r_i = L0_i for an adversary, -L1_i for an
  anti-adversary, with L0 = CE(f(x), y) + lam KL(f(x) || f(x_adv)) and
  L1 = CE(f(x_at), y). Since L0 >= 0 >= -L1 for every sample, raising p(adv)
  never lowers J: the expected gradient on a sample's direction logit gap is
  p(adv) p(anti) (E[L0] + E[L1]) > 0, whatever the baseline (a baseline only
  reduces variance). The policy drifts to all-adversary.
* ``lookahead``: r_i = (eta_1 / n) <grad_W L_meta(W), grad_W l_i(x~_i; W)>,
  the first-order decrease of the robust meta loss on a clean meta batch when
  the classifier takes one SGD step on sample i's own loss under its sampled
  strategy (``methods/reinforce_caat.py`` computes the n inner products with
  one JVP). Standardised per batch, a leave-one-out baseline subtracted.
"""

import jax
import jax.numpy as jnp

ADVERSARY, ANTI_ADVERSARY = 0, 1
BASELINES = ("none", "batch_mean", "ema")
REWARDS = ("paper", "lookahead")


def sample(keys: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Draws each sample's strategy from its own key.

  Args:
    keys: [B] per-sample keys (``base.sample_keys``: keyed by global batch
      position, so N devices draw what one device draws).
    logits: [B, 2, K] joint logits over (direction, bound).
  Returns:
    direction [B] int32 (0 adversary, 1 anti-adversary), bound index [B] int32.
  """
  num_bounds = logits.shape[-1]
  flat = logits.reshape(logits.shape[0], -1)
  s = jax.vmap(jax.random.categorical)(keys, flat).astype(jnp.int32)
  return s // num_bounds, s % num_bounds


def log_prob(logits: jax.Array, direction: jax.Array, bound: jax.Array) -> jax.Array:
  """log p(s_i | zeta_i) of the joint categorical, [B, 2, K] -> [B]."""
  flat = jax.nn.log_softmax(logits.reshape(logits.shape[0], -1), axis=-1)
  idx = direction * logits.shape[-1] + bound
  return jnp.take_along_axis(flat, idx[:, None], axis=-1)[:, 0]


def entropy(logits: jax.Array) -> jax.Array:
  """Entropy in nats of each row's categorical over the last axis, [..., K] -> [...]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def direction_logits(logits: jax.Array) -> jax.Array:
  """Log-marginal over directions, [B, 2, K] -> [B, 2] (softmax gives p(dir))."""
  return jax.nn.logsumexp(logits, axis=-1)


def entropies(logits: jax.Array) -> dict[str, jax.Array]:
  """Joint entropy H(s), direction entropy H(dir) and conditional bound
  entropy H(k | dir) = H(s) - H(dir), each [B], of joint logits [B, 2, K]."""
  joint = entropy(logits.reshape(logits.shape[0], -1))
  direction = entropy(direction_logits(logits))
  return {"joint": joint, "direction": direction, "bound": joint - direction}


def paper_rewards(direction: jax.Array, l0: jax.Array, l1: jax.Array) -> jax.Array:
  """Eq. 34's per-sample weight r_i: ``L0_i`` for an adversary (J+ is
  maximised), ``-L1_i`` for an anti-adversary (J- is minimised). [B] -> [B],
  without gradient (the classifier's losses are constants for Omega)."""
  r = jnp.where(direction == ADVERSARY, l0, -l1)
  return jax.lax.stop_gradient(r.astype(jnp.float32))


def lookahead_rewards(dots: jax.Array, lr, n) -> jax.Array:
  """r_i = (eta_1 / n) <g_meta, grad_W l_i>: the first-order decrease
  L_meta(W) - L_meta(W - (eta_1 / n) grad_W l_i) of the meta loss.

  Args:
    dots: [B] inner products <grad_W L_meta(W), grad_W l_i(W)>.
    lr: eta_1, the classifier's learning rate at this step.
    n: the global batch size.
  """
  return jax.lax.stop_gradient((lr / n) * dots).astype(jnp.float32)


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
  return {
    "mean": momentum * ema["mean"] + (1.0 - momentum) * batch_mean,
    "count": ema["count"] + 1.0,
  }


def advantages(
  r: jax.Array,
  kind: str,
  *,
  ema: dict | None = None,
  momentum: float = 0.9,
  axis_name: str | None = None,
) -> jax.Array:
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


def standardize(r: jax.Array, axis_name: str | None, eps: float = 1e-12) -> jax.Array:
  """r / std(r) over the global batch, [B] -> [B] (the mean is left to the
  baseline). Makes the policy's step independent of the reward's scale,
  which for the look-ahead reward follows eta_1 and the gradients' size."""
  n = _gsum(jnp.asarray(r.shape[0], jnp.float32), axis_name)
  mean = _gsum(r.sum(), axis_name) / n
  var = _gsum(jnp.sum((r - mean) ** 2), axis_name) / n
  return r / jnp.sqrt(var + eps)


def objective(
  logits: jax.Array,
  direction: jax.Array,
  bound: jax.Array,
  adv: jax.Array,
  entropy_bonus: float = 0.0,
) -> jax.Array:
  """The surrogate whose gradient is Eq. 34's estimate (to be *ascended*).

  ``mean_i stop_gradient(adv_i) log p(s_i | zeta_i)
  + entropy_bonus * mean_i H(p(s | zeta_i))``.

  Differentiate w.r.t. the policy parameters through the logits. The mean is
  over the local batch: averaging the gradient over devices (``pmean``) gives
  the global-batch 1/n of Eq. 34. The entropy term (0 in the paper) is an
  exact gradient, not an estimate; it keeps the policy from collapsing.

  Args:
    logits: [B, 2, K] joint logits as functions of Omega.
    direction, bound: [B] the sampled actions.
    adv: [B] rewards or advantages (treated as constants).
    entropy_bonus: weight of the entropy bonus.
  Returns:
    a scalar.
  """
  lp = log_prob(logits, direction, bound)
  value = jnp.mean(jax.lax.stop_gradient(adv) * lp)
  if entropy_bonus:
    value = value + entropy_bonus * jnp.mean(entropies(logits)["joint"])
  return value
