"""A small CNN for the offline default (8x8x1 digits) and for the tests.

conv3x3(w)-BN-ReLU, conv3x3(2w)-BN-ReLU, 2x2 max pool, conv3x3(4w)-BN-ReLU,
global average pool, dense. Global pooling makes it input-size agnostic (8x8x1
digits and 32x32x3 CIFAR alike), and BatchNorm gives it the same train / eval
and cross-device behaviour as the ResNets, so tests on it exercise the code
paths the big models take. With ``width = 32`` it has about 94K parameters.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from caat_jax.models.layers import Dtype, batch_norm, classifier_head, conv, normalize


class SmallCNN(nn.Module):
  """Three-conv BatchNorm CNN.

  Attributes:
    num_classes: number of logits.
    mean, std: per-channel input normalisation, applied first (pixel inputs).
    width: channels of the first conv; later convs use 2x and 4x.
    dtype: compute dtype; parameters and logits stay float32.
    axis_name: device axis for BatchNorm statistics under pmap / shard_map.
  """

  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  width: int = 32
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """[B, H, W, C] pixels in [0, 1] -> float32 logits [B, num_classes]."""
    bn = functools.partial(batch_norm, train, self.axis_name, self.dtype)
    x = normalize(x, self.mean, self.std, self.dtype)
    x = nn.relu(bn()(conv(self.width, 3, 1, self.dtype)(x)))
    x = nn.relu(bn()(conv(2 * self.width, 3, 1, self.dtype)(x)))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(bn()(conv(4 * self.width, 3, 1, self.dtype)(x)))
    return classifier_head(x, self.num_classes, self.dtype)
