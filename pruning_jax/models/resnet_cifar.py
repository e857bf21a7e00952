"""CIFAR ResNet-(6n+2) of L1-norm pruning (`cifar/l1-norm-pruning/models/resnet.py`), built from a cfg.

Stem conv3x3(3 -> 16) + BN + ReLU; three stages of n BasicBlocks, widths 16 / 32 / 64, strides 1 / 2 / 2;
global 8x8 average pool; Linear(64 -> classes) with PyTorch's default init.
BasicBlock(cfg_i): conv3x3(in -> cfg_i, stride) -> BN -> ReLU -> conv3x3(cfg_i -> planes) -> BN, + shortcut,
ReLU. Only the inner width cfg_i is prunable; cfg has one entry per block (3n entries), default
[16]*n + [32]*n + [64]*n. cfg_i = 0: the block has no residual branch, only its shortcut (a block Sparse Structure
Selection removed, pruning_jax.methods.sss); block_scale=True: each branch is multiplied by a learned scalar
`block_scale` (init 1) before the sum, SSS's factor.
Downsampling shortcut (first block of stages 2 and 3): "option A" -- 2x2 average pool with stride 2, then zero
channels appended at the end (16 -> 32, 32 -> 64), no parameters. The original builds it from `x.data`, which
detaches it from autograd: `stop_gradient` reproduces that (no gradient flows through those two shortcuts).
Init: convs He fan_out normal, BN gamma 1, beta 0.

Variables: conv1, bn1, layer{s}_{b}/{conv1,bn1,conv2,bn2} (s = 1..3, b = 0..n-1), fc.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from core_jax.compute import Compute
from pruning_jax.models import layers

STAGE_WIDTHS = (16, 32, 64)


def default_cfg(depth: int) -> tuple[int, ...]:
  n = blocks_per_stage(depth)
  return tuple(w for w in STAGE_WIDTHS for _ in range(n))


def blocks_per_stage(depth: int) -> int:
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f'CIFAR ResNet depth must be 6n+2 (n >= 1), got {depth} (a cfg of 3n block widths)')
  return (depth - 2) // 6


def option_a_shortcut(x, planes: int):
  """2x2/2 average pool, zero channels padded at the end, detached from autograd as in the original."""
  x = layers.avg_pool(x, 2)
  x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, planes - x.shape[-1])))
  return jax.lax.stop_gradient(x)


class BasicBlock(nn.Module):
  width: int
  planes: int
  stride: int = 1
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()
  block_scale: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.BatchNorm(use_running_average=not train, name=name, dtype=self.dtype)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = option_a_shortcut(x, self.planes)
    if self.width == 0:  # the branch removed: what the block computes with its factor at 0
      return nn.relu(shortcut)
    y = nn.relu(
        bn('bn1')(layers.conv(self.width, 3, self.stride, name='conv1', dtype=self.dtype, compute=self.compute)(x))
    )
    y = bn('bn2')(layers.conv(self.planes, 3, name='conv2', dtype=self.dtype, compute=self.compute)(y))
    if self.block_scale:
      y = y * self.param('block_scale', nn.initializers.ones, (), jnp.float32).astype(y.dtype)
    return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
  depth: int = 56
  cfg: Sequence[int] | None = None
  num_classes: int = 10
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()
  block_scale: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = blocks_per_stage(self.depth)
    cfg = default_cfg(self.depth) if self.cfg is None else tuple(self.cfg)
    if len(cfg) != 3 * n:
      raise ValueError(f'ResNet-{self.depth} needs a cfg of {3 * n} block widths, got {len(cfg)}')
    x = layers.conv(16, 3, name='conv1', dtype=self.dtype, compute=self.compute)(x)
    x = nn.relu(layers.BatchNorm(use_running_average=not train, name='bn1', dtype=self.dtype)(x))
    for s, planes in enumerate(STAGE_WIDTHS):
      for b in range(n):
        stride = 2 if (s > 0 and b == 0) else 1
        x = BasicBlock(
            int(cfg[s * n + b]), planes, stride, self.dtype, self.compute, self.block_scale, name=f'layer{s + 1}_{b}'
        )(x, train)
    features = layers.global_avg_pool(x)
    logits = layers.torch_dense(self.num_classes, features.shape[-1], 'fc', self.dtype)(features)
    return logits, {'pooled': features}
