"""The measurement behind docs/benchmarks.md "AutoAttack on a CPU against the
reference": 100 input-gradient steps of a trained run's model (batch 256) in
a ``fori_loop``, with XLA's convolution and as ``matmul_conv``; with
``--torch``, the same small CNN in PyTorch (needs torch installed).

  python docs/results/autoattack_cpu/conv_in_loop.py WORKDIR [--torch]
"""

import sys
import time

import jax
import jax.numpy as jnp
import optax

from caat_jax import evaluate
from caat_jax.data.augment import to_float01
from caat_jax.models import layers


def jax_loop(workdir: str) -> None:
  run, variables, _ = evaluate.load_run(workdir)
  host = run.parallel.fetch(variables)
  x = to_float01(jnp.asarray(run.dataset.test.images[:256]))
  y = jnp.asarray(run.dataset.test.labels[:256], jnp.int32)

  def loss(z):
    logits = run.eval_model.apply(host, z, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  def loop(x):
    step = lambda i, z: jnp.clip(z + 0.01 * jnp.sign(jax.grad(loss)(z)), 0, 1)
    return jax.lax.fori_loop(0, 100, step, x)

  for impl in ("xla", "matmul"):
    f = jax.jit(layers.traced_with_conv_impl(loop, impl))
    f(x).block_until_ready()
    t = time.perf_counter()
    f(x).block_until_ready()
    print(f"jax, conv {impl}: 100 steps {time.perf_counter() - t:.2f} s")


def torch_loop() -> None:
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  w = 16  # configs/digits.py's small CNN: conv-BN-ReLU x2, max pool, conv-BN-ReLU, pool, dense
  net = nn.Sequential(
    nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
    nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
  ).eval()  # fmt: skip
  for p in net.parameters():
    p.requires_grad_(False)
  x, y = torch.rand(256, 1, 8, 8), torch.randint(0, 10, (256,))

  def loop():
    z = x.clone()
    for _ in range(100):
      z.requires_grad_(True)
      (g,) = torch.autograd.grad(nn.functional.cross_entropy(net(z), y, reduction="sum"), z)
      z = (z.detach() + 0.01 * g.sign()).clamp(0, 1)

  for threads in (1, 2):
    torch.set_num_threads(threads)
    loop()
    t = time.perf_counter()
    loop()
    print(f"torch, {threads} thread(s): 100 steps {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
  jax_loop(sys.argv[1])
  if "--torch" in sys.argv:
    torch_loop()
