"""The estimators' outcome experiment covers every registered estimator and
changes nothing between rows but the meta-gradient."""

from caat_jax import meta
from caat_jax.experiments import registry


def test_every_registered_estimator_has_a_row():
  for name in ("digits_meta_variants", "digits_meta_variants_noise"):
    exp = registry.get(name)
    used = {
      o.split("=", 1)[1] for r in exp.rows for o in r.overrides if o.startswith("meta.variant=")
    }
    assert used == set(meta.VARIANTS), (name, set(meta.VARIANTS) ^ used)
    assert exp.reference == "nested_grad" and exp.rows[0].name == "nested_grad"


def test_rows_differ_only_in_meta_keys():
  for name in ("digits_meta_variants", "digits_meta_variants_noise"):
    exp = registry.get(name)
    shared = {o for o in exp.rows[0].overrides if not o.startswith("meta.")}
    for r in exp.rows:
      assert {o for o in r.overrides if not o.startswith("meta.")} == shared, r.name
      assert r.config == exp.rows[0].config
  noisy = registry.get("digits_meta_variants_noise").overrides
  assert "data.noise_rate=0.4" in noisy and "data.noise_type=uniform" in noisy
