"""CAAT pieces shared by Meta-CAAT, Reinforce-CAAT, TRADES and FRL.

* ``perturb``: the one fused attack with per-sample direction, bound and loss
  (SPEC 2): adversaries ascend KL(f(x) || f(x')), anti-adversaries descend
  CE(f(x'), y), in a single PGD pass;
* ``strategy_stats``: adversary ratio and bound per class and per
  clean/corrupted sample (the paper's Figs. 9, 10, 13);
* ``bound_fn``: the per-sample bounds of SPEC 4 (fixed, remargin, grad),
  chosen when a step is built, and ``anti_bound_fn``, the anti-adversaries'
  scale and cap of them;
* the fairness constraints of FRL (SPEC 7): config checks and the epoch hook
  that updates the Lagrangian multipliers from validation errors;
* config checks of the strategy features (``caat.feature_*``).
"""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, bounds, fairness, losses
from caat_jax.checks import check, choice
from caat_jax.methods import base


def perturb(ctx: base.StepContext, logits_fn, x, y, clean, eps, keys,
            adversary: jax.Array) -> jax.Array:
  """Each sample's adversary or anti-adversary, in one PGD pass (SPEC 2).

  Args:
    ctx: the step context (attack settings).
    logits_fn: the classifier in inference mode.
    x: [B, H, W, C] clean images; y: [B] labels; clean: [B, C] clean logits
      (the adversaries' KL target).
    eps: [B] bounds (pixel units under the ``pixel`` threat model; the
      attack scales them per channel under ``normalized``).
    keys: [B] per-sample keys for the 0.001 N(0, I) start.
    adversary: [B] bool, True: adversary (ascend KL, sign +1), False:
      anti-adversary (descend CE with the true label, sign -1).
  Returns:
    [B, H, W, C] perturbed images, sample i in B(x_i, eps_i) ∩ [0, 1] under the
    ``pixel`` threat model (``base.threat`` for the others).
  """
  return ctx.pgd(logits_fn, x, y, keys, eps=eps, start="gaussian",
                 sign=jnp.where(adversary, 1.0, -1.0),
                 loss_kind=jnp.where(adversary, attacks.LOSS_KL,
                                     attacks.LOSS_CE).astype(jnp.int32),
                 clean_logits=clean)


def adversaries(ctx: base.StepContext, logits_fn, x, y, clean, eps, key) -> jax.Array:
  """KL adversaries of every sample (TRADES, FRL, the robust meta objective)."""
  return perturb(ctx, logits_fn, x, y, clean, eps, ctx.sample_keys(key, x.shape[0]),
                 jnp.ones((x.shape[0],), bool))


def adversaries_and_anti(ctx: base.StepContext, logits_fn, x, y, clean, eps, k_adv,
                         k_at, eps_at=None) -> tuple[jax.Array, jax.Array]:
  """Adversaries and anti-adversaries of the same inputs: one ``perturb`` over
  the stacked batch [x; x]; ``eps_at`` [B] the anti-adversaries' bounds
  (default ``eps``, the adversaries')."""
  b = x.shape[0]
  eps_at = eps if eps_at is None else eps_at
  both = lambda a, a2: jnp.concatenate([a, a2], axis=0)
  out = perturb(ctx, logits_fn, both(x, x), both(y, y), both(clean, clean), both(eps, eps_at),
                both(ctx.sample_keys(k_adv, b), ctx.sample_keys(k_at, b)),
                both(jnp.ones((b,), bool), jnp.zeros((b,), bool)))
  return out[:b], out[b:]


NUM_BOUND_BINS = 10  # Fig. 8c: samples binned by bound, equal bins over [0, largest bound]


def bound_max(kind: str, eps: float, grad_offset: float = 0.9) -> float:
  """The largest bound ``bound_fn(kind)`` gives (Fig. 8c's bin range):
  fixed eps, ReMargin 2.5 eps, grad (offset + 1) eps."""
  top = {"fixed": 1.0, "remargin": fairness.MARGIN_RANGE[1], "grad": grad_offset + 1.0}
  return float(top[kind] * eps)


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


# -- the meta objective (SPEC 5), Meta-CAAT's and Reinforce-CAAT's -------------

META_OBJECTIVES = ("robust", "clean_ce", "official")
ADVERSARY_AT = ("lookahead", "current")


def meta_loss_fn(objective: str, lam: float, ctx: base.StepContext, *,
                 adversary_at: str = "lookahead", factors=None):
  """The meta objective (SPEC 5) on the clean meta batch, chosen at build time.

  Returns ``fn(state, attack_fn, batch, k_adv, k_at, fair) -> (params ->
  scalar)``, the meta loss as a function of the classifier parameters (it is
  evaluated at W_hat). ``robust``: CE + lam KL on the meta batch's own KL
  adversaries; ``official``: plus the anti-adversaries' CE; ``clean_ce``:
  Meta-Weight-Net's clean CE. Meta adversaries are made at the look-ahead
  model (``adversary_at='lookahead'``, as the official code does, one attack
  pass at W_hat inside the meta loss) or at the current W (``'current'``);
  either way under ``stop_gradient``, so they enter the meta-gradient as
  constants. ``factors`` (``fairness.factors_fn``) weigh the natural and
  boundary terms by FRL's class weights of the meta labels (Eqs.
  A.119-A.121); None: unweighted.
  """
  factors = factors or fairness.factors_fn(None)
  official = objective == "official"

  def perturbations(logits_fn, xm, ym, k_adv, k_at):
    clean = logits_fn(xm)
    eps = bounds.fixed(ctx.attack.eps, xm.shape[0])
    if official:
      return adversaries_and_anti(ctx, logits_fn, xm, ym, clean, eps, k_adv, k_at)
    return adversaries(ctx, logits_fn, xm, ym, clean, eps, k_adv), None

  def clean_ce(state, attack_fn, batch, k_adv, k_at, fair):
    xm, ym = batch["meta_image"], batch["meta_label"]
    f0, _ = factors(fair, ym, ctx.axis_name)

    def fn(params):
      lm, _ = ctx.train_logits(params, state.batch_stats, xm)
      return (f0 * losses.cross_entropy(lm, ym)).mean()
    return fn

  def robust(state, attack_fn, batch, k_adv, k_at, fair):
    xm, ym = batch["meta_image"], batch["meta_label"]
    f0, f1 = factors(fair, ym, ctx.axis_name)
    if adversary_at == "current":
      fixed = perturbations(attack_fn, xm, ym, k_adv, k_at)

    def fn(params):
      if adversary_at == "current":
        xm_adv, xm_at = fixed
      else:  # at W_hat = params, a constant for the meta-gradient
        xm_adv, xm_at = perturbations(ctx.eval_logits_fn(params, state.batch_stats), xm, ym,
                                      k_adv, k_at)
      lm, bs = ctx.train_logits(params, state.batch_stats, xm)
      la, bs = ctx.train_logits(params, bs, xm_adv)
      value = (f0 * losses.cross_entropy(lm, ym) + lam * f1 * losses.kl_divergence(lm, la)).mean()
      if official:
        lt, _ = ctx.train_logits(params, bs, xm_at)
        value = value + (f0 * losses.cross_entropy(lt, ym)).mean()
      return value
    return fn

  return clean_ce if objective == "clean_ce" else robust


# -- per-sample bounds (SPEC 4) ------------------------------------------------

def bound_fn(kind: str, ctx: base.StepContext, grad_offset: float = 0.9,
             grad_point: str = "start", anti: bool = True):
  """``fn(logits_fn, x, y, clean, w, fair, k_adv, k_at) -> eps [B]`` for ``kind``.

  ``w`` [B, 2] are the (alpha, beta) weights (the grad bound's mix), ``fair``
  the fairness multipliers (remargin's lambda2), ``k_adv`` / ``k_at`` the
  adversaries' and anti-adversaries' keys (the grad bound's start points
  are each attack's own). ``anti=False``: no anti-adversaries in this step
  (their gradient norm is not computed).
  """
  eps = ctx.attack.eps
  if kind == "fixed":
    return lambda logits_fn, x, y, clean, w, fair, k_adv, k_at: bounds.fixed(eps, x.shape[0])
  if kind == "remargin":
    return lambda logits_fn, x, y, clean, w, fair, k_adv, k_at: bounds.remargin(
        eps, y, fair["lambda2"])
  if kind == "grad":
    def grad(logits_fn, x, y, clean, w, fair, k_adv, k_at):
      del fair
      b = x.shape[0]
      return bounds.grad_based(
          logits_fn, x, y, clean, w[:, 0], w[:, 1], eps=eps, adv_keys=ctx.sample_keys(k_adv, b),
          at_keys=ctx.sample_keys(k_at, b) if anti else None, point=grad_point,
          offset=grad_offset, axis_name=ctx.axis_name, scale=ctx.attack.scale,
          box=ctx.attack.box)
    return grad
  raise ValueError(f"bound {kind!r}; valid: {', '.join(bounds.BOUNDS)}")


def anti_bound_fn(config):
  """``fn(eps [B]) -> [B]``: the anti-adversaries' bounds from the per-sample
  bounds, ``min(caat.anti_bound_scale * eps_i, caat.anti_bound_cap *
  attack.eps)`` (cap 0: no cap), chosen at build time."""
  scale, cap = float(config.caat.anti_bound_scale), float(config.caat.anti_bound_cap)
  limit = cap * float(config.attack.eps)
  if cap == 0:
    return lambda eps: scale * eps
  return lambda eps: jnp.minimum(scale * eps, limit)


# -- config checks -------------------------------------------------------------

def validate_anti_bound(config) -> None:
  """``caat.anti_bound_scale`` / ``caat.anti_bound_cap`` (Meta- and Reinforce-CAAT)."""
  c = config.caat
  check("caat.anti_bound_scale", c.anti_bound_scale >= 0, c.anti_bound_scale,
        ">= 0 (1 = the bound as computed, 0 = anti-adversary is the clean input)")
  check("caat.anti_bound_cap", c.anti_bound_cap >= 0, c.anti_bound_cap,
        ">= 0 (a multiple of attack.eps; 0 = no cap)")


def validate_features(config) -> None:
  """The ``caat.feature_*`` keys the strategy nets' inputs use (SPEC 3)."""
  c = config.caat
  check("caat.feature_mask",
        len(c.feature_mask) == 6 and all(v in (0, 1) for v in c.feature_mask),
        c.feature_mask, "six 0/1 entries")
  check("caat.feature_momentum", 0 <= c.feature_momentum < 1, c.feature_momentum, "in [0, 1)")


def validate_fairness(config) -> None:
  """The ``fairness`` block (SPEC 7)."""
  f = config.fairness
  choice("fairness.mode", f.mode, fairness.MODES)
  check("fairness.attack_steps", f.attack_steps >= 1, f.attack_steps, ">= 1")
  check("fairness.step_size", f.step_size > 0, f.step_size, "> 0")
  check("fairness.halve_every", f.halve_every >= 1, f.halve_every, ">= 1")
  check("fairness.lim", f.lim > 0, f.lim, "> 0")


# -- fairness constraints: the epoch hook ---------------------------------------

def fairness_validation(config, always: bool = False):
  """PGD-``fairness.attack_steps`` (CE, uniform start, eps ``attack.eps``, step
  ``fairness.step_size``) on the validation set, when fairness is on (or
  ``always``, for FRL itself)."""
  f = config.fairness
  if not (f.enabled or always):
    return None
  return f"pgd{f.attack_steps}", float(config.attack.eps), float(f.step_size)


def fairness_update(config, extra: dict, errors: dict, epoch: int) -> tuple[dict, dict]:
  """FRL's Lagrangian step from per-class validation errors (fractions)."""
  f = config.fairness
  nat, rob = errors["natural"], errors["robust"]
  new = fairness.update(extra["fair"], nat, rob - nat, epoch=epoch, r1=f.r1, r2=f.r2,
                        tau1=f.tau1, tau2=f.tau2, lim=f.lim, halve_every=f.halve_every)
  if f.mode == "baseline_reweight":
    new["baseline_w"] = fairness.baseline_reweight(rob, f.baseline_factor)
  record = {f"fair/{k}": np.round(v, 6).tolist() for k, v in new.items()}
  record.update({"fair/val_natural_err": np.round(nat, 6).tolist(),
                 "fair/val_boundary_err": np.round(rob - nat, 6).tolist()})
  return dict(extra, fair=new), record


FAIRNESS_HOOK = base.EpochHook(validation=fairness_validation, update=fairness_update)
