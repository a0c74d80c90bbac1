"""FRL and Meta-CAAT through the real trainer, including the epoch-end
Lagrangian update on the validation set."""

import json
import os

import numpy as np

from caat_jax import train
from tests.helpers import digits_config


def _records(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_frl_epoch_hook_updates_multipliers_from_validation_errors(tmp_path):
  config = digits_config(method="frl", **{"fairness.mode": "reweight_remargin",
                                           "fairness.attack_steps": 3})
  train.train_and_evaluate(config, str(tmp_path))
  fair = [r for r in _records(tmp_path) if "fair/lambda2" in r]
  assert len(fair) == config.num_epochs
  r = fair[0]
  b = np.array(r["fair/val_boundary_err"])
  e = np.array(r["fair/val_natural_err"])
  # the first update from zero multipliers, by hand (SPEC 7)
  np.testing.assert_allclose(r["fair/lambda2"], 0.2 * (b - b.mean() - 0.07), atol=1e-5)
  l0 = np.maximum(0.05 * (e - e.mean() - 0.07), 0)
  l0 = l0 * 0.5 / l0.sum() if l0.sum() > 0.5 else l0
  np.testing.assert_allclose(r["fair/lambda0"], l0, atol=1e-5)
  assert np.abs(r["fair/lambda2"]).max() > 0  # the validation errors are not all equal


def test_meta_caat_with_fairness_and_remargin_bounds(tmp_path):
  config = digits_config(method="meta_caat", num_epochs=2, **{
      "fairness.enabled": True, "caat.bound": "remargin", "fairness.attack_steps": 3,
      "meta.batch_size": 32})
  docs = train.train_and_evaluate(config, str(tmp_path))
  recs = _records(tmp_path)
  fair = [r for r in recs if "fair/lambda2" in r]
  assert len(fair) == 2
  steps = [r for r in recs if "train/eps_per_class" in r]
  first_epoch = [r for r in steps if r["epoch"] == 0]
  second_epoch = [r for r in steps if r["epoch"] == 1]
  # epoch 0 runs with zero multipliers (eps exactly attack.eps for every class);
  # epoch 1 with the ReMargin bounds that the first update produced
  assert np.allclose([e for e in first_epoch[-1]["train/eps_per_class"] if e is not None],
                     config.attack.eps)
  expected = config.attack.eps * np.clip(np.exp(2 * np.array(fair[0]["fair/lambda2"])), 0.98, 2.5)
  got = np.array(second_epoch[-1]["train/eps_per_class"], dtype=float)
  seen = ~np.isnan(got)
  np.testing.assert_allclose(got[seen], expected[seen], rtol=1e-5)
  assert np.isfinite(docs[0]["avg"]["robust"])
  assert all(0.0 <= a <= 1.0 for a in second_epoch[-1]["train/adv_ratio_per_class"] if a is not None)
