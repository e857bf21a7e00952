"""ImageNet ResNets of the paper, built from cfg lists (torchvision layout, NHWC).

ResNet-34 (`imagenet/l1-norm-pruning/resnet.py`): stem conv7x7/2 + BN + ReLU + maxpool 3x3/2 (pad 1); stages
[3, 4, 6, 3] of BasicBlocks, widths 64 / 128 / 256 / 512; the cfg holds one prunable inner width per block (16
entries). Downsample: conv1x1 with stride (no bias) + BN. Global average pool, Linear(512 -> classes).
ResNet-50 family (`imagenet/thinet/models/thinetresnet.py`, `imagenet/regression-pruning/models/resnet*.py`):
Bottleneck with the stride on the 3x3 ("v1.5"); cfg = one triple [in, mid1, mid2] per block (48 entries):
conv1x1(in -> mid1) -> BN -> ReLU -> conv3x3(mid1 -> mid2, stride) -> BN -> ReLU -> conv1x1(mid2 -> 4 planes) ->
BN, + shortcut, ReLU. Downsample: conv1x1 with stride **and bias** + BN (as in those files). When a block's `in`
is smaller than its input width (regression pruning's ResNet-50-2x), `selections` gives the kept input
channels, gathered from the raw block input (no pre-BN there).
A block whose [mid1, mid2] are [0, 0] has no residual branch, only its shortcut (the block Sparse Structure
Selection removed: the downsample conv + BN of a stage's first block, the identity otherwise; the SSS ResNet-41 /
32 / 26); block_scale=True multiplies each branch by a learned scalar `block_scale` (init 1), SSS's factor.
Init: convs He fan_out normal, BN gamma 1, beta 0; the fc keeps PyTorch's default init.

Variables: conv1, bn1, layer{s}_{b}/{conv1,bn1,conv2,bn2[,conv3,bn3],downsample_conv,downsample_bn}, fc.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from core_jax.compute import Compute
from pruning_jax.models import layers
from pruning_jax.models.preresnet import check_selections

STAGES = {34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)
# Sparse Structure Selection's ResNet-50 variants (Liu et al.'s README, imagenet/sparse-structure-selection): per
# stage (branches kept, whether the first -- downsampling -- block keeps its branch); depth 2 + 3 * sum(kept).
SSS_STAGE_BLOCKS = {
    'resnet41': ((0, False), (4, True), (6, True), (3, True)),
    'resnet32': ((1, False), (4, True), (4, True), (1, True)),
    'resnet26': ((0, False), (2, False), (5, False), (1, True)),
}


def default_cfg(depth: int) -> tuple[int, ...]:
  if depth == 34:
    return tuple(w for w, n in zip(WIDTHS, STAGES[34]) for _ in range(n))
  if depth == 50:
    cfg, inplanes = [], 64
    for w, n in zip(WIDTHS, STAGES[50]):
      for _ in range(n):
        cfg += [inplanes, w, w]
        inplanes = 4 * w
    return tuple(cfg)
  raise ValueError(f'ImageNet ResNet depth must be 34 or 50, got {depth}')


def stage_blocks_cfg(stages) -> tuple[int, ...]:
  """The ResNet-50 cfg of per-stage (branches kept, first block kept), removed blocks as [in, 0, 0]: a stage's first
  block as asked, then its first `kept - first` later blocks (the README does not say which of the equal later
  blocks stay; params and MACs do not depend on it)."""
  stages = [tuple(s) for s in stages]
  if len(stages) != len(STAGES[50]):
    raise ValueError(f'ResNet-50 has {len(STAGES[50])} stages, got {len(stages)} (branches kept, first kept) pairs')
  cfg, k = list(default_cfg(50)), 0
  for s, ((kept, first), n) in enumerate(zip(stages, STAGES[50])):
    later = int(kept) - int(bool(first))
    if not 0 <= later <= n - 1:
      raise ValueError(f'stage {s + 1} has {n} blocks: ({kept}, {bool(first)}) cannot be kept')
    for b in range(n):
      if not (bool(first) if b == 0 else b - 1 < later):
        cfg[3 * k + 1] = cfg[3 * k + 2] = 0
      k += 1
  return tuple(cfg)


def block_input_widths(depth: int) -> list[int]:
  widths, inplanes = [], 64
  expansion = 4 if depth == 50 else 1
  for w, n in zip(WIDTHS, STAGES[depth]):
    for _ in range(n):
      widths.append(inplanes)
      inplanes = w * expansion
  return widths


def _stem(x, train, dtype, compute):
  x = layers.conv(64, 7, 2, name='conv1', dtype=dtype, compute=compute)(x)
  x = nn.relu(layers.BatchNorm(use_running_average=not train, name='bn1', dtype=dtype)(x))
  return layers.max_pool(x, 3, 2, padding=1)


def _fc(features, num_classes, dtype):
  return layers.torch_dense(num_classes, features.shape[-1], 'fc', dtype)(features)


class BasicBlock(nn.Module):
  width: int
  planes: int
  stride: int = 1
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.BatchNorm(use_running_average=not train, name=name, dtype=self.dtype)
    y = nn.relu(
        bn('bn1')(layers.conv(self.width, 3, self.stride, name='conv1', dtype=self.dtype, compute=self.compute)(x))
    )
    y = bn('bn2')(layers.conv(self.planes, 3, name='conv2', dtype=self.dtype, compute=self.compute)(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = bn('downsample_bn')(
          layers.conv(self.planes, 1, self.stride, name='downsample_conv', dtype=self.dtype, compute=self.compute)(x)
      )
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  cfg: Sequence[int]
  planes: int
  stride: int = 1
  selection: Sequence[int] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()
  block_scale: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.BatchNorm(use_running_average=not train, name=name, dtype=self.dtype)
    _, mid1, mid2 = (int(c) for c in self.cfg)
    y = None
    if mid1 and mid2:  # [0, 0]: the branch removed
      y = layers.select_channels(x, self.selection)
      y = nn.relu(bn('bn1')(layers.conv(mid1, 1, name='conv1', dtype=self.dtype, compute=self.compute)(y)))
      y = nn.relu(bn('bn2')(layers.conv(mid2, 3, self.stride, name='conv2', dtype=self.dtype, compute=self.compute)(y)))
      y = bn('bn3')(layers.conv(4 * self.planes, 1, name='conv3', dtype=self.dtype, compute=self.compute)(y))
      if self.block_scale:
        y = y * self.param('block_scale', nn.initializers.ones, (), jnp.float32).astype(y.dtype)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != 4 * self.planes:
      shortcut = bn('downsample_bn')(
          layers.conv(
              4 * self.planes,
              1,
              self.stride,
              name='downsample_conv',
              use_bias=True,
              dtype=self.dtype,
              compute=self.compute,
          )(x)
      )
    return nn.relu(shortcut if y is None else y + shortcut)


class ResNet34(nn.Module):
  cfg: Sequence[int] | None = None
  num_classes: int = 1000
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = default_cfg(34) if self.cfg is None else tuple(self.cfg)
    if len(cfg) != 16:
      raise ValueError(f'ResNet-34 needs a cfg of 16 block widths, got {len(cfg)}')
    x = _stem(x, train, self.dtype, self.compute)
    k = 0
    for s, (planes, n) in enumerate(zip(WIDTHS, STAGES[34])):
      for b in range(n):
        stride = 2 if (s > 0 and b == 0) else 1
        x = BasicBlock(int(cfg[k]), planes, stride, self.dtype, self.compute, name=f'layer{s + 1}_{b}')(x, train)
        k += 1
    features = layers.global_avg_pool(x)
    return _fc(features, self.num_classes, self.dtype), {'pooled': features}


class ResNet50(nn.Module):
  cfg: Sequence[int] | None = None
  num_classes: int = 1000
  selections: Sequence[Sequence[int] | None] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()
  block_scale: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = default_cfg(50) if self.cfg is None else tuple(self.cfg)
    if len(cfg) != 48:
      raise ValueError(f'ResNet-50 needs a cfg of 48 entries (one [in, mid1, mid2] per block), got {len(cfg)}')
    check_selections(cfg, self.selections, block_input_widths(50), cfg[0::3], 'ResNet-50')
    x = _stem(x, train, self.dtype, self.compute)
    k = 0
    for s, (planes, n) in enumerate(zip(WIDTHS, STAGES[50])):
      for b in range(n):
        stride = 2 if (s > 0 and b == 0) else 1
        sel = None if self.selections is None else self.selections[k]
        x = Bottleneck(
            cfg[3 * k : 3 * k + 3],
            planes,
            stride,
            sel,
            self.dtype,
            self.compute,
            self.block_scale,
            name=f'layer{s + 1}_{b}',
        )(x, train)
        k += 1
    features = layers.global_avg_pool(x)
    return _fc(features, self.num_classes, self.dtype), {'pooled': features}
