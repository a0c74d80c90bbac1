"""meta_bench rows with options: ``<variant>[option=value;...]`` measures a
variant with some of its ``config.meta`` options set, beside the same
variant at the config's values (e.g. ``layerwise`` and
``layerwise[layer_scope=subset]`` in one table)."""

import numpy as np
import pytest

from caat_jax import config_lib
from caat_jax.meta_bench import cost, probe, runner
from tests.helpers import digits_config
from tests.meta_bench.test_fidelity import _meta_cfg, _toy


def test_row_names_parse():
  assert cost.parse_name("jvp") == ("jvp", None, {})
  assert cost.parse_name("layerwise[layer_scope=subset; layers=conv1,head]@reuse_step") == (
    "layerwise",
    "reuse_step",
    {"layer_scope": "subset", "layers": "conv1,head"},
  )
  assert cost.split_names("jvp, layerwise[layers=conv1,head;layer_scope=subset],k_step[k=2]") == [
    "jvp",
    "layerwise[layers=conv1,head;layer_scope=subset]",
    "k_step[k=2]",
  ]
  for bad in ("layerwise[layer_scope]", "jvp[", "jvp]x", "[k=2]"):
    with pytest.raises(config_lib.ConfigError, match="--variants"):
      cost.parse_name(bad)


def test_row_options_are_typed_and_checked_before_training():
  config = digits_config(method="meta_caat")
  c = cost.variant_config(config, "k_step[k=3]")
  assert c.meta.variant == "k_step" and c.meta.k == 3 and isinstance(c.meta.k, int)
  c = cost.variant_config(config, "evograd[evograd_sigma=0.01]@reuse_step")
  assert c.meta.evograd_sigma == 0.01 and c.meta.schedule == "reuse_step"
  assert config.meta.variant != "evograd" and config.meta.evograd_sigma != 0.01  # a copy
  with pytest.raises(config_lib.ConfigError, match=r"k_step has no option 'layers'.*: k"):
    cost.variant_config(config, "k_step[layers=head]")
  with pytest.raises(config_lib.ConfigError, match=r"meta.k='two' is not an integer"):
    cost.variant_config(config, "k_step[k=two]")
  c = cost.variant_config(config, "evograd[evograd_sigma=1]")  # an int for a float
  assert c.meta.evograd_sigma == 1.0 and isinstance(c.meta.evograd_sigma, float)
  assert cost.variant_config(config, "neumann[neumann_alpha=0.05]").meta.neumann_alpha == 0.05
  # a None default takes a number, None or text; a tuple default a comma list
  typed = cost._typed  # pylint: disable=protected-access
  assert [typed("x", t, None) for t in ("0.5", "3", "None", "head")] == [0.5, 3, None, "head"]
  assert typed("layers", "conv1, head", ("head",)) == ("conv1", "head")
  with pytest.raises(config_lib.ConfigError, match=r"meta.layer_scope"):
    cost.variant_config(config, "layerwise[layer_scope=bogus]")
  # run_meta_bench refuses them before it trains anything, the model's refusals too
  with pytest.raises(config_lib.ConfigError, match=r"meta.layer_scope"):
    runner.run_meta_bench(config, ["layerwise[layer_scope=bogus]"], "/nonexistent/never")
  with pytest.raises(config_lib.ConfigError, match=r"'layerwise\[layers=conv9,head\]' cannot run"):
    runner.run_meta_bench(config, ["jvp", "layerwise[layers=conv9,head]"], "/nonexistent/never")


def test_a_rows_options_reach_its_step_cost():
  """The §11 bound of the row's whole step and meta part: the subset scope
  drops the look-ahead's backward pass, the same F from both."""
  config = digits_config(method="meta_caat")
  full = cost.units(config, "layerwise")
  subset = cost.units(config, "layerwise[layer_scope=subset]")
  assert subset[1] < full[1]
  assert full[0] - subset[0] == pytest.approx(full[1] - subset[1])


def test_a_row_with_options_is_the_variant_configured_so():
  """Neumann with J = 0 is jvp exactly (its docstring's identity); with J = 3
  it is not: the row's option, not the config's J = 1, decides."""
  cap, cfg = _toy(), _meta_cfg()
  rows = probe.probe_checkpoint(
    cap, ["jvp", "neumann[neumann_steps=0]", "neumann[neumann_steps=3]", "neumann"], cfg, keys=[]
  )
  got = {r["variant"]: r for r in rows}
  assert got["neumann[neumann_steps=0]"]["options"]["neumann_steps"] == 0
  assert got["neumann[neumann_steps=0]"]["grad_norm"] == pytest.approx(
    got["jvp"]["grad_norm"], rel=1e-6
  )
  norms = [got[n]["grad_norm"] for n in ("jvp", "neumann", "neumann[neumann_steps=3]")]
  assert cfg.neumann_steps == 1 and len(set(np.round(norms, 6))) == 3
  # the row with the config's own value equals the plain row
  one = probe.probe_checkpoint(cap, ["neumann[neumann_steps=1]"], cfg, keys=[])[1]
  assert one["grad_norm"] == pytest.approx(got["neumann"]["grad_norm"], rel=1e-7)
