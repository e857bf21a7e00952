"""Building blocks for the Flax Linen ConvNeXt: init, LayerNorm, depthwise conv, DropPath.

All layers work on NHWC arrays.  Parameters are always float32 (``param_dtype``);
``dtype`` is the computation dtype.
"""

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core_jax import counting, native_kernels

Array = jax.Array
Dtype = Any

DWCONV_IMPLS = ('auto', 'xla', 'native', 'shifted', 'shifted_autodiff', 'xla_nchw')

# C++ kernels for XLA:CPU (compiled on first use by core_jax.native_kernels; see native_cpu_kernels_available)
_NATIVE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpu_kernels.cc')
_NATIVE_FORWARD, _NATIVE_KERNEL_GRAD = 'convnext_dwconv_forward', 'convnext_dwconv_kernel_grad'
_NATIVE_LN_FORWARD, _NATIVE_LN_BACKWARD = 'convnext_layer_norm_forward', 'convnext_layer_norm_backward'


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_channels_last(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm over the last axis, statistics in float32: (x - mean) / sqrt(var + eps) * scale + bias,
  var = mean((x - mean)^2) (two-pass, like PyTorch).  Returns x's dtype.

  Hand-written VJP: it keeps x and the per-row mean / 1/std and recomputes the normalized value in
  the backward, dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)) with gs = g * scale.  Autodiff
  of the forward saves and re-reads broadcast (N, H, W, C) copies of the row statistics instead.
  """
  return _ln_forward(x, scale, bias, eps)[0]


def _ln_forward(x, scale, bias, eps):
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  centered = xf - mean
  rstd = lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
  y = centered * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y.astype(x.dtype), (x, scale, mean, rstd)


def _ln_bwd(eps, res, g):
  del eps
  x, scale, mean, rstd = res
  xhat = (x.astype(jnp.float32) - mean) * rstd
  gf = g.astype(jnp.float32)
  axes = tuple(range(g.ndim - 1))
  dbias = jnp.sum(gf, axis=axes)
  dscale = jnp.sum(gf * xhat, axis=axes)
  gs = gf * scale.astype(jnp.float32)
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


layer_norm_channels_last.defvjp(_ln_forward, _ln_bwd)


def _ln_native_call(x, scale, bias, eps):
  rows = jax.ShapeDtypeStruct(x.shape[:-1], jnp.float32)
  return jax.ffi.ffi_call(
      _NATIVE_LN_FORWARD, (jax.ShapeDtypeStruct(x.shape, x.dtype), rows, rows), vmap_method='sequential'
  )(x, scale, bias, eps=np.float32(eps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_native(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """``layer_norm_channels_last`` (same function, float32 only) by the C++ kernels: one read of x and
  one write of y in the forward, one pass over x and g (dx, dscale, dbias together) in the backward."""
  return _ln_native_call(x, scale, bias, eps)[0]


def _ln_native_fwd(x, scale, bias, eps):
  y, mean, rstd = _ln_native_call(x, scale, bias, eps)
  return y, (x, scale, mean, rstd)


def _ln_native_bwd(eps, res, g):
  del eps
  x, scale, mean, rstd = res
  vec = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
  dx, dscale, dbias = jax.ffi.ffi_call(
      _NATIVE_LN_BACKWARD, (jax.ShapeDtypeStruct(x.shape, x.dtype), vec, vec), vmap_method='sequential'
  )(x, scale, mean, rstd, g.astype(x.dtype))
  return dx, dscale, dbias


layer_norm_native.defvjp(_ln_native_fwd, _ln_native_bwd)


class LayerNorm(nn.Module):
  """Channels-last LayerNorm as in ConvNeXt (``nn.LayerNorm``'s params: ``scale`` = 1, ``bias`` = 0 at
  init), computed by ``layer_norm_channels_last``, or by ``layer_norm_native`` if ``native`` (float32
  only; other dtypes take the XLA path)."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  native: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    x = x.astype(self.dtype)
    if self.native and x.dtype == jnp.float32:
      return layer_norm_native(x, scale, bias, self.epsilon)
    return layer_norm_channels_last(x, scale, bias, self.epsilon)


def layer_norm(
    name: str | None = None, dtype: Dtype = jnp.float32, eps: float = 1e-6, native: bool = False
) -> LayerNorm:
  """Channels-last LayerNorm as in ConvNeXt: eps 1e-6, biased two-pass variance, scale=1 / bias=0 init.
  ``native``: use the C++ CPU kernel (models pass ``native_layer_norms(dwconv_impl)``)."""
  return LayerNorm(epsilon=eps, dtype=dtype, native=native, name=name)


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
# Depthwise convolution
# --------------------------------------------------------------------------------------
def native_cpu_kernels_available() -> bool:
  """The C++ kernels (cpu_kernels.cc: depthwise conv, LayerNorm) are compiled and registered with XLA:CPU."""
  return native_kernels.load(
      _NATIVE_SOURCE,
      {
          _NATIVE_FORWARD: 'ConvnextDwconvForward',
          _NATIVE_KERNEL_GRAD: 'ConvnextDwconvKernelGrad',
          _NATIVE_LN_FORWARD: 'ConvnextLayerNormForward',
          _NATIVE_LN_BACKWARD: 'ConvnextLayerNormBackward',
      },
  )


def native_layer_norms(dwconv_impl: str) -> bool:
  """Whether a model built with ``dwconv_impl`` computes its LayerNorms with the C++ kernel too: exactly
  when its depthwise conv resolves to 'native' (the same device and compiler conditions)."""
  return resolve_dwconv_impl(dwconv_impl) == 'native'


def resolve_dwconv_impl(impl: str) -> str:
  """'auto' -> on CPU 'native' (C++ kernels for the depthwise conv and, in the models, LayerNorm) when
  they compile and the process sees one device, else
  'shifted' (XLA:CPU grouped convs are very slow); 'xla' on GPU/TPU.

  One device only: XLA cannot partition a custom call, so under a sharded jit it would gather the
  whole batch onto every device; the 'shifted' path shards like any XLA op.
  """
  if impl not in DWCONV_IMPLS:
    raise ValueError(f'dwconv_impl must be one of {DWCONV_IMPLS}, got {impl!r}')
  if impl == 'auto':
    if jax.default_backend() != 'cpu':
      return 'xla'
    return 'native' if jax.device_count() == 1 and native_cpu_kernels_available() else 'shifted'
  if impl == 'native' and not native_cpu_kernels_available():
    return 'shifted'
  return impl


def _shifted_sum(xp: Array, kernel: Array, ho: int, wo: int) -> Array:
  """sum_{i,j} xp[:, i:i+ho, j:j+wo, :] * kernel[i, j]   (kernel: (kh, kw, C)); one XLA loop fusion."""
  kh, kw, _ = kernel.shape
  out = None
  for i in range(kh):
    for j in range(kw):
      term = xp[:, i : i + ho, j : j + wo, :] * kernel[i, j]
      out = term if out is None else out + term
  return out


def _pad_hw(x: Array, p: tuple[int, int]) -> Array:
  ph, pw = p
  return jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if (ph or pw) else x


def _dw_kernel_grad(xp: Array, g: Array, kh: int, kw: int) -> Array:
  """dk[i, j, c] = sum_{n,h,w} xp[n, h+i, w+j, c] * g[n, h, w, c]  -> (kh, kw, C).

  ONE variadic reduce with kh*kw outputs: XLA sweeps ``g`` and ``xp`` once and updates all 49
  per-channel accumulators at each position (the loop order a hand-written kernel would use).
  Autodiff of the shifted forward instead gives 49 separate slice + reduce fusions (~10x slower).
  The batch is split into chunks of two images that the reduce keeps apart (summed at the end): XLA
  finishes one chunk before the next, so each sweep stays in cache.  No loop over chunks, so under a
  batch-sharded jit each device reduces its own images and only the (chunks, C) partial sums cross
  devices (a scan over chunks made GSPMD all-gather the whole batch onto every device).
  """
  n, hp, wp, c = xp.shape
  _, h, w, _ = g.shape
  nb = 2 if n % 2 == 0 else 1
  xr = xp.reshape(n // nb, nb, hp, wp, c)
  gr = g.reshape(n // nb, nb, h, w, c)
  products = tuple((xr[:, :, i : i + h, j : j + w, :] * gr).astype(jnp.float32) for i in range(kh) for j in range(kw))
  sums = lax.reduce(
      products,
      tuple(jnp.zeros((), jnp.float32) for _ in products),
      lambda a, b: tuple(u + v for u, v in zip(a, b)),
      (1, 2, 3),
  )
  return jnp.stack(sums).sum(axis=1).reshape(kh, kw, c)


def _materialized(fn: Callable, *args: Array, anchor: Array | None = None) -> Array:
  """``fn(*args)``, computed once into its own buffer: an XLA:CPU fusion barrier.

  XLA:CPU would otherwise fuse cheap-looking producers into every consumer -- the 49-tap shifted
  sum is recomputed by each of LayerNorm's three passes (mean, variance, normalize) -- or hand a
  reduce and its producers to its YNNPACK fusion, which then materializes each shifted slice on its
  own: together 6-10x slower than the conv itself (benchmarks/profile_convnext_layers.py).  XLA:CPU
  has no barrier op (``optimization_barrier`` is expanded before fusion), but a conditional is one:
  its result is always a buffer of its own.  Both branches are ``fn``, so the predicate (never
  constant-folded: ``v == v`` is false for NaN) cannot change the result.  Differentiable: the
  transpose of a conditional is a conditional, so the backward pass gets the same barrier.

  The predicate reads one element of ``anchor`` (default: the last arg).  Under a batch-sharded jit
  that element must not come from an activation: it lives on one device, and GSPMD broadcasts it to
  all of them at every barrier (60 extra all-reduces per ConvNeXt-atto step).  Pass a parameter.
  """
  v = (args[-1] if anchor is None else anchor).reshape(-1)[0]
  return lax.cond(v == v, fn, fn, *args)


def fusion_barrier(x: Array, anchor: Array | None = None) -> Array:
  """``x`` unchanged, but materialized: XLA cannot fuse its producer into its consumers (see
  ``_materialized``; ``anchor``: a replicated array, e.g. a parameter, for the predicate).  Used
  between ConvNeXt block layers on CPU, where XLA's cross-layer fusion choices cost more than the
  memory pass they save (ConvNeXt-T inference 1.5x faster)."""
  return _materialized(lambda t: t * 1.0, x, anchor=anchor)


def resolve_fusion_barriers(flag: bool | None) -> bool:
  """None -> on for the CPU backend only (GPU/TPU fusion is left to XLA)."""
  return jax.default_backend() == 'cpu' if flag is None else bool(flag)


def _shifted_same(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  kh, kw, c = kernel.shape
  _, h, w, _ = x.shape
  return _shifted_sum(_pad_hw(x, padding), kernel, h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dwconv_shifted(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  return _materialized(functools.partial(_shifted_same, padding=padding), x, kernel)


def _dwconv_shifted_fwd(x, kernel, padding):
  return _dwconv_shifted(x, kernel, padding), (x, kernel)


def _dwconv_shifted_bwd(padding, res, g):
  x, kernel = res
  kh, kw, _ = kernel.shape
  _, h, w, _ = x.shape
  # d/dx: full correlation of g with the flipped kernel (itself a shifted sum). Pad so that output is (h, w).
  ph, pw = kh - 1 - padding[0], kw - 1 - padding[1]
  if ph < 0 or pw < 0 or g.shape[1:3] != (h, w):
    raise NotImplementedError("shifted dwconv backward assumes 'same' padding (k = 2p + 1)")
  dx = _materialized(lambda g, k: _shifted_sum(_pad_hw(g, (ph, pw)), k, h, w), g, kernel[::-1, ::-1])
  dk = _dw_kernel_grad(_pad_hw(x, padding), g, kh, kw).astype(kernel.dtype)
  return dx.astype(x.dtype), dk


_dwconv_shifted.defvjp(_dwconv_shifted_fwd, _dwconv_shifted_bwd)


def _native_forward(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  return jax.ffi.ffi_call(_NATIVE_FORWARD, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method='sequential')(
      x, kernel, ph=np.int64(padding[0]), pw=np.int64(padding[1])
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dwconv_native(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  """float32 'same' depthwise conv by the C++ kernels; kernel (kh, kw, C) with k = 2p + 1. Its output is
  a buffer of its own (a custom call), so it needs no fusion barrier."""
  return _native_forward(x, kernel, padding)


def _dwconv_native_fwd(x, kernel, padding):
  return _native_forward(x, kernel, padding), (x, kernel)


def _dwconv_native_bwd(padding, res, g):
  x, kernel = res
  kh, kw, _ = kernel.shape
  g = g.astype(jnp.float32)
  dx = _native_forward(g, kernel[::-1, ::-1], (kh - 1 - padding[0], kw - 1 - padding[1]))
  dk = jax.ffi.ffi_call(_NATIVE_KERNEL_GRAD, jax.ShapeDtypeStruct(kernel.shape, jnp.float32), vmap_method='sequential')(
      x, g, ph=np.int64(padding[0]), pw=np.int64(padding[1])
  )
  return dx, dk


_dwconv_native.defvjp(_dwconv_native_fwd, _dwconv_native_bwd)


@functools.partial(jax.jit, static_argnums=(2, 3))
def depthwise_conv2d(x: Array, kernel: Array, padding: int, impl: str) -> Array:
  """Stride-1 depthwise conv. x: (N,H,W,C); kernel: (kh,kw,1,C) (Flax grouped-conv layout).

  Every ``impl`` computes the same function (cross-correlation, zero padding ``padding`` on all
  sides, as PyTorch ``Conv2d(groups=C)``).  Jitted (inlined under an outer jit; avoids op-by-op
  dispatch of the 49 shifted terms when a model is run eagerly, e.g. an un-jitted ``model.init``):

  * ``xla``: ``lax.conv_general_dilated(feature_group_count=C)`` (fast on GPU/TPU, slow on XLA:CPU).
  * ``xla_nchw``: same, on NCHW/OIHW layout (profiling only).
  * ``native``: C++ kernels called as XLA FFI custom calls (``cpu_kernels.cc``; float32, 'same'
    padding; falls back to ``shifted`` where they can't compile).  Fastest on CPU.
  * ``shifted``: kh*kw shifted multiply-adds with a hand-written VJP (dx = shifted sum with the flipped
    kernel; dk = one variadic reduce over two-image chunks), each computed once behind a
    fusion barrier.  Fastest pure-XLA path on CPU.
  * ``shifted_autodiff``: the same forward, differentiated by JAX (profiling only).
  """
  kh, kw, _, c = kernel.shape
  impl = resolve_dwconv_impl(impl)
  p = ((padding, padding), (padding, padding))
  if impl == 'xla':
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=p, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c
    )
  if impl == 'xla_nchw':
    y = lax.conv_general_dilated(
        jnp.transpose(x, (0, 3, 1, 2)),
        jnp.transpose(kernel, (3, 2, 0, 1)),
        window_strides=(1, 1),
        padding=p,
        dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
        feature_group_count=c,
    )
    return jnp.transpose(y, (0, 2, 3, 1))
  _, h, w, _ = x.shape
  k = kernel[:, :, 0, :]
  if kh == 2 * padding + 1 and kw == 2 * padding + 1:
    # 'same' conv on a small map (e.g. 7x7 kernel on 2x2): taps that only ever see zero padding are
    # skipped exactly by cropping the kernel to the (2*min(p, H-1) + 1) central rows/cols.
    ph, pw = min(padding, h - 1), min(padding, w - 1)
    k = k[padding - ph : padding + ph + 1, padding - pw : padding + pw + 1]
  else:
    ph = pw = padding
  same = k.shape[0] == 2 * ph + 1 and k.shape[1] == 2 * pw + 1
  if impl == 'native':
    if same and x.dtype == jnp.float32 and k.dtype == jnp.float32:
      return _dwconv_native(x, k, (ph, pw))
    impl = 'shifted'  # the C++ kernels do float32 'same' convs only
  if impl == 'shifted' and same:
    return _dwconv_shifted(x, k, (ph, pw))
  if impl in ('shifted', 'shifted_autodiff'):
    return _shifted_sum(_pad_hw(x, (ph, pw)), k, h + 2 * ph - k.shape[0] + 1, w + 2 * pw - k.shape[1] + 1)
  raise AssertionError(impl)


# --------------------------------------------------------------------------------------
# Non-overlapping patch convolution (stem, downsampling)
# --------------------------------------------------------------------------------------
PATCH_CONV_IMPLS = ('auto', 'conv', 'dense')


class PatchConv(nn.Module):
  """k x k conv with stride k, no padding (ConvNeXt's patchify stem and 2x2 downsampling layers).

  Params ``kernel`` (k, k, Cin, Cout) and ``bias`` exactly as ``nn.Conv`` -- checkpoints do not
  depend on ``impl``:

  * ``conv``: ``lax.conv_general_dilated``.
  * ``dense``: the same sum as one matmul over non-overlapping patches (space-to-depth, then
    (k*k*Cin) x Cout).  Bit-identical to ``conv`` on XLA:CPU, and 1.5-2x faster there in the
    backward pass.
  * ``auto``: ``dense`` on CPU, ``conv`` elsewhere.
  """

  features: int
  patch: int
  impl: str = 'auto'
  dtype: Dtype = jnp.float32
  kernel_init: Callable = trunc_normal_init(0.02)
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.impl not in PATCH_CONV_IMPLS:
      raise ValueError(f'PatchConv impl must be one of {PATCH_CONV_IMPLS}, got {self.impl!r}')
    k, cin = self.patch, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, cin, self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    n, h, w, _ = x.shape
    ho, wo = h // k, w // k
    impl = self.impl if self.impl != 'auto' else ('dense' if jax.default_backend() == 'cpu' else 'conv')
    if impl == 'conv':
      y = lax.conv_general_dilated(x, kernel, (k, k), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    else:
      x = x[:, : ho * k, : wo * k]  # VALID: a remainder row/column is dropped, as by the conv
      patches = x.reshape(n, ho, k, wo, k, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, k * k * cin)
      y = patches @ kernel.reshape(k * k * cin, self.features)
    counting.record_macs(k * k * cin * math.prod(y.shape))
    return y + bias.astype(self.dtype)


class DepthwiseConv(nn.Module):
  """Depthwise conv with bias. Params: ``kernel`` (k,k,1,C) -- same as ``nn.Conv(feature_group_count=C)``
  -- and ``bias`` (C,), whatever ``impl`` is, so checkpoints are interchangeable between impls."""

  kernel_size: int = 7
  padding: int = 3
  impl: str = 'auto'
  dtype: Dtype = jnp.float32
  kernel_init: Callable = trunc_normal_init(0.02)
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
    bias = self.param('bias', self.bias_init, (c,), jnp.float32)
    x = x.astype(self.dtype)
    y = depthwise_conv2d(x, kernel.astype(self.dtype), self.padding, self.impl)
    # Not an nn.Conv, so report its MACs to core_jax.counting the way a grouped conv counts them.
    counting.record_macs(self.kernel_size * self.kernel_size * math.prod(y.shape))
    return y + bias.astype(self.dtype)


# --------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------
class DropPath(nn.Module):
  """Per-sample stochastic depth (timm ``DropPath``, scale_by_keep=True). Uses the 'dropout' rng."""

  rate: float = 0.0
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if not train or self.rate <= 0.0:
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng(self.rng_collection)
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
