"""VGG families of the paper, each built from a static cfg list ('M' = 2x2 max-pool, stride 2).

CIFAR (`cifar/{l1-norm-pruning,network-slimming}/models/vgg.py`), 3x3 convs without bias, each followed by
BatchNorm (gamma 0.5) and ReLU; after the features a 2x2 average pool (32x32 input -> 1x1) and a flatten to
cfg[-1] features. Two heads:
  head='l1'        Linear(cfg[-1] -> 512) -> BatchNorm1d(512) -> ReLU -> Linear(512 -> classes)
                   (the BN1d is not re-initialized in the original: PyTorch 0.3.1 draws its gamma ~ U(0, 1))
  head='slimming'  Linear(cfg[-1] -> classes)
  Linears: Normal(0, 0.01), bias 0.
ImageNet:
  head='imagenet'     VGG-16 of ThiNet / regression pruning: convs with bias, no BN, 5 pools, the NCHW-ordered
                      flatten of 512x7x7 -> 4096 -> ReLU -> Dropout(0.5) -> 4096 -> ReLU -> Dropout -> classes.
  head='imagenet_gap' ThiNet's VGG-GAP / VGG-Tiny (`imagenet/thinet/models/thinetvgg.py`): convs with bias, no BN,
                      4 pools (224 -> 14x14), AvgPool2d(14, 2) = the global average, Linear(cfg[-1] -> classes).
  head='imagenet_bn'  VGG-11 of ImageNet Network Slimming: convs with bias + BN (gamma 0.5); the cfg's last two
                      entries are the FC widths: flatten -> Linear -> BN1d -> ReLU -> Linear -> BN1d -> ReLU ->
                      Linear, BN1d gamma 0.5, no dropout.
  Convs: He fan_out normal, bias 0; Linears Normal(0, 0.01), bias 0.
The ImageNet heads flatten in PyTorch's (C, H, W) order so Dense rows line up with the original checkpoints.

Variables: conv{i} / bn{i} for the i-th conv of the cfg (0-based); heads fc1, fc_bn1, fc2, fc_bn2, fc3 (l1:
fc1, fc_bn1, fc2; slimming and imagenet_gap: fc). The model returns (logits, {'pooled': features fed to the head}).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from core_jax.compute import Compute
from pruning_jax.models import layers

CIFAR_CFGS = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512),
    13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512),
}
IMAGENET_VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')
IMAGENET_VGG11_BN_CFG = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M', 4096, 4096)
THINET_GAP_CFG = (32, 32, 'M', 64, 64, 'M', 128, 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512)
THINET_TINY_CFG = (16, 16, 'M', 32, 32, 'M', 64, 64, 64, 'M', 128, 128, 128, 'M', 128, 128, 256)
HEADS = ('l1', 'slimming', 'imagenet', 'imagenet_bn', 'imagenet_gap')


def conv_widths(cfg: Sequence, head: str) -> list[int]:
  """The conv output widths of a VGG cfg, in order (without the imagenet_bn FC widths)."""
  body = cfg[:-2] if head == 'imagenet_bn' else cfg
  return [int(v) for v in body if v != 'M']


class VGG(nn.Module):
  cfg: Sequence
  num_classes: int = 10
  head: str = 'l1'
  dtype: jnp.dtype | None = None
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.head not in HEADS:
      raise ValueError(f'unknown VGG head {self.head!r} (expected one of {HEADS})')
    imagenet = self.head.startswith('imagenet')
    with_bn = self.head not in ('imagenet', 'imagenet_gap')
    body = self.cfg[:-2] if self.head == 'imagenet_bn' else self.cfg
    bn = lambda name, gamma=0.5: layers.BatchNorm(
        use_running_average=not train, scale_init=layers.constant(gamma), name=name, dtype=self.dtype
    )
    dense = lambda n, name: nn.Dense(
        n, kernel_init=layers.gaussian_001, bias_init=nn.initializers.zeros, name=name, dtype=self.dtype
    )
    i = 0
    for v in body:
      if v == 'M':
        x = layers.max_pool(x, 2, 2)
        continue
      x = layers.conv(int(v), 3, name=f'conv{i}', use_bias=imagenet, dtype=self.dtype, compute=self.compute)(x)
      if with_bn:
        x = bn(f'bn{i}')(x)
      x = nn.relu(x)
      i += 1
    if not imagenet:
      x = layers.avg_pool(x, 2)
    expected = {'imagenet_gap': 14}.get(self.head, 7 if imagenet else 1)
    if x.shape[1:3] != (expected, expected):  # the original's Linear sizes (and GAP's AvgPool2d(14)) assume this
      size = {7: '224x224 input with 5 pools', 14: '224x224 input with 4 pools'}.get(
          expected, '32x32 input with 4 pools'
      )
      raise ValueError(
          f'VGG head {self.head!r} needs a {expected}x{expected} feature map before the classifier '
          f'({size}), got {x.shape[1]}x{x.shape[2]}'
      )
    if self.head == 'imagenet_gap':
      x = layers.global_avg_pool(x)  # AvgPool2d(14, stride 2) on the 14x14 map
    else:
      x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's (C, H, W) flatten order
    features = x
    if self.head == 'l1':
      x = dense(512, 'fc1')(x)
      x = nn.relu(_bn1d_uniform(train, 'fc_bn1', self.dtype)(x))
      x = dense(self.num_classes, 'fc2')(x)
    elif self.head in ('slimming', 'imagenet_gap'):
      x = dense(self.num_classes, 'fc')(x)
    elif self.head == 'imagenet':
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(dense(4096, 'fc1')(x)))
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(dense(4096, 'fc2')(x)))
      x = dense(self.num_classes, 'fc3')(x)
    else:
      x = nn.relu(bn('fc_bn1')(dense(int(self.cfg[-2]), 'fc1')(x)))
      x = nn.relu(bn('fc_bn2')(dense(int(self.cfg[-1]), 'fc2')(x)))
      x = dense(self.num_classes, 'fc3')(x)
    return x, {'pooled': features}


def _bn1d_uniform(train: bool, name: str, dtype) -> layers.BatchNorm:
  """The L1 head's BatchNorm1d: never re-initialized in the original, so gamma ~ U(0, 1) (PyTorch 0.3.1)."""
  return layers.BatchNorm(
      use_running_average=not train, scale_init=nn.initializers.uniform(1.0), name=name, dtype=dtype
  )
