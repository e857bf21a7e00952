"""Layers shared by the pruning line's model families, with the PyTorch semantics of the original code.

- `conv_init`: Normal(0, sqrt(2 / (kh * kw * out))) -- He with fan_out, plain (untruncated) normal, which is
  what every family of the original re-initializes its convs with.
- `torch_linear_kernel_init` / `torch_linear_bias_init`: PyTorch's default Linear init, U(+-1/sqrt(fan_in)) on
  the weight and on the bias (the CIFAR ResNet / PreResNet / DenseNet heads keep it).
- `BatchNorm`: PyTorch BatchNorm semantics (eps 1e-5, momentum 0.1): the forward pass in train mode normalizes
  with the biased batch variance, while the running variance is updated with the *unbiased* one, exactly as
  torch does. Variables use flax's names: params 'scale' / 'bias', batch_stats 'mean' / 'var'.
- `select_channels`: the original's channel_selection layer as a static gather on the channel axis.
- `conv` / `Conv`: a bias-free (by default) convolution with the explicit symmetric padding PyTorch uses, computed
  as the model's compute policy (`core_jax.compute.Compute`, a field of every family's modules) says: on CPU a
  conv with at most 16 output positions per image as shifted patches @ kernel (XLA:CPU's convolution is far
  slower than a matmul there: 3x3, 512 -> 512 at 2x2, the last stage of the CIFAR VGGs), and channel counts
  that are not a multiple of 8 (a pruned width such as 14 or 57) zero-padded up to one at compute time. The
  variables keep their exact shapes (the params / MACs counts read them); `AUTO` / `for_backend` give the
  line's choices per backend, `for_convnext` those of its ConvNeXt families (ConvNeXt's own, plus the line's).
"""

import math
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from core_jax.compute import Compute, on_cpu, resolve

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
gaussian_001 = nn.initializers.normal(stddev=0.01)


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for a flax Dense kernel of shape (in, out)."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear_bias_init(fan_in: int) -> Callable:
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, name: str, dtype=None) -> nn.Dense:
  """A Linear layer with PyTorch's default init (the heads the original does not re-initialize)."""
  return nn.Dense(
      features, kernel_init=torch_linear_kernel_init, bias_init=torch_linear_bias_init(fan_in), name=name, dtype=dtype
  )


def constant(value: float) -> Callable:
  return nn.initializers.constant(value)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch's train-mode statistics (see the module docstring)."""

  use_running_average: bool = False
  momentum: float = 0.1  # PyTorch convention: new = (1 - momentum) * old + momentum * batch
  epsilon: float = 1e-5
  scale_init: Callable = nn.initializers.ones
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    xf = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
    y = (xf - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or x.dtype)


# What 'auto' means for the pruning line on each backend (benchmarks/ANALYSIS.md, pruned models): the small-conv
# matmul is an XLA:CPU workaround; channel padding to multiples of 8 on every backend (GPU tensor cores want
# them too). 1x1 convs stay convs (channel-padded). The other policy fields do not apply to these models.
AUTO = {
    'small_conv': on_cpu('matmul', 'conv'),
    'pointwise_conv': 'conv',
    'patch_conv': 'conv',
    'channel_multiple': 8,
}


def for_backend(options: Mapping | None = None) -> Compute:
  """The pruning models' compute policy: ``options`` (``config.compute``) with 'auto' entries from ``AUTO``."""
  return resolve(options, AUTO, 'pruning')


def for_convnext(options: Mapping | None = None) -> Compute:
  """The policy of the line's ConvNeXt families: ConvNeXt's own choices for the running process
  (``convnext_jax.ops.AUTO``: the depthwise conv and LayerNorm kernels, patch convs, fusion barriers), this line's
  ``AUTO`` for the rest (channel_multiple, ...): the C++ depthwise conv computes pruned widths (22, 89, ...)
  padded to channel_multiple (``convnext_jax.ops.depthwise_conv``)."""
  from convnext_jax import ops  # pylint: disable=import-outside-toplevel

  return ops.for_backend(options, AUTO, 'pruning')


class Conv(nn.Conv):
  """nn.Conv (same variables, same result), computed as ``compute`` says (``Compute.conv``). Explicit padding,
  no groups or dilation."""

  compute: Compute = Compute()

  @nn.compact
  def __call__(self, inputs):
    if inputs.ndim != 4 or self.feature_group_count != 1 or self.kernel_dilation not in (1, (1, 1)):
      raise ValueError(f'{self.name}: layers.Conv takes NHWC inputs and no groups or dilation')
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, inputs.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = self.compute.conv(x, kernel, self.strides, self.padding, precision=self.precision)
    return y if bias is None else y + bias


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    name: str,
    use_bias: bool = False,
    padding: int | None = None,
    dtype=None,
    compute: Compute = Compute(),
) -> nn.Conv:
  pad = kernel // 2 if padding is None else padding
  return Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=use_bias,
      kernel_init=conv_init,
      bias_init=nn.initializers.zeros,
      name=name,
      dtype=dtype,
      compute=compute,
  )


def select_channels(x, indices: Sequence[int] | None):
  """channel_selection: keeps the listed channels of the last axis (None keeps all)."""
  if indices is None:
    return x
  return jnp.take(x, np.asarray(indices, dtype=np.int32), axis=-1)


def avg_pool(x, window: int, stride: int | None = None):
  stride = window if stride is None else stride
  return nn.avg_pool(x, (window, window), strides=(stride, stride), padding='VALID')


def max_pool(x, window: int, stride: int, padding: int = 0):
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


def global_avg_pool(x):
  return jnp.mean(x, axis=(1, 2))
