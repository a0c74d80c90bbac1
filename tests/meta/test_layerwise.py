"""``layerwise`` (FaMUS) against independent computations (docs/method.md §5):
S = all parameters is ``jvp``; the cotangents of a partition's parts sum to
the full one; ``layer_scope=subset`` is ``nested_grad`` of a look-ahead that
moves S only; the forward-mode pass really starts at S."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import meta, models
from caat_jax.checks import ConfigError
from caat_jax.meta.jvp import jvp, per_sample_dots
from caat_jax.meta.layerwise import layerwise, subset_dots
from caat_jax.meta.nested_grad import nested_grad
from tests.meta.test_variants import _problem

pytestmark = pytest.mark.usefixtures("x64")  # tests/meta/conftest.py


def _close(a, b, rtol=1e-12, atol=1e-15):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("lookahead", ["sgd", "sgd_momentum_wd"])
def test_all_parameters_is_jvp(lookahead):
  problem, omega, params = _problem(lookahead)
  ref, ref_info = jvp(problem, omega, params)
  for scope in ("full", "subset"):  # moving every parameter is the full look-ahead
    got, info = layerwise(problem, omega, params, layers="w1,b1,w2", layer_scope=scope)
    _close(got, ref)
    np.testing.assert_allclose(info["meta_loss"], ref_info["meta_loss"], rtol=1e-14)


def test_partition_cotangents_sum_to_the_full_one():
  problem, omega, params = _problem()
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  v = {n: jax.random.normal(k, params[n].shape) for n, k in zip(sorted(params), keys)}
  full = per_sample_dots(problem, params, v)
  for partition in ([["w1"], ["b1"], ["w2"]], [["w1", "b1"], ["w2"]], [["w2", "b1"], ["w1"]]):
    parts = [subset_dots(problem, params, {n: v[n] for n in s}, ",".join(s)) for s in partition]
    np.testing.assert_allclose(sum(parts), full, rtol=0, atol=1e-12)
    assert all(float(jnp.abs(p).max()) > 1e-3 for p in parts)  # every part contributes
  # and with the exact look-ahead (scope full), the Omega-gradients sum to jvp's
  ref, _ = jvp(problem, omega, params)
  grads = [layerwise(problem, omega, params, layers=s)[0] for s in ("w1", "b1", "w2")]
  _close(jax.tree.map(lambda *g: sum(g), *grads), ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("lookahead", ["sgd", "sgd_momentum_wd"])
@pytest.mark.parametrize("layers", ["w2", "w1,b1"])
def test_subset_scope_is_nested_grad_of_a_lookahead_moving_only_s(lookahead, layers):
  problem, omega, params = _problem(lookahead)
  s = layers.split(",")
  full_step = problem.lookahead_fn

  def only_s(w, g):  # written out: S takes the look-ahead's step, the rest stays
    moved = full_step(w, g)
    return {n: moved[n] if n in s else w[n] for n in w}

  ref, ref_info = nested_grad(dataclasses.replace(problem, lookahead_fn=only_s), omega, params)
  got, info = layerwise(problem, omega, params, layers=layers, layer_scope="subset")
  _close(got, ref, rtol=1e-9, atol=1e-14)
  np.testing.assert_allclose(info["meta_loss"], ref_info["meta_loss"], rtol=1e-12)
  # a different estimate from the full look-ahead's truncation
  trunc, _ = layerwise(problem, omega, params, layers=layers, layer_scope="full")
  gap = max(
    float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(trunc), jax.tree.leaves(got))
  )
  assert gap > 1e-6


def test_forward_mode_starts_at_s():
  """The JVP over the last layer costs fewer FLOPs than the full one (XLA's
  own count), so the saving is real, not a masked full pass."""
  problem, _, params = _problem()
  v = jax.tree.map(jnp.ones_like, params)
  flops = lambda f: jax.jit(f).lower(params).compile().cost_analysis()["flops"]
  full = flops(lambda p: per_sample_dots(problem, p, v))
  head = flops(lambda p: subset_dots(problem, p, {"w2": v["w2"]}, "w2"))
  primal = flops(lambda p: problem.per_sample_fn(p)[0])
  assert head < full
  assert head - primal < 0.5 * (full - primal)


@pytest.mark.parametrize("scope, passes", [("subset", 1), ("full", 2)])
def test_subset_scope_runs_the_training_batch_forward_once(scope, passes):
  """``subset``: one linearisation serves the look-ahead's gradient and the
  inner products (``full`` needs the look-ahead's pass and the JVP's)."""
  problem, omega, params = _problem()
  calls = []

  def counted(p):
    calls.append(1)  # once per trace of a forward pass of the training batch
    return problem.per_sample_fn(p)

  counting = dataclasses.replace(problem, per_sample_fn=counted)
  jax.make_jaxpr(lambda o: layerwise(counting, o, params, layers="w2", layer_scope=scope))(omega)
  assert len(calls) == passes


def test_module_names_of_the_models():
  names = ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1", "head"]  # small_cnn
  assert models.module_order(names) == ["Conv_0", "BatchNorm_0", "Conv_1", "BatchNorm_1", "head"]
  assert models.select_modules(names, "last_block") == ["Conv_1", "BatchNorm_1", "head"]
  resnet = ["final_bn", "head", "stage1_block1", "stage2_block2", "stage2_block1", "stem_conv"]
  assert models.select_modules(resnet, "last_block") == ["stage2_block2", "final_bn", "head"]
  assert models.select_modules(resnet, "head") == ["head"]
  assert models.select_modules(resnet, "head, stage1_block1") == ["stage1_block1", "head"]
  with pytest.raises(ValueError, match=r"config.meta.layers='head,fc'.*stem_conv"):
    models.select_modules(resnet, "head,fc")


def test_options_validated_by_value():
  v = meta.get("layerwise")
  v.validate(layers="last_block", layer_scope="subset")
  with pytest.raises(ConfigError, match=r"config.meta.layer_scope='all'"):
    v.validate(layers="head", layer_scope="all")
  with pytest.raises(ConfigError, match=r"config.meta.layers=''"):
    v.validate(layers="", layer_scope="full")
  assert v.reuses_lookahead(layers="head", layer_scope="full")
  assert not v.reuses_lookahead(layers="head", layer_scope="subset")
  c = meta.Costs(lookahead=9.0, objective=27.0, jvp=6.0, second_order=18.0)
  assert v.cost(c, layers="head", layer_scope="full") == 9 + 27 + 3
  # subset: one forward pass of the training batch serves both
  assert v.cost(c, layers="head", layer_scope="subset") == 3 + 27
  assert v.cost(c, layers="last_block", layer_scope="subset") == 3 + 6 + 3 + 27
  assert v.cost(c, layers="last_block", layer_scope="full") == meta.get("jvp").cost(c)
