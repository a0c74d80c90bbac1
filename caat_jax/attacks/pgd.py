"""Projected gradient descent/ascent with per-sample bound, direction and loss.

One call serves every use of PGD in the library (docs/method.md §2):

* PGD-AT adversaries: ascend CE from a uniform start in the ball.
* TRADES / CAAT adversaries: ascend KL(f(x) || f(x')) from x + 0.001 N(0, I).
* CAAT anti-adversaries: descend CE with the true label.
* Evaluation PGD-k: ascend CE from a uniform start.

Every per-sample quantity (``eps``, ``sign``, ``step_size``, ``loss_kind``) is an
array of shape [B], so Reinforce-CAAT's mixed batch of adversaries and
anti-adversaries with different bounds is one compiled pass, and a change of
bounds never recompiles.

The input gradient is taken per example with ``vmap(grad(.))`` rather than
``grad(sum(loss))``: both agree when the model is batch-independent
(inference-mode BatchNorm, as docs/method.md §1 requires during attacks), but the vmapped
form makes that independence hold by construction.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from caat_jax import losses

LOSS_CE = 0  # cross-entropy with the given label
LOSS_KL = 1  # KL(softmax(clean_logits) || softmax(f(x'))), TRADES' robust term

LogitsFn = Callable[[jax.Array], jax.Array]  # [B, H, W, C] -> [B, num_classes]


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1] to broadcast a per-sample value against images."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array, scale=1.0, box=(0.0, 1.0)) -> jax.Array:
  """Projection onto B_inf(x_i, eps_i * scale), then clipping to ``box``.

  Args:
    x_adv, x: [B, H, W, C].
    eps: [B] bounds.
    scale: a scalar or [C], the per-channel multiplier of the bound (1: the
      bound in pixel units; a training threat model may set the channels' std).
    box: (lo, hi), scalars or [C]: the box clipped to last (default the pixel
      range [0, 1]). When ``x`` lies inside the box, the result lies in
      B_inf(x_i, eps_i * scale) ∩ box; a narrower box may move it out of the ball.
  """
  e = _bcast(eps, x) * jnp.asarray(scale, x.dtype)
  lo, hi = (jnp.asarray(b, x.dtype) for b in box)
  return jnp.clip(jnp.clip(x_adv, x - e, x + e), lo, hi)


def random_start(
  x: jax.Array, eps: jax.Array, keys: jax.Array, kind: str, scale=1.0, box=(0.0, 1.0)
) -> jax.Array:
  """Attack start point, per sample from its own key (device-count invariant).

  Args:
    x: clean images [B, H, W, C] in [0, 1].
    eps: per-sample bounds [B].
    keys: per-sample PRNG keys [B, 2] (or typed keys [B]).
    kind: 'uniform' (U(-eps_i, eps_i), Madry et al.), 'gaussian'
      (0.001 N(0, I), TRADES) or 'none'.
    scale, box: see ``project``; the noise is multiplied by ``scale`` too.
  Returns:
    start points [B, H, W, C], ``project``ed (inside B(x_i, eps_i) ∩ [0, 1]
    by default).
  """
  shape = x.shape[1:]
  if kind == "none":
    return x
  if kind == "uniform":
    noise = jax.vmap(lambda k: jax.random.uniform(k, shape, x.dtype, -1.0, 1.0))(keys)
    noise = noise * _bcast(eps, x)
  elif kind == "gaussian":
    noise = 0.001 * jax.vmap(lambda k: jax.random.normal(k, shape, x.dtype))(keys)
  else:
    raise ValueError(f"start={kind!r}; valid: 'uniform', 'gaussian', 'none'")
  return project(x + noise * jnp.asarray(scale, x.dtype), x, eps, scale, box)


def pgd(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps: jax.Array,
  step_size: jax.Array,
  num_steps: int,
  keys: jax.Array,
  sign: jax.Array | None = None,
  loss_kind: jax.Array | None = None,
  clean_logits: jax.Array | None = None,
  start: str = "uniform",
  unroll: bool = True,
  scale=1.0,
  box=(0.0, 1.0),
) -> jax.Array:
  """L-inf PGD, Algorithm 1 lines 5-10, with per-sample everything.

  Iterates ``x' <- Proj(x' + sign_i * step_i * sign(grad_x' l_i(x')))``.

  Args:
    logits_fn: the classifier in inference mode; it must treat examples
      independently (no batch statistics). Its parameters should be under
      ``stop_gradient`` (the caller's job) so that the attack is a constant
      for the weight gradient.
    x: clean images [B, H, W, C] in [0, 1].
    labels: [B] int labels for the CE loss (true labels).
    eps: [B] L-inf bounds in pixel units (e.g. 8/255).
    step_size: [B] step sizes (2/255, or eps/4).
    num_steps: K, a static int.
    keys: [B] per-sample PRNG keys for the start point.
    sign: [B] +1 (adversary: ascend l_i) or -1 (anti-adversary: descend l_i);
      default all +1.
    loss_kind: [B] int, LOSS_CE or LOSS_KL per sample; default all CE.
    clean_logits: [B, C] logits of the clean input, the fixed KL target; needed
      when any sample uses LOSS_KL.
    start: 'uniform', 'gaussian' or 'none' (see ``random_start``).
    unroll: unroll the K steps (much faster on CPU; accelerators may prefer a
      rolled loop for compile time).
    scale: a scalar or [C], the per-channel multiplier of every bound, step
      and start noise (default 1: pixel units). The training threat model
      ``normalized`` sets the channels' std: the PGD of an attack run on
      (x - mean) / std, mapped back to pixels (docs/method.md §12, "eps in pixel
      space", on the official code).
    box: (lo, hi), scalars or [C], the range clipped to after each step
      (default [0, 1]; ``normalized_clip``: [mean, mean + std], the official
      code's [0, 1] clip of normalised values).
  Returns:
    perturbed images [B, H, W, C] inside B(x_i, eps_i) ∩ [0, 1] (defaults;
    see ``project``), no gradient.
  """
  batch = x.shape[0]
  sign = jnp.ones((batch,), x.dtype) if sign is None else sign.astype(x.dtype)
  if loss_kind is None:
    loss_kind = jnp.full((batch,), LOSS_CE, jnp.int32)
  if clean_logits is None:
    clean_logits = jnp.zeros((batch, 1), jnp.float32)  # unused by CE samples
  clean_logits = jax.lax.stop_gradient(clean_logits)
  x = jax.lax.stop_gradient(x)

  def sample_loss(xi, yi, kind, target):
    logits = logits_fn(xi[None])
    ce = losses.cross_entropy(logits, yi[None])[0]
    if target.shape[-1] != logits.shape[-1]:
      return ce  # no KL target given: every sample is CE
    kl = losses.kl_divergence(target[None], logits)[0]
    return jnp.where(kind == LOSS_KL, kl, ce)

  input_grad = jax.vmap(jax.grad(sample_loss))
  step = _bcast(sign * step_size.astype(x.dtype), x) * jnp.asarray(scale, x.dtype)

  def body(_, x_adv):
    g = input_grad(x_adv, labels, loss_kind, clean_logits)
    return project(x_adv + step * jnp.sign(g), x, eps, scale, box)

  x_adv = random_start(x, eps, keys, start, scale, box)
  x_adv = jax.lax.fori_loop(0, num_steps, body, x_adv, unroll=unroll if num_steps else 1)
  return jax.lax.stop_gradient(x_adv)
