"""DenseNet-(3n+4) with channel selection (`cifar/network-slimming/models/densenet.py`), built from a cfg.

Growth 12, compression 1, no bottleneck, no dropout. Stem conv3x3(3 -> 24), no BN.
Dense layer(cfg_i): BN(in) -> channel_selection(in -> cfg_i) -> ReLU -> conv3x3(cfg_i -> 12); out = concat(in, new).
Transition(cfg_t): BN -> channel_selection -> ReLU -> conv1x1(cfg_t -> in) -> 2x2 average pool.
Head: BN -> channel_selection -> ReLU -> global 8x8 average pool -> Linear(cfg[-1] -> classes) (PyTorch default
init). BN gamma 0.5, convs He fan_out normal.

cfg (3n + 3 entries): n dense layers, transition, n dense layers, transition, n dense layers, final; default for
n = 12: start_s + 12 i (i = 0..12) with start = 24, 168, 312. Conv outputs (growth, transition widths) are never
pruned; `selections` (one per cfg entry, None = all channels) picks the inputs each consumer reads.

Variables: conv1, dense{s}_{i}/{bn1,conv1}, trans{s}/{bn1,conv1}, bn, fc.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from core_jax.compute import Compute
from pruning_jax.models import layers
from pruning_jax.models.preresnet import check_selections


def layers_per_block(depth: int) -> int:
  if depth < 7 or (depth - 4) % 3:
    raise ValueError(f'DenseNet depth must be 3n+4 (n >= 1), got {depth}')
  return (depth - 4) // 3


def selection_widths(depth: int, growth: int = 12) -> list[int]:
  """Full channel count at every BN / channel_selection, in cfg order."""
  n = layers_per_block(depth)
  widths, c = [], 2 * growth
  for _stage in range(3):
    for _ in range(n):
      widths.append(c)
      c += growth
    widths.append(c)  # transition (stages 0, 1) or final BN (stage 2); compression 1 keeps the width
  return widths


def default_cfg(depth: int, growth: int = 12) -> tuple[int, ...]:
  return tuple(selection_widths(depth, growth))


def _bn(train: bool, name: str, dtype) -> layers.BatchNorm:
  return layers.BatchNorm(use_running_average=not train, scale_init=layers.constant(0.5), name=name, dtype=dtype)


class DenseLayer(nn.Module):
  width: int
  growth: int
  selection: Sequence[int] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _bn(train, 'bn1', self.dtype)(x)
    y = layers.conv(self.growth, 3, name='conv1', dtype=self.dtype, compute=self.compute)(
        nn.relu(layers.select_channels(y, self.selection))
    )
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  width: int
  selection: Sequence[int] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = x.shape[-1]  # compression 1
    y = _bn(train, 'bn1', self.dtype)(x)
    y = layers.conv(out, 1, name='conv1', dtype=self.dtype, compute=self.compute)(
        nn.relu(layers.select_channels(y, self.selection))
    )
    return layers.avg_pool(y, 2)


class DenseNet(nn.Module):
  depth: int = 40
  cfg: Sequence[int] | None = None
  num_classes: int = 10
  growth: int = 12
  selections: Sequence[Sequence[int] | None] | None = None
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = layers_per_block(self.depth)
    cfg = default_cfg(self.depth, self.growth) if self.cfg is None else tuple(self.cfg)
    full = selection_widths(self.depth, self.growth)
    if len(cfg) != len(full):
      raise ValueError(f'DenseNet-{self.depth} needs a cfg of {len(full)} entries, got {len(cfg)}')
    check_selections(cfg, self.selections, full, cfg, f'DenseNet-{self.depth}')
    sel = (lambda k: None) if self.selections is None else (lambda k: self.selections[k])
    x = layers.conv(2 * self.growth, 3, name='conv1', dtype=self.dtype, compute=self.compute)(x)
    k = 0
    for stage in range(3):
      for i in range(n):
        x = DenseLayer(int(cfg[k]), self.growth, sel(k), self.dtype, self.compute, name=f'dense{stage + 1}_{i}')(
            x, train
        )
        k += 1
      if stage < 2:
        x = Transition(int(cfg[k]), sel(k), self.dtype, self.compute, name=f'trans{stage + 1}')(x, train)
        k += 1
    x = _bn(train, 'bn', self.dtype)(x)
    x = nn.relu(layers.select_channels(x, sel(k)))
    features = layers.global_avg_pool(x)
    logits = layers.torch_dense(self.num_classes, features.shape[-1], 'fc', self.dtype)(features)
    return logits, {'pooled': features}
