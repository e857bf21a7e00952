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
  exp(-lambda^2 d^2) with the centre's d^2 set to 1e5, normalised by the full kernel sum + 1e-5. 'sparse'
  (`masked_sparse`) gives the same outputs (to float32 rounding) computing the conv only on the kept pixels (few
  of them, or a 1 x 1 conv) or on the 8 x 8 tiles that keep a pixel, and the fill only next to kept pixels, or,
  where (nearly) every pixel is kept, the plain conv and the fill at the few skipped pixels only (section below);
  `Conv.fill_read=False` lets it skip a fill that no consumer reads; a MaskSet built with train=True (the training
  forward) always takes 'dense', whose gradients are the reference's.
- Dense convs (`dense_conv`) compute as the policy says (`Compute.conv`); `AUTO` / `for_backend` give the
  line's choices per backend: on CPU a 1x1 conv is a matmul over the channels (XLA:CPU's convolution is several
  times slower for it at these channel counts), any other an XLA convolution (shifted patches @ kernel was as
  fast only on small images, and 3.4x slower for the W18-Small-v2 backbone at 512x1024: benchmarks/ANALYSIS.md);
  the masked conv is 'sparse' on CPU (measured faster than masked-dense there: benchmarks/ANALYSIS.md) and
  'dense' on GPU / TPU (not measured).
- `aggregate(prev, new, mask)`: the "copy" aggregation prev * (1 - m) + new * m at the logits' resolution, so
  an exited pixel keeps its logits in every later exit.
"""

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core_jax import counting
from core_jax.compute import Compute, materialized, on_cpu, resolve
from core_jax.errors import check_fraction

RBF_SIZE = 7
RBF_CENTRE_DIST2 = 1e5  # the released code's centre distance: its weight is exp(-1e5 * lambda^2) ~ 0
RBF_EPS = 1e-5
LAMBDA_INIT = 3.0
CONV_INIT_STD = 0.001
CONV_INITS = ('normal', 'he')  # the reference's N(0, 0.001); He (Kaiming) normal N(0, 2 / fan_in)
_DN = ('NHWC', 'HWIO', 'NHWC')


def check_tau(tau) -> float:
  """tau as a float in (0, 1], else a one-line UserError."""
  return check_fraction(tau, 'confidence threshold tau')


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

  def __init__(self, mask: jax.Array, train: bool = False):
    self.mask = mask
    self.train = train  # training computes every masked conv masked-dense, whatever the policy
    self._cache: dict[tuple[int, int], jax.Array] = {}
    self._tiles: dict[tuple[int, int], Any] = {}

  def at(self, h: int, w: int) -> jax.Array:
    if (h, w) not in self._cache:
      big_h, big_w = self.mask.shape[1:3]
      if h > big_h or w > big_w:
        raise ValueError(f'mask of size {(big_h, big_w)} asked at a larger size {(h, w)}')
      self._cache[(h, w)] = self.mask if (h, w) == (big_h, big_w) else resize_mask_nearest(self.mask, h, w)
    return self._cache[(h, w)]

  def tiles(self, h: int, w: int) -> 'TileSet':
    """The mask at (h, w) as the sparse masked conv's `TileSet`, built once per size."""
    if (h, w) not in self._tiles:
      self._tiles[(h, w)] = TileSet(self.at(h, w))
    return self._tiles[(h, w)]

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


def _separable_taps(rbf_lambda: jax.Array, radius: int, dtype) -> tuple[jax.Array, jax.Array]:
  """(g, norm) in `dtype`: the 1-D RBF weights exp(-lambda^2 d^2) at d = -radius..radius, and 1 / (the whole 7 x 7
  kernel's sum + RBF_EPS), the reference's normalisation whatever taps are used."""
  d2 = jnp.asarray((np.arange(2 * radius + 1, dtype=np.float32) - radius) ** 2)
  g = jnp.exp(-(rbf_lambda**2) * d2).astype(dtype)
  return g, (1.0 / (rbf_weights(rbf_lambda).sum() + RBF_EPS)).astype(dtype)


def _tap_sum(g: jax.Array, a: jax.Array, axis: int, size: int) -> jax.Array:
  """sum_j g[j] * a[..., j : j + size, ...] (the slice along `axis`) over the taps j of `g`.

  The same primitives, in the same order, as `sum(g[j] * a[..., j : j + size, ...] for j in ...)` (its first add
  is 0 + the first term), written with lax ops: jnp's indexing and arithmetic wrappers made up about a quarter of
  tracing these sums, hundreds of ops per masked conv, traced again under the training step's linearize."""
  total = 0
  for j in range(g.shape[0]):
    start, limit = [0] * a.ndim, list(a.shape)
    start[axis], limit[axis] = j, j + size
    term = lax.mul(lax.squeeze(lax.slice(g, (j,), (j + 1,)), (0,)), lax.slice(a, start, limit))
    total = total + term if j == 0 else lax.add(total, term)
  return total


# A side of at most BAND_MAX pixels is filled by one matmul with the banded (n, n) matrix of the taps instead of the
# 7 shifted slices: the fill's ops (and their gradients') were most of the ops of the masked HRNet's train step, and
# at the embedded digit_scenes job's 16x16-16x32 grids the two matmuls per fill halved the train step's XLA:CPU
# compile time and its step time (measured: 39.5 s -> 24.6 s compile, 0.16 s -> 0.09 s CPU per step). A matmul
# costs n multiply-adds per output against the slices' 7, so wider sides keep the slices.
BAND_MAX = 32


def _band_matrix(g: jax.Array, n: int) -> jax.Array:
  """(n, n) B with B[s, t] = g[s - t + r] where |s - t| <= r, else 0: sum_s a[s] B[s, t] = sum_j g[j] a[t + j - r]
  over the taps inside the side (the zero padding of the slices)."""
  r = g.shape[0] // 2
  offset = np.arange(n)[:, None] - np.arange(n)[None, :]
  taps = g[np.clip(offset + r, 0, 2 * r)]
  return jnp.where(np.abs(offset) <= r, taps, jnp.zeros((), g.dtype))


def _fill_sum(g: jax.Array, a: jax.Array, axis: int) -> jax.Array:
  """sum_j g[j] * a shifted by j - r along `axis` (1 or 2 of (B, h, w, C)), zero outside: the RBF's 1-D pass."""
  n, r = a.shape[axis], g.shape[0] // 2
  if n <= BAND_MAX:
    spec = 'bsvc,st->btvc' if axis == 1 else 'bhsc,st->bhtc'
    return jnp.einsum(spec, a, _band_matrix(g, n))
  pad = [(0, 0)] * a.ndim
  pad[axis] = (r, r)
  return _tap_sum(g, jnp.pad(a, pad), axis, n)


# A jit inlined into its caller (no call in the program): its trace, and under the train step's linearize its
# linearization, are cached per input shapes, where tracing the fill anew for each of a model's masked convs (a few
# distinct shapes, a hundred-odd taps each) was half of the anytime train step's tracing time. The caller's program
# holds the same ops (its constants, the tap distances, once instead of once per conv).
@functools.partial(jax.jit, inline=True)
def rbf_fill(y: jax.Array, mask: jax.Array, rbf_lambda: jax.Array) -> jax.Array:
  """y * m + rbf(y * m) * (1 - m) for y (B, h, w, C) and mask (B, h, w).

  Computed as a separable 7 + 7 pass (XLA:CPU's depthwise conv is many times slower): per side a sum of shifted
  slices, or on a side of at most BAND_MAX pixels one matmul with the banded tap matrix (`_fill_sum`); the RBF
  weights are exp(-lambda^2 dy^2) exp(-lambda^2 dx^2) except at the centre, and the centre only meets y * m at
  the pixel itself, which is 0 wherever the fill is used (m = 0); the normalisation is the reference kernel's sum
  (centre ~0) + 1e-5. The values and gradients of the 7x7 depthwise conv of `rbf_kernel`, to float32 rounding."""
  m = mask[..., None].astype(y.dtype)
  ym = y * m
  g, norm = _separable_taps(rbf_lambda, RBF_SIZE // 2, y.dtype)
  interp = _fill_sum(g, _fill_sum(g, ym, 2), 1) * norm
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
    # the sparse masked conv where it was measured faster than masked-dense (CPU: benchmarks/ANALYSIS.md, 'anytime
    # masked_conv'); dense on GPU / TPU, where it is not measured yet. Evaluation only: training is masked-dense
    # whatever the policy. A small job may still pin 'dense': the sparse program compiles several times longer
    'masked_conv': on_cpu('sparse', 'dense'),
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


def masked_dense(compute: Compute, x, kernel, bias, mask, rbf_lambda, strides, padding, fill: bool = True):
  """Masked-dense (the reference): the full conv, then masked outputs replaced by the RBF fill (no compute saved).
  `fill` (False: the caller reads kept pixels only, `masked_sparse`) is ignored: the reference always fills."""
  del fill
  return rbf_fill(dense_conv(compute, x, kernel, bias, strides, padding), mask, rbf_lambda)


# --------------------------------------------------------------------------------------
# The sparse masked conv (compute.masked_conv='sparse'): same outputs, work in proportion to the mask
# --------------------------------------------------------------------------------------
# Outputs are cut into TILE x TILE tiles (at every conv's output resolution). The conv runs, as one dense VALID
# conv over a stack of gathered input windows, on the tiles that keep at least one pixel; the RBF fill on the
# tiles that skip a pixel within SHORT_RADIUS of a kept one (elsewhere the fill is 0 to float32 rounding, or not
# needed). The fill's weights exp(-lambda^2 d^2) beyond that radius sum to at most RBF_TAIL_TAPS *
# exp(-4 lambda^2) <= SHORT_TAIL of the largest value (lambda^2 >= SHORT_LAMBDA2; the init 3.0 gives 1e-14):
# below float32 rounding, so the 3 x 3 taps give the 7 x 7 fill's values, and fill tiles are only those bordering
# kept pixels. A smaller lambda (a trained one may be) takes the whole 7 x 7 fill, densely. The number of
# tiles is dynamic, so each stack has a static capacity, the smallest of a few compiled buckets (fractions of
# all tiles) that holds it, chosen by `lax.switch` (a conditional runs one branch); a count of 0 computes
# nothing, and above the largest bucket the branch is the dense computation. Both stages work on one NHWC
# buffer padded by the RBF radius: the conv's tiles are scattered into it and the fill's windows gathered from
# it and scatter-added back in place (a tile-major layout cost two transposes of the whole tensor per conv).
# Per-pixel gathers for every fraction (im2col of the kept pixels) were measured 3x slower than masked-dense on
# XLA:CPU (W18-Small-v2, 256x512): its gathers copy one short channel row per tap. They are used below a few
# percent of the pixels only (or for 1 x 1 convs, one tap), where tiles lose instead (PIXEL_BUCKETS below).
TILE = 8
SHORT_RADIUS = 1
RBF_TAIL_TAPS = RBF_SIZE**2 - (2 * SHORT_RADIUS + 1) ** 2  # the taps the short fill leaves out
SHORT_TAIL = 1e-7
SHORT_LAMBDA2 = math.log(RBF_TAIL_TAPS / SHORT_TAIL) / (SHORT_RADIUS + 1) ** 2
CONV_BUCKETS = (0.25, 0.5, 0.75, 0.9)
FILL_BUCKETS = (0.125, 0.25, 0.5)
# Per pixel: a kept pixel's conv reads its k x k input window, so computed per pixel (the window's rows gathered,
# one matmul) it costs in proportion to the kept pixels whatever their layout, where a tile costs its whole area as
# soon as one of its pixels is kept (at tau=0.998 on W18-Small-v2 the 5.4 % kept pixels hit 87 % of the 8 x 8
# tiles: benchmarks/ANALYSIS.md). A gather copies one row of channels per tap, so per pixel wins at small
# fractions and for 1 x 1 convs (one tap, no halo): capacities PIXEL_BUCKETS for a 1 x 1 conv of stride 1,
# PATCH_BUCKETS for the others (the tiles above the largest). At SCATTER_FILL_MAX of the pixels or fewer the short
# fill is scattered from the kept pixels too (`_pixel_fill`), so that such a branch's whole cost follows them.
# Few buckets: every capacity is a branch compiled into every masked conv, and the sparse program already compiles
# several times longer than the dense one. But a pixel branch's gathers and scattered fill cost in proportion to its
# capacity, not to its count, so the k x k capacities are a factor 2 apart (at most half the rows wasted): with 5.4 %
# of the pixels kept (tau=0.998 after exit 3, W18-Small-v2 at 512x1024) the 1 / 16 capacity took a 3 x 3 masked
# conv at 1/4 (128 x 256 x 18) from 3.9 to 2.5 ms (the dense conv: 2.7 ms), 1.2 -> 0.8 ms at 1/8.
PIXEL_BUCKETS = (1 / 16, 1 / 4, 1 / 2)
PATCH_BUCKETS = (1 / 32, 1 / 16, 1 / 8)
SCATTER_FILL_MAX = 1 / 8
# Near-dense: where (nearly) every pixel is kept (a segment after a confident-nowhere exit), the branches above cost
# the dense conv plus their machinery (the mask product, the padded grid buffer, the tile fill over it), well above
# the plain conv that EE+RH computes. So every pixel kept is the plain conv alone, and few skipped pixels (at most
# a NEAR_BUCKETS fraction, short fill only) are the plain conv with the fill computed at the skipped pixels only
# (`_near_dense_fill`: each one's 3 x 3 neighbourhood gathered), a cost in proportion to the skipped pixels.
NEAR_BUCKETS = (1 / 64, 1 / 16)


def _ordered(flags: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(count of true flags, permutation of the flat positions: the true ones first, each part in raster order)."""
  flat = flags.reshape(-1)
  on_rank = jnp.cumsum(flat) - 1
  count = on_rank[-1] + 1
  rank = jnp.where(flat, on_rank, count + jnp.cumsum(~flat) - 1).astype(jnp.int32)
  n = flat.shape[0]
  return count, jnp.zeros((n,), jnp.int32).at[rank].set(jnp.arange(n, dtype=jnp.int32), unique_indices=True)


class TileSet:
  """One mask (B, h, w) in the form the sparse masked conv uses, built once per mask and output size (the
  `MaskSet` caches it, so every conv of a segment at one resolution shares it). Tiles th x tw (TILE, or the
  whole side when smaller) over the output grid padded to whole tiles (the padding is skipped pixels), the batch
  flattened into one list of B * nh * nw tiles (per-example masks, one stack):
  - `conv_count`, `conv_order`: tiles with a kept pixel, first in `conv_order`;
  - `fill_count`, `fill_order`: tiles with a skipped pixel within SHORT_RADIUS of a kept one, first."""

  def __init__(self, mask: jax.Array):
    self.mask = mask
    bsz, h, w = mask.shape
    self.th, self.tw = min(TILE, h), min(TILE, w)
    self.nh, self.nw = -(-h // self.th), -(-w // self.tw)
    grid = jnp.pad(mask > 0.5, ((0, 0), (0, self.nh * self.th - h), (0, self.nw * self.tw - w)))
    self.grid_mask = grid
    r, n = SHORT_RADIUS, 2 * SHORT_RADIUS + 1
    near = lax.reduce_window(grid, False, lax.bitwise_or, (1, n, n), (1, 1, 1), ((0, 0), (r, r), (r, r)))
    tiles = lambda a: a.reshape(bsz, self.nh, self.th, self.nw, self.tw).any(axis=(2, 4))
    self.conv_count, self.conv_order = _ordered(tiles(grid))
    self.fill_count, self.fill_order = _ordered(tiles(near & ~grid))

  @property
  def num_tiles(self) -> int:
    return self.mask.shape[0] * self.nh * self.nw

  @functools.cached_property
  def pixels(self) -> tuple[jax.Array, jax.Array]:
    """(count, order) of the kept pixels over the flat (B * h * w) positions, kept first (the 1 x 1 conv's)."""
    return _ordered(self.mask > 0.5)

  def to_tiles(self, a: jax.Array) -> jax.Array:
    """(B, nh*th, nw*tw, ...) -> (B*nh*nw, th, tw, ...)."""
    b, rest = a.shape[0], a.shape[3:]
    a = a.reshape(b, self.nh, self.th, self.nw, self.tw, *rest)
    return jnp.moveaxis(a, 3, 2).reshape(b * self.nh * self.nw, self.th, self.tw, *rest)

  def from_tiles(self, a: jax.Array) -> jax.Array:
    """`to_tiles`' inverse."""
    b, rest = self.mask.shape[0], a.shape[3:]
    a = jnp.moveaxis(a.reshape(b, self.nh, self.nw, self.th, self.tw, *rest), 3, 2)
    return a.reshape(b, self.nh * self.th, self.nw * self.tw, *rest)

  def origins(self, tiles: jax.Array, scale: int, offset: int = 0) -> jax.Array:
    """(K, 3) start indices (b, offset + scale * i * th, offset + scale * j * tw) of tiles (b, i, j) (flat ids)."""
    b, rest = tiles // (self.nh * self.nw), tiles % (self.nh * self.nw)
    i, j = rest // self.nw, rest % self.nw
    return jnp.stack([b, offset + scale * i * self.th, offset + scale * j * self.tw], axis=-1).astype(jnp.int32)

  def windows(self, a: jax.Array, tiles: jax.Array, stride: int, size: tuple[int, int], offset: int = 0) -> jax.Array:
    """The (size) windows of `a` (B, H, W, C) at tile (b, i, j)'s origin (offset + stride * i * th, offset +
    stride * j * tw): (K, *size, C), one gather."""
    dnums = lax.GatherDimensionNumbers(offset_dims=(1, 2, 3), collapsed_slice_dims=(0,), start_index_map=(0, 1, 2))
    return lax.gather(
        a,
        self.origins(tiles, stride, offset),
        dnums,
        (1, *size, a.shape[-1]),
        indices_are_sorted=False,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )

  def kept(self, tiles: jax.Array, dtype) -> jax.Array:
    """The mask of tiles (flat ids) as (K, th, tw, 1) in `dtype`."""
    return self.to_tiles(self.grid_mask)[tiles][..., None].astype(dtype)


_TILE_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(1, 2, 3), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1, 2)
)


def _scatter_tiles(op, buffer: jax.Array, tiles: TileSet, rows: jax.Array, values: jax.Array) -> jax.Array:
  """`op` (lax.scatter or lax.scatter_add) of the tile stack `values` (K, th, tw, C) into `buffer` (the output
  grid padded by the RBF radius on every side) at the tiles `rows` (distinct, so the windows never overlap)."""
  return op(
      buffer,
      tiles.origins(rows, 1, RBF_SIZE // 2),
      values,
      _TILE_SCATTER,
      indices_are_sorted=False,
      unique_indices=True,
      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
  )


def capacities(n: int, fractions) -> tuple[int, ...]:
  """The static tile capacities for n tiles (distinct, 0 < cap < n; the dense branch covers the rest)."""
  return tuple(sorted({c for c in (math.ceil(f * n) for f in fractions) if 0 < c < n}))


def bucket_index(count: jax.Array, caps: tuple[int, ...]) -> jax.Array:
  """Index of the smallest capacity >= count (0 for no tile, caps[i] at i + 1); len(caps) + 1 (the dense branch)
  when none is."""
  return jnp.sum(count > jnp.asarray((0, *caps), jnp.int32)).astype(jnp.int32)


def _grid_buffer(tiles: TileSet, a: jax.Array) -> jax.Array:
  """`a` (B, h, w, C) on the output grid padded by the RBF radius (the layout both stages share)."""
  r = RBF_SIZE // 2
  h, w = a.shape[1:3]
  return jnp.pad(a, ((0, 0), (r, r + tiles.nh * tiles.th - h), (r, r + tiles.nw * tiles.tw - w), (0, 0)))


def _tiled_conv(compute: Compute, x, kernel, bias, tiles: TileSet, cap: int, stride: int, padding) -> jax.Array:
  """The conv (+ bias) times the mask in the padded grid buffer (`_grid_buffer`), computed on the first `cap`
  tiles of `conv_order` only (every tile with a kept pixel when conv_count <= cap; the others are all skipped
  pixels, so their product with the mask is 0 whichever they are)."""
  k, cout = kernel.shape[0], kernel.shape[-1]
  r = RBF_SIZE // 2
  (pt, _), (pl, _) = padding
  win_h, win_w = stride * (tiles.th - 1) + k, stride * (tiles.tw - 1) + k
  need_h, need_w = stride * (tiles.nh * tiles.th - 1) + k, stride * (tiles.nw * tiles.tw - 1) + k
  xp = jnp.pad(x, ((0, 0), (pt, need_h - x.shape[1] - pt), (pl, need_w - x.shape[2] - pl), (0, 0)))
  rows = tiles.conv_order[:cap]
  y = compute.conv(tiles.windows(xp, rows, stride, (win_h, win_w)), kernel, (stride, stride))
  if bias is not None:
    y = y + bias.astype(y.dtype)
  y = y * tiles.kept(rows, y.dtype)
  buffer = jnp.zeros((x.shape[0], tiles.nh * tiles.th + 2 * r, tiles.nw * tiles.tw + 2 * r, cout), y.dtype)
  return _scatter_tiles(lax.scatter, buffer, tiles, rows, y)


def _grid_ids(rows: jax.Array, h: int, w: int, grid: tuple[int, int], offset: int = 0, stride: int = 1) -> jax.Array:
  """Flat ids in a (B, *grid) buffer of the pixels `rows` (flat ids over B * h * w): pixel (b, i, j) at
  (b, offset + stride * i, offset + stride * j)."""
  gh, gw = grid
  b, rest = rows // (h * w), rows % (h * w)
  return b * (gh * gw) + (offset + stride * (rest // w)) * gw + offset + stride * (rest % w)


def _pixel_conv(compute: Compute, x, kernel, bias, tiles: TileSet, cap: int, stride: int, padding):
  """(rows, y): the first `cap` pixels of `tiles.pixels` (flat ids over B * h * w: every kept pixel when their count
  <= cap; the others are skipped) and the conv (+ bias) times the mask there, (cap, C_out): each pixel's k x k input
  window gathered (a row of channels per tap) and one matmul; a 1 x 1 conv of stride 1 gathers the rows of x."""
  bsz, h, w = tiles.mask.shape
  k, cin = kernel.shape[0], x.shape[-1]
  rows = tiles.pixels[1][:cap]
  if k == 1 and stride == 1:
    picked = x.reshape(-1, cin).at[rows].get(mode='promise_in_bounds')
  else:
    (pt, _), (pl, _) = padding
    need_h, need_w = stride * (h - 1) + k, stride * (w - 1) + k
    xp = jnp.pad(x, ((0, 0), (pt, max(0, need_h - x.shape[1] - pt)), (pl, max(0, need_w - x.shape[2] - pl)), (0, 0)))
    wx = xp.shape[2]
    origin = _grid_ids(rows, h, w, xp.shape[1:3], stride=stride)
    di, dj = np.divmod(np.arange(k * k), k)
    taps = origin[:, None] + jnp.asarray(di * wx + dj, jnp.int32)[None]
    picked = xp.reshape(-1, cin).at[taps].get(mode='promise_in_bounds').reshape(cap, k * k * cin)
  y = compute.conv(picked[None, :, None], kernel.reshape(1, 1, k * k * cin, -1), (1, 1), ((0, 0), (0, 0)))[0, :, 0]
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return rows, y * tiles.mask.reshape(-1).at[rows].get(mode='promise_in_bounds')[:, None].astype(y.dtype)


def _pixels_to_grid(tiles: TileSet, rows, y, padded: bool) -> jax.Array:
  """Pixel rows `y` (K, C) at flat ids `rows` (distinct) scattered into zeros: the padded grid buffer
  (`_grid_buffer`) when `padded`, else (B, h, w, C)."""
  bsz, h, w = tiles.mask.shape
  cout = y.shape[-1]
  if not padded:
    out = jnp.zeros((bsz * h * w, cout), y.dtype).at[rows].set(y, unique_indices=True, mode='promise_in_bounds')
    return out.reshape(bsz, h, w, cout)
  r = RBF_SIZE // 2
  grid_h, grid_w = tiles.nh * tiles.th + 2 * r, tiles.nw * tiles.tw + 2 * r
  flat = _grid_ids(rows, h, w, (grid_h, grid_w), r)
  out = jnp.zeros((bsz * grid_h * grid_w, cout), y.dtype).at[flat].set(y, unique_indices=True, mode='promise_in_bounds')
  return out.reshape(bsz, grid_h, grid_w, cout)


def _short_windows(mask: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(ids, kept), (len(rows), (2 SHORT_RADIUS + 1)^2): the flat ids, in the (B, h + 2r, w + 2r) buffer padded by
  r = SHORT_RADIUS, of each pixel's window of the short fill (row-major, the centre in the middle), and the mask
  there (the padding counts as skipped)."""
  r = SHORT_RADIUS
  _, h, w = mask.shape
  hb, wb = h + 2 * r, w + 2 * r
  di, dj = np.divmod(np.arange((2 * r + 1) ** 2), 2 * r + 1)
  ids = _grid_ids(rows, h, w, (hb, wb), r)[:, None] + jnp.asarray((di - r) * wb + dj - r, jnp.int32)[None]
  return ids, jnp.pad(mask, ((0, 0), (r, r), (r, r))).reshape(-1).at[ids].get(mode='promise_in_bounds')


def _pixel_fill(tiles: TileSet, rows, y, rbf_lambda) -> jax.Array:
  """(B, h, w, C): the pixel rows `y` at their pixels plus the short RBF fill scattered from them (each kept pixel
  adds its value times the fill's weight to its neighbours within SHORT_RADIUS that are skipped: the same sums as
  `_tiled_fill`, gathered from the other side), one scatter-add of (2 SHORT_RADIUS + 1)^2 rows per pixel."""
  r = SHORT_RADIUS
  mask = tiles.mask
  bsz, h, w = mask.shape
  hb, wb = h + 2 * r, w + 2 * r
  di, dj = np.divmod(np.arange((2 * r + 1) ** 2), 2 * r + 1)
  targets, kept = _short_windows(mask, rows)
  skipped = 1 - kept
  g, norm = _separable_taps(rbf_lambda, r, jnp.float32)
  weights = g[di] * g[dj] * norm
  coef = jnp.where(jnp.asarray((di == r) & (dj == r))[None], 1.0, weights[None] * skipped).astype(y.dtype)
  values = (y[:, None, :] * coef[..., None]).reshape(-1, y.shape[-1])
  out = jnp.zeros((bsz * hb * wb, y.shape[-1]), y.dtype).at[targets.reshape(-1)].add(values, mode='promise_in_bounds')
  return out.reshape(bsz, hb, wb, -1)[:, r : r + h, r : r + w]


def _separable_rbf(yp: jax.Array, rbf_lambda: jax.Array, h: int, w: int, r: int) -> jax.Array:
  """The RBF interpolation (without the mask terms) of windows `yp` (..., h + 2r, w + 2r, C) padded by r, with
  the taps within r (r = 3: all; normalised by the whole 7 x 7 kernel's sum, as the reference): 2r + 1 taps along
  the width into a buffer of its own (`materialized`: XLA:CPU would otherwise fuse them into each tap along the
  height, (2r + 1)^2 multiply-adds per value), then 2r + 1 along the height."""
  g, norm = _separable_taps(rbf_lambda, r, yp.dtype)
  rows = materialized(lambda yp, g: _tap_sum(g, yp, yp.ndim - 2, w), yp, g)
  return _tap_sum(g, rows, rows.ndim - 3, h) * norm


def _tiled_fill(ymp, tiles: TileSet, rbf_lambda, cap: int) -> jax.Array:
  """The padded grid buffer `ymp` (the conv, 0 at skipped pixels) with the short RBF fill (taps within
  SHORT_RADIUS) added at the skipped pixels of the first `cap` tiles of `fill_order` (every tile that has a nonzero
  fill when fill_count <= cap; in the others the fill is 0 or falls on kept pixels, where it is not added). The
  windows are read before any tile is written (one gather, one scatter-add), so every fill sees the conv's values
  only."""
  r = SHORT_RADIUS
  rows = tiles.fill_order[:cap]
  windows = tiles.windows(ymp, rows, 1, (tiles.th + 2 * r, tiles.tw + 2 * r), RBF_SIZE // 2 - r)
  interp = _separable_rbf(windows, rbf_lambda, tiles.th, tiles.tw, r) * (1 - tiles.kept(rows, ymp.dtype))
  return _scatter_tiles(lax.scatter_add, ymp, tiles, rows, interp)


def _near_dense_fill(y: jax.Array, tiles: TileSet, rbf_lambda, cap: int) -> jax.Array:
  """`masked_dense`'s output from the dense conv `y` (B, h, w, C) when at most `cap` pixels are skipped: `y` with
  the short RBF fill written at the last `cap` pixels of `tiles.pixels` (kept first: every skipped pixel, and kept
  ones, which keep their `y`), each from its (2 SHORT_RADIUS + 1)^2 neighbours gathered from `y` (their ids clamped
  to the image; the mask, padded with skipped pixels, gives 0 weight outside it and at skipped neighbours)."""
  r = SHORT_RADIUS
  mask = tiles.mask
  bsz, h, w = mask.shape
  cout = y.shape[-1]
  rows = tiles.pixels[1][-cap:]
  b, rest = rows // (h * w), rows % (h * w)
  i, j = rest // w, rest % w
  di, dj = np.divmod(np.arange((2 * r + 1) ** 2), 2 * r + 1)
  ni, nj = i[:, None] + jnp.asarray(di - r)[None], j[:, None] + jnp.asarray(dj - r)[None]
  kept = _short_windows(mask, rows)[1].astype(y.dtype)
  flat = y.reshape(-1, cout)
  ids = b[:, None] * (h * w) + jnp.clip(ni, 0, h - 1) * w + jnp.clip(nj, 0, w - 1)
  neighbours = flat.at[ids].get(mode='promise_in_bounds')  # (cap, taps, C)
  g, norm = _separable_taps(rbf_lambda, r, y.dtype)
  interp = jnp.einsum('kt,ktc->kc', g[di] * g[dj] * norm * kept, neighbours)
  centre = kept[:, (2 * r + 1) ** 2 // 2, None]
  values = centre * flat.at[rows].get(mode='promise_in_bounds') + (1 - centre) * interp
  return flat.at[rows].set(values, unique_indices=True, mode='promise_in_bounds').reshape(y.shape)


def near_branch(tiles: TileSet, short: jax.Array | bool) -> tuple[jax.Array, tuple[int, ...]]:
  """(index, capacities) of `masked_sparse`'s near-dense branches: 0 when every pixel is kept (the plain conv), i
  when at most the i-th capacity (NEAR_BUCKETS of the pixels) is skipped and the short fill applies (`short`), and
  len(capacities) + 1 otherwise (the branches that follow the kept pixels)."""
  num_pixels = tiles.mask.size
  caps = capacities(num_pixels, NEAR_BUCKETS)
  index = bucket_index(num_pixels - tiles.pixels[0], caps)
  return jnp.where((index == 0) | short, index, len(caps) + 1), caps


def masked_sparse(compute: Compute, x, kernel, bias, mask, rbf_lambda, strides, padding, fill: bool = True):
  """`masked_dense`'s outputs computed sparsely (compute.masked_conv='sparse'; ``mask`` an array or a
  `TileSet`), in one of these branches. Near-dense (`near_branch`): the plain dense conv when every pixel is kept;
  with at most a NEAR_BUCKETS fraction skipped (short fill), the dense conv and the fill at the skipped pixels only
  (`_near_dense_fill`). Otherwise (`conv_branch`): nothing for no kept pixel; the conv on the kept pixels only
  (`_pixel_conv`) at the smallest pixel capacity that holds them, with the short fill scattered from them
  (`_pixel_fill`) at up to SCATTER_FILL_MAX of the pixels; above the largest pixel capacity, the conv on the tiles
  with kept pixels (`_tiled_conv`) at the smallest tile capacity that holds them; above the largest, the dense conv.
  Outside `_pixel_fill` the fill runs on the padded grid buffer: on the tiles with skipped pixels next to kept ones
  (`_tiled_fill`, when lambda^2 >= SHORT_LAMBDA2) at the smallest fill capacity, nothing for none, above the
  largest as the separable sum over the whole buffer (the whole 7 x 7 fill so when lambda is smaller).
  `fill=False` (the caller reads the output at kept pixels only, e.g. a 1 x 1 chain into the exit's aggregation)
  leaves out the fill: skipped pixels are 0, kept ones `masked_dense`'s. Inference only: training keeps
  `masked_dense` (`MaskSet.train`)."""
  tiles = mask if isinstance(mask, TileSet) else TileSet(mask)
  m = tiles.mask
  bsz, h, w = m.shape
  r = RBF_SIZE // 2
  kernel = kernel.astype(x.dtype)
  stride = strides[0]
  if tuple(strides) != (stride, stride) or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f'the sparse masked conv takes square kernels and strides, got {kernel.shape[:2]}, {strides}')
  pointwise = kernel.shape[0] == 1 and stride == 1
  num_pixels = bsz * h * w

  def finish(ymp, lam):  # the fill stage on the padded grid buffer of the conv times the mask
    ym = ymp[:, r : r + h, r : r + w]

    def no_fill(ymp, lam):
      return ymp[:, r : r + h, r : r + w]

    def dense_fill(ymp, lam, radius=r):
      o = r - radius
      interp = _separable_rbf(ymp[:, o : o + h + 2 * radius, o : o + w + 2 * radius], lam, h, w, radius)
      return ym + interp * (1 - m[..., None].astype(ym.dtype))

    caps = capacities(tiles.num_tiles, FILL_BUCKETS)
    branches = [lambda ymp, lam, c=c: no_fill(_tiled_fill(ymp, tiles, lam, c), lam) for c in caps]
    short_dense = lambda ymp, lam: dense_fill(ymp, lam, SHORT_RADIUS)
    short_fill = lambda ymp, lam: lax.switch(
        bucket_index(tiles.fill_count, caps), [no_fill, *branches, short_dense], ymp, lam
    )
    return lax.cond(lam**2 >= SHORT_LAMBDA2, short_fill, dense_fill, ymp, lam)

  index, pixel_caps, tile_caps = conv_branch(tiles, pointwise)
  cout = kernel.shape[-1]

  def conv_branches(padded: bool):  # each conv branch's output times the mask: the padded grid buffer or (B, h, w, C)
    def no_conv(x, kernel, bias):
      return jnp.zeros(
          (bsz, tiles.nh * tiles.th + 2 * r, tiles.nw * tiles.tw + 2 * r, cout) if padded else (bsz, h, w, cout),
          x.dtype,
      )

    def pixels(x, kernel, bias, cap):
      return _pixels_to_grid(tiles, *_pixel_conv(compute, x, kernel, bias, tiles, cap, stride, padding), padded)

    def tile_conv(x, kernel, bias, cap):
      ymp = _tiled_conv(compute, x, kernel, bias, tiles, cap, stride, padding)
      return ymp if padded else ymp[:, r : r + h, r : r + w]

    def dense(x, kernel, bias):
      y = dense_conv(compute, x, kernel, bias, strides, padding) * m[..., None].astype(x.dtype)
      return _grid_buffer(tiles, y) if padded else y

    return [
        no_conv,
        *[functools.partial(pixels, cap=c) for c in pixel_caps],
        *[functools.partial(tile_conv, cap=c) for c in tile_caps],
        dense,
    ]

  def plain(x, kernel, bias, *lam):  # every pixel kept: the conv EE+RH computes, nothing else
    return dense_conv(compute, x, kernel, bias, strides, padding)

  # One switch picks the branch: the near-dense ones, then those that follow the kept pixels.
  if not fill:
    top = jnp.where(tiles.pixels[0] == num_pixels, 0, 1 + index)
    return lax.switch(top, [plain, *conv_branches(padded=False)], x, kernel, bias)

  def near_dense(x, kernel, bias, lam, cap):
    return _near_dense_fill(dense_conv(compute, x, kernel, bias, strides, padding), tiles, lam, cap)

  def grid_path(x, kernel, bias, lam):  # any conv branch into the grid buffer, then the fill stage on it
    return finish(lax.switch(index, conv_branches(padded=True), x, kernel, bias), lam)

  def scattered(x, kernel, bias, lam, cap):  # few kept pixels: their conv, the short fill scattered from them
    return _pixel_fill(tiles, *_pixel_conv(compute, x, kernel, bias, tiles, cap, stride, padding), lam)

  short = rbf_lambda**2 >= SHORT_LAMBDA2
  near_index, near_caps = near_branch(tiles, short)
  scatter_caps = tuple(c for c in pixel_caps if c <= SCATTER_FILL_MAX * num_pixels)  # conv branches 1..
  use_scatter = (index >= 1) & (index <= len(scatter_caps)) & short
  top = jnp.where(
      near_index <= len(near_caps),
      near_index,
      jnp.where(use_scatter, len(near_caps) + index, len(near_caps) + len(scatter_caps) + 1),
  )
  branches = [
      plain,
      *[functools.partial(near_dense, cap=c) for c in near_caps],
      *[functools.partial(scattered, cap=c) for c in scatter_caps],
      grid_path,
  ]
  return lax.switch(top, branches, x, kernel, bias, rbf_lambda)


def conv_branch(tiles: TileSet, pointwise: bool) -> tuple[jax.Array, tuple[int, ...], tuple[int, ...]]:
  """(index, pixel capacities, tile capacities) of `masked_sparse`'s conv: branch 0 for no kept pixel, then one per
  pixel capacity (the smallest that holds the kept pixels: PIXEL_BUCKETS for a 1 x 1 conv of stride 1,
  PATCH_BUCKETS for the others), then, above the largest, one per tile capacity (CONV_BUCKETS; none for a 1 x 1
  conv), then the dense conv."""
  num_pixels = tiles.mask.size
  pixel_caps = capacities(num_pixels, PIXEL_BUCKETS if pointwise else PATCH_BUCKETS)
  tile_caps = () if pointwise else capacities(tiles.num_tiles, CONV_BUCKETS)
  count = tiles.pixels[0]
  index = bucket_index(count, pixel_caps)
  if pixel_caps and tile_caps:
    index = jnp.where(count <= pixel_caps[-1], index, len(pixel_caps) + bucket_index(tiles.conv_count, tile_caps))
  elif tile_caps:
    index = bucket_index(tiles.conv_count, tile_caps)
  return index, pixel_caps, tile_caps


# compute.masked_conv -> the masked conv (same signature and semantics); core_jax.compute.CHOICES lists the names.
MASKED_CONVS: dict[str, Callable] = {'dense': masked_dense, 'sparse': masked_sparse}


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
  # False where every consumer reads this masked conv's output at kept pixels only (a chain of 1 x 1 convs into the
  # exit's aggregation, which takes the new logits at kept pixels only): the sparse path then skips the RBF fill
  # (`masked_sparse`'s fill); the model's outputs are the same either way
  fill_read: bool = True

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
    kind = 'dense' if masks.train else self.compute.masked_conv
    mask_arg = masks.tiles(h, w) if kind == 'sparse' else m
    fill = {} if self.fill_read else {'fill': False}
    y = MASKED_CONVS[kind](self.compute, x, kernel, bias, mask_arg, rbf_lambda, (s, s), pad, **fill)
    sow_masked_macs(self, self.exit_index, dense, m, self.features)
    return y


def sow_masked_macs(module: nn.Module, exit_index: int, dense: int, mask: jax.Array, features: int) -> None:
  """Sows a masked conv's per-example `actual_exit{k}` (dense * p + (1 - p) * p * C_out * 49 * H * W, p = the
  fraction of its output `mask` (B, H, W) computed, as the ADP-C FLOP counter) and `dense_exit{k}` MACs."""
  h, w = mask.shape[1:3]
  p = mask.mean(axis=(1, 2))
  actual = float(dense) * p + (1 - p) * p * float(features * RBF_SIZE * RBF_SIZE * h * w)
  counting.sow_macs(module, f'actual_exit{exit_index}', actual)
  counting.sow_macs(module, f'dense_exit{exit_index}', jnp.full_like(p, float(dense)))
