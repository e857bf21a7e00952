"""PreResNet-(9n+2) with bottlenecks and channel selection (`cifar/network-slimming/models/preresnet.py`).

Stem conv3x3(3 -> 16), no BN. Three stages of n Bottlenecks, planes 16 / 32 / 64, expansion 4.
Bottleneck(cfg = [c0, c1, c2]): BN(in) -> channel_selection(in -> c0) -> ReLU -> conv1x1(c0 -> c1) -> BN ->
ReLU -> conv3x3(c1 -> c2, stride) -> BN -> ReLU -> conv1x1(c2 -> 4 planes); + shortcut (no ReLU after the add).
Shortcut: conv1x1 with stride, no BN, in the first block of each stage; identity otherwise.
Head: BN -> channel_selection(256 -> cfg[-1]) -> ReLU -> global 8x8 average pool -> Linear(cfg[-1] -> classes)
(PyTorch default init). BN gamma 0.5, convs He fan_out normal.

cfg: 3 entries per block then one for the final selection (9n + 1 entries), default
[16,16,16] + [64,16,16]*(n-1) + [64,32,32] + [128,32,32]*(n-1) + [128,64,64] + [256,64,64]*(n-1) + [256].
`selections`: one entry per channel_selection (3n blocks, then the final one): a tuple of kept channel indices of
the block input / final BN, or None for all channels (then cfg's count must equal the full width). The indices
are static (jit constants), the counterpart of the original's `indexes` vector.

Variables: conv1, layer{s}_{b}/{bn1,conv1,bn2,conv2,bn3,conv3,downsample}, bn, fc.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from core_jax.compute import Compute
from pruning_jax.models import layers

PLANES = (16, 32, 64)
EXPANSION = 4


def blocks_per_stage(depth: int) -> int:
  if depth < 11 or (depth - 2) % 9:
    raise ValueError(f'PreResNet depth must be 9n+2 (n >= 1), got {depth}')
  return (depth - 2) // 9


def default_cfg(depth: int) -> tuple[int, ...]:
  n = blocks_per_stage(depth)
  cfg = [16, 16, 16] + [64, 16, 16] * (n - 1) + [64, 32, 32] + [128, 32, 32] * (n - 1)
  cfg += [128, 64, 64] + [256, 64, 64] * (n - 1) + [256]
  return tuple(cfg)


def selection_widths(depth: int) -> list[int]:
  """Full channel count at each channel_selection (the block inputs, then the final BN)."""
  n = blocks_per_stage(depth)
  widths, inplanes = [], 16
  for planes in PLANES:
    for _ in range(n):
      widths.append(inplanes)
      inplanes = planes * EXPANSION
  return widths + [inplanes]


def check_selections(cfg: Sequence[int], selections, full_widths: Sequence[int], counts: Sequence[int], name: str):
  """Every selection keeps exactly the cfg count of valid, distinct, increasing channel indices."""
  if selections is not None and len(selections) != len(full_widths):
    raise ValueError(f'{name}: {len(full_widths)} channel selections expected, got {len(selections)}')
  for k, (full, count) in enumerate(zip(full_widths, counts)):
    sel = None if selections is None else selections[k]
    if sel is None:
      if count != full:
        raise ValueError(f'{name}: selection {k} keeps {count} of {full} channels but no indices were given')
      continue
    if len(sel) != count or list(sel) != sorted(set(sel)) or (sel and (sel[0] < 0 or sel[-1] >= full)):
      raise ValueError(f'{name}: selection {k} must be {count} increasing indices in [0, {full}), got {list(sel)}')


class Bottleneck(nn.Module):
  cfg: Sequence[int]
  planes: int
  stride: int = 1
  selection: Sequence[int] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.BatchNorm(
        use_running_average=not train, scale_init=layers.constant(0.5), name=name, dtype=self.dtype
    )
    c0, c1, c2 = (int(c) for c in self.cfg)
    del c0  # implied by the selection
    y = nn.relu(layers.select_channels(bn('bn1')(x), self.selection))
    y = layers.conv(c1, 1, name='conv1', dtype=self.dtype, compute=self.compute)(y)
    y = layers.conv(c2, 3, self.stride, name='conv2', dtype=self.dtype, compute=self.compute)(nn.relu(bn('bn2')(y)))
    y = layers.conv(self.planes * EXPANSION, 1, name='conv3', dtype=self.dtype, compute=self.compute)(
        nn.relu(bn('bn3')(y))
    )
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes * EXPANSION:
      shortcut = layers.conv(
          self.planes * EXPANSION, 1, self.stride, name='downsample', dtype=self.dtype, compute=self.compute
      )(x)
    return y + shortcut


class PreResNet(nn.Module):
  depth: int = 164
  cfg: Sequence[int] | None = None
  num_classes: int = 10
  selections: Sequence[Sequence[int] | None] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = blocks_per_stage(self.depth)
    cfg = default_cfg(self.depth) if self.cfg is None else tuple(self.cfg)
    if len(cfg) != 9 * n + 1:
      raise ValueError(f'PreResNet-{self.depth} needs a cfg of {9 * n + 1} entries, got {len(cfg)}')
    full = selection_widths(self.depth)
    check_selections(cfg, self.selections, full, list(cfg[0 : 9 * n : 3]) + [cfg[-1]], f'PreResNet-{self.depth}')
    sel = (lambda k: None) if self.selections is None else (lambda k: self.selections[k])
    x = layers.conv(16, 3, name='conv1', dtype=self.dtype, compute=self.compute)(x)
    for s, planes in enumerate(PLANES):
      for b in range(n):
        k = s * n + b
        stride = 2 if (s > 0 and b == 0) else 1
        x = Bottleneck(
            cfg[3 * k : 3 * k + 3], planes, stride, sel(k), self.dtype, self.compute, name=f'layer{s + 1}_{b}'
        )(x, train)
    x = layers.BatchNorm(use_running_average=not train, scale_init=layers.constant(0.5), name='bn', dtype=self.dtype)(x)
    x = nn.relu(layers.select_channels(x, sel(3 * n)))
    features = layers.global_avg_pool(x)
    logits = layers.torch_dense(self.num_classes, features.shape[-1], 'fc', self.dtype)(features)
    return logits, {'pooled': features}
