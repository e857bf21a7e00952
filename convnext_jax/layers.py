"""ConvNeXt's layers in Flax Linen: init, LayerNorm, exact GELU, depthwise and patch convs, DropPath.

All layers work on NHWC arrays. Parameters are always float32; ``dtype`` is the computation dtype. The layers
that have faster formulations on some backend (LayerNorm, DepthwiseConv, PatchConv) take the compute policy
(``core_jax.compute.Compute``, see ``convnext_jax.ops``): it chooses how they compute, never their parameters or
their function.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from convnext_jax import ops
from core_jax import counting
from core_jax.compute import Compute
from core_jax.errors import UserError

Array = jax.Array
Dtype = Any


# --------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------
def trunc_normal_init(std: float = 0.02, a: float = -2.0, b: float = 2.0, scale: float = 1.0) -> Callable:
  """PyTorch/timm ``trunc_normal_(std=std, a=a, b=b)``: the cutoffs ``a``/``b`` are ABSOLUTE values.

  With std=0.02 and a,b=+-2 the cutoffs are +-100 sigma, i.e. effectively an untruncated
  N(0, std^2).  (``jax.nn.initializers.truncated_normal`` truncates at +-2 sigma instead, which
  gives an actual std of ~0.0176 -- not what the official code does.)  ``scale`` multiplies the
  sample afterwards (used for ``head_init_scale``).
  """

  def init(key, shape, dtype=jnp.float32):
    x = jax.random.normal(key, shape, jnp.float32) * std
    x = jnp.clip(x, a, b)
    return (x * scale).astype(dtype)

  return init


# --------------------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
  """Channels-last LayerNorm as in ConvNeXt: statistics over C in float32, biased two-pass variance
  (``ops.layer_norm_channels_last``); params as ``nn.LayerNorm``'s (``scale`` = 1, ``bias`` = 0 at init)."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    return ops.layer_norm(self.compute, x.astype(self.dtype), scale, bias, self.epsilon)


def layer_norm(
    name: str | None = None, dtype: Dtype = jnp.float32, eps: float = 1e-6, compute: Compute | None = None
) -> LayerNorm:
  """ConvNeXt's LayerNorm (eps 1e-6); ``compute`` None: the plain XLA formulation, ``Compute()``."""
  return LayerNorm(epsilon=eps, dtype=dtype, compute=compute or Compute(), name=name)


# --------------------------------------------------------------------------------------
# GELU
# --------------------------------------------------------------------------------------
def _normal_cdf(x: Array) -> Array:
  return 0.5 * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_erf(x: Array) -> Array:
  # PyTorch's formula (aten gelu, approximate='none'): x * 0.5 * (1 + erf(x / sqrt(2))).  jax.nn.gelu
  # uses erfc instead: the same function to ~1 ulp, but erfc costs an exp and a divide more on CPU.
  return x * 0.5 * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))


@jax.custom_vjp
def gelu_exact(x: Array) -> Array:
  """Exact (erf) GELU, computed as PyTorch ``nn.GELU()`` computes it.

  Hand-written VJP: the backward keeps only ``x`` (the matmul output, materialized anyway) and computes
  dx = g * (Phi(x) + x * phi(x)) in one elementwise pass, where autodiff also saves the erf term: one
  more full-size write and read of the widest activation in the block (4C channels).
  """
  return _gelu_erf(x)


def _gelu_exact_fwd(x):
  return _gelu_erf(x), x


def _gelu_exact_bwd(x, g):
  xf = x.astype(jnp.float32)
  pdf = jnp.exp(-0.5 * xf * xf) * (1.0 / math.sqrt(2.0 * math.pi))
  return ((g.astype(jnp.float32) * (_normal_cdf(xf) + xf * pdf)).astype(x.dtype),)


gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
class DepthwiseConv(nn.Module):
  """Depthwise conv (stride 1, zero padding ``padding``) with bias, as PyTorch ``Conv2d(C, C, k, groups=C)``.

  Params ``kernel`` (k, k, 1, C) and ``bias`` (C,), as ``nn.Conv(feature_group_count=C)``'s whatever the compute
  policy computes it with, so checkpoints do not depend on it.
  """

  kernel_size: int = 7
  padding: int = 3
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32
  kernel_init: Callable = trunc_normal_init(0.02)
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
    bias = self.param('bias', self.bias_init, (c,), jnp.float32)
    y = ops.depthwise_conv(self.compute, x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    # Not an nn.Conv, so report its MACs to core_jax.counting the way a grouped conv counts them.
    counting.record_macs(self.kernel_size * self.kernel_size * math.prod(y.shape))
    return y + bias.astype(self.dtype)


class PatchConv(nn.Module):
  """k x k conv with stride k, no padding, with bias (ConvNeXt's patchify stem and 2x2 downsampling layers).

  Params ``kernel`` (k, k, Cin, Cout) and ``bias`` exactly as ``nn.Conv``'s, whatever the compute policy
  computes it with (a conv, or a matmul over patches: ``Compute.conv``).
  """

  features: int
  patch: int
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32
  kernel_init: Callable = trunc_normal_init(0.02)
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, cin = self.patch, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, cin, self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    y = self.compute.conv(x.astype(self.dtype), kernel.astype(self.dtype), (k, k))
    counting.record_macs(k * k * cin * math.prod(y.shape))
    return y + bias.astype(self.dtype)


# --------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------
class DropPath(nn.Module):
  """Per-sample stochastic depth (timm ``DropPath``, scale_by_keep=True). Uses the 'dropout' rng."""

  rate: float = 0.0
  rng_collection: str = 'dropout'

  def __post_init__(self):
    # every model's stochastic depth passes here, and a rate of 1 or more would scale by 1 / keep with keep <= 0
    if not 0.0 <= float(self.rate) < 1.0:
      raise UserError(f"drop_path_rate: a block's drop-path rate must be in [0, 1), got {float(self.rate):g}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if not train or self.rate <= 0.0:
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng(self.rng_collection)
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
