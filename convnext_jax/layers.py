"""Building blocks for the Flax Linen ConvNeXt: init, LayerNorm, depthwise conv, DropPath.

All layers work on NHWC arrays.  Parameters are always float32 (``param_dtype``);
``dtype`` is the computation dtype.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax
import flax.linen as nn

from core_jax import counting

Array = jax.Array
Dtype = Any

DWCONV_IMPLS = ("auto", "xla", "shifted", "shifted_autodiff", "xla_nchw")


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


def layer_norm(name: Optional[str] = None, dtype: Dtype = jnp.float32, eps: float = 1e-6) -> nn.LayerNorm:
    """Channels-last LayerNorm as in ConvNeXt: eps 1e-6, biased variance, scale=1 / bias=0 init.

    ``use_fast_variance=False`` computes var as E[(x-mean)^2] (closer parity, stabler in bf16).
    """
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


# --------------------------------------------------------------------------------------
# Depthwise convolution
# --------------------------------------------------------------------------------------
def resolve_dwconv_impl(impl: str) -> str:
    """'auto' -> 'shifted' on CPU (XLA:CPU grouped convs are very slow), 'xla' on GPU/TPU."""
    if impl not in DWCONV_IMPLS:
        raise ValueError(f"dwconv_impl must be one of {DWCONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "xla"
    return impl


def _shifted_sum(xp: Array, kernel: Array, ho: int, wo: int) -> Array:
    """sum_{i,j} xp[:, i:i+ho, j:j+wo, :] * kernel[i, j]   (kernel: (kh, kw, C)); one XLA loop fusion."""
    kh, kw, _ = kernel.shape
    out = None
    for i in range(kh):
        for j in range(kw):
            term = xp[:, i:i + ho, j:j + wo, :] * kernel[i, j]
            out = term if out is None else out + term
    return out


def _pad_hw(x: Array, p: Tuple[int, int]) -> Array:
    ph, pw = p
    return jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if (ph or pw) else x


def _dw_kernel_grad(xp: Array, g: Array, kh: int, kw: int) -> Array:
    """dk[i, j, c] = sum_{n,h,w} xp[n, h+i, w+j, c] * g[n, h, w, c]  -> (kh, kw, C).

    Autodiff of the shifted forward gives kh*kw separate slice + reduce fusions over the whole batch
    (memory-bound, ~10x slower than the forward on XLA:CPU).  Here a scan over small batch chunks keeps
    the working set in cache, and a fori_loop over the kh kernel rows (kw fused reductions each) keeps
    the compiled code small (a fully unrolled kh*kw version compiles ~4x slower for the same speed).
    """
    n, hp, wp, c = xp.shape
    _, h, w, _ = g.shape
    per_image = hp * wp * c
    nb = 1
    while nb * 2 <= n and n % (nb * 2) == 0 and nb * 2 * per_image <= 32768:
        nb *= 2
    xr = xp.reshape(n // nb, nb, hp, wp, c)
    gr = g.reshape(n // nb, nb, h, w, c)

    def chunk(acc, xg):
        x1, g1 = xg

        def row(i, acc):
            rows = lax.dynamic_slice_in_dim(x1, i, h, axis=1)
            r = jnp.stack([jnp.sum(rows[:, :, j:j + w, :] * g1, axis=(0, 1, 2), dtype=jnp.float32)
                           for j in range(kw)])
            return acc.at[i].add(r)

        return lax.fori_loop(0, kh, row, acc), None

    acc, _ = lax.scan(chunk, jnp.zeros((kh, kw, c), jnp.float32), (xr, gr))
    return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dwconv_shifted(x: Array, kernel: Array, padding: Tuple[int, int]) -> Array:
    kh, kw, c = kernel.shape
    _, h, w, _ = x.shape
    return _shifted_sum(_pad_hw(x, padding), kernel, h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1)


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
    dx = _shifted_sum(_pad_hw(g, (ph, pw)), kernel[::-1, ::-1], h, w)
    dk = _dw_kernel_grad(_pad_hw(x, padding), g, kh, kw).astype(kernel.dtype)
    return dx.astype(x.dtype), dk


_dwconv_shifted.defvjp(_dwconv_shifted_fwd, _dwconv_shifted_bwd)


@functools.partial(jax.jit, static_argnums=(2, 3))
def depthwise_conv2d(x: Array, kernel: Array, padding: int, impl: str) -> Array:
    """Stride-1 depthwise conv. x: (N,H,W,C); kernel: (kh,kw,1,C) (Flax grouped-conv layout).

    Every ``impl`` computes the same function (cross-correlation, zero padding ``padding`` on all
    sides, as PyTorch ``Conv2d(groups=C)``).  Jitted (inlined under an outer jit; avoids op-by-op
    dispatch of the 49 shifted terms when a model is run eagerly, e.g. an un-jitted ``model.init``):

    * ``xla``: ``lax.conv_general_dilated(feature_group_count=C)`` (fast on GPU/TPU, slow on XLA:CPU).
    * ``xla_nchw``: same, on NCHW/OIHW layout (profiling only).
    * ``shifted``: kh*kw shifted multiply-adds with a hand-written VJP (dx = shifted sum with the flipped
      kernel; dk = chunked fused reduction).  Fastest on CPU.
    * ``shifted_autodiff``: the same forward, differentiated by JAX (profiling only).
    """
    kh, kw, _, c = kernel.shape
    impl = resolve_dwconv_impl(impl)
    p = ((padding, padding), (padding, padding))
    if impl == "xla":
        return lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding=p,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    if impl == "xla_nchw":
        y = lax.conv_general_dilated(
            jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(kernel, (3, 2, 0, 1)), window_strides=(1, 1),
            padding=p, dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=c)
        return jnp.transpose(y, (0, 2, 3, 1))
    _, h, w, _ = x.shape
    k = kernel[:, :, 0, :]
    if kh == 2 * padding + 1 and kw == 2 * padding + 1:
        # 'same' conv on a small map (e.g. 7x7 kernel on 2x2): taps that only ever see zero padding are
        # skipped exactly by cropping the kernel to the (2*min(p, H-1) + 1) central rows/cols.
        ph, pw = min(padding, h - 1), min(padding, w - 1)
        k = k[padding - ph:padding + ph + 1, padding - pw:padding + pw + 1]
    else:
        ph = pw = padding
    if impl == "shifted" and k.shape[0] == 2 * ph + 1 and k.shape[1] == 2 * pw + 1:
        return _dwconv_shifted(x, k, (ph, pw))
    if impl in ("shifted", "shifted_autodiff"):
        return _shifted_sum(_pad_hw(x, (ph, pw)), k, h + 2 * ph - k.shape[0] + 1, w + 2 * pw - k.shape[1] + 1)
    raise AssertionError(impl)


class DepthwiseConv(nn.Module):
    """Depthwise conv with bias. Params: ``kernel`` (k,k,1,C) -- same as ``nn.Conv(feature_group_count=C)``
    -- and ``bias`` (C,), whatever ``impl`` is, so checkpoints are interchangeable between impls."""

    kernel_size: int = 7
    padding: int = 3
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    kernel_init: Callable = trunc_normal_init(0.02)
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
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
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if not train or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        rng = self.make_rng(self.rng_collection)
        mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
