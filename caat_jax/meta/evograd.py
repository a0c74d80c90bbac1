"""``evograd``: evolutionary hypergradients (Bohdal et al., NeurIPS 2021,
``ondrejbohdal/evograd``). docs/method.md §5.

K perturbed copies theta_k = W + sigma eps_k (eps_k ~ N(0, I), from
``MetaProblem.key``, the same on every device) are scored by their weighted
training losses l_k(w) = mean_i sum_j w_ij L_ij(theta_k) (global batch) and
merged, W* = sum_k a_k theta_k with a = softmax(-l / tau); the meta loss at
W* is back-propagated to Omega through the merge weights a only (the copies
are constants). Forward passes only: K of the per-sample losses and the
meta objective; no second-order pass, no JVP.

Expectation for small sigma. With v* = grad meta(W*),

    d meta / d w_ik = -(1/(tau n)) Cov_a(<v*, theta>, L_ik(theta)),

the covariance over the K copies under the weights a. For small sigma
(sigma |grad_W l| << tau, so a ~ 1/K, and W* ~ W, v* ~ v = grad meta(W)),
<v*, theta_k> = const + sigma <v, eps_k> and L_ik(theta_k) = L_ik(W) +
sigma <grad L_ik, eps_k> + O(sigma^2); with E[eps eps^T] = I,

    E[Cov] = sigma^2 (1 - 1/K) <v, grad_W L_ik(W)>,

so E[c_ik] = s * c_ik(first_order), s = sigma^2 (1 - 1/K) / (tau lr), with
relative corrections O(sigma / tau) and O(sigma): evograd is an unbiased
but noisy estimate of ``first_order`` (gradient alignment at W, not at
W_hat) rescaled by s. For the meta learning rate: with a plain SGD meta
step it multiplies the effective rate by s (at the paper's sigma = 1e-3,
tau = 0.05, K = 2 and lr = 0.1, s = 1e-4: scale the rate by 1/s to match
first_order); Meta-CAAT's Adam is invariant to the constant s (as long as
the gradients stay well above Adam's epsilon), so what changes is the
noise: Adam's step follows the estimate's sign pattern, which for small K
is mostly noise (relative standard deviation of order
|v| |grad L_ik| / (|<v, grad L_ik>| sqrt(K)) per sample).
"""

import functools

import jax
import jax.numpy as jnp

from caat_jax.checks import check
from caat_jax.meta.problem import Costs, MetaProblem, Variant


def perturbed_copies(key, params, k: int, sigma):
  """[theta_1..theta_K], theta_j = W + sigma eps_j."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  eps = [jax.random.normal(kk, (k,) + l.shape, l.dtype) for kk, l in zip(keys, leaves)]
  return [
    jax.tree.unflatten(tree, [l + jnp.asarray(sigma, l.dtype) * e[j] for l, e in zip(leaves, eps)])
    for j in range(k)
  ]


def evograd(problem: MetaProblem, omega, params, k: int = 2, sigma=1e-3, tau=0.05):
  thetas = perturbed_copies(problem.require_key("evograd"), params, k, sigma)
  terms = [jax.lax.stop_gradient(problem.per_sample_fn(t)[0]) for t in thetas]  # [B, K'] each

  def outer(om):
    w = problem.weights_fn(om)
    scores = jnp.stack([problem.pmean(jnp.mean(jnp.sum(w * t, axis=-1))) for t in terms])
    a = jax.nn.softmax(-scores / tau)
    merged = jax.tree.map(
      lambda *ts: sum(a[j].astype(x.dtype) * x for j, x in enumerate(ts)), *thetas
    )
    return problem.meta_loss_fn(merged)

  meta_loss, grad = jax.value_and_grad(outer)(omega)
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def expected_scale(k: int, sigma, tau, lr) -> float:
  """s with E[evograd] ~ s * first_order for small sigma (module docstring)."""
  return sigma**2 * (1 - 1 / k) / (tau * lr)


def cost(c: Costs, evograd_k: int = 2, evograd_sigma=1e-3, evograd_tau=0.05) -> float:
  return evograd_k * c.forward + c.objective


def validate(evograd_k=2, evograd_sigma=1e-3, evograd_tau=0.05) -> None:
  check(
    "meta.evograd_k",
    isinstance(evograd_k, int) and evograd_k >= 2,
    evograd_k,
    "an integer >= 2 (one copy has no merge weight to learn)",
  )
  number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
  check("meta.evograd_sigma", number(evograd_sigma) and evograd_sigma > 0, evograd_sigma, "> 0")
  check("meta.evograd_tau", number(evograd_tau) and evograd_tau > 0, evograd_tau, "> 0")


VARIANT = Variant(
  "evograd",
  make=lambda evograd_k=2, evograd_sigma=1e-3, evograd_tau=0.05: functools.partial(
    evograd, k=int(evograd_k), sigma=evograd_sigma, tau=evograd_tau
  ),
  cost=cost,
  options=("evograd_k", "evograd_sigma", "evograd_tau"),
  stochastic=True,
  validate=validate,
)
