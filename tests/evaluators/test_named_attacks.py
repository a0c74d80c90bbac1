"""Attack names: the one-line error for bad names, AutoAttack's versions and
their options."""

import pytest

from caat_jax import attacks, evaluate
from caat_jax.evaluators import named_attacks


def test_names_and_their_one_line_error():
  named_attacks.check_names(["pgd20", "autoattack", "apgd-ce", "apgd-t", "fab-t", "square"])
  for bad in (["apgd"], [], ["pgd0"]):
    with pytest.raises(ValueError) as e:
      named_attacks.check_names(bad, "--attacks")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--attacks")
    for name in ("pgd<k>", "autoattack", "apgd-ce", "apgd-t", "fab-t", "square"):
      assert name in msg


def test_version_options_and_names():
  assert named_attacks.ensemble_attacks("autoattack-rand") == ("apgd-ce", "apgd-dlr")
  opts = named_attacks.ensemble_options("autoattack-rand", {"apgd-ce": {"num_iters": 6}})
  assert opts == {
    "apgd-ce": {"num_restarts": 1, "eot_iter": 20, "num_iters": 6},
    "apgd-dlr": {"num_restarts": 1, "eot_iter": 20},
  }
  assert named_attacks.ensemble_options("autoattack", {"square": {"num_queries": 3}}) == {
    "square": {"num_queries": 3}
  }
  named_attacks.check_names(["autoattack-rand"])
  with pytest.raises(ValueError, match="'standard', 'rand'"):
    attacks.autoattack.version_options("random")
  assert evaluate.apply_version(["pgd20", "autoattack"], "rand") == ["pgd20", "autoattack-rand"]
  assert evaluate.apply_version(["autoattack"], "standard") == ["autoattack"]
  with pytest.raises(ValueError) as e:
    evaluate.apply_version(["autoattack"], "rnd")
  assert "--version='rnd'" in str(e.value) and "'rand'" in str(e.value)
