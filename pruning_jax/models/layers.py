"""Layers shared by the pruning line's model families, with the PyTorch semantics of the original code.

- `conv_init`: Normal(0, sqrt(2 / (kh * kw * out))) -- He with fan_out, plain (untruncated) normal, which is
  what every family of the original re-initializes its convs with.
- `torch_linear_kernel_init` / `torch_linear_bias_init`: PyTorch's default Linear init, U(+-1/sqrt(fan_in)) on
  the weight and on the bias (the CIFAR ResNet / PreResNet / DenseNet heads keep it).
- `BatchNorm`: PyTorch BatchNorm semantics (eps 1e-5, momentum 0.1): the forward pass in train mode normalizes
  with the biased batch variance, while the running variance is updated with the *unbiased* one, exactly as
  torch does. Variables use flax's names: params 'scale' / 'bias', batch_stats 'mean' / 'var'.
- `select_channels`: the original's channel_selection layer as a static gather on the channel axis.
- `conv`: a bias-free (by default) convolution with the explicit symmetric padding PyTorch uses.
- Channel padding at compute time (`CHANNEL_MULTIPLE`, `channel_multiple(m)`): a convolution whose input or
  output channel count is not a multiple of m (a pruned width such as 14 or 57) is computed with its kernel
  zero-padded up to the next multiples and the extra output channels sliced off. The zero rows and columns add
  exact zeros, so the outputs, the gradients and the variables (stored at the exact unpadded shapes, which the
  params / MACs counts read) are unchanged; only XLA's choice of convolution kernel is. Counts <= 4 (the RGB
  input) are left as they are. 1 turns it off.
"""

import contextlib
import math
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


SMALL_OUTPUT_POSITIONS = 16
# Channel counts are padded up to a multiple of this at compute time (see the module docstring); read when a
# model is traced. PRUNING_JAX_CHANNEL_MULTIPLE sets the process default.
CHANNEL_MULTIPLE = int(os.environ.get('PRUNING_JAX_CHANNEL_MULTIPLE', '8'))
_UNPADDED_MAX = 4


@contextlib.contextmanager
def channel_multiple(m: int):
  """Models traced inside use channel padding to multiples of `m` (1: none)."""
  global CHANNEL_MULTIPLE
  before, CHANNEL_MULTIPLE = CHANNEL_MULTIPLE, int(m)
  try:
    yield
  finally:
    CHANNEL_MULTIPLE = before


def padded_channels(c: int, m: int | None = None) -> int:
  """The channel count `c` is computed with: the next multiple of m (CHANNEL_MULTIPLE), counts <= 4 as they are."""
  m = CHANNEL_MULTIPLE if m is None else m
  return c if m <= 1 or c <= _UNPADDED_MAX else -(-c // m) * m


class Conv(nn.Conv):
  """nn.Conv (same variables, same result); when the output has at most SMALL_OUTPUT_POSITIONS positions per image
  it is computed as shifted patches @ kernel, because XLA:CPU's convolution is far slower than a matmul
  there (3x3, 512 -> 512 channels at 2x2: the last stage of the CIFAR VGGs; numbers in benchmarks/ANALYSIS.md);
  channel counts that are not a multiple of CHANNEL_MULTIPLE are computed zero-padded to one (module docstring).
  Explicit padding only."""

  def __call__(self, inputs):
    kh, kw = self.kernel_size
    (pt, pb), (pl, pr) = self.padding
    sh, sw = self.strides
    h, w = inputs.shape[-3], inputs.shape[-2]
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if inputs.ndim != 4 or self.feature_group_count != 1 or self.kernel_dilation not in (1, (1, 1)):
      return super().__call__(inputs)
    if ho * wo > SMALL_OUTPUT_POSITIONS or kh * kw == 1:
      cin, cout = inputs.shape[-1], self.features
      if (padded_channels(cin), padded_channels(cout)) != (cin, cout):
        return self._padded_conv(inputs)
      return super().__call__(inputs)
    return self._patches_matmul(inputs, ho, wo)

  @nn.compact
  def _padded_conv(self, inputs):
    kh, kw = self.kernel_size
    cin, cout = inputs.shape[-1], self.features
    cin_p, cout_p = padded_channels(cin), padded_channels(cout)
    kernel = self.param('kernel', self.kernel_init, (kh, kw, cin, cout), self.param_dtype)
    bias = self.param('bias', self.bias_init, (cout,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    # zero input channels meet zero kernel rows; the zero output columns are sliced off
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, cin_p - cin))) if cin_p > cin else x
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, cin_p - cin), (0, cout_p - cout)))
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=tuple(self.strides),
        padding=tuple(tuple(p) for p in self.padding),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=self.precision,
    )
    y = y[..., :cout] if cout_p > cout else y
    return y if bias is None else y + bias

  @nn.compact
  def _patches_matmul(self, inputs, ho, wo):
    kh, kw = self.kernel_size
    (pt, pb), (pl, pr) = self.padding
    sh, sw = self.strides
    cin = inputs.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (kh, kw, cin, self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    patches = jnp.concatenate(
        [
            xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )  # (B, ho, wo, kh * kw * cin)
    y = jnp.dot(patches, kernel.reshape(kh * kw * cin, self.features), precision=self.precision)
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
