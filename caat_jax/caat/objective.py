"""The meta objective of Meta-CAAT and Reinforce-CAAT (docs/method.md §5).

A loss on the clean meta batch as a function of the classifier parameters,
evaluated at the look-ahead W_hat; the meta batch's own perturbations come
from the fused attack (``methods.perturb.meta_perturbations``), passed in so
that this module stays below the methods.
"""

from caat_jax import losses
from caat_jax.caat import fairness

META_OBJECTIVES = ("robust", "clean_ce", "official")
ADVERSARY_AT = ("lookahead", "current")


def meta_loss_fn(
  objective: str, lam: float, ctx, perturbations, *, adversary_at: str = "lookahead", factors=None
):
  """The meta objective on the clean meta batch, chosen at build time.

  ``ctx`` is the step context (``methods.base.StepContext``: the training and
  inference forward passes), ``perturbations`` the meta batch's attack
  (``methods.perturb.meta_perturbations(ctx)``).

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

  def perturb(logits_fn, xm, ym, k_adv, k_at):
    return perturbations(logits_fn, xm, ym, k_adv, k_at, with_anti=official)

  def clean_ce(state, attack_fn, batch, k_adv, k_at, fair):
    xm, ym = batch["meta_image"], batch["meta_label"]
    natural_factor, _ = factors(fair, ym, ctx.axis_name)

    def fn(params):
      logits, _ = ctx.train_logits(params, state.batch_stats, xm)
      return (natural_factor * losses.cross_entropy(logits, ym)).mean()

    return fn

  def robust(state, attack_fn, batch, k_adv, k_at, fair):
    xm, ym = batch["meta_image"], batch["meta_label"]
    natural_factor, boundary_factor = factors(fair, ym, ctx.axis_name)
    if adversary_at == "current":
      fixed = perturb(attack_fn, xm, ym, k_adv, k_at)

    def fn(params):
      if adversary_at == "current":
        xm_adv, xm_at = fixed
      else:  # at W_hat = params, a constant for the meta-gradient
        xm_adv, xm_at = perturb(ctx.eval_logits_fn(params, state.batch_stats), xm, ym, k_adv, k_at)
      logits_clean, bs = ctx.train_logits(params, state.batch_stats, xm)
      logits_adv, bs = ctx.train_logits(params, bs, xm_adv)
      value = (
        natural_factor * losses.cross_entropy(logits_clean, ym)
        + lam * boundary_factor * losses.kl_divergence(logits_clean, logits_adv)
      ).mean()
      if official:
        logits_anti, _ = ctx.train_logits(params, bs, xm_at)
        value = value + (natural_factor * losses.cross_entropy(logits_anti, ym)).mean()
      return value

    return fn

  return clean_ce if objective == "clean_ce" else robust
