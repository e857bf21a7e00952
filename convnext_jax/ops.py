"""How ConvNeXt's layers compute on a backend, under the one compute policy (``core_jax.compute.Compute``).

Every choice gives the same function, the same parameters and the same results (to float rounding; the
parity tests in tests/convnext/test_models.py run every path). The policy fields ConvNeXt uses:

* ``dwconv``: the 7x7 depthwise conv as
  ``xla`` (``lax.conv_general_dilated(feature_group_count=C)``; fast on GPU/TPU, slow on XLA:CPU),
  ``native`` (C++ kernels, ``cpu_kernels.cc``, called as XLA FFI custom calls; float32 'same' convs, other
  cases take ``shifted``; with it the LayerNorms use the C++ kernels too; channel counts padded to
  ``channel_multiple``, 1 in ConvNeXt's own table, 8 in the pruning line's), or ``shifted`` (kh*kw shifted
  multiply-adds with a hand-written backward, each computed once behind a fusion barrier; the fastest
  pure-XLA path on CPU, and the one that partitions under a sharded jit).
* ``patch_conv``: the non-overlapping k x k / stride k convs (stem, downsampling) as ``conv`` or ``matmul``
  over space-to-depth patches (``Compute.conv``; bit-identical on XLA:CPU, faster there in the backward).
* ``dense_grad``: the pointwise convs' (and the head's) weight gradient as ``autodiff`` or
  ``narrow_transpose``, one standard-form matmul (``core_jax.compute.dense_dot_general``; on XLA:CPU autodiff's
  form runs outside YNNPACK after a transposed copy of the output gradient: ConvNeXt-T's first-stage pwconv1
  forward + backward 2.3x the CPU time, benchmarks/ANALYSIS.md).
* ``fusion_barriers``: materialize each block layer's output (``layer_end``): XLA:CPU's cross-layer fusions
  (LayerNorm into the matmul, GELU into its neighbours) cost more than the memory pass they save.

``for_backend(options)`` resolves ``config.compute`` for ConvNeXt (``AUTO``: what 'auto' means per backend;
the other policy fields do not apply to it and are an error when set). ``create_model`` / the task hand the
policy to the model, which hands it to every layer.
"""

import dataclasses
import functools
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core_jax import native_kernels
from core_jax.compute import Compute, materialized, on_cpu, resolve

Array = jax.Array

DWCONV_IMPLS = ('auto', 'xla', 'native', 'shifted')

# C++ kernels for XLA:CPU, compiled on first use by core_jax.native_kernels (see native_cpu_kernels_available).
_NATIVE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpu_kernels.cc')
_NATIVE_FORWARD, _NATIVE_KERNEL_GRAD = 'convnext_dwconv_forward', 'convnext_dwconv_kernel_grad'
_NATIVE_LN_FORWARD, _NATIVE_LN_BACKWARD = 'convnext_layer_norm_forward', 'convnext_layer_norm_backward'


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


def resolve_dwconv_impl(impl: str) -> str:
  """'auto' -> on CPU 'native' when the C++ kernels compile and the process sees one device, else 'shifted'
  (XLA:CPU grouped convs are slow); 'xla' on GPU/TPU. 'native' without the kernels -> 'shifted'.

  One device only: XLA cannot partition a custom call, so under a sharded jit it would gather the whole batch
  onto every device; the 'shifted' path shards like any XLA op.
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


# What 'auto' means for ConvNeXt on each backend (benchmarks/ANALYSIS.md, design measurements).
AUTO = {
    'dwconv': lambda: resolve_dwconv_impl('auto'),
    'patch_conv': on_cpu('matmul', 'conv'),
    'fusion_barriers': on_cpu(True, False),
    'dense_grad': on_cpu('narrow_transpose', 'autodiff'),
}


def for_backend(options: Mapping | None = None, line_auto: Mapping | None = None, line: str = 'convnext') -> Compute:
  """ConvNeXt's compute policy for the running process: ``options`` (``config.compute``, or a dict of some
  fields) with each 'auto' / missing entry resolved by ``AUTO``; 'native' without the C++ kernels ->
  'shifted'.

  Another line that builds ConvNeXts (the pruning line's 'convnext' families) passes its own table as
  ``line_auto`` and its name as ``line``: its fields join (channel_multiple, ...), and ``AUTO`` wins the fields
  both list, so its ConvNeXts compute exactly as this line's."""
  compute = resolve(options, {**(line_auto or {}), **AUTO}, line)
  return dataclasses.replace(compute, dwconv=resolve_dwconv_impl(compute.dwconv))


def uses_native_kernels(compute: Compute) -> bool:
  """The C++ kernels compute the (float32 'same') depthwise convs and, exactly then, the LayerNorms."""
  return compute.dwconv == 'native' and native_cpu_kernels_available()


def depthwise_conv(compute: Compute, x: Array, kernel: Array, padding: int) -> Array:
  """Stride-1 depthwise conv, zero padding ``padding``; kernel (kh, kw, 1, C). See ``depthwise_conv2d``.

  By the C++ kernels, a channel count that is not a multiple of ``compute.channel_multiple`` (a pruned width:
  the pruning line's ConvNeXts) is computed zero-padded up to one and sliced back: the kernels' fast path takes
  8 channels at a time, and the remainder path was 2.5-3x slower than padding (C = 67 at 28x28, 134 at 14x14,
  batch 8: benchmarks/ANALYSIS.md). Zero channels meet zero kernel taps, so the result is the same."""
  c = kernel.shape[-1]
  padded = compute.padded_channels(c)
  if padded == c or x.dtype != jnp.float32 or not uses_native_kernels(compute):
    return depthwise_conv2d(x, kernel, padding, compute.dwconv)
  widen = lambda a: jnp.pad(a, ((0, 0),) * (a.ndim - 1) + ((0, padded - c),))
  return depthwise_conv2d(widen(x), widen(kernel), padding, compute.dwconv)[..., :c]


def layer_norm(compute: Compute, x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm over the last axis (``layer_norm_channels_last``); by the C++ kernel for float32 if native."""
  if uses_native_kernels(compute) and x.dtype == jnp.float32:
    return layer_norm_native(x, scale, bias, eps)
  return layer_norm_channels_last(x, scale, bias, eps)


def layer_end(compute: Compute, y: Array, anchor: Array, after_layer_norm: bool = False) -> Array:
  """``compute.layer_end``, except after a LayerNorm by the C++ kernel, which already writes to a buffer of
  its own (``after_layer_norm``: ``y`` is a LayerNorm's output)."""
  if after_layer_norm and uses_native_kernels(compute):
    return y
  return compute.layer_end(y, anchor)


# --------------------------------------------------------------------------------------
# LayerNorm: XLA formulation and C++ kernel
# --------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_channels_last(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm over the last axis, statistics in float32: (x - mean) / sqrt(var + eps) * scale + bias,
  var = mean((x - mean)^2) (two-pass, like PyTorch). Returns x's dtype.

  Hand-written VJP: it keeps x and the per-row mean / 1/std and recomputes the normalized value in the
  backward, dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)) with gs = g * scale. Autodiff of the forward
  saves and re-reads broadcast (N, H, W, C) copies of the row statistics instead.
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
  """``layer_norm_channels_last`` (same function, float32 only) by the C++ kernels: one read of x and one write
  of y in the forward, one pass over x and g (dx, dscale, dbias together) in the backward."""
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


# --------------------------------------------------------------------------------------
# Depthwise convolution: shifted multiply-adds and C++ kernel
# --------------------------------------------------------------------------------------
def shifted_sum(xp: Array, kernel: Array, ho: int, wo: int) -> Array:
  """sum_{i,j} xp[:, i:i+ho, j:j+wo, :] * kernel[i, j]   (kernel: (kh, kw, C)); one XLA loop fusion."""
  kh, kw, _ = kernel.shape
  out = None
  for i in range(kh):
    for j in range(kw):
      term = xp[:, i : i + ho, j : j + wo, :] * kernel[i, j]
      out = term if out is None else out + term
  return out


def pad_hw(x: Array, p: tuple[int, int]) -> Array:
  """Zero padding of ``p = (ph, pw)`` on both sides of H and W of an NHWC array."""
  ph, pw = p
  return jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if (ph or pw) else x


def _dw_kernel_grad(xp: Array, g: Array, kh: int, kw: int) -> Array:
  """dk[i, j, c] = sum_{n,h,w} xp[n, h+i, w+j, c] * g[n, h, w, c]  -> (kh, kw, C).

  ONE variadic reduce with kh*kw outputs: XLA sweeps ``g`` and ``xp`` once and updates all 49 per-channel
  accumulators at each position (the loop order a hand-written kernel would use); autodiff of the shifted
  forward gives 49 separate slice + reduce fusions instead. The batch is split into chunks of two images that
  the reduce keeps apart (summed at the end): XLA finishes one chunk before the next, so each sweep stays in
  cache. No loop over chunks, so under a batch-sharded jit each device reduces its own images and only the
  (chunks, C) partial sums cross devices (a scan over chunks made GSPMD all-gather the whole batch onto every
  device).
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


def _shifted_same(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  kh, kw, c = kernel.shape
  _, h, w, _ = x.shape
  return shifted_sum(pad_hw(x, padding), kernel, h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dwconv_shifted(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  return materialized(functools.partial(_shifted_same, padding=padding), x, kernel)


def _dwconv_shifted_fwd(x, kernel, padding):
  return _dwconv_shifted(x, kernel, padding), (x, kernel)


def _dwconv_shifted_bwd(padding, res, g):
  x, kernel = res
  kh, kw, _ = kernel.shape
  _, h, w, _ = x.shape
  # d/dx: full correlation of g with the flipped kernel (itself a shifted sum), padded so the output is (h, w).
  ph, pw = kh - 1 - padding[0], kw - 1 - padding[1]
  if ph < 0 or pw < 0 or g.shape[1:3] != (h, w):
    raise NotImplementedError("shifted dwconv backward assumes 'same' padding (k = 2p + 1)")
  dx = materialized(lambda g, k: shifted_sum(pad_hw(g, (ph, pw)), k, h, w), g, kernel[::-1, ::-1])
  dk = _dw_kernel_grad(pad_hw(x, padding), g, kh, kw).astype(kernel.dtype)
  return dx.astype(x.dtype), dk


_dwconv_shifted.defvjp(_dwconv_shifted_fwd, _dwconv_shifted_bwd)


def _native_forward(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  return jax.ffi.ffi_call(_NATIVE_FORWARD, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method='sequential')(
      x, kernel, ph=np.int64(padding[0]), pw=np.int64(padding[1])
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dwconv_native(x: Array, kernel: Array, padding: tuple[int, int]) -> Array:
  """float32 'same' depthwise conv by the C++ kernels; kernel (kh, kw, C) with k = 2p + 1. Its output is a
  buffer of its own (a custom call), so it needs no fusion barrier."""
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

  Every ``impl`` (``DWCONV_IMPLS``, see the module docstring) computes the same function: cross-correlation
  with zero padding ``padding`` on all sides, as PyTorch ``Conv2d(groups=C)``. Jitted (inlined under an outer
  jit) so that an eager call, e.g. an un-jitted ``model.init``, does not dispatch the 49 shifted terms one by
  one.
  """
  kh, kw, _, c = kernel.shape
  impl = resolve_dwconv_impl(impl)
  if impl == 'xla':
    p = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=p, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c
    )
  _, h, w, _ = x.shape
  k = kernel[:, :, 0, :]
  if kh == 2 * padding + 1 and kw == 2 * padding + 1:
    # 'same' conv on a small map (e.g. 7x7 kernel on 2x2): taps that only ever see zero padding are skipped
    # exactly by cropping the kernel to the (2*min(p, H-1) + 1) central rows/cols.
    ph, pw = min(padding, h - 1), min(padding, w - 1)
    k = k[padding - ph : padding + ph + 1, padding - pw : padding + pw + 1]
  else:
    ph = pw = padding
  same = k.shape[0] == 2 * ph + 1 and k.shape[1] == 2 * pw + 1
  if impl == 'native' and same and x.dtype == jnp.float32 and k.dtype == jnp.float32:
    return _dwconv_native(x, k, (ph, pw))
  # 'shifted', and 'native' where the C++ kernels do not apply (they do float32 'same' convs only)
  if same:
    return _dwconv_shifted(x, k, (ph, pw))
  return shifted_sum(pad_hw(x, (ph, pw)), k, h + 2 * ph - k.shape[0] + 1, w + 2 * pw - k.shape[1] + 1)
