"""ConvNeXt + UperNet for semantic segmentation (the paper's ADE20K models), Flax Linen, NHWC.

As released in facebookresearch/ConvNeXt ``semantic_segmentation/`` (backbone) and mmsegmentation 0.x
(``UPerHead``, ``PSPModule``, ``FCNHead``, ``ConvModule``), with its configs' values:

Backbone (``SegmentationConvNeXt``): the hierarchical ConvNeXt's stem, downsampling layers and blocks
(``convnext_jax.models.hierarchical_stages``: the same modules and names as the classifier's), without the
classifier's ``head_norm`` / ``head``, plus a LayerNorm (eps 1e-6) on each stage's output, ``norm0..norm3``
(the next stage reads the un-normalized output). Layer scale init 1.0; drop path 0.4 (T), 0.3 (S), 0.4 (B/L/XL).
Features at strides 4, 8, 16, 32.

UperNet (``UperNet``), every ``ConvModule`` = conv (no bias, 'same' zero padding) -> BatchNorm (eps 1e-5,
PyTorch momentum 0.1) -> ReLU; ``channels`` = 512:
  PPM on C4: for s in (1, 2, 3, 6): adaptive average pool to s x s (PyTorch's bins, ``adaptive_avg_pool``) ->
      ConvModule 1x1 -> bilinear resize back to C4's size; concat [C4, the 4 maps] -> ``bottleneck`` 3x3.
  laterals: ConvModule 1x1 on C1..C3, the PPM output as the 4th; top-down: lat[i-1] += resize(lat[i]).
  ``fpn_convs``: ConvModule 3x3 on lat[0..2]; all four resized to C1's size, concat -> ``fpn_bottleneck`` 3x3
      -> Dropout2d(0.1) -> ``conv_seg`` 1x1 (bias) -> logits at 1/4.
  auxiliary FCN head on C3: ConvModule 3x3 -> 256 -> Dropout2d(0.1) -> ``conv_seg`` 1x1 (loss weight 0.4).
Every resize is bilinear, align_corners=False (``resize_bilinear``). BatchNorm is synchronized over the mesh as
every BatchNorm of this codebase: the step is one ``jax.jit`` over the global batch, so the statistics are over
the whole batch on every device (mmseg's SyncBN).

``__call__(x, train=False) -> (logits, aux)``: logits (N, H/4, W/4, num_classes) float32, the decode head's output
(mmseg resizes them to the label size for the loss and to the image for inference: ``resize_bilinear``);
``aux['aux_logits']`` (N, H/16, W/16, num_classes) from the auxiliary head, computed when training or
initializing (mmseg runs it in training only) or asked (``with_aux=True``), and ``aux['stage_{i}']`` the
normalized backbone features.
Dropout and drop path use the 'dropout' rng.

Param tree (batch_stats mirror the BatchNorms' ``bn``), mmseg names:
  backbone/{stem_conv, stem_norm, downsample_i, stages_i_block_j}/...   (as ``convnext_jax.models``)
  backbone/norm{i}/{scale,bias}
  decode_head/psp_modules_{i}/{conv/kernel, bn/{scale,bias}}   decode_head/bottleneck/...
  decode_head/lateral_convs_{i}/...   decode_head/fpn_convs_{i}/...   decode_head/fpn_bottleneck/...
  decode_head/conv_seg/{kernel,bias}
  auxiliary_head/convs_0/...   auxiliary_head/conv_seg/{kernel,bias}
Init as mmseg: convs Kaiming normal (fan_out, ReLU gain), ``conv_seg`` N(0, 0.01), biases 0, BN 1/0; the
backbone as ConvNeXt's (trunc normal 0.02) with gamma = ``layer_scale_init_value``.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from convnext_jax import models
from convnext_jax.layers import LayerNorm
from core_jax import counting
from core_jax.compute import Compute
from core_jax.seg_ops import resize_bilinear

Array = jax.Array
Dtype = Any

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
POOL_SCALES = (1, 2, 3, 6)


# --------------------------------------------------------------------------------------------------------------
# Resizing and pooling as PyTorch computes them
# --------------------------------------------------------------------------------------------------------------
def adaptive_bins(size: int, bins: int) -> list[tuple[int, int]]:
  """PyTorch's adaptive pooling windows [floor(i * size / bins), ceil((i + 1) * size / bins)): they overlap when
  ``bins`` does not divide ``size`` (16 into 3: [0, 6), [5, 11), [10, 16)), and repeat pixels when bins > size."""
  return [((i * size) // bins, -(-((i + 1) * size) // bins)) for i in range(bins)]


def _bin_matrix(size: int, bins: int) -> np.ndarray:
  m = np.zeros((bins, size), np.float32)
  for i, (start, end) in enumerate(adaptive_bins(size, bins)):
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: Array, bins: int) -> Array:
  """``nn.AdaptiveAvgPool2d(bins)`` of NHWC ``x`` (statics bins of ``adaptive_bins``, which ``nn.avg_pool``'s
  uniform windows cannot give), as two small matmuls in float32."""
  ph, pw = _bin_matrix(x.shape[1], bins), _bin_matrix(x.shape[2], bins)
  y = jnp.einsum('ih,nhwc,jw->nijc', ph, x.astype(jnp.float32), pw, precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------------------
class SegmentationConvNeXt(nn.Module):
  """ConvNeXt for dense prediction: the stages' outputs, each through its own LayerNorm (``norm{i}``)."""

  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  in_chans: int = 3
  drop_path_rate: float = 0.4
  layer_scale_init_value: float = 1.0
  patch_size: int = 4
  kernel_size: int = 7
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> list[Array]:
    stages = models.hierarchical_stages(self, x, train)
    return [LayerNorm(dtype=self.dtype, compute=self.compute, name=f'norm{i}')(y) for i, y in enumerate(stages)]


# --------------------------------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------------------------------
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # mmcv kaiming_init's defaults


class ConvModule(nn.Module):
  """mmcv ``ConvModule``: k x k conv (no bias, padding k // 2) -> BatchNorm -> ReLU.
  Params ``conv/kernel``, ``bn/{scale,bias}``; batch_stats ``bn/{mean,var}``."""

  features: int
  kernel_size: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    k, p = self.kernel_size, self.kernel_size // 2
    x = nn.Conv(
        self.features,
        (k, k),
        padding=((p, p), (p, p)),
        use_bias=False,
        dtype=self.dtype,
        kernel_init=_KAIMING_FAN_OUT,
        name='conv',
    )(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=self.dtype, name='bn')(
        x
    )
    return nn.relu(x)


def _classifier(x: Array, num_classes: int, dropout: float, train: bool, dtype: Dtype) -> Array:
  """Dropout2d (whole channels of an example) -> ``conv_seg`` 1x1 with bias -> float32 logits."""
  x = nn.Dropout(dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
  conv_seg = nn.Conv(
      num_classes, (1, 1), dtype=dtype, kernel_init=nn.initializers.normal(0.01), name='conv_seg'
  )  # mmseg's normal_init(std=0.01), bias 0
  return conv_seg(x).astype(jnp.float32)


class UPerHead(nn.Module):
  """mmseg ``UPerHead`` (PPM + FPN + fused bottleneck) on the four backbone features; logits at the first's size."""

  num_classes: int
  channels: int = 512
  pool_scales: Sequence[int] = POOL_SCALES
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[Array], train: bool = False) -> Array:
    c4 = features[-1]
    h4, w4 = c4.shape[1:3]
    pooled = [
        resize_bilinear(
            ConvModule(self.channels, 1, self.dtype, name=f'psp_modules_{i}')(adaptive_avg_pool(c4, s), train),
            h4,
            w4,
        )
        for i, s in enumerate(self.pool_scales)
    ]
    psp = ConvModule(self.channels, 3, self.dtype, name='bottleneck')(jnp.concatenate([c4, *pooled], -1), train)
    laterals = [
        ConvModule(self.channels, 1, self.dtype, name=f'lateral_convs_{i}')(f, train)
        for i, f in enumerate(features[:-1])
    ]
    laterals.append(psp)
    for i in range(len(laterals) - 1, 0, -1):  # top-down
      h, w = laterals[i - 1].shape[1:3]
      laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], h, w)
    outs = [
        ConvModule(self.channels, 3, self.dtype, name=f'fpn_convs_{i}')(lat, train)
        for i, lat in enumerate(laterals[:-1])
    ]
    outs.append(laterals[-1])
    h, w = outs[0].shape[1:3]
    fused = jnp.concatenate([resize_bilinear(o, h, w) for o in outs], -1)
    x = ConvModule(self.channels, 3, self.dtype, name='fpn_bottleneck')(fused, train)
    return _classifier(x, self.num_classes, self.dropout, train, self.dtype)


class FCNHead(nn.Module):
  """mmseg ``FCNHead`` as the auxiliary head (num_convs=1, concat_input=False): ConvModule 3x3 -> classifier."""

  num_classes: int
  channels: int = 256
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = ConvModule(self.channels, 3, self.dtype, name='convs_0')(x, train)
    return _classifier(x, self.num_classes, self.dropout, train, self.dtype)


# --------------------------------------------------------------------------------------------------------------
# The segmentor
# --------------------------------------------------------------------------------------------------------------
class UperNet(nn.Module):
  """ConvNeXt backbone + UperNet decode head (+ the auxiliary FCN head on stage 3). See the module docstring."""

  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  in_chans: int = 3
  num_classes: int = 150
  drop_path_rate: float = 0.4
  layer_scale_init_value: float = 1.0
  patch_size: int = 4
  kernel_size: int = 7
  channels: int = 512
  aux_channels: int = 256
  aux_head: bool = True  # False: the decode path only (e.g. to count what inference needs)
  dropout: float = 0.1
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, with_aux: bool | None = None) -> tuple[Array, dict[str, Array]]:
    """``with_aux``: run the auxiliary head (None: when training or initializing, as mmseg)."""
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f'expected NHWC input with {self.in_chans} channels, got shape {x.shape}')
    features = SegmentationConvNeXt(
        depths=self.depths,
        dims=self.dims,
        in_chans=self.in_chans,
        drop_path_rate=self.drop_path_rate,
        layer_scale_init_value=self.layer_scale_init_value,
        patch_size=self.patch_size,
        kernel_size=self.kernel_size,
        compute=self.compute,
        dtype=self.dtype,
        name='backbone',
    )(x, train)
    logits = UPerHead(self.num_classes, self.channels, dropout=self.dropout, dtype=self.dtype, name='decode_head')(
        features, train
    )
    aux = {f'stage_{i}': f for i, f in enumerate(features)}
    if with_aux is None:
      with_aux = train or self.is_initializing()
    if self.aux_head and with_aux:
      aux['aux_logits'] = FCNHead(
          self.num_classes, self.aux_channels, dropout=self.dropout, dtype=self.dtype, name='auxiliary_head'
      )(features[2], train)
    return logits, aux


# --------------------------------------------------------------------------------------------------------------
# Registry: the paper's five sizes (Table 4 / the official configs), in convnext_jax.models' registry
# --------------------------------------------------------------------------------------------------------------
SIZES = {
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.4),
    'small': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0.3),
    'base': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.4),
    'large': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), drop_path_rate=0.4),
    'xlarge': dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048), drop_path_rate=0.4),
}
for _size, _cfg in SIZES.items():
  models.register_model(f'upernet_convnext_{_size}', UperNet, **_cfg)
del _size, _cfg

UPERNET_MODELS: tuple[str, ...] = tuple(f'upernet_convnext_{s}' for s in SIZES)

# The paper's Table 4 (and the official README): params with the auxiliary head (mmcv counts every parameter of
# the segmentor), "FLOPs" (mmcv's get_flops on forward_dummy: backbone + decode head, no auxiliary head) at
# 2048x512 (1K models) / 2560x640 (22K models), in units of 1e9.
PAPER = {
    'upernet_convnext_tiny': dict(params_m=60, gflops=939, input=(2048, 512)),
    'upernet_convnext_small': dict(params_m=82, gflops=1027, input=(2048, 512)),
    'upernet_convnext_base': dict(params_m=122, gflops=1170, input=(2048, 512)),
    'upernet_convnext_large': dict(params_m=235, gflops=2458, input=(2560, 640)),
    'upernet_convnext_xlarge': dict(params_m=391, gflops=3335, input=(2560, 640)),
}


def count(name: str, height: int, width: int, **overrides) -> dict[str, int]:
  """{'params': with the auxiliary head, 'params_no_aux': without, 'macs': one (height, width) image through
  the backbone and the decode head}, all from shapes (``jax.eval_shape``; nothing is materialized).

  MACs are ``core_jax.counting``'s: convs and matmuls (the depthwise convs reported by ``DepthwiseConv``), no
  biases, norms, activations, pooling or resizes; the paper's G are mmcv's get_flops, the same MACs plus one
  per output element of a biased conv, a ReLU, a BatchNorm (x2) and per input element of a pool: ~0.1%."""
  model = models.create_model(name, compute=Compute(), **overrides)
  x = jax.ShapeDtypeStruct((1, height, width, model.in_chans), jnp.float32)
  shapes = jax.eval_shape(model.init, {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, x)
  params = counting.count_params(shapes['params'])
  aux = counting.count_params(shapes['params'].get('auxiliary_head', {}))
  macs = counting.count_macs(model, x, variables=shapes, train=False)
  return dict(params=params, params_no_aux=params - aux, macs=macs)


__all__ = [
    'ConvModule',
    'FCNHead',
    'PAPER',
    'SegmentationConvNeXt',
    'UPERNET_MODELS',
    'UPerHead',
    'UperNet',
    'adaptive_avg_pool',
    'adaptive_bins',
    'count',
    'resize_bilinear',
]
