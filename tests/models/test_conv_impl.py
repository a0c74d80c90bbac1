"""``models.layers``' two ways of computing a conv: the backend's
convolution (default) and one matrix product (``matmul_conv``), used by the
evaluation's looped attacks on a CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from caat_jax import models
from caat_jax.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
  "kernel, stride, pad, size",
  [
    (3, 1, 1, 8),
    (3, 2, 1, 8),
    (3, 2, 1, 7),
    (1, 1, 0, 5),
    (1, 2, 0, 8),
    (7, 2, 3, 12),
    (3, 1, 0, 6),
  ],
)
def test_matmul_conv_equals_lax_convolution_and_its_gradients(kernel, stride, pad, size):
  kx, kw = jax.random.split(jax.random.PRNGKey(kernel * 10 + stride))
  x = jax.random.normal(kx, (3, size, size, 4))
  w = jax.random.normal(kw, (kernel, kernel, 4, 5))
  args = ((stride, stride), ((pad, pad), (pad, pad)))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  ref = lambda x, w: lax.conv_general_dilated(x, w, *args, dimension_numbers=dn)
  mm = lambda x, w: layers.matmul_conv(x, w, *args, dimension_numbers=dn)
  np.testing.assert_allclose(mm(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  # both gradients (the attacks differentiate w.r.t. the input, training w.r.t. w)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for a, b in zip(jax.grad(loss(mm), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_matmul_conv_refuses_other_layouts():
  x, w = jnp.zeros((1, 4, 6, 6)), jnp.zeros((3, 3, 4, 2))
  dn = lax.conv_dimension_numbers(x.shape, (2, 4, 3, 3), ("NCHW", "OIHW", "NCHW"))
  with pytest.raises(ValueError, match="NHWC / HWIO / NHWC only"):
    layers.matmul_conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)


@pytest.mark.parametrize(
  "name, shape, kwargs",
  [
    ("small_cnn", (4, 8, 8, 1), {"width": 8}),
    ("preact_resnet18", (2, 16, 16, 3), {}),
    # 7x7 stride-2 stem, strided 1x1 projections (forward only: ~1 min of
    # compilation; the gradients are each conv's, checked above)
    pytest.param("resnet50", (1, 32, 32, 3), {}, marks=pytest.mark.slow),
  ],
)
def test_models_compute_the_same_function_either_way(name, shape, kwargs):
  m = models.get_model(name, num_classes=10, mean=(0.5,), std=(0.25,), **kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(0), shape)
  v = jax.jit(lambda x: m.init(jax.random.PRNGKey(1), x, train=False))(x)
  logits = lambda x: m.apply(v, x, train=False)
  mm_logits = jax.jit(layers.traced_with_conv_impl(logits, "matmul"))
  ref = jax.jit(logits)(x)
  np.testing.assert_allclose(mm_logits(x), ref, rtol=1e-4, atol=1e-5 * float(jnp.abs(ref).max()))
  if name == "small_cnn":  # the input gradient the attacks take
    in_grad = jax.grad(lambda x: jnp.sum(logits(x) ** 2))
    g = jax.jit(in_grad)(x)
    mm_g = jax.jit(layers.traced_with_conv_impl(in_grad, "matmul"))(x)
    np.testing.assert_allclose(mm_g, g, rtol=1e-3, atol=1e-5 * float(jnp.abs(g).max()))
  # The programs really differ: the matrix form has no convolution left, and
  # the default is the backend's convolution (a plain nn.Conv's program).
  assert "convolution" not in mm_logits.lower(x).as_text()
  assert "convolution" in jax.jit(logits).lower(x).as_text()


def test_the_choice_holds_inside_the_traced_function_only():
  m = models.get_model("small_cnn", num_classes=10, mean=(0.5,), std=(0.25,), width=4)
  x = jnp.zeros((2, 8, 8, 1))
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  f = lambda x: m.apply(v, x, train=False)
  wrapped = layers.traced_with_conv_impl(f, "matmul")
  # traced by jit, vmap'd or called from an outer jit: always matmul
  assert "convolution" not in jax.jit(lambda x: wrapped(x) + 1).lower(x).as_text()
  # and the context does not leak: the next trace outside is the default
  assert "convolution" in jax.jit(lambda x: f(x) + 2).lower(x).as_text()


def test_resolve_conv_impl(monkeypatch):
  assert layers.resolve_conv_impl("auto") == "matmul"  # the tests run on a CPU
  assert layers.resolve_conv_impl("xla") == "xla"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.resolve_conv_impl("auto") == "xla"
  with pytest.raises(ValueError, match="'im2col'; valid: auto, xla, matmul"):
    layers.resolve_conv_impl("im2col")
