"""ADP-C exits: the input concat, the original exit (EE, also the HRNet head) and the redesigned exit (RH).

- `exit_input(branches)`: every branch bilinearly upsampled (align_corners=False) to branch 0's 1/4 size and
  concatenated along channels ([b0, b1, ...]).
- `OriginalExit` ('ee'; the segmentation head `last_layer` is always this): 1x1 conv C -> C (bias) + BN + ReLU
  + 1x1 conv C -> classes (bias), at 1/4. Given the branches instead of their concat, masked and evaluated with the
  sparse masked conv, it is pixel-wise and read at kept pixels only, so it forms its input and computes at the
  kept pixels alone (`exit_input_rows`, `OriginalExit.kept_pixels_head`): the concat at 1/4 and the C -> C conv
  were most of the last segment's time at tau=0.998 (5 % of the pixels kept).
- `RedesignedExit` ('rh', the code's `flex` = downup_pool_1x1_inter{,_double,_triple}): d = 4 - k down steps
  (AvgPool 2x2 s2 -> 1x1 conv (C -> I, then I -> I, bias) + BN + ReLU), then d up steps (bilinear x2 -> 1x1 conv
  I -> I + BN + ReLU, except that the last up step is followed by the 1x1 I -> classes classifier). Up steps
  return to the sizes the down steps came from, so the output is at 1/4. `rh_max_depth` caps d (`make_exit`):
  the paper's 3 never binds (exit 1 pools 1/4 -> 1/32: a 32x64 grid on Cityscapes' 1024x2048); a small input
  takes fewer steps (on a 64x128 scene exit 1's three pools leave a 2x4 grid, coarser than what it segments).
Submodules are named by their index in the PyTorch nn.Sequential (`conv0`, `bn1`, `conv3`, ...), which is what
the official checkpoint's keys (`exit1.0.weight`, `last_layer.1.running_mean`) use.
Every conv may be a masked conv (`exit_index` set, `masks` given); BN momentum 0.99 (PyTorch 0.01; `bn_momentum`),
eps 1e-5; conv init as `confidence.Conv` (`conv_init`); activations in `dtype` (BatchNorm statistics float32).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from anytime_jax import confidence
from anytime_jax.confidence import Conv, MaskSet
from core_jax import counting
from core_jax.compute import Compute
from core_jax.errors import UserError
from core_jax.seg_ops import resize_bilinear

BN_MOMENTUM = 0.99
BN_EPS = 1e-5


def batch_norm(train: bool, name: str, momentum: float = BN_MOMENTUM, dtype: Any = None) -> nn.BatchNorm:
  """BatchNorm with float32 statistics and parameters; its output in `dtype` (None: the promoted input and
  parameter dtype)."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=BN_EPS, name=name, dtype=dtype)


def exit_input(branches) -> jax.Array:
  h, w = branches[0].shape[1:3]
  return jnp.concatenate([branches[0]] + [resize_bilinear(b, h, w) for b in branches[1:]], axis=-1)


def _bilinear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(i0, i1, weight of i1) per destination index of `resize_bilinear` along one axis (half-pixel centres, the
  source position clamped to the edge samples)."""
  pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
  i0 = np.minimum(np.floor(pos).astype(np.int32), src - 1)
  return i0, np.minimum(i0 + 1, src - 1), (pos - i0).astype(np.float32)


def exit_input_rows(branches, rows: jax.Array) -> jax.Array:
  """`exit_input(branches)` at the pixels `rows` only (flat ids over branch 0's (B, h, w)): (len(rows), C), each
  other branch sampled bilinearly there from its 4 neighbours (the same weights as `resize_bilinear`)."""
  _, h, w, _ = branches[0].shape
  b, rest = rows // (h * w), rows % (h * w)
  i, j = rest // w, rest % w
  cols = [branches[0].reshape(-1, branches[0].shape[-1]).at[rows].get(mode='promise_in_bounds')]
  for x in branches[1:]:
    _, hi, wi, c = x.shape
    i0, i1, wy = (jnp.asarray(a)[i] for a in _bilinear_taps(hi, h))
    j0, j1, wx = (jnp.asarray(a)[j] for a in _bilinear_taps(wi, w))
    flat = x.reshape(-1, c)
    at = lambda ii, jj: flat.at[b * (hi * wi) + ii * wi + jj].get(mode='promise_in_bounds')
    wy, wx = wy[:, None].astype(x.dtype), wx[:, None].astype(x.dtype)
    top = at(i0, j0) * (1 - wx) + at(i0, j1) * wx
    bottom = at(i1, j0) * (1 - wx) + at(i1, j1) * wx
    cols.append(top * (1 - wy) + bottom * wy)
  return jnp.concatenate(cols, axis=-1)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')


class OriginalExit(nn.Module):
  num_classes: int
  exit_index: int | None = None  # masked convs of the segment ending at this exit (None: not masked)
  bn_momentum: float = BN_MOMENTUM
  conv_init: str = 'normal'
  compute: Compute = Compute()
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False, masks: MaskSet | None = None):
    """`x`: the exit's input (B, h, w, C), or the branches `exit_input` concatenates (a list): then, when the
    sparse masked conv applies, only the kept pixels' input is formed (`kept_pixels_head`)."""
    if isinstance(x, (list, tuple)):
      sparse = masks is not None and masks.masked_conv(self.compute) == 'sparse'
      if sparse and self.exit_index is not None and not self.is_initializing():
        return self.kept_pixels_head(x, masks)
      x = exit_input(x)
    c, ci = x.shape[-1], self.conv_init
    # conv0 -> BN -> ReLU -> conv3 is pixel-wise and the aggregation reads kept pixels only: no fill is read
    opts = dict(use_bias=True, exit_index=self.exit_index, conv_init=ci, compute=self.compute, fill_read=False)
    y = Conv(c, 1, name='conv0', **opts)(x, masks)
    y = nn.relu(batch_norm(train, 'bn1', self.bn_momentum, self.dtype)(y))
    return Conv(self.num_classes, 1, name='conv3', **opts)(y, masks)

  def kept_pixels_head(self, branches, masks: MaskSet) -> jax.Array:
    """The masked exit at evaluation with the sparse masked conv, from the stage's branches: pixel-wise, and the
    aggregation reads its logits at kept pixels only, so the input (`exit_input_rows`), both 1 x 1 convs and the BN
    run on the kept pixels alone, in chunks (`confidence.PixelSet.kept_map`) up to `confidence.PIXEL_MAX` of the
    pixels, above at every pixel. Skipped pixels' logits are 0, as the masked conv's without the fill;
    kept ones equal the masked-dense exit's. MACs are counted and sown as the two masked convs'."""
    params = self.variables['params']
    bn1 = batch_norm(False, 'bn1', self.bn_momentum, self.dtype)  # eval mode: its running statistics
    x0 = branches[0]
    bsz, h, w, _ = x0.shape
    cin = sum(b.shape[-1] for b in branches)
    m = masks.at(h, w)
    for name, cout in (('conv0', cin), ('conv3', self.num_classes)):
      counting.record_macs(bsz * h * w * cin * cout)
      SownMacs(self.exit_index, name=name)(h * w * cin * cout, m, cout)
      cin = cout

    def head(feats):  # (..., C) -> (..., classes): conv0, BN (running statistics), ReLU, conv3
      def conv(y, name):
        kernel, bias = params[name]['kernel'].astype(y.dtype), params[name]['bias'].astype(y.dtype)
        return confidence.dense_conv(self.compute, y, kernel, bias, (1, 1), ((0, 0), (0, 0)))

      return conv(nn.relu(bn1(conv(feats, 'conv0'))), 'conv3')

    pixels = masks.pixels(h, w)

    def kept(branches):  # at the kept pixels only, 0 at the others
      rows_head = lambda rows: head(exit_input_rows(branches, rows)[None, :, None])[0, :, 0]
      return pixels.kept_map(rows_head, self.num_classes, x0.dtype)

    def every(branches):
      return head(exit_input(branches)) * m[..., None].astype(x0.dtype)

    per_pixel = pixels.count <= confidence.PIXEL_MAX * m.size
    return lax.cond(per_pixel, kept, every, list(branches))


class SownMacs(nn.Module):
  """Sows a masked conv's MACs (`confidence.sow_masked_macs`) under the conv's name without computing it: the
  kept-pixel head sows where the masked-dense head's convs do, so that a segment's sown tree is the same whichever
  masked conv it takes (`confidence.segment_kind`'s switch needs one structure)."""

  exit_index: int

  @nn.compact
  def __call__(self, dense: int, mask: jax.Array, features: int) -> None:
    confidence.sow_masked_macs(self, self.exit_index, dense, mask, features)


class RedesignedExit(nn.Module):
  num_classes: int
  depth: int  # 4 - k for exit k
  inter_channels: int  # 128 for W48, 64 for W18
  exit_index: int | None = None
  bn_momentum: float = BN_MOMENTUM
  conv_init: str = 'normal'
  compute: Compute = Compute()
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False, masks: MaskSet | None = None):
    idx = 0
    sizes = []

    def conv_bn_relu(y, features):
      nonlocal idx
      y = Conv(
          features,
          1,
          use_bias=True,
          exit_index=self.exit_index,
          conv_init=self.conv_init,
          compute=self.compute,
          name=f'conv{idx}',
      )(y, masks)
      y = nn.relu(batch_norm(train, f'bn{idx + 1}', self.bn_momentum, self.dtype)(y))
      idx += 3  # conv, bn, relu
      return y

    for _ in range(self.depth):
      sizes.append(x.shape[1:3])
      x = avg_pool_2x2(x)
      idx += 1
      x = conv_bn_relu(x, self.inter_channels)
    for u in range(self.depth):
      x = resize_bilinear(x, *sizes[-1 - u])
      idx += 1
      if u < self.depth - 1:
        x = conv_bn_relu(x, self.inter_channels)
    return Conv(
        self.num_classes,
        1,
        use_bias=True,
        exit_index=self.exit_index,
        conv_init=self.conv_init,
        compute=self.compute,
        fill_read=False,  # the aggregation reads the logits at kept pixels only
        name=f'conv{idx}',
    )(x, masks)


EXIT_TYPES = ('ee', 'rh')
RH_MAX_DEPTH = 3  # the paper's: exit k takes 4 - k down steps, exit 1 three


def check_rh_max_depth(value, name: str = 'rh_max_depth') -> int:
  """The RH exits' most down steps, 1..3 (one-line UserError otherwise)."""
  if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= RH_MAX_DEPTH:
    raise UserError(
        f"{name} must be an integer 1..{RH_MAX_DEPTH} (the most down steps of an RH exit; the paper's exit k takes"
        f' 4 - k, so {RH_MAX_DEPTH} keeps them all), got {value!r}'
    )
  return value


def make_exit(
    exit_type: str,
    k: int,
    num_classes: int,
    inter_channels: int,
    exit_index: int | None,
    name: str,
    rh_max_depth: int = RH_MAX_DEPTH,
    **options,
):
  """Exit k (1..3) of the given type; an RH exit takes min(4 - k, rh_max_depth) down steps; `options`:
  bn_momentum, conv_init, compute."""
  if exit_type == 'ee':
    return OriginalExit(num_classes, exit_index=exit_index, name=name, **options)
  if exit_type == 'rh':
    depth = min(4 - k, rh_max_depth)
    return RedesignedExit(
        num_classes, depth=depth, inter_channels=inter_channels, exit_index=exit_index, name=name, **options
    )
  raise ValueError(f'unknown exit type {exit_type!r} (expected one of {EXIT_TYPES})')
