"""Confidence adaptivity (CA) of ADP-C: per-pixel masks from an exit's confidence, masked convs, RBF fill.

Contract (the released ADP-C code, `conv_mask_uniform` + `set_part_masks`):
- `confidence_mask(logits, tau)`: a pixel is computed (1.0) where max softmax(logits) <= tau, skipped (0.0)
  where it is more confident; hard, no gradient. tau must lie in (0, 1].
- `MaskSet(mask)` holds exit k's mask at the logits' resolution (1/4) and gives it at any conv's OUTPUT
  resolution as PyTorch's `F.interpolate(mode='nearest')` samples it: source index floor(dst * in / out) in
  float32, i.e. the top-left pixel of each block (strided slicing when the sizes divide).
- `Conv`: a bias-optional conv with PyTorch's explicit padding (k // 2) and N(0, 0.001) weights (biases
  U(+-1/sqrt(fan_in)) as PyTorch's default); `conv_init='he'` draws N(0, 2 / fan_in) instead (CONV_INITS).
  With `exit_index` set it is a masked conv of the segment that ends at that exit (2..4): it owns a learnable
  scalar `rbf_lambda` (init 3.0) and, given a MaskSet, returns the masked conv (below). It reports its dense cost to
  `core_jax.counting` (`record_macs`) and, when masked, sows per example `actual_exit{k}` (dense * p + (1 - p) * p
  * C_out * 49 * H * W, p = computed fraction of its output, as the ADP-C FLOP counter) and `dense_exit{k}` into
  the 'macs' collection.
- `MASKED_CONVS[compute.masked_conv](compute, x, kernel, bias, mask, rbf_lambda, strides, padding)` is THE
  masked conv, chosen by the model's compute policy (`core_jax.compute.Compute.masked_conv`): 'dense'
  (`masked_dense`, the released code's formulation) computes the dense conv y (bias included), keeps y where
  mask == 1 and fills masked positions with the 7x7 depthwise RBF interpolation of y * mask: weights
  exp(-lambda^2 d^2) with the centre's d^2 set to 1e5, normalised by the full kernel sum + 1e-5. A faster
  implementation with the same semantics (one that only computes the unmasked outputs) is one more entry.
- Dense convs (`dense_conv`) compute as the policy says (`Compute.conv`); `AUTO` / `for_backend` give the
  line's choices per backend: on CPU a 1x1 conv is a matmul over the channels (XLA:CPU's convolution is several
  times slower for it at these channel counts), any other an XLA convolution (shifted patches @ kernel was as
  fast only on small images, and 3.4x slower for the W18-Small-v2 backbone at 512x1024: benchmarks/ANALYSIS.md).
- `aggregate(prev, new, mask)`: the "copy" aggregation prev * (1 - m) + new * m at the logits' resolution, so
  an exited pixel keeps its logits in every later exit.
"""

import math
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core_jax import counting
from core_jax.compute import Compute, on_cpu, resolve
from core_jax.errors import UserError

RBF_SIZE = 7
RBF_CENTRE_DIST2 = 1e5  # the released code's centre distance: its weight is exp(-1e5 * lambda^2) ~ 0
RBF_EPS = 1e-5
LAMBDA_INIT = 3.0
CONV_INIT_STD = 0.001
CONV_INITS = ('normal', 'he')  # the reference's N(0, 0.001); He (Kaiming) normal N(0, 2 / fan_in)
_DN = ('NHWC', 'HWIO', 'NHWC')


def check_tau(tau) -> float:
  """tau as a float in (0, 1], else a one-line UserError."""
  try:
    t = float(tau)
  except (TypeError, ValueError):
    raise UserError(f'confidence threshold tau must be a number in (0, 1], got {tau!r}') from None
  if not 0.0 < t <= 1.0:
    raise UserError(f'confidence threshold tau must be in (0, 1], got {tau!r}')
  return t


def confidence_mask(logits: jax.Array, tau: float) -> jax.Array:
  """(B, H, W, classes) logits -> (B, H, W) float mask, 1.0 where max softmax <= tau (still to compute)."""
  conf = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  return lax.stop_gradient((conf <= tau).astype(jnp.float32))


def aggregate(prev: jax.Array, new: jax.Array, mask: jax.Array) -> jax.Array:
  """'copy' aggregation: pixels with mask 0 keep `prev`'s logits, the others take `new`'s."""
  m = mask[..., None].astype(new.dtype)
  return prev * (1 - m) + new * m


def nearest_indices(src: int, dst: int) -> np.ndarray:
  """PyTorch 'nearest' source indices for resizing a length-`src` axis to `dst`: floor(i * src / dst)."""
  scale = np.float32(src) / np.float32(dst)
  idx = np.floor(np.arange(dst, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, src - 1)


def resize_mask_nearest(mask: jax.Array, h: int, w: int) -> jax.Array:
  """(B, H, W) -> (B, h, w) sampled as PyTorch's nearest (strided slicing when H/h and W/w are integers)."""
  big_h, big_w = mask.shape[1:3]
  ih, iw = nearest_indices(big_h, h), nearest_indices(big_w, w)
  if big_h % h == 0 and big_w % w == 0:
    sh, sw = big_h // h, big_w // w
    if np.array_equal(ih, np.arange(h) * sh) and np.array_equal(iw, np.arange(w) * sw):
      return mask[:, ::sh, ::sw]
  return jnp.take(jnp.take(mask, jnp.asarray(ih), axis=1), jnp.asarray(iw), axis=2)


class MaskSet:
  """Exit k's mask at the logits' resolution, served at every conv's output resolution (cached per size)."""

  def __init__(self, mask: jax.Array):
    self.mask = mask
    self._cache: dict[tuple[int, int], jax.Array] = {}

  def at(self, h: int, w: int) -> jax.Array:
    if (h, w) not in self._cache:
      big_h, big_w = self.mask.shape[1:3]
      if h > big_h or w > big_w:
        raise ValueError(f'mask of size {(big_h, big_w)} asked at a larger size {(h, w)}')
      self._cache[(h, w)] = self.mask if (h, w) == (big_h, big_w) else resize_mask_nearest(self.mask, h, w)
    return self._cache[(h, w)]

  @property
  def fraction(self) -> jax.Array:
    """Per-example fraction of the logits' pixels still computed, (B,)."""
    return self.mask.mean(axis=(1, 2))


def rbf_weights(rbf_lambda: jax.Array) -> jax.Array:
  """The unnormalised 7x7 weights exp(-lambda^2 d^2), the centre's d^2 = 1e5 (weight ~0)."""
  r = RBF_SIZE // 2
  d = np.arange(RBF_SIZE, dtype=np.float32) - r
  dist2 = d[:, None] ** 2 + d[None, :] ** 2
  dist2[r, r] = RBF_CENTRE_DIST2
  return jnp.exp(-(rbf_lambda**2) * jnp.asarray(dist2))


def rbf_kernel(rbf_lambda: jax.Array) -> jax.Array:
  """The 7x7 interpolation weights for one lambda (normalised by the full sum + 1e-5; centre ~0)."""
  k = rbf_weights(rbf_lambda)
  return k / (k.sum() + RBF_EPS)


def rbf_fill(y: jax.Array, mask: jax.Array, rbf_lambda: jax.Array) -> jax.Array:
  """y * m + rbf(y * m) * (1 - m) for y (B, h, w, C) and mask (B, h, w).

  Computed as a separable 7 + 7 tap sum of shifted slices (XLA:CPU's depthwise conv is many times slower): the
  RBF weights are exp(-lambda^2 dy^2) exp(-lambda^2 dx^2) except at the centre, and the centre only meets
  y * m at the pixel itself, which is 0 wherever the fill is used (m = 0); the normalisation is the reference
  kernel's sum (centre ~0) + 1e-5. Same values and gradients as the 7x7 depthwise conv of `rbf_kernel`."""
  m = mask[..., None].astype(y.dtype)
  ym = y * m
  r = RBF_SIZE // 2
  h, w = y.shape[1:3]
  g = jnp.exp(-(rbf_lambda**2) * jnp.asarray((np.arange(RBF_SIZE, dtype=np.float32) - r) ** 2)).astype(y.dtype)
  norm = (1.0 / (rbf_weights(rbf_lambda).sum() + RBF_EPS)).astype(y.dtype)
  yp = jnp.pad(ym, ((0, 0), (r, r), (r, r), (0, 0)))
  rows = sum(g[j] * yp[:, :, j : j + w, :] for j in range(RBF_SIZE))
  interp = sum(g[i] * rows[:, i : i + h, :, :] for i in range(RBF_SIZE)) * norm
  return ym + interp * (1 - m)


def rbf_fill_conv(y: jax.Array, mask: jax.Array, rbf_lambda: jax.Array) -> jax.Array:
  """`rbf_fill` as the reference writes it: the 7x7 depthwise conv of `rbf_kernel` (the tests' oracle)."""
  m = mask[..., None].astype(y.dtype)
  ym = y * m
  c = y.shape[-1]
  k = jnp.broadcast_to(rbf_kernel(rbf_lambda).astype(y.dtype)[:, :, None, None], (RBF_SIZE, RBF_SIZE, 1, c))
  p = RBF_SIZE // 2
  interp = lax.conv_general_dilated(ym, k, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN, feature_group_count=c)
  return ym + interp * (1 - m)


# What 'auto' means for the anytime line on each backend (module docstring); the other fields do not apply.
AUTO = {
    'pointwise_conv': on_cpu('matmul', 'conv'),
    'small_conv': 'conv',
    'patch_conv': 'conv',
    'channel_multiple': 1,
    'masked_conv': 'dense',
}


def for_backend(options: Mapping | None = None) -> Compute:
  """The anytime models' compute policy: ``options`` (``config.compute``) with 'auto' entries from ``AUTO``."""
  return resolve(options, AUTO, 'anytime')


def dense_conv(compute: Compute, x, kernel, bias, strides, padding):
  """The conv every `Conv` computes (kernel and bias in x's dtype), as ``compute`` says (``Compute.conv``)."""
  y = compute.conv(x, kernel.astype(x.dtype), strides, padding)
  return y if bias is None else y + bias.astype(y.dtype)


def dense_conv_xla(x, kernel, bias, strides, padding):
  """`dense_conv` as one lax.conv_general_dilated (the tests' oracle)."""
  y = lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding, dimension_numbers=_DN)
  return y if bias is None else y + bias.astype(y.dtype)


def masked_dense(compute: Compute, x, kernel, bias, mask, rbf_lambda, strides, padding):
  """Masked-dense (the reference): the full conv, then masked outputs replaced by the RBF fill (no compute saved)."""
  return rbf_fill(dense_conv(compute, x, kernel, bias, strides, padding), mask, rbf_lambda)


# compute.masked_conv -> the masked conv (same signature and semantics); core_jax.compute.CHOICES lists the names.
MASKED_CONVS: dict[str, Callable] = {'dense': masked_dense}


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv(nn.Module):
  """k x k conv, PyTorch padding k // 2, optionally a masked conv of the segment ending at `exit_index`."""

  features: int
  kernel_size: int = 1
  strides: int = 1
  use_bias: bool = False
  exit_index: int | None = None
  conv_init: str = 'normal'  # CONV_INITS
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x: jax.Array, masks: MaskSet | None = None) -> jax.Array:
    k, s, cin = self.kernel_size, self.strides, x.shape[-1]
    std = CONV_INIT_STD if self.conv_init == 'normal' else math.sqrt(2.0 / (cin * k * k))
    kernel = self.param('kernel', nn.initializers.normal(std), (k, k, cin, self.features))
    bias = self.param('bias', torch_bias_init(cin * k * k), (self.features,)) if self.use_bias else None
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    h = (x.shape[1] + 2 * (k // 2) - k) // s + 1
    w = (x.shape[2] + 2 * (k // 2) - k) // s + 1
    dense = h * w * k * k * cin * self.features  # MACs per example (conv/linear multiply-adds only)
    counting.record_macs(x.shape[0] * dense)
    if self.exit_index is None:
      if masks is not None:
        raise ValueError(f'{self.name}: a mask was given to a conv that is not masked')
      return dense_conv(self.compute, x, kernel, bias, (s, s), pad)
    rbf_lambda = self.param('rbf_lambda', nn.initializers.constant(LAMBDA_INIT), ())
    if masks is None:  # CA model run without masks (e.g. backbone features): plain dense conv
      return dense_conv(self.compute, x, kernel, bias, (s, s), pad)
    m = masks.at(h, w)
    y = MASKED_CONVS[self.compute.masked_conv](self.compute, x, kernel, bias, m, rbf_lambda, (s, s), pad)
    p = m.mean(axis=(1, 2))
    actual = float(dense) * p + (1 - p) * p * float(self.features * RBF_SIZE * RBF_SIZE * h * w)
    counting.sow_macs(self, f'actual_exit{self.exit_index}', actual)
    counting.sow_macs(self, f'dense_exit{self.exit_index}', jnp.full_like(p, float(dense)))
    return y
