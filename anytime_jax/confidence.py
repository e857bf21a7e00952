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
  (`masked_sparse`) gives the same outputs (to float32 rounding) computing the conv only at the kept pixels (few
  of them, or a 1 x 1 conv; a loop over chunks of them, its trip count traced) and the fill only next to few kept
  pixels (section below); under it a segment whose mask keeps every pixel or all but PLAIN_SKIPPED_MAX of them, or
  more than the policy's `masked_dense_above` of them (per segment; the line's SEGMENT_DENSE_MIN), takes the plain
  convs with the fill at the skipped pixels alone ('plain', `masked_plain`) or masked-dense instead, chosen once per
  segment (`segment_kind`, read from `MaskSet.kind`);
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

import dataclasses
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
from core_jax.compute import Compute, on_cpu, resolve
from core_jax.errors import check_fraction

RBF_SIZE = 7
RBF_CENTRE_DIST2 = 1e5  # the released code's centre distance: its weight is exp(-1e5 * lambda^2) ~ 0
RBF_EPS = 1e-5
LAMBDA_INIT = 3.0
CONV_INIT_STD = 0.001
CONV_INITS = ('normal', 'he')  # the reference's N(0, 0.001); He (Kaiming) normal N(0, 2 / fan_in)
_DN = ('NHWC', 'HWIO', 'NHWC')
# per segment 2, 3, 4 the kept fraction above which the sparse policy's segment takes masked-dense convs
# (`segment_kind`; `Compute.masked_dense_above`, the line's 'auto'), from `benchmarks.anytime_crossover`'s CPU times
# (W18-Small-v2, 512x1024, batch 1 and 8, kept 0.3-0.9; benchmarks/ANALYSIS.md, 'crossover per segment'): segment 4
# (whose exit head computes the kept pixels only) was as fast or faster sparse up to 0.9 kept, segment 3 as fast
# or faster masked-dense from 0.3, segment 2 even (its sparse edge at batch 8 at most 14 %)
SEGMENT_DENSE_MIN = (0.5, 0.3, 0.9)
# per segment 2, 3, 4 whether the sparse policy computes the segment's entry convs (those that read its input
# branches) dense before the segment's switch on its kind (`Compute.dense_entry`, the line's 'auto'; hrnet.HRNet):
# segments 2 and 3, where the kinds taken are mostly plain or masked-dense (which compute them dense anyway), so
# that they run beside the previous exit's head (W18-Small-v2, 512x1024, batch 1, near idle: segment 2 at 82 % kept
# 67 ms wall against 77 behind the switch, masked-dense's 68); not segment 4, whose sparse kind (up to 90 % kept)
# computes them at the kept pixels: at 5.8 % kept (batch 8) the dense ones cost 4 % more CPU time to exit 4
# (benchmarks/ANALYSIS.md, 'The switch wait'). Below PATCH_MAX kept a segment-2 or -3 entry conv is dense where the
# sparse kind would compute it per pixel (not measured)
SEGMENT_DENSE_ENTRY = (True, True, False)


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

  def __init__(self, mask: jax.Array, train: bool = False, kind: str | None = None):
    self.mask = mask
    self.train = train  # training computes every masked conv masked-dense, whatever the policy
    # the masked conv this segment chose (`SEGMENT_KINDS`, `segment_kind`): static, so that one segment traced once
    # per kind under a switch computes each kind with the same params; None takes the compute policy's
    self.kind = kind
    self._cache: dict[tuple[int, int], jax.Array] = {}
    self._pixels: dict[tuple[int, int], Any] = {}
    self._skipped: dict[tuple[int, int], Any] = {}

  def at(self, h: int, w: int) -> jax.Array:
    if (h, w) not in self._cache:
      big_h, big_w = self.mask.shape[1:3]
      if h > big_h or w > big_w:
        raise ValueError(f'mask of size {(big_h, big_w)} asked at a larger size {(h, w)}')
      self._cache[(h, w)] = self.mask if (h, w) == (big_h, big_w) else resize_mask_nearest(self.mask, h, w)
    return self._cache[(h, w)]

  def pixels(self, h: int, w: int) -> 'PixelSet':
    """The mask at (h, w) as the sparse masked conv's `PixelSet`, built once per size."""
    if (h, w) not in self._pixels:
      self._pixels[(h, w)] = PixelSet(self.at(h, w))
    return self._pixels[(h, w)]

  def skipped(self, h: int, w: int) -> 'SkippedPixels':
    """The mask at (h, w) as the plain kind's `SkippedPixels` (the fill at the skipped pixels), built once per size."""
    if (h, w) not in self._skipped:
      self._skipped[(h, w)] = SkippedPixels(self.at(h, w))
    return self._skipped[(h, w)]

  def masked_conv(self, compute: Compute) -> str:
    """The masked conv of this segment's convs (a `MASKED_CONVS` key): 'dense' in training, else the segment's
    `kind`, else the policy's."""
    return 'dense' if self.train else self.kind or compute.masked_conv

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
def _separable_fill(ym: jax.Array, m: jax.Array, g: jax.Array, norm: jax.Array) -> jax.Array:
  """ym + the separable fill of `ym` with the per-side taps `g` (`_fill_sum` along each side) times `norm`, at the
  skipped pixels only (m (B, h, w, 1) 0 there): the last step of every RBF fill here."""
  return ym + _fill_sum(g, _fill_sum(g, ym, 2), 1) * norm * (1 - m)


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
  return _separable_fill(ym, m, g, norm)


def rbf_fill_conv(y: jax.Array, mask: jax.Array, rbf_lambda: jax.Array) -> jax.Array:
  """`rbf_fill` as the reference writes it: the 7x7 depthwise conv of `rbf_kernel` (the tests' oracle)."""
  m = mask[..., None].astype(y.dtype)
  ym = y * m
  c = y.shape[-1]
  k = jnp.broadcast_to(rbf_kernel(rbf_lambda).astype(y.dtype)[:, :, None, None], (RBF_SIZE, RBF_SIZE, 1, c))
  p = RBF_SIZE // 2
  interp = lax.conv_general_dilated(ym, k, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN, feature_group_count=c)
  return ym + interp * (1 - m)


# Up to which kept fraction `masked_sparse` computes a k x k (k > 1) or strided conv per pixel, by its output
# channels (`Compute.patch_max_by_channels`): the crossover rises with the channels (the gather copies k^2 C_in
# values per pixel, the matmul does k^2 C_in C_out MACs). (min out channels, max kept fraction) steps, each a
# fraction where the per-pixel 3 x 3 conv measured clearly faster (>= ~1.1x) than dense times the mask on the HRNet
# branches of that width at 512x1024 (`benchmarks.sparse_patch_crossover`; benchmarks/ANALYSIS.md, 'W48 on this
# CPU'): 18-36 channels win at 1/4 and lose at 0.38, 48-72 win at 0.3 and are even at 0.38-0.4, 96-384 win at 1/2
PATCH_MAX_BY_CHANNELS = ((0, 1 / 4), (48, 0.35), (96, 1 / 2))


# What 'auto' means for the anytime line on each backend (module docstring); the other fields do not apply.
AUTO = {
    'pointwise_conv': on_cpu('matmul', 'conv'),
    'small_conv': 'conv',
    'patch_conv': 'conv',
    'channel_multiple': 1,
    # HRNet's block and fuse outputs materialized on CPU, in training and at evaluation (`hrnet.relu_of_sum`):
    # XLA:CPU otherwise recomputes each stage's chain of BN + residual + ReLU in every later fusion
    # (benchmarks/ANALYSIS.md)
    'fusion_barriers': on_cpu(True, False),
    # the sparse masked conv where it was measured faster than masked-dense (CPU: benchmarks/ANALYSIS.md, 'anytime
    # masked_conv'); dense on GPU / TPU, where it is not measured yet. Evaluation only: training is masked-dense
    # whatever the policy. A small job may still pin 'dense': the sparse program compiles several times longer
    'masked_conv': on_cpu('sparse', 'dense'),
    # per segment (2, 3, 4) the kept fraction above which the sparse policy's segment computes masked-dense
    'masked_dense_above': SEGMENT_DENSE_MIN,
    # the kept fraction up to which a sparse k x k conv runs per pixel, by its output channels
    'patch_max_by_channels': PATCH_MAX_BY_CHANNELS,
    # per segment (2, 3, 4) its entry convs computed dense before its switch on the kind (`Compute.dense_entry`)
    'dense_entry': SEGMENT_DENSE_ENTRY,
}


def for_backend(options: Mapping | None = None) -> Compute:
  """The anytime models' compute policy: ``options`` (``config.compute``) with 'auto' entries from ``AUTO``."""
  return resolve(options, AUTO, 'anytime')


def check_policy(options: Mapping | None) -> None:
  """``config.compute``'s set entries checked without asking the backend (`for_backend` resolves 'auto' per backend,
  which initializes it: a job checks its config before jax.distributed and any device work): each backend-dependent
  'auto' stands for the plain choice here. A bad entry is `resolve`'s one-line UserError."""
  plain = {f.name: f.default for f in dataclasses.fields(Compute)}
  resolve(options, {k: plain[k] if callable(v) else v for k, v in AUTO.items()}, 'anytime')


def dense_conv(compute: Compute, x, kernel, bias, strides, padding):
  """The conv every `Conv` computes (kernel and bias in x's dtype), as ``compute`` says (``Compute.conv``)."""
  y = compute.conv(x, kernel.astype(x.dtype), strides, padding)
  return y if bias is None else y + bias.astype(y.dtype)


def conv_padding(k: int) -> tuple:
  """PyTorch's explicit padding of a k x k conv (k // 2 each side), as every `Conv` pads."""
  return ((k // 2, k // 2), (k // 2, k // 2))


def dense_conv_xla(x, kernel, bias, strides, padding):
  """`dense_conv` as one lax.conv_general_dilated (the tests' oracle)."""
  y = lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding, dimension_numbers=_DN)
  return y if bias is None else y + bias.astype(y.dtype)


def masked_dense(
    compute: Compute, x, kernel, bias, mask, rbf_lambda, strides, padding, fill: bool = True, dense_out=None
):
  """Masked-dense (the reference): the full conv, then masked outputs replaced by the RBF fill (no compute saved).
  `fill` (False: the caller reads kept pixels only, `masked_sparse`) is ignored: the reference always fills.
  `dense_out`: the conv's output (bias included) computed already (a segment's entry conv, `Compute.dense_entry`):
  only the fill is left."""
  del fill
  y = dense_conv(compute, x, kernel, bias, strides, padding) if dense_out is None else dense_out
  return rbf_fill(y, mask, rbf_lambda)


# --------------------------------------------------------------------------------------
# The sparse masked conv (compute.masked_conv='sparse'): same outputs, work in proportion to the mask
# --------------------------------------------------------------------------------------
# Per pixel: a kept pixel's conv reads its k x k input window, so computed per pixel (the window's rows gathered, one
# matmul) it costs in proportion to the kept pixels whatever their layout. The kept pixels come first in one ordered
# list over the whole batch (per-example masks, one list), and a loop with a traced trip count runs over it in chunks
# of CHUNK_FRACTION of the positions: XLA's shapes are static, its while loops' trip counts are not, so one compiled
# chunk does the work of every count (rounded up to a chunk). The earlier static capacities (a lax.switch branch per
# bucket, and 8 x 8 tile stacks for the larger fractions) compiled about 20 branch bodies into every masked conv: the
# sparse eval program of the digit_scenes demo compiled in 13x the CPU time of the dense one, and on real masks (the
# demo's model at tau 0.998 / 0.99 / 0.95 / 0.9, the benchmark's W18-Small-v2 at 512x1024 at tau=0.998 and at the
# paper's fractions) the tile branches were taken by no 3 x 3 conv at 512x1024 (a 38 % mask keeps a pixel in more
# than 90 % of the 8 x 8 tiles: the dense branch ran instead). A gather copies one row of channels per tap, so per
# pixel wins at small fractions and for 1 x 1 convs (one tap): up to PIXEL_MAX of the pixels for a 1 x 1 conv of
# stride 1, for the others up to `Compute.patch_max` of the conv's output channels (the line's 'auto' table
# PATCH_MAX_BY_CHANNELS); above, the dense conv times the mask.
# The RBF fill's weights exp(-lambda^2 d^2) beyond SHORT_RADIUS sum to at most RBF_TAIL_TAPS * exp(-4 lambda^2) <=
# SHORT_TAIL of the largest value (lambda^2 >= SHORT_LAMBDA2; the init 3.0 gives 1e-14): below float32 rounding, so
# the 3 x 3 taps give the 7 x 7 fill's values. At SCATTER_FILL_MAX of the pixels or fewer the short fill is scattered
# from the kept pixels (`_scatter_fill`), so that the branch's whole cost follows them; above, it is the separable
# 3 + 3 pass over the map (`_short_fill`). A smaller lambda (a trained one may be) takes the whole 7 x 7 fill of the
# reference (`rbf_fill`).
# Where (nearly) every pixel is kept the segment takes the plain convs (the fill at its few skipped pixels alone) or
# the masked-dense ones (`segment_kind`): the per-conv plain and near-dense branches this path had cost more in
# their per-conv conditionals than they saved (benchmarks/ANALYSIS.md, 'segment-level choice').
CHUNK_FRACTION = 1 / 32
MIN_CHUNK = 64
SHORT_RADIUS = 1
RBF_TAIL_TAPS = RBF_SIZE**2 - (2 * SHORT_RADIUS + 1) ** 2  # the taps the short fill leaves out
SHORT_TAIL = 1e-7
SHORT_LAMBDA2 = math.log(RBF_TAIL_TAPS / SHORT_TAIL) / (SHORT_RADIUS + 1) ** 2
PIXEL_MAX = 1 / 2
SCATTER_FILL_MAX = 1 / 8


def _ordered(flags: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(count of true flags, permutation of the flat positions: the true ones first, each part in raster order)."""
  flat = flags.reshape(-1)
  n = flat.shape[0]
  position = jnp.arange(n, dtype=jnp.int32)
  # one cumsum: the false flags before position i number i - (the true ones up to i), so a false flag's rank among
  # them is i - on_rank - 1 (a second cumsum, of ~flat, was about 10 more kernels for XLA:CPU to compile per mask)
  on_rank = jnp.cumsum(flat, dtype=jnp.int32) - 1
  count = on_rank[-1] + 1
  rank = jnp.where(flat, on_rank, count + position - on_rank - 1)
  return count, jnp.zeros((n,), jnp.int32).at[rank].set(position, unique_indices=True)


class PixelSet:
  """One mask (B, h, w) in the form the sparse masked conv uses, built once per mask and output size (the `MaskSet`
  caches it, so every conv of a segment at one resolution shares it): `count` kept pixels, `order` the flat positions
  (over B * h * w) kept first, and the chunk the loops over them take (`CHUNK_FRACTION` of the positions, at least
  MIN_CHUNK, at most all)."""

  def __init__(self, mask: jax.Array):
    self.mask = mask
    self.count, self.order = _ordered(mask > 0.5)
    n = mask.size
    self.chunk = min(n, max(MIN_CHUNK, math.ceil(n * CHUNK_FRACTION)))
    padded = -(-n // self.chunk) * self.chunk

    def pad(order):  # to whole chunks, with its last position (of the other kind, unless every pixel is one kind)
      return jnp.concatenate([order, jnp.broadcast_to(order[-1], (padded - n,))]) if padded > n else order

    # the loops' orders, built once per mask and size (every loop of every conv sharing this PixelSet reads them)
    self._loop_orders = {True: pad(self.order), False: pad(self.order[::-1])}

  def loop(self, body: Callable, init, kept: bool = True):
    """`body(rows, carry)` over the kept pixels (`kept`) or the skipped ones, `chunk` rows at a time: ceil(count /
    chunk) iterations (a traced trip count: 0 runs none). A chunk past the last pixel of its kind is filled up with
    pixels of the other kind (padded with the last / first of `order` where the positions run out), whose rows the
    bodies give no effect."""
    order = self._loop_orders[kept]
    count = self.count if kept else self.mask.size - self.count
    step = lambda i, carry: body(lax.dynamic_slice_in_dim(order, i * self.chunk, self.chunk), carry)
    return lax.fori_loop(0, (count + self.chunk - 1) // self.chunk, step, init)

  def kept_map(self, values: Callable, channels: int, dtype) -> jax.Array:
    """(B, h, w, channels): `values(rows)` ((len(rows), channels), for flat ids over B * h * w) at the kept pixels,
    0 at the skipped ones, computed at the kept pixels only (`loop`; the skipped pixels a chunk ends with are
    zeroed by the mask) and written into a zero map."""

    def body(rows, out):
      return out.at[rows].set(values(rows) * self.at_rows(rows, dtype), mode='promise_in_bounds')

    return self.loop(body, jnp.zeros((self.mask.size, channels), dtype)).reshape(*self.mask.shape, channels)

  def at_rows(self, rows: jax.Array, dtype) -> jax.Array:
    """The mask at the flat positions `rows`, (len(rows), 1) in `dtype`."""
    return self.mask.reshape(-1).at[rows].get(mode='promise_in_bounds')[:, None].astype(dtype)


def _grid_ids(rows: jax.Array, h: int, w: int, grid: tuple[int, int], offset: int = 0, stride: int = 1) -> jax.Array:
  """Flat ids in a (B, *grid) buffer of the pixels `rows` (flat ids over B * h * w): pixel (b, i, j) at
  (b, offset + stride * i, offset + stride * j)."""
  gh, gw = grid
  b, rest = rows // (h * w), rows % (h * w)
  return b * (gh * gw) + (offset + stride * (rest // w)) * gw + offset + stride * (rest % w)


def _pixel_conv(compute: Compute, xp, kernel, bias, pixels: PixelSet, rows, stride: int) -> jax.Array:
  """The conv (+ bias) at the pixels `rows` (flat ids over B * h * w), (len(rows), C_out): each pixel's k x k input
  window gathered from the padded input `xp` (`_padded_input`; a row of channels per tap) and one matmul; a 1 x 1
  conv of stride 1 gathers the rows of x."""
  _, h, w = pixels.mask.shape
  k, cin = kernel.shape[0], xp.shape[-1]
  origin = _grid_ids(rows, h, w, xp.shape[1:3], stride=stride)
  di, dj = np.divmod(np.arange(k * k), k)
  taps = origin[:, None] + jnp.asarray(di * xp.shape[2] + dj, jnp.int32)[None]
  picked = xp.reshape(-1, cin).at[taps].get(mode='promise_in_bounds').reshape(rows.shape[0], k * k * cin)
  y = compute.conv(picked[None, :, None], kernel.reshape(1, 1, k * k * cin, -1), (1, 1), ((0, 0), (0, 0)))[0, :, 0]
  return y if bias is None else y + bias.astype(y.dtype)


def _padded_input(x, k: int, stride: int, padding, h: int, w: int) -> jax.Array:
  """x with the conv's zero padding, cut or extended so that every output pixel's window lies inside."""
  (pt, _), (pl, _) = padding
  need_h, need_w = stride * (h - 1) + k, stride * (w - 1) + k
  return jnp.pad(x, ((0, 0), (pt, max(0, need_h - x.shape[1] - pt)), (pl, max(0, need_w - x.shape[2] - pl)), (0, 0)))


def _kept_conv(compute: Compute, x, kernel, bias, pixels: PixelSet, stride: int, padding) -> jax.Array:
  """(B, h, w, C_out): the conv (+ bias) at the kept pixels, 0 at skipped ones, computed at the kept pixels only
  (`PixelSet.kept_map`)."""
  _, h, w = pixels.mask.shape
  xp = _padded_input(x, kernel.shape[0], stride, padding, h, w)
  rows_conv = lambda rows: _pixel_conv(compute, xp, kernel, bias, pixels, rows, stride)
  return pixels.kept_map(rows_conv, kernel.shape[-1], x.dtype)


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


def _scatter_fill(pixel_values: Callable, cout: int, dtype, pixels: PixelSet, rbf_lambda):
  """(B, h, w, C_out): the conv at the kept pixels (`pixel_values(rows)`, (len(rows), cout), for flat ids over
  B * h * w) plus the short RBF fill scattered from them (each kept pixel adds its value times the fill's weight to
  its neighbours within SHORT_RADIUS that are skipped: the same sums as the separable fill, gathered from the other
  side), a scatter-add of (2 SHORT_RADIUS + 1)^2 rows per kept pixel."""
  r = SHORT_RADIUS
  mask = pixels.mask
  bsz, h, w = mask.shape
  hb, wb = h + 2 * r, w + 2 * r
  di, dj = np.divmod(np.arange((2 * r + 1) ** 2), 2 * r + 1)
  g, norm = _separable_taps(rbf_lambda, r, jnp.float32)
  weights = g[di] * g[dj] * norm
  centre = jnp.asarray((di == r) & (dj == r))[None]

  def body(rows, out):
    y = pixel_values(rows)
    y = y * pixels.at_rows(rows, y.dtype)  # 0 at the skipped pixels a chunk ends with
    targets, kept = _short_windows(mask, rows)
    coef = jnp.where(centre, 1.0, weights[None] * (1 - kept)).astype(y.dtype)
    values = (y[:, None, :] * coef[..., None]).reshape(-1, cout)
    return out.at[targets.reshape(-1)].add(values, mode='promise_in_bounds')

  out = pixels.loop(body, jnp.zeros((bsz * hb * wb, cout), dtype))
  return out.reshape(bsz, hb, wb, cout)[:, r : r + h, r : r + w]


def _short_fill(ym: jax.Array, mask: jax.Array, rbf_lambda) -> jax.Array:
  """`rbf_fill` of `ym` (the conv times the mask) with the taps within SHORT_RADIUS only (lambda^2 >= SHORT_LAMBDA2:
  the same values to float32 rounding), as the separable 3 + 3 pass of `_fill_sum`."""
  m = mask[..., None].astype(ym.dtype)
  g, norm = _separable_taps(rbf_lambda, SHORT_RADIUS, ym.dtype)
  return _separable_fill(ym, m, g, norm)


def _banded_fill(ym: jax.Array, mask: jax.Array, rbf_lambda, short: jax.Array) -> jax.Array:
  """`_short_fill` of `ym` where `short`, else `rbf_fill`, for a map whose sides are at most BAND_MAX: both are the
  two matmuls with the (n, n) banded tap matrices (`_fill_sum`), the short fill's the 7 x 7 fill's with the taps
  beyond SHORT_RADIUS set to 0: the same matrices, so the same values, from one compiled body instead of two
  (XLA:CPU compiles a kernel in some milliseconds, and every masked conv carries its fills)."""
  m = mask[..., None].astype(ym.dtype)
  r = RBF_SIZE // 2
  g, norm = _separable_taps(rbf_lambda, r, ym.dtype)
  g = jnp.where(short & (np.abs(np.arange(2 * r + 1) - r) > SHORT_RADIUS), jnp.zeros((), g.dtype), g)
  return _separable_fill(ym, m, g, norm)


def masked_sparse(
    compute: Compute, x, kernel, bias, mask, rbf_lambda, strides, padding, fill: bool = True, dense_out=None
):
  """`masked_dense`'s outputs computed sparsely (compute.masked_conv='sparse'; ``mask`` an array or a `PixelSet`), in
  one of two branches (`sparse_branch`): at most SCATTER_FILL_MAX kept (short fill), the conv at the kept pixels with
  the fill scattered from them (`_scatter_fill`); otherwise the conv at the kept pixels (`_kept_conv`, up to
  `per_pixel_max` of them) or the dense conv times the mask, then the fill over the map (`_short_fill`, or the
  reference's `rbf_fill` when lambda^2 < SHORT_LAMBDA2; both in one body, `_banded_fill`, on a map of at most
  BAND_MAX a side). A segment whose pixels are all or mostly kept takes the plain or the masked-dense convs instead
  (`segment_kind`), so this path has no branch of its own for them. `fill=False` (the caller reads the output at
  kept pixels only, e.g. a 1 x 1 chain into the exit's aggregation) leaves out the fill: skipped pixels are 0, kept
  ones `masked_dense`'s. `dense_out`: the conv's output computed already (a segment's entry conv,
  `Compute.dense_entry`), read at the kept pixels instead of computing them. Inference only: training keeps
  `masked_dense` (`MaskSet.train`)."""
  pixels = mask if isinstance(mask, PixelSet) else PixelSet(mask)
  m = pixels.mask
  kernel = kernel.astype(x.dtype)
  stride = strides[0]
  if tuple(strides) != (stride, stride) or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f'the sparse masked conv takes square kernels and strides, got {kernel.shape[:2]}, {strides}')
  per_pixel = pixels.count <= per_pixel_max(compute, kernel.shape, stride) * m.size

  def kept_conv(x, kernel, bias):  # the conv times the mask: at the kept pixels, or dense
    if dense_out is not None:
      return dense_out * m[..., None].astype(dense_out.dtype)
    dense = lambda x, kernel, bias: dense_conv(compute, x, kernel, bias, strides, padding) * m[..., None].astype(
        x.dtype
    )
    sparse = lambda x, kernel, bias: _kept_conv(compute, x, kernel, bias, pixels, stride, padding)
    return lax.cond(per_pixel, sparse, dense, x, kernel, bias)

  if not fill:
    return kept_conv(x, kernel, bias)

  def scattered(x, kernel, bias, lam):
    if dense_out is None:
      xp = _padded_input(x, kernel.shape[0], stride, padding, *m.shape[1:])
      values = lambda rows: _pixel_conv(compute, xp, kernel, bias, pixels, rows, stride)
    else:
      values = lambda rows: dense_out.reshape(-1, dense_out.shape[-1]).at[rows].get(mode='promise_in_bounds')
    return _scatter_fill(values, kernel.shape[-1], x.dtype, pixels, lam)

  def filled(x, kernel, bias, lam):
    ym = kept_conv(x, kernel, bias)
    if max(m.shape[1:]) <= BAND_MAX:  # one body for both fills: the same banded matmuls (`_banded_fill`)
      return _banded_fill(ym, m, lam, lam**2 >= SHORT_LAMBDA2)
    return lax.cond(lam**2 >= SHORT_LAMBDA2, _short_fill, rbf_fill, ym, m, lam)

  index = sparse_branch(pixels, rbf_lambda**2 >= SHORT_LAMBDA2)
  return lax.switch(index, [scattered, filled], x, kernel, bias, rbf_lambda)


def per_pixel_max(compute: Compute, kernel_shape, stride: int) -> float:
  """The kept fraction up to which `masked_sparse` computes a conv of this (HWIO) kernel shape and stride at the
  kept pixels: PIXEL_MAX for a 1 x 1 conv of stride 1, else ``compute.patch_max`` of its output channels (static:
  chosen when the model is traced)."""
  if kernel_shape[0] == 1 and stride == 1:
    return PIXEL_MAX
  return compute.patch_max(kernel_shape[-1])


def sparse_branch(pixels: PixelSet, short: jax.Array | bool) -> jax.Array:
  """`masked_sparse`'s branch (with the fill): 0 at most SCATTER_FILL_MAX kept with the short fill (`short`), else
  1."""
  scatter = short & (pixels.count <= SCATTER_FILL_MAX * pixels.mask.size)
  return jnp.where(scatter, 0, 1).astype(jnp.int32)


def masked_plain(
    compute: Compute, x, kernel, bias, mask, rbf_lambda, strides, padding, fill: bool = True, dense_out=None
):
  """`masked_dense`'s outputs where every pixel or nearly every one is kept (a segment's choice, `segment_kind`):
  the conv (`dense_out` where it was computed already), and the RBF fill at the skipped pixels alone
  (`fill_skipped`; ``mask`` an array or a `SkippedPixels`), none where every pixel is kept. The kept pixels' values
  are the conv's, as masked-dense's y * 1 + fill * 0. `fill=False` returns the conv (the caller reads kept pixels
  only)."""
  y = dense_conv(compute, x, kernel, bias, strides, padding) if dense_out is None else dense_out
  if not fill:
    return y
  return fill_skipped(y, mask if isinstance(mask, SkippedPixels) else SkippedPixels(mask), rbf_lambda)


# The fill at the skipped pixels alone, for a segment that keeps all but PLAIN_SKIPPED_MAX of its pixels or fewer
# (`segment_kind`: its 'plain' kind): masked-dense's fill is two 7-tap passes over the whole map per masked conv,
# whatever it fills, which made a segment that keeps 99.7 % of its pixels cost 1.3x EE+RH's at batch 8 (W18-Small-v2
# at 512x1024, tau=0.998: 1,117 against 857 ms in `make bench` at 6b3e2ab). Here each skipped pixel's 7 x 7 window
# of the conv's output and of the mask is gathered (clamped inside the map, the taps beyond the radius weighted 0)
# and summed with the separable RBF weights: the reference's values to float32 rounding whatever lambda is, and
# no pass over the map. The skipped pixels are found chunk by chunk by a binary search in the running count of
# skipped pixels (`SkippedPixels`): no ordering of every pixel (`PixelSet`'s scatter of all B * h * w positions
# cost about 10 ms at batch 8 at 128x256). Chunks of SKIPPED_CHUNK_FRACTION of the positions, at least MIN_CHUNK.
# One 3 x 3 conv with its fill timed alone (benchmarks/ANALYSIS.md, 'The fill at the skipped pixels'): even with
# masked-dense's at about 3 % skipped, ahead below.
PLAIN_SKIPPED_MAX = 1 / 64
SKIPPED_CHUNK_FRACTION = 1 / 512


class SkippedPixels:
  """One mask (B, h, w) in the form the fill at the skipped pixels uses (`fill_skipped`), built once per mask and
  output size (the `MaskSet` caches it): `cum`, the running count of skipped pixels over the flat positions
  (B * h * w), `count` skipped in all, and the loop over them."""

  def __init__(self, mask: jax.Array):
    self.mask = mask
    self.cum = jnp.cumsum((mask <= 0.5).reshape(-1), dtype=jnp.int32)
    self.count = self.cum[-1]
    n = mask.size
    self.chunk = min(n, max(MIN_CHUNK, math.ceil(n * SKIPPED_CHUNK_FRACTION)))

  def loop(self, body: Callable, init):
    """`body(rows, carry)` over the skipped pixels, `chunk` flat ids at a time in raster order: ceil(count / chunk)
    iterations (a traced trip count). The ids past the last skipped pixel are B * h * w (out of bounds)."""
    ranks = jnp.arange(1, self.chunk + 1, dtype=jnp.int32)

    def step(i, carry):  # the (i * chunk + 1)-th to the ((i + 1) * chunk)-th skipped pixel: the first id whose
      # running count reaches each rank
      rows = jnp.searchsorted(self.cum, i * self.chunk + ranks, side='left', method='scan_unrolled')
      return body(rows.astype(jnp.int32), carry)

    return lax.fori_loop(0, (self.count + self.chunk - 1) // self.chunk, step, init)


def fill_skipped(y: jax.Array, skipped: SkippedPixels, rbf_lambda: jax.Array) -> jax.Array:
  """`rbf_fill(y, mask, rbf_lambda)` computed at the skipped pixels alone (y (B, h, w, C) kept elsewhere): per
  skipped pixel the 7 x 7 windows (at most the map's sides) of y and the mask around it, clamped inside the map,
  weighted by the separable RBF taps of each element's distance (0 beyond the radius) and the reference's
  normalisation. The windows are read from the map being filled: a pixel filled already is a skipped one, whose
  weight is 0."""
  m = skipped.mask
  _, h, w = m.shape
  c, n, r = y.shape[-1], m.size, RBF_SIZE // 2
  kh, kw = min(RBF_SIZE, h), min(RBF_SIZE, w)
  g, norm = _separable_taps(rbf_lambda, r, y.dtype)
  m = m.astype(y.dtype)
  window = jax.vmap(lambda a, start, size: lax.dynamic_slice(a, start, size)[0], in_axes=(None, 0, None))

  def taps(start, centre, size):  # (rows, size): the weight at start + t for t < size from the centre
    d = start[:, None] + jnp.arange(size, dtype=jnp.int32)[None] - centre[:, None]
    return jnp.where(jnp.abs(d) <= r, g[jnp.clip(d + r, 0, 2 * r)], jnp.zeros((), y.dtype))

  def body(rows, out):
    at = jnp.minimum(rows, n - 1)
    b, i, j = at // (h * w), at % (h * w) // w, at % w
    i0, j0 = jnp.clip(i - r, 0, h - kh), jnp.clip(j - r, 0, w - kw)
    zero = jnp.zeros_like(b)
    values = window(out.reshape(y.shape), jnp.stack([b, i0, j0, zero], 1), (1, kh, kw, c))
    weights = window(m, jnp.stack([b, i0, j0], 1), (1, kh, kw)) * taps(i0, i, kh)[:, :, None] * taps(j0, j, kw)[:, None]
    fill = jnp.einsum('rab,rabc->rc', weights, values) * norm
    return out.at[rows].set(fill, mode='drop')  # ids past the last skipped pixel are out of bounds: dropped

  return skipped.loop(body, y.reshape(-1, c)).reshape(y.shape)


# compute.masked_conv -> the masked conv (same signature and semantics); core_jax.compute.CHOICES lists the policy's
# names, 'plain' is a segment's choice only (`segment_kind`).
MASKED_CONVS: dict[str, Callable] = {'dense': masked_dense, 'sparse': masked_sparse, 'plain': masked_plain}

# The sparse policy decides once per segment (the HRNet between two exits, whose mask is fixed), not per conv, how
# its masked convs compute (`segment_kind`), one switch around the segment traced once per kind: every pixel kept or
# all but PLAIN_SKIPPED_MAX of them, the plain convs with the fill at the skipped pixels alone (what EE+RH computes,
# plus that fill); more than the segment's `Compute.masked_dense_above` kept, masked-dense; else sparse. A
# conditional around every masked conv kept XLA from fusing across them and cost more than the sparse work saved
# where most pixels stay kept (benchmarks/ANALYSIS.md, 'segment-level choice'; the crossover per segment:
# `python -m benchmarks.anytime_crossover`).
SEGMENT_KINDS = ('plain', 'dense', 'sparse')


def segment_kind(mask: jax.Array, dense_above: float) -> jax.Array:
  """The index in SEGMENT_KINDS of a segment's masked convs for its mask (B, H, W), over the whole batch (one list
  of kept pixels serves every example): 0 at most PLAIN_SKIPPED_MAX of the pixels skipped (none, or few: the fill
  at those alone), 1 more than `dense_above` of them kept (the segment's `Compute.masked_dense_above`), else 2."""
  kept = jnp.sum(mask > 0.5, dtype=jnp.int32)
  plain = mask.size - kept <= PLAIN_SKIPPED_MAX * mask.size
  return jnp.where(plain, 0, jnp.where(kept > dense_above * mask.size, 1, 2)).astype(jnp.int32)


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
  def __call__(self, x: jax.Array, masks: MaskSet | None = None, dense_out: jax.Array | None = None) -> jax.Array:
    """`dense_out`: this masked conv's dense output (bias included) computed already, before the segment chose
    its kind (`Compute.dense_entry`); given with the segment's masks only."""
    k, s, cin = self.kernel_size, self.strides, x.shape[-1]
    std = CONV_INIT_STD if self.conv_init == 'normal' else math.sqrt(2.0 / (cin * k * k))
    kernel = self.param('kernel', nn.initializers.normal(std), (k, k, cin, self.features))
    bias = self.param('bias', torch_bias_init(cin * k * k), (self.features,)) if self.use_bias else None
    pad = conv_padding(k)
    h = (x.shape[1] + 2 * (k // 2) - k) // s + 1
    w = (x.shape[2] + 2 * (k // 2) - k) // s + 1
    dense = h * w * k * k * cin * self.features  # MACs per example (conv/linear multiply-adds only)
    counting.record_macs(x.shape[0] * dense)
    if self.exit_index is None:
      if masks is not None:
        raise ValueError(f'{self.name}: a mask was given to a conv that is not masked')
      return dense_conv(self.compute, x, kernel, bias, (s, s), pad)
    rbf_lambda = self.param('rbf_lambda', nn.initializers.constant(LAMBDA_INIT), ())
    if dense_out is not None and (masks is None or masks.kind is None):
      raise ValueError(f'{self.name}: a dense output computed ahead is only for a segment that chose its kind')
    if masks is None:  # CA model run without masks (e.g. backbone features): plain dense conv
      return dense_conv(self.compute, x, kernel, bias, (s, s), pad)
    m = masks.at(h, w)
    kind = masks.masked_conv(self.compute)
    mask_arg = masks.pixels(h, w) if kind == 'sparse' else masks.skipped(h, w) if kind == 'plain' else m
    extra = {} if self.fill_read else {'fill': False}
    if dense_out is not None:
      extra['dense_out'] = dense_out
    y = MASKED_CONVS[kind](self.compute, x, kernel, bias, mask_arg, rbf_lambda, (s, s), pad, **extra)
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
