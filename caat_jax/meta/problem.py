"""What every meta-gradient variant shares (docs/method.md §5).

The problem every variant solves: per-sample weights ``w = weights_fn(Omega)``
([B, K]) weigh per-sample loss terms ``L(W)`` ([B, K]); the classifier takes
one look-ahead step on the weighted training loss,

    W_hat(Omega) = lookahead(W, g),   g = grad_W mean_i sum_k w_ik L_ik(W),

and the meta-gradient is d meta_loss(W_hat(Omega)) / d Omega. ``lookahead``
must be affine in ``g`` with slope ``-lr`` (plain SGD: ``W - lr g``; SGD with
momentum and weight decay: ``W - lr (mu m + g + wd W)``), which is what the
look-ahead optimisers of Meta-Weight-Net and the official code are.

Everything is per device: ``L`` and ``weights_fn`` see the local batch, the
meta loss the local meta batch; ``axis_name`` averages the training and meta
gradients over devices, so the global-batch result comes out on every device.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
VariantFn = Callable[["MetaProblem", PyTree, PyTree], tuple[PyTree, dict]]


def weighted_loss(per_sample_fn, params, w):
  """Local training loss mean_i sum_k w_ik L_ik(params) and the per-sample aux.

  Args:
    per_sample_fn: W -> ([B, K] per-sample loss terms, aux).
    params: the classifier parameters W.
    w: [B, K] per-sample weights.
  """
  terms, aux = per_sample_fn(params)
  return jnp.mean(jnp.sum(w * terms, axis=-1)), aux


@dataclasses.dataclass(frozen=True)
class MetaProblem:
  """The pure functions a meta-gradient needs.

  Attributes:
    weights_fn: Omega -> [B, K] per-sample weights.
    per_sample_fn: W -> ([B, K] per-sample loss terms, aux); linear weighting
      of these terms gives the training loss.
    lookahead_fn: (W, g) -> W_hat, affine in g with slope -lr.
    meta_loss_fn: W -> scalar meta loss on the local meta batch.
    lr: the look-ahead step size eta_1.
    axis_name: device axis, or None.
    key: PRNG key for stochastic variants (``Variant.stochastic``), else None;
      the same on every device.
    lookahead_point: W_hat already taken, or None. Meta-CAAT's
      ``meta.schedule=reuse_step`` passes the real optimiser's update here (it
      is affine in g with slope -lr as well), and the variants that can reuse
      a look-ahead (``Variant.reuses_lookahead``) take their meta gradient
      there instead of computing ``lookahead_fn(W, g)``.
  """

  weights_fn: Callable[[PyTree], jax.Array]
  per_sample_fn: Callable[[PyTree], tuple[jax.Array, Any]]
  lookahead_fn: Callable[[PyTree, PyTree], PyTree]
  meta_loss_fn: Callable[[PyTree], jax.Array]
  lr: jax.Array | float
  axis_name: str | None = None
  key: jax.Array | None = None
  lookahead_point: PyTree | None = None

  def pmean(self, tree):
    return tree if self.axis_name is None else jax.lax.pmean(tree, self.axis_name)

  def train_grad(self, params, w):
    """Global-batch gradient of the weighted training loss."""
    return self.pmean(jax.grad(lambda p: weighted_loss(self.per_sample_fn, p, w)[0])(params))

  def lookahead(self, params, w):
    """W_hat: ``lookahead_point`` when given, else ``lookahead_fn(W, g(w))``."""
    if self.lookahead_point is not None:
      return self.lookahead_point
    return self.lookahead_fn(params, self.train_grad(params, w))

  def require_key(self, variant: str) -> jax.Array:
    if self.key is None:
      raise ValueError(
        f"meta variant {variant!r} is stochastic: MetaProblem.key must be a PRNG key"
      )
    return self.key


class Costs(NamedTuple):
  """Forward-pass units F per training example of the pieces a variant
  combines (docs/method.md §11), already scaled to the meta batch where they run on it.

  Attributes:
    lookahead: the look-ahead's training gradient over the step's inputs.
    objective: the meta loss and its gradient on the meta batch (with the
      meta batch's attack, if the objective has one).
    jvp: one forward-mode pass of the per-sample losses.
    second_order: a Hessian-vector product of the training loss (reverse
      mode back through the training gradient to the parameters).
  """

  lookahead: float
  objective: float
  jvp: float
  second_order: float

  @property
  def forward(self) -> float:
    """One forward pass of the per-sample losses over the step's inputs
    (a third of the look-ahead's forward and backward)."""
    return self.lookahead / 3.0

  @property
  def to_weights(self) -> float:
    """Reverse mode back through the training gradient to the per-sample
    weights only (what ``nested_grad`` needs: W is no function of Omega).
    That gradient is linear in the weights, so its transpose is a tangent
    pass over the look-ahead's stored forward: a JVP without its primal."""
    return self.jvp - self.forward


class Variant(NamedTuple):
  """A meta-gradient variant: one module, one line in ``meta.VARIANTS``.

  Attributes:
    name: ``config.meta.variant``.
    make: ``make(**options) -> fn(problem, omega, params) -> (grad, info)``,
      ``info['meta_loss']`` the (device-averaged) meta loss.
    cost: ``cost(costs: Costs, **options) -> F`` per example, for the
      benchmark's bound.
    options: ``config.meta`` keys passed to ``make`` and ``cost`` (e.g. 'k').
    stochastic: the variant draws random numbers from ``MetaProblem.key``.
    reuses_lookahead: ``fn(**options) -> bool``, or a bool: the variant's
      meta gradient is taken at a look-ahead W_hat it can be handed
      (``MetaProblem.lookahead_point``, Meta-CAAT's ``meta.schedule=reuse_step``).
    validate: ``fn(**options)`` raising ``checks.ConfigError`` naming the
      ``config.meta`` key of a bad option value, or None.
  """

  name: str
  make: Callable[..., VariantFn]
  cost: Callable[..., float]
  options: tuple[str, ...] = ()
  stochastic: bool = False
  reuses_lookahead: bool | Callable[..., bool] = False
  validate: Callable[..., None] | None = None


class Lookahead(NamedTuple):
  """A look-ahead optimiser step, affine in the gradient with slope -lr.

  ``step(W, g, buf) -> (W_hat, buf')`` threads the optimiser's buffer
  through several steps (``k_step``); calling the object takes one step from
  ``init``, the buffer of the real optimiser now.
  """

  step: Callable[[PyTree, PyTree, Any], tuple[PyTree, Any]]
  init: Any = None

  def __call__(self, params, g):
    return self.step(params, g, self.init)[0]


def sgd_lookahead(lr) -> Lookahead:
  """Plain SGD look-ahead (Meta-Weight-Net): W - lr g."""
  return Lookahead(lambda params, g, buf: (jax.tree.map(lambda p, d: p - lr * d, params, g), buf))


def sgd_momentum_wd_lookahead(lr, momentum: float, weight_decay: float, trace) -> Lookahead:
  """The official MetaSGD, as the real optimiser (coupled weight decay, heavy
  ball): m' = mu m + g + wd W, W_hat = W - lr m', with m starting at the real
  optimiser's momentum buffer ``trace`` (zeros before the first step) and
  updated at every step of a multi-step look-ahead."""

  def step(params, g, m):
    m = jax.tree.map(lambda p, d, t: momentum * t + d + weight_decay * p, params, g, m)
    return jax.tree.map(lambda p, t: p - lr * t, params, m), m

  return Lookahead(step, trace)
