"""Issue 24's outcome experiment: does the meta-gradient estimator change the
trained model? Meta-CAAT (Grad-based bound, lambda = 1 fixed) on digits with
each estimator of ``caat_jax.meta``, on the standard set
(``digits_meta_variants``) and under 40% uniform label noise
(``digits_meta_variants_noise``), 3 seeds, PGD-20; every row paired to
``nested_grad`` (the exact hypergradient by nested reverse mode) on the same
seeds, so a difference is claimed only where the paired test supports it.

The estimators' fidelity and cost along a run are ``python -m
caat_jax.meta_bench``'s; this experiment measures the outcome.
"""

from caat_jax.experiments.rows import (
  DIGITS_NOTE,
  DIGITS_SCALE,
  FAMILIES,
  ROW_DEFINITIONS,
  Experiment,
  Row,
)

# (row name, label, config.meta overrides); the first row is the reference.
ESTIMATORS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
  ("nested_grad", "nested_grad (exact, reverse over reverse)", ("meta.variant=nested_grad",)),
  ("jvp", "jvp (exact, forward mode)", ("meta.variant=jvp",)),
  (
    "jvp-fd",
    "jvp, central difference (fd_eps 0.01)",
    ("meta.variant=jvp", "meta.fd_eps=0.01"),
  ),
  ("first_order", "first_order (gradient alignment at W)", ("meta.variant=first_order",)),
  ("k_step-2", "k_step, k = 2", ("meta.variant=k_step", "meta.k=2")),
  (
    "layerwise-head",
    "layerwise, S = head (FaMUS)",
    ("meta.variant=layerwise", "meta.layers=head", "meta.layer_scope=full"),
  ),
  (
    "neumann-3",
    "neumann, J = 3 (implicit function)",
    ("meta.variant=neumann", "meta.neumann_steps=3"),
  ),
  ("evograd", "evograd (K = 2, sigma 1e-3, tau 0.05)", ("meta.variant=evograd",)),
  (
    "jvp-reuse_step",
    "jvp, reuse_step schedule (Omega one step stale)",
    ("meta.variant=jvp", "meta.schedule=reuse_step"),
  ),
)


def estimator_rows() -> tuple[Row, ...]:
  """One Meta-CAAT (Grad-based) row per estimator, on the digits config."""
  _, _, base, _ = ROW_DEFINITIONS["meta-caat-grad"]
  config = FAMILIES["digits"]["meta"]
  return tuple(Row(name, label, config, base + extra) for name, label, extra in ESTIMATORS)


def meta_variant_experiments() -> list[Experiment]:
  note = (
    DIGITS_NOTE + " Meta-CAAT (Grad-based, λ = 1 fixed) with each meta-gradient "
    "estimator; paired differences to nested_grad over the same seeds."
  )
  common = dict(attacks=("pgd20",), table=None, seeds=3, reference="nested_grad")
  return [
    Experiment(
      "digits_meta_variants",
      "Meta-gradient estimators: the trained model (digits)",
      estimator_rows(),
      overrides=DIGITS_SCALE,
      note=note,
      **common,
    ),
    Experiment(
      "digits_meta_variants_noise",
      "Meta-gradient estimators: the trained model (digits, 40% uniform noise)",
      estimator_rows(),
      overrides=DIGITS_SCALE + ("data.noise_type=uniform", "data.noise_rate=0.4"),
      note=note,
      **common,
    ),
  ]
