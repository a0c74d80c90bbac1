"""Per-class errors (Eqs. 45-48) against a hand-computed example, and the table."""

import numpy as np

from caat_jax import evaluators


def test_per_class_report_with_unequal_class_sizes():
  # class 0: 4 points, class 1: 2 points, class 2: 1 point
  labels = np.array([0, 0, 0, 0, 1, 1, 2])
  natural = np.array([1, 1, 1, 0, 1, 0, 1], bool)
  robust = np.array([1, 0, 0, 0, 0, 0, 1], bool)
  doc = evaluators.report(
    {"label": labels, "natural": natural, "pgd20": robust},
    3,
    attack="pgd20",
    eps=8 / 255,
    method="m",
    dataset="d",
    model="x",
  )
  # natural errors: 1/4, 1/2, 0 ; robust errors: 3/4, 2/2, 0 ; boundary: 1/2, 1/2, 0
  np.testing.assert_allclose(doc["per_class"]["natural"], [25.0, 50.0, 0.0])
  np.testing.assert_allclose(doc["per_class"]["robust"], [75.0, 100.0, 0.0])
  np.testing.assert_allclose(doc["per_class"]["boundary"], [50.0, 50.0, 0.0])
  # class average weighs classes equally: (25 + 50 + 0) / 3, not 2/7 of points
  np.testing.assert_allclose(doc["avg"]["natural"], 25.0)
  np.testing.assert_allclose(doc["avg"]["robust"], 175.0 / 3)
  np.testing.assert_allclose(doc["avg"]["boundary"], 100.0 / 3)
  assert doc["worst"] == {"natural": 50.0, "boundary": 50.0, "robust": 100.0}
  assert doc["num_examples"] == 7 and doc["attack"] == "pgd20"
  assert set(doc) >= {"method", "dataset", "model", "attack", "eps", "avg", "worst", "per_class"}


def test_table_lists_every_document():
  doc = {
    "attack": "pgd20",
    "avg": {"natural": 1.0, "boundary": 2.0, "robust": 3.0},
    "worst": {"natural": 4.0, "boundary": 5.0, "robust": 6.0},
  }
  table = evaluators.format_table([doc, dict(doc, attack="pgd100")])
  assert "pgd20" in table and "pgd100" in table and "6.00" in table
