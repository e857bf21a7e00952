"""How models compute on a backend: one frozen, hashable compute policy (``Compute``), never what they compute.

Every choice gives the same function, the same variables and the same results (to float rounding); the lines'
parity tests run them. They exist because the plain XLA formulation is slow on some backend (XLA:CPU above all):

* ``patch_conv``: non-overlapping convs (stride = kernel, no padding: patchify stems, 2x2 downsampling) as
  ``conv`` or ``matmul``, one matmul over space-to-depth patches (faster on XLA:CPU in the backward).
* ``small_conv``: a k x k conv (k > 1) with at most ``SMALL_OUTPUT_POSITIONS`` output positions per image as
  ``conv`` or ``matmul``, shifted patches @ kernel (XLA:CPU's convolution is far slower than a matmul there:
  3x3, 512 -> 512 at 2x2, the last stage of the CIFAR VGGs).
* ``pointwise_conv``: 1x1 convs without padding as ``conv`` or ``matmul`` over the channels.
* ``channel_multiple``: a conv whose input or output channel count is not a multiple of it (a pruned width such
  as 14 or 57) is computed with its kernel zero-padded up to the next multiples and the extra outputs sliced
  off; counts <= 4 (RGB input) stay as they are; 1 turns it off. Variables keep their exact shapes.
* ``fusion_barriers``: materialize the output of each layer that asks (``Compute.layer_end_of``, or ``layer_end``
  for an output computed already): XLA:CPU's cross-layer fusions cost more than the memory pass they save
  (ConvNeXt's blocks; HRNet's block and fuse outputs, ``anytime_jax.hrnet.relu_of_sum``).
* ``dwconv``: depthwise convs as ``xla`` (grouped conv), ``shifted`` (kh*kw shifted multiply-adds) or
  ``native`` (C++ kernels; ConvNeXt's ``convnext_jax.ops``).
* ``dense_grad``: the weight gradient of a dense layer (``nn.Dense``, a 1x1 conv as a matmul) as ``autodiff``
  (JAX's transpose of the dot: XLA:CPU then transposes the output gradient in memory and computes x^T g with its
  generic dot, outside YNNPACK) or ``narrow_transpose`` (``dense_dot_general``: a hand-written VJP whose weight
  gradient is one standard-form matmul, the narrower of x and g transposed; the input gradient as autodiff's).
* ``masked_conv``: the masked conv of confidence adaptivity (anytime_jax.confidence): ``dense``, the full conv
  then the RBF fill (the released ADP-C code's masked-dense formulation), or ``sparse``, the conv only at the
  kept pixels where they are few (a loop over chunks of them, its trip count traced) and the fill only where it
  is nonzero (dense fallback; inference only: training computes masked-dense whatever the policy).
* ``masked_dense_above``: under ``masked_conv='sparse'``, per ADP-C segment (2, 3, 4: the HRNet between two
  exits) the kept fraction of its mask above which the segment's masked convs compute masked-dense instead of
  sparse (``anytime_jax.confidence.segment_kind``); 1.0 never, 0.0 always unless every pixel is kept.
* ``patch_max_by_channels``: under ``masked_conv='sparse'``, the kept fraction up to which a k x k (k > 1) or strided
  masked conv is computed at the kept pixels (gathered windows, one matmul) instead of dense times the mask, by
  the conv's output channels: steps ((min_out_channels, max_kept_fraction), ...), the first from 0 channels, the
  channel counts rising; a conv takes the last step whose count it reaches (``patch_max``; its kernel shape is
  static, so the choice is made when the model is traced). The per-pixel conv's crossover rises with the channels.
* ``dense_entry``: under ``masked_conv='sparse'``, per ADP-C segment (2, 3, 4) whether the segment's entry convs
  (those that read its input branches: the transitions, a passed-through branch's first conv) are computed dense
  before the segment's choice of kind and handed to every kind (``anytime_jax.hrnet``): they can then run beside
  the previous exit's head, as masked-dense's do, instead of waiting for its mask.

The policy is a field of the model's modules, so two policies give two compiled programs and equal policies
hash equal: nothing is read from a global when a model is traced. ``Compute()`` is the plain XLA formulation.
A line resolves ``config.compute`` (every field 'auto' / None by default) with ``resolve``, giving its own
table of what 'auto' means on each backend (what it measured, benchmarks/ANALYSIS.md) and leaving out the
fields its models have no use for: setting one of those is a one-line UserError, not a no-op.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from core_jax.errors import UserError

Array = jax.Array

SMALL_OUTPUT_POSITIONS = 16
_UNPADDED_MAX = 4
CHOICES = {
    'patch_conv': ('conv', 'matmul'),
    'small_conv': ('conv', 'matmul'),
    'pointwise_conv': ('conv', 'matmul'),
    'dwconv': ('xla', 'shifted', 'native'),
    'masked_conv': ('dense', 'sparse'),
    'dense_grad': ('autodiff', 'narrow_transpose'),
}
COMPUTE_DTYPES = ('float32', 'bfloat16')
_DN = ('NHWC', 'HWIO', 'NHWC')


def _is_channel_steps(steps) -> bool:
  """Whether ``steps`` is a ``patch_max_by_channels`` table: non-empty (count, fraction) pairs, ints from 0 rising
  strictly, fractions in [0, 1]."""
  if not isinstance(steps, (tuple, list)) or not steps:
    return False
  for step in steps:
    if not isinstance(step, (tuple, list)) or len(step) != 2:
      return False
  counts = [c for c, _ in steps]
  fractions = [f for _, f in steps]
  return (
      all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
      and counts[0] == 0
      and all(a < b for a, b in zip(counts, counts[1:]))
      and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 <= f <= 1.0 for f in fractions)
  )


@dataclasses.dataclass(frozen=True)
class Compute:
  """The compute policy the layers receive (module docstring); fields are resolved choices, never 'auto'."""

  patch_conv: str = 'conv'
  small_conv: str = 'conv'
  pointwise_conv: str = 'conv'
  channel_multiple: int = 1
  fusion_barriers: bool = False
  dwconv: str = 'xla'
  masked_conv: str = 'dense'
  dense_grad: str = 'autodiff'
  masked_dense_above: tuple[float, ...] = (0.5, 0.5, 0.5)
  patch_max_by_channels: tuple[tuple[int, float], ...] = ((0, 0.125),)
  dense_entry: tuple[bool, ...] = (False, False, False)

  def __post_init__(self):
    for name, allowed in CHOICES.items():
      if getattr(self, name) not in allowed:
        raise UserError(f'compute.{name} must be one of {allowed}, got {getattr(self, name)!r}')
    m = self.channel_multiple
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
      raise UserError(f'compute.channel_multiple must be an int >= 1 (1: no channel padding), got {m!r}')
    if not isinstance(self.fusion_barriers, bool):
      raise UserError(f'compute.fusion_barriers must be True or False, got {self.fusion_barriers!r}')
    above = self.masked_dense_above
    if (
        not isinstance(above, (tuple, list))
        or len(above) != 3
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 <= f <= 1.0 for f in above)
    ):
      raise UserError(
          f'compute.masked_dense_above must be 3 kept fractions in [0, 1] (ADP-C segments 2, 3, 4), got {above!r}'
      )
    object.__setattr__(self, 'masked_dense_above', tuple(float(f) for f in above))  # hashable, whatever came in
    steps = self.patch_max_by_channels
    if not _is_channel_steps(steps):
      raise UserError(
          'compute.patch_max_by_channels must be (min_out_channels, max_kept_fraction) steps, the first at 0 '
          f'channels, the channel counts rising, the fractions in [0, 1], got {steps!r}'
      )
    object.__setattr__(self, 'patch_max_by_channels', tuple((int(c), float(f)) for c, f in steps))
    entry = self.dense_entry
    if not isinstance(entry, (tuple, list)) or len(entry) != 3 or not all(isinstance(e, bool) for e in entry):
      raise UserError(f'compute.dense_entry must be 3 booleans (ADP-C segments 2, 3, 4), got {entry!r}')
    object.__setattr__(self, 'dense_entry', tuple(entry))

  def patch_max(self, out_channels: int) -> float:
    """The kept fraction up to which a masked conv of ``out_channels`` outputs (k > 1 or strided) is computed
    per pixel: the last step of ``patch_max_by_channels`` whose channel count it reaches."""
    return [f for c, f in self.patch_max_by_channels if out_channels >= c][-1]

  def padded_channels(self, c: int) -> int:
    """The channel count ``c`` is computed with: the next multiple of ``channel_multiple``; <= 4 as it is."""
    m = self.channel_multiple
    return c if m <= 1 or c <= _UNPADDED_MAX else -(-c // m) * m

  def conv(self, x: Array, kernel: Array, strides=(1, 1), padding=((0, 0), (0, 0)), precision=None) -> Array:
    """Dense NHWC conv (cross-correlation, explicit zero padding, no bias; kernel HWIO as ``nn.Conv``'s),
    computed as this policy says. ``x`` and ``kernel`` in the computation dtype."""
    kh, kw, cin, cout = kernel.shape
    strides = tuple(strides)
    padding = tuple(tuple(p) for p in padding)
    (pt, pb), (pl, pr) = padding
    ho = (x.shape[1] + pt + pb - kh) // strides[0] + 1
    wo = (x.shape[2] + pl + pr - kw) // strides[1] + 1
    unpadded = not (pt or pb or pl or pr)
    if kh * kw == 1:
      as_matmul = self.pointwise_conv == 'matmul' and unpadded
    elif strides == (kh, kw) and unpadded and self.patch_conv == 'matmul':
      as_matmul = True
    else:
      as_matmul = self.small_conv == 'matmul' and ho * wo <= SMALL_OUTPUT_POSITIONS
    if as_matmul:
      return patches_matmul(x, kernel, strides, padding, precision)
    cin_p, cout_p = self.padded_channels(cin), self.padded_channels(cout)
    if cin_p > cin:  # zero input channels meet zero kernel rows
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, cin_p - cin)))
    if (cin_p, cout_p) != (cin, cout):
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, cin_p - cin), (0, cout_p - cout)))
    y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN, precision=precision)
    return y[..., :cout] if cout_p > cout else y  # the zero output channels are sliced off

  @property
  def dot_general(self) -> Callable | None:
    """The ``dot_general`` a dense layer computes with (``nn.Dense(dot_general=...)``): None (Flax's default,
    ``lax.dot_general``) or ``dense_dot_general`` (``dense_grad``)."""
    return dense_dot_general if self.dense_grad == 'narrow_transpose' else None

  def layer_end_of(self, fn: Callable, *args: Array, anchor: Array) -> Array:
    """``fn(*args)``, the output of a layer; with ``fusion_barriers`` computed into its own buffer
    (``materialized``: ``fn`` runs inside the barrier, so XLA fuses it with nothing after it). The one place
    the policy decides where a barrier goes. ``anchor``: a replicated array (a parameter) for the barrier's
    predicate."""
    return materialized(fn, *args, anchor=anchor) if self.fusion_barriers else fn(*args)

  def layer_end(self, y: Array, anchor: Array) -> Array:
    """``y``, a layer's output computed already (``layer_end_of`` of a copy: ``fusion_barrier``)."""
    return self.layer_end_of(_copy, y, anchor=anchor)


def patches_matmul(x: Array, kernel: Array, strides, padding, precision=None) -> Array:
  """The conv of ``Compute.conv`` (no bias) as ONE matmul: patches (B, ho, wo, kh*kw*cin) @ kernel.

  Non-overlapping patches (stride = kernel, no padding) are a space-to-depth reshape of ``x`` (a remainder
  row / column is dropped, as by a VALID conv); other convs concatenate the kh*kw shifted, strided slices of the
  padded input (a 1x1 conv: the strided input itself). Patch features are ordered (i, j, cin), as the HWIO
  kernel's rows."""
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  sh, sw = strides
  n, h, w, _ = x.shape
  if (sh, sw) == (kh, kw) and not (pt or pb or pl or pr):
    ho, wo = h // kh, w // kw
    x = x[:, : ho * kh, : wo * kw]
    patches = x.reshape(n, ho, kh, wo, kw, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, kh * kw * cin)
    return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout), precision=precision)
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if (pt or pb or pl or pr) else x
  slices = [
      xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :] for i in range(kh) for j in range(kw)
  ]
  patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
  return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout), precision=precision)


# --------------------------------------------------------------------------------------
# Dense layer with the weight gradient as one standard-form matmul
# --------------------------------------------------------------------------------------
def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None) -> Array:
  """``lax.dot_general`` (same signature, same forward), whose gradient computes a dense layer's weight gradient
  as one standard-form matmul: the narrower of the input x (M, C) and the output gradient g (M, D) transposed,
  then (C, M) @ (M, D), or (D, M) @ (M, C) and the small result transposed.

  Autodiff's transpose asks for x^T g, a contraction over both operands' leading (row) axis; XLA:CPU's YNNPACK
  path does not take that form, so XLA lays the output gradient out transposed (a copy of the largest tensor of
  the layer, 4C wide after ConvNeXt's pwconv1) and runs its generic dot. The input gradient is autodiff's
  (g @ w^T). Only a dense layer's contraction (the last axis of ``lhs`` with the first of a 2-D ``rhs``, no batch
  axes) takes the custom VJP; anything else is ``lax.dot_general`` as it is."""
  (lc, rc), (lb, rb) = dimension_numbers
  if tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or rhs.ndim != 2 or lb or rb or lhs.ndim < 2:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
  return _dense_matmul(lhs, rhs, precision, preferred_element_type)


def _matmul(a: Array, b: Array, precision, preferred_element_type) -> Array:
  return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense_matmul(x: Array, w: Array, precision, preferred_element_type) -> Array:
  return _matmul(x, w, precision, preferred_element_type)


def _dense_matmul_fwd(x, w, precision, preferred_element_type):
  return _matmul(x, w, precision, preferred_element_type), (x, w)


def _dense_matmul_bwd(precision, preferred_element_type, res, g):
  del preferred_element_type  # the gradients take the operands' dtypes, as autodiff's
  x, w = res
  c, d = w.shape
  dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision, preferred_element_type=x.dtype)
  x2, g2 = x.reshape(-1, c), g.reshape(-1, d).astype(x.dtype)
  if c <= d:
    dw = lax.dot_general(x2.T, g2, (((1,), (0,)), ((), ())), precision, preferred_element_type=w.dtype)
  else:
    dw = lax.dot_general(g2.T, x2, (((1,), (0,)), ((), ())), precision, preferred_element_type=w.dtype).T
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


# --------------------------------------------------------------------------------------
# Fusion barrier
# --------------------------------------------------------------------------------------
def materialized(fn: Callable, *args: Array, anchor: Array | None = None) -> Array:
  """``fn(*args)``, computed once into its own buffer: an XLA:CPU fusion barrier.

  XLA:CPU would otherwise fuse cheap-looking producers into every consumer (a 49-tap shifted sum is recomputed
  by each of LayerNorm's three passes: mean, variance, normalize) or hand a reduce and its producers to its
  YNNPACK fusion, which then materializes each shifted slice on its own; both cost more than the op itself
  (benchmarks/profile_convnext_layers.py). XLA:CPU has no barrier op (``optimization_barrier`` is expanded
  before fusion), but a conditional is one: its result is always a buffer of its own. Both branches are
  ``fn``, so the predicate (never constant-folded: ``v == v`` is false for NaN) cannot change the result.
  Differentiable: the transpose of a conditional is a conditional, so the backward gets the barrier too.

  The predicate reads one element of ``anchor`` (default: the last arg). Under a batch-sharded jit that element
  must not come from an activation: it lives on one device, and GSPMD would broadcast it to all of them at
  every barrier (an all-reduce per barrier per step). Pass a parameter.
  """
  v = (args[-1] if anchor is None else anchor).reshape(-1)[0]
  return lax.cond(v == v, fn, fn, *args)


def _copy(t: Array) -> Array:
  # t * 1.0, not t: XLA removes a conditional whose branches only return their operand (no barrier left)
  return t * 1.0


def fusion_barrier(x: Array, anchor: Array | None = None) -> Array:
  """``x`` unchanged, but materialized: XLA cannot fuse its producer into its consumers (``materialized``)."""
  return materialized(_copy, x, anchor=anchor)


# --------------------------------------------------------------------------------------
# From the config
# --------------------------------------------------------------------------------------
def on_cpu(cpu_value: Any, other_value: Any) -> Callable[[], Any]:
  """An 'auto' entry of a line's table: ``cpu_value`` on the CPU backend, ``other_value`` on GPU / TPU."""
  return lambda: cpu_value if jax.default_backend() == 'cpu' else other_value


def _is_auto(value) -> bool:
  return value is None or (isinstance(value, str) and value == 'auto')


def resolve(options: Mapping[str, Any] | None, auto: Mapping[str, Any], line: str) -> Compute:
  """The policy of ``options`` (``config.compute``; missing / 'auto' / None entries take ``auto[field]``, a
  value or a ``on_cpu`` callable). A field ``auto`` does not list is one ``line``'s models cannot honour:
  leaving it 'auto' gives the plain choice, setting it is a UserError. Resolved when the model is built."""
  options = {} if options is None else dict(options.to_dict() if hasattr(options, 'to_dict') else options)
  unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Compute)})
  if unknown:
    raise UserError(
        f'unknown compute option compute.{unknown[0]} (known: {", ".join(CHOICES)}, channel_multiple, '
        'fusion_barriers, masked_dense_above, patch_max_by_channels, dense_entry)'
    )
  chosen = {}
  for field in dataclasses.fields(Compute):
    value = options.get(field.name)
    if field.name not in auto:
      if not _is_auto(value) and value != field.default:
        raise UserError(f'compute.{field.name}={value!r}: the {line} line has no use for it; leave it auto')
      continue
    if _is_auto(value):
      value = auto[field.name]
      value = value() if callable(value) else value
    chosen[field.name] = value
  return Compute(**chosen)


def compute_dtype(name) -> jnp.dtype:
  """``config.compute_dtype`` as a dtype: activations and conv / matmul compute (params, losses and BatchNorm
  statistics stay float32); anything else is a one-line UserError."""
  if str(name) not in COMPUTE_DTYPES:
    hint = ' (float16 would need loss scaling, which the loop does not do)' if str(name) == 'float16' else ''
    raise UserError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}{hint}')
  return jnp.dtype(str(name))


def cast_dtype(name) -> jnp.dtype | None:
  """The dtype a model casts its activations to for ``config.compute_dtype``: None for float32, which casts
  nothing (float32 inputs stay float32, and a float64 run under jax_enable_x64 stays float64, as the float64
  sync-BN tests need); bfloat16 casts to bfloat16. A bad name is compute_dtype's one-line error."""
  dtype = compute_dtype(name)
  return None if dtype == jnp.float32 else dtype
