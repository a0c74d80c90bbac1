"""Tests for caat_jax.models.

The big networks are only traced (jax.eval_shape), never run: their parameter
counts are checked against analytic counts computed here by hand and against
the published figures. Behaviour (normalisation, train / eval, cross-device
BatchNorm, mixed precision) is checked on the small CNN, which shares the
normalisation, conv, BatchNorm and head code with the ResNets.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from caat_jax import models

DIGITS = dict(mean=(0.3,), std=(0.2,))
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


def _pixels(key, shape):
  return jax.random.uniform(key, shape, jnp.float32)


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_variables(model, input_shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))


def _small_cnn(**kwargs):
  return models.get_model("small_cnn", num_classes=10, **{**DIGITS, **kwargs})


# ---------------------------------------------------------------------------
# Shapes, dtypes, variable collections.

BIG = [
  ("preact_resnet18", (2, 32, 32, 3), 10),
  ("wrn28_10", (2, 32, 32, 3), 10),
  ("wrn34_10", (2, 32, 32, 3), 10),
  ("resnet50", (2, 224, 224, 3), 1000),
]


@pytest.mark.parametrize("name,input_shape,num_classes", BIG)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_big_models_shapes_and_dtypes(name, input_shape, num_classes, dtype):
  model = models.get_model(name, num_classes=num_classes, dtype=dtype, **CIFAR)
  variables = _abstract_variables(model, input_shape)
  assert set(variables) == {"params", "batch_stats"}
  # Mixed precision: parameters and statistics stay float32.
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  for train in (False, True):
    logits = jax.eval_shape(
      functools.partial(model.apply, train=train, mutable=["batch_stats"]),
      variables,
      jax.ShapeDtypeStruct(input_shape, jnp.float32),
    )[0]
    assert logits.shape == (input_shape[0], num_classes)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("input_shape,mean_std", [((3, 8, 8, 1), DIGITS), ((3, 32, 32, 3), CIFAR)])
def test_small_cnn_runs_on_digits_and_cifar(input_shape, mean_std):
  model = models.get_model("small_cnn", num_classes=7, **mean_std)
  x = _pixels(jax.random.key(1), input_shape)
  variables = model.init(jax.random.key(0), x, train=False)
  assert set(variables) == {"params", "batch_stats"}
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_small_cnn_bfloat16_computes_in_bf16_returns_f32():
  x = _pixels(jax.random.key(1), (4, 8, 8, 1))
  f32 = _small_cnn()
  bf16 = _small_cnn(dtype=jnp.bfloat16)
  variables = bf16.init(jax.random.key(0), x, train=False)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  logits16 = bf16.apply(variables, x, train=False)
  logits32 = f32.apply(variables, x, train=False)
  assert logits16.dtype == jnp.float32
  # Same function up to bf16 rounding, but not bit-identical: it really did
  # compute in bfloat16.
  np.testing.assert_allclose(logits16, logits32, atol=5e-2, rtol=5e-2)
  assert not np.array_equal(logits16, logits32)
  jaxpr = str(jax.make_jaxpr(functools.partial(bf16.apply, train=False))(variables, x))
  assert "bf16" in jaxpr


def test_small_cnn_width_scales_channels():
  x = jnp.zeros((1, 8, 8, 1))
  narrow = _abstract_variables(_small_cnn(), x.shape)
  wide = _abstract_variables(models.SmallCNN(num_classes=10, width=64, **DIGITS), x.shape)
  kernels = [
    v["kernel"].shape[-1] for k, v in sorted(wide["params"].items()) if k.startswith("Conv")
  ]
  assert kernels == [64, 128, 256]
  assert _count(wide["params"]) > 3 * _count(narrow["params"])


# ---------------------------------------------------------------------------
# Normalisation lives inside the model.


@pytest.mark.parametrize("train", [False, True])
def test_normalisation_is_inside_the_model(train):
  mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
  x = _pixels(jax.random.key(1), (4, 16, 16, 3))
  with_norm = models.get_model("small_cnn", num_classes=10, mean=mean, std=std)
  identity = models.get_model("small_cnn", num_classes=10, mean=(0.0,) * 3, std=(1.0,) * 3)
  variables = with_norm.init(jax.random.key(0), x, train=False)
  apply = functools.partial(with_norm.apply, train=train, mutable=["batch_stats"])
  apply_identity = functools.partial(identity.apply, train=train, mutable=["batch_stats"])
  x_normalised = (x - jnp.array(mean)) / jnp.array(std)
  np.testing.assert_allclose(
    apply(variables, x)[0], apply_identity(variables, x_normalised)[0], atol=1e-5, rtol=1e-5
  )
  # And it is not a no-op: the raw pixels through the identity model differ.
  assert not np.allclose(apply(variables, x)[0], apply_identity(variables, x)[0], atol=1e-3)


def test_mean_std_length_must_match_channels():
  model = models.get_model("small_cnn", num_classes=10, mean=(0.5, 0.5), std=(0.2, 0.2))
  with pytest.raises(ValueError, match="channels"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


# ---------------------------------------------------------------------------
# Parameter counts: analytic (independent of the model code) and published.


def _preact_resnet18_count(num_classes):
  bn = lambda c: 2 * c  # scale + bias
  n = 3 * 3 * 3 * 64  # stem conv, no bias
  c_in = 64
  for stage, width in enumerate((64, 128, 256, 512)):
    for block in range(2):
      stride = 2 if stage > 0 and block == 0 else 1
      n += bn(c_in) + 9 * c_in * width + bn(width) + 9 * width * width
      if stride != 1 or c_in != width:
        n += c_in * width  # 1x1 projection
      c_in = width
  return n + bn(512) + 512 * num_classes + num_classes


def _wrn_count(depth, k, num_classes):
  n_blocks = (depth - 4) // 6
  n = 3 * 3 * 3 * 16
  c_in = 16
  for width in (16 * k, 32 * k, 64 * k):
    for _ in range(n_blocks):
      n += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
      if c_in != width:
        n += c_in * width
      c_in = width
  return n + 2 * c_in + c_in * num_classes + num_classes


def _resnet50_count(num_classes):
  n = 7 * 7 * 3 * 64 + 2 * 64
  c_in = 64
  for width, n_blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
    for block in range(n_blocks):
      out = 4 * width
      n += c_in * width + 2 * width + 9 * width * width + 2 * width
      n += width * out + 2 * out
      if block == 0:
        n += c_in * out + 2 * out  # projection conv + BN
      c_in = out
  return n + c_in * num_classes + num_classes


@pytest.mark.parametrize(
  "name,input_shape,num_classes,analytic,published",
  [
    # kuangliu/pytorch-cifar PreActResNet18 has 11,171,146; the final BN-ReLU
    # used in adversarial-training code (Rice et al. 2020) adds 2 * 512.
    ("preact_resnet18", (1, 32, 32, 3), 10, _preact_resnet18_count(10), 11_171_146 + 1024),
    ("wrn28_10", (1, 32, 32, 3), 10, _wrn_count(28, 10, 10), 36.5e6),
    ("wrn34_10", (1, 32, 32, 3), 10, _wrn_count(34, 10, 10), 46.2e6),
    ("resnet50", (1, 224, 224, 3), 1000, _resnet50_count(1000), 25_557_032),
  ],
)
def test_parameter_counts(name, input_shape, num_classes, analytic, published):
  model = models.get_model(name, num_classes=num_classes, **CIFAR)
  variables = _abstract_variables(model, input_shape)
  n_params = _count(variables["params"])
  assert n_params == analytic
  assert abs(n_params - published) / published < 0.005
  # BatchNorm running mean + var: one pair per (scale, bias) pair in params.
  n_bn = _count(variables["batch_stats"])
  n_bn_params = sum(
    int(np.prod(leaf.shape))
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    if "bn" in jax.tree_util.keystr(path).lower() or "BatchNorm" in jax.tree_util.keystr(path)
  )
  assert n_bn == n_bn_params > 0


def test_initialisation_conventions():
  """Kaiming-normal (fan_out) convs, zero biases, unit BN scales."""
  model = models.SmallCNN(num_classes=10, width=64, **DIGITS)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)["params"]
  kernel = params["Conv_2"]["kernel"]  # 3x3, 128 -> 256
  fan_out = 3 * 3 * 256
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2.0 / fan_out), rtol=0.05)
  assert np.all(params["head"]["bias"] == 0)
  assert np.all(params["BatchNorm_0"]["scale"] == 1)
  assert "bias" not in params["Conv_0"]


# ---------------------------------------------------------------------------
# Train vs eval mode.


def test_train_mode_uses_and_updates_batch_statistics():
  model = _small_cnn()
  keys = jax.random.split(jax.random.key(1), 3)
  x0 = _pixels(keys[0], (1, 8, 8, 1))
  batch_a = jnp.concatenate([x0, _pixels(keys[1], (3, 8, 8, 1))])
  batch_b = jnp.concatenate([x0, _pixels(keys[2], (3, 8, 8, 1)) * 0.3])
  variables = model.init(jax.random.key(0), batch_a, train=False)

  logits_a, updates = model.apply(variables, batch_a, train=True, mutable=["batch_stats"])
  logits_b, _ = model.apply(variables, batch_b, train=True, mutable=["batch_stats"])
  # Running statistics moved towards the batch's (momentum 0.9).
  old = variables["batch_stats"]["BatchNorm_0"]
  new = updates["batch_stats"]["BatchNorm_0"]
  assert not np.allclose(old["mean"], new["mean"])
  assert not np.allclose(old["var"], new["var"])
  # Example 0's logits depend on who else is in the batch.
  assert not np.allclose(logits_a[0], logits_b[0], atol=1e-4)


def test_running_stats_use_pytorch_momentum():
  """new = 0.9 * old + 0.1 * batch (PyTorch momentum=0.1)."""
  model = _small_cnn()
  x = _pixels(jax.random.key(1), (8, 8, 8, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  # The first BN sees conv(normalised x): reproduce its batch mean directly.
  z = (x - DIGITS["mean"][0]) / DIGITS["std"][0]
  kernel = variables["params"]["Conv_0"]["kernel"]
  h = jax.lax.conv_general_dilated(
    z, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(
    updates["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * h.mean(axis=(0, 1, 2)), atol=1e-5
  )


def test_eval_mode_is_per_example():
  model = _small_cnn()
  keys = jax.random.split(jax.random.key(1), 3)
  x0 = _pixels(keys[0], (1, 8, 8, 1))
  batch_a = jnp.concatenate([x0, _pixels(keys[1], (3, 8, 8, 1))])
  batch_b = jnp.concatenate([x0, _pixels(keys[2], (5, 8, 8, 1)) * 0.3])
  variables = model.init(jax.random.key(0), batch_a, train=False)
  # Non-trivial running statistics, so eval mode is not just the identity BN.
  _, updates = model.apply(variables, batch_a, train=True, mutable=["batch_stats"])
  variables = {**variables, **updates}
  logits_a = model.apply(variables, batch_a, train=False)
  logits_b = model.apply(variables, batch_b, train=False)
  alone = model.apply(variables, x0, train=False)
  np.testing.assert_allclose(logits_a[0], logits_b[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits_a[0], alone[0], atol=1e-5, rtol=1e-5)
  # Eval mode needs no mutable collections (attack loops rely on this).
  assert model.apply(variables, batch_a, train=False).shape == (4, 10)


# ---------------------------------------------------------------------------
# Cross-device BatchNorm: N devices == one device with the global batch.

N_DEVICES = 4


def _reference(x):
  model = _small_cnn()
  variables = model.init(jax.random.key(0), x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return variables, logits, updates["batch_stats"]


def _require_devices():
  # tests/conftest.py sets XLA_FLAGS for 8 host devices; fail loudly rather
  # than skip if something (an outer XLA_FLAGS) overrode it.
  assert jax.device_count() >= N_DEVICES, (
    f"needs {N_DEVICES} devices (tests/conftest.py sets XLA_FLAGS)"
  )


def _assert_tree_close(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-5, rtol=1e-5), a, b)


def _shard_map_train(axis_name, variables, x, with_stats=True):
  model = _small_cnn(axis_name=axis_name)
  mesh = jax.make_mesh((N_DEVICES,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))

  def step(variables, x):
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return (logits, updates["batch_stats"]) if with_stats else logits

  out_specs = (P("batch"), P()) if with_stats else P("batch")
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")), out_specs=out_specs))(
    variables, x
  )


def test_axis_name_shard_map_matches_global_batch():
  _require_devices()
  x = _pixels(jax.random.key(1), (4 * N_DEVICES, 8, 8, 1))
  variables, ref_logits, ref_stats = _reference(x)
  logits, stats = _shard_map_train("batch", variables, x)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
  _assert_tree_close(stats, ref_stats)
  # Control: without axis_name each shard normalises by its own statistics.
  local = _shard_map_train(None, variables, x, with_stats=False)
  assert not np.allclose(local, ref_logits, atol=1e-3)


def test_axis_name_pmap_matches_global_batch():
  _require_devices()
  x = _pixels(jax.random.key(1), (4 * N_DEVICES, 8, 8, 1))
  variables, ref_logits, ref_stats = _reference(x)
  model = _small_cnn(axis_name="batch")

  def step(variables, x):
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]

  devices = jax.devices()[:N_DEVICES]
  logits, stats = jax.pmap(step, axis_name="batch", in_axes=(None, 0), devices=devices)(
    variables, x.reshape(N_DEVICES, 4, *x.shape[1:])
  )
  np.testing.assert_allclose(logits.reshape(ref_logits.shape), ref_logits, atol=1e-5, rtol=1e-5)
  for d in range(N_DEVICES):
    _assert_tree_close(jax.tree.map(lambda s, d=d: s[d], stats), ref_stats)


# ---------------------------------------------------------------------------
# Registry.


def test_unknown_model_name():
  with pytest.raises(ValueError, match="model") as err:
    models.get_model("resnet18", num_classes=10, **CIFAR)
  for name in models.MODELS:
    assert name in str(err.value)


def test_registry_and_hashable_attributes():
  assert models.MODELS == ("small_cnn", "preact_resnet18", "wrn28_10", "wrn34_10", "resnet50")
  # Lists in, tuples out: modules must be hashable to be static under jit.
  model = models.get_model("small_cnn", num_classes=10, mean=[0.5], std=[0.25], axis_name="batch")
  assert model.mean == (0.5,) and model.std == (0.25,)
  assert model.axis_name == "batch"
  hash(model)


def test_second_order_gradient_through_look_ahead():
  """Meta-CAAT differentiates through W - eta * grad_W L(W, omega) w.r.t.
  per-example weights omega; BatchNorm in train mode must allow that."""
  model = models.SmallCNN(num_classes=10, width=8, **DIGITS)
  x = _pixels(jax.random.key(1), (6, 8, 8, 1))
  y = jnp.arange(6) % 10
  variables = model.init(jax.random.key(0), x, train=False)

  def per_example_loss(params, x):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0]

  def meta_loss(omega):
    inner = lambda p: jnp.mean(omega * per_example_loss(p, x))
    grads = jax.grad(inner)(variables["params"])
    look_ahead = jax.tree.map(lambda w, g: w - 0.1 * g, variables["params"], grads)
    return jnp.mean(per_example_loss(look_ahead, x[::-1]))

  meta_grad = jax.jit(jax.grad(meta_loss))(jnp.ones(6))
  assert meta_grad.shape == (6,)
  assert np.all(np.isfinite(meta_grad)) and np.any(meta_grad != 0)
