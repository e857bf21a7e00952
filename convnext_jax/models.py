"""Flax Linen ConvNeXt (Liu et al., CVPR 2022), NHWC, exact to the official definition.

Model
-----
stem : Conv k=p,s=p (VALID) -> LN(1e-6)                            (p = ``patch_size``, 4 officially)
stage i : [downsample_i = LN(1e-6) -> Conv 2x2/2 (VALID)]  (i >= 1)
          depths[i] x Block(dims[i])
Block : x + DropPath(gamma * pwconv2(GELU_erf(pwconv1(LN(dwconv7x7(x))))))
head : mean over (H, W) -> LN(1e-6) -> Dense(num_classes)          (no Dense if num_classes == 0)

``__call__(x, train=False) -> (logits, features)``; ``features = {'stage_0': ..., 'stage_3': ...}``
(the NHWC output of each stage, in ``dtype``).  Logits are float32.  Drop path uses the
``'dropout'`` rng stream: ``model.apply(v, x, train=True, rngs={'dropout': key})``.

Parameter tree <-> official (facebookresearch/ConvNeXt) <-> timm keys
---------------------------------------------------------------------
========================================  ===============================  ==================================
Flax path                                 official                         timm
========================================  ===============================  ==================================
stem_conv/{kernel,bias}                   downsample_layers.0.0.*          stem.0.*
stem_norm/{scale,bias}                    downsample_layers.0.1.*          stem.1.*
downsample_{i}/norm/{scale,bias}  i=1..3  downsample_layers.{i}.0.*        stages.{i}.downsample.0.*
downsample_{i}/conv/{kernel,bias}         downsample_layers.{i}.1.*        stages.{i}.downsample.1.*
stages_{i}_block_{j}/dwconv/{kernel,bias} stages.{i}.{j}.dwconv.*          stages.{i}.blocks.{j}.conv_dw.*
stages_{i}_block_{j}/norm/{scale,bias}    stages.{i}.{j}.norm.*            stages.{i}.blocks.{j}.norm.*
stages_{i}_block_{j}/pwconv1/{kernel,bias} stages.{i}.{j}.pwconv1.*        stages.{i}.blocks.{j}.mlp.fc1.*
stages_{i}_block_{j}/pwconv2/{kernel,bias} stages.{i}.{j}.pwconv2.*        stages.{i}.blocks.{j}.mlp.fc2.*
stages_{i}_block_{j}/gamma                stages.{i}.{j}.gamma             stages.{i}.blocks.{j}.gamma
head_norm/{scale,bias}                    norm.*                           head.norm.*
head/{kernel,bias}                        head.*                           head.fc.*
========================================  ===============================  ==================================

Isotropic ConvNeXt: ``stem_conv`` <- ``stem``, ``blocks_{j}/...`` <- ``blocks.{j}.*`` (same block
layout), ``head_norm`` <- ``norm``, ``head`` <- ``head``.

Tensor transforms (PyTorch -> Flax): conv weight (O, I/g, kh, kw) -> kernel (kh, kw, I/g, O), i.e.
transpose (2, 3, 1, 0) -- this covers the depthwise kernel (C,1,7,7) -> (7,7,1,C); Linear weight
(out, in) -> kernel (in, out) (timm ``conv_mlp=True`` models store fc1/fc2 as (out, in, 1, 1):
squeeze first); LN weight -> ``scale``; gamma unchanged; inputs NCHW -> NHWC.

How the layers compute is not part of the model: the ``compute`` field (``core_jax.compute.Compute``: C++
kernels or shifted depthwise conv, patch matmuls, fusion barriers) is handed to every layer. ``create_model``
resolves it for the running process (``convnext_jax.ops.for_backend``); the field's default ``Compute()`` is the
plain XLA formulation. It changes speed, never parameters or results, so checkpoints are interchangeable.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from convnext_jax import ops
from convnext_jax.layers import DepthwiseConv, DropPath, LayerNorm, PatchConv, gelu_exact, trunc_normal_init
from core_jax.compute import Compute, resolve
from core_jax.errors import UserError
from core_jax.registry import Registry

Array = jax.Array
Dtype = Any

__all__ = [
    'Block',
    'ConvNeXt',
    'ConvNeXtIsotropic',
    'create_model',
    'list_models',
    'register_model',
    'model_config',
    'param_count',
]


def _dense(features: int, name: str, dtype: Dtype, compute: Compute, scale: float = 1.0) -> nn.Dense:
  return nn.Dense(
      features,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=trunc_normal_init(0.02, scale=scale),
      bias_init=nn.initializers.zeros,
      dot_general=compute.dot_general,  # the policy's weight gradient (dense_grad); the same forward
      name=name,
  )


class Block(nn.Module):
  """ConvNeXt block: x + DropPath(gamma * pwconv2(GELU(pwconv1(LN(dwconv(x)))))).

  Params: dwconv/{kernel (k,k,1,C), bias}, norm/{scale,bias}, pwconv1, pwconv2, [gamma].
  """

  drop_path: float = 0.0
  layer_scale_init_value: float = 1e-6
  kernel_size: int = 7
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c, compute = x.shape[-1], self.compute
    norm = LayerNorm(dtype=self.dtype, compute=compute, name='norm')
    y = DepthwiseConv(self.kernel_size, self.kernel_size // 2, compute=compute, dtype=self.dtype, name='dwconv')(x)
    y = norm(y)
    # Each layer's output may be materialized (speed only, see ops.layer_end); the barrier's predicate reads a
    # replicated parameter, never the batch-sharded activation.
    anchor = norm.variables['params']['scale']
    y = ops.layer_end(compute, y, anchor, after_layer_norm=True)
    y = compute.layer_end(_dense(4 * c, 'pwconv1', self.dtype, compute)(y), anchor)
    y = compute.layer_end(gelu_exact(y), anchor)
    y = compute.layer_end(_dense(c, 'pwconv2', self.dtype, compute)(y), anchor)
    if self.layer_scale_init_value > 0:
      gamma = self.param('gamma', nn.initializers.constant(self.layer_scale_init_value), (c,), jnp.float32)
      y = y * gamma.astype(y.dtype)
    y = DropPath(self.drop_path, name='drop_path')(y, train=train)
    return compute.layer_end(x.astype(y.dtype) + y, anchor)


def _head(x: Array, num_classes: int, head_init_scale: float, dtype: Dtype, compute: Compute) -> Array:
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(dtype)  # global average pool, then LN
  x = LayerNorm(dtype=dtype, compute=compute, name='head_norm')(x)
  if num_classes > 0:
    x = _dense(num_classes, 'head', dtype, compute, scale=head_init_scale)(x)
  return x.astype(jnp.float32)


class ConvNeXt(nn.Module):
  """Hierarchical ConvNeXt. See the module docstring for the param tree."""

  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  in_chans: int = 3
  num_classes: int = 1000
  drop_path_rate: float = 0.0
  layer_scale_init_value: float = 1e-6
  head_init_scale: float = 1.0
  patch_size: int = 4
  kernel_size: int = 7
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32

  def block_drop_rates(self) -> np.ndarray:
    return np.linspace(0.0, self.drop_path_rate, int(sum(self.depths)))

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    if len(self.depths) != len(self.dims):
      raise ValueError(f'depths {self.depths} and dims {self.dims} must have the same length')
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f'expected NHWC input with {self.in_chans} channels, got shape {x.shape}')
    stages = hierarchical_stages(self, x, train)
    features = {f'stage_{i}': y for i, y in enumerate(stages)}
    logits = _head(stages[-1], self.num_classes, self.head_init_scale, self.dtype, self.compute)
    return logits, features


def hierarchical_stages(net: nn.Module, x: Array, train: bool) -> list[Array]:
  """The output of each stage of a hierarchical ConvNeXt: stem, downsampling layers and blocks, built in the
  scope of `net` (called from its compact ``__call__``; the param names of the module docstring).

  `net` has ConvNeXt's architecture fields (depths, dims, drop_path_rate, layer_scale_init_value, patch_size,
  kernel_size, compute, dtype): the classifier and the segmentation backbone (``convnext_jax.upernet``) share it.
  """
  compute = net.compute
  x = x.astype(net.dtype)
  rates = np.linspace(0.0, net.drop_path_rate, int(sum(net.depths)))
  outputs = []
  k = 0
  for i, (depth, dim) in enumerate(zip(net.depths, net.dims)):
    if i == 0:
      x = PatchConv(dim, net.patch_size, compute=compute, dtype=net.dtype, name='stem_conv')(x)
      x = LayerNorm(dtype=net.dtype, compute=compute, name='stem_norm')(x)
    else:
      x = Downsample(dim, dtype=net.dtype, compute=compute, name=f'downsample_{i}')(x)
    for j in range(depth):
      x = Block(
          drop_path=float(rates[k]),
          layer_scale_init_value=net.layer_scale_init_value,
          kernel_size=net.kernel_size,
          compute=compute,
          dtype=net.dtype,
          name=f'stages_{i}_block_{j}',
      )(x, train=train)
      k += 1
    outputs.append(x)
  return outputs


class Downsample(nn.Module):
  """LN(eps 1e-6) -> Conv 2x2 stride 2 (VALID). Params: norm/{scale,bias}, conv/{kernel,bias}."""

  dim: int
  dtype: Dtype = jnp.float32
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = LayerNorm(dtype=self.dtype, compute=self.compute, name='norm')(x)
    return PatchConv(self.dim, 2, compute=self.compute, dtype=self.dtype, name='conv')(x)


class ConvNeXtIsotropic(nn.Module):
  """Isotropic ConvNeXt (paper Sec. 3.3): patchify stem (no LN) -> depth x Block(dim) -> pool -> LN -> head.

  Returns ``(logits, {'blocks': final block output (N, H/p, W/p, dim)})``.
  """

  depth: int = 18
  dim: int = 384
  in_chans: int = 3
  num_classes: int = 1000
  drop_path_rate: float = 0.0
  layer_scale_init_value: float = 0.0
  head_init_scale: float = 1.0
  patch_size: int = 16
  kernel_size: int = 7
  compute: Compute = Compute()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f'expected NHWC input with {self.in_chans} channels, got shape {x.shape}')
    x = PatchConv(self.dim, self.patch_size, compute=self.compute, dtype=self.dtype, name='stem_conv')(
        x.astype(self.dtype)
    )
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    for j in range(self.depth):
      x = Block(
          drop_path=float(rates[j]),
          layer_scale_init_value=self.layer_scale_init_value,
          kernel_size=self.kernel_size,
          compute=self.compute,
          dtype=self.dtype,
          name=f'blocks_{j}',
      )(x, train=train)
    logits = _head(x, self.num_classes, self.head_init_scale, self.dtype, self.compute)
    return logits, {'blocks': x}


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
MODELS = Registry('ConvNeXt model')


def register_model(name: str, cls: type, **defaults) -> None:
  MODELS.register(name, cls, **defaults)


_H = ConvNeXt
register_model('convnext_atto', _H, depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
register_model('convnext_femto', _H, depths=(2, 2, 6, 2), dims=(48, 96, 192, 384))
register_model('convnext_pico', _H, depths=(2, 2, 6, 2), dims=(64, 128, 256, 512))
register_model('convnext_nano', _H, depths=(2, 2, 8, 2), dims=(80, 160, 320, 640))
register_model('convnext_tiny', _H, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
register_model('convnext_small', _H, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
register_model('convnext_base', _H, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
register_model('convnext_large', _H, depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
register_model('convnext_xlarge', _H, depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048))
# Small ConvNeXt for 32x32 digit images (10 classes): patch-2 stem -> 16/8/4/2 feature maps.
# Same block design / 7x7 depthwise kernel / 4 stages; sized for the CPU demo (`make demo`; its train step
# time is in benchmarks/ANALYSIS.md, design measurements).
register_model('convnext_digits', _H, depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), patch_size=2, num_classes=10)
register_model('convnext_iso_small', ConvNeXtIsotropic, depth=18, dim=384, layer_scale_init_value=0.0)
register_model('convnext_iso_base', ConvNeXtIsotropic, depth=18, dim=768, layer_scale_init_value=0.0)
register_model('convnext_iso_large', ConvNeXtIsotropic, depth=36, dim=1024, layer_scale_init_value=1e-6)
del _H


# The ImageNet models (the paper's and timm's names), in registration order: the zoo's rows, the converter's timm
# names and the parity tests' models come from here.
IMAGENET_MODELS: tuple[str, ...] = tuple(
    n for n, cls, d in MODELS.entries() if cls in (ConvNeXt, ConvNeXtIsotropic) and 'num_classes' not in d
)


def list_models(pattern: str | None = None) -> list:
  """Sorted registered names, optionally filtered by an fnmatch pattern (e.g. 'convnext_iso_*')."""
  return MODELS.list_models(pattern)


def model_config(name: str, **overrides) -> dict[str, Any]:
  """The constructor kwargs ``create_model(name, **overrides)`` would use (UserError for an unknown name)."""
  return MODELS.config(name, **overrides)


def create_model(name: str, **overrides) -> nn.Module:
  """timm-style factory: ``create_model('convnext_tiny', num_classes=10, drop_path_rate=0.1, dtype=jnp.bfloat16)``.

  Overrides are any ConvNeXt / ConvNeXtIsotropic field (depths, dims, in_chans, num_classes,
  drop_path_rate, layer_scale_init_value, head_init_scale, patch_size, kernel_size, dtype) and ``compute``:
  a ``Compute``, or a mapping of its fields (``config.compute``) resolved for the running process by
  ``convnext_jax.ops.for_backend`` (None / missing: every field the backend's choice).
  """
  cls, _ = MODELS.entry(name)
  cfg = model_config(name, **overrides)
  for key in ('depths', 'dims'):
    if key in cfg:
      cfg[key] = tuple(int(v) for v in cfg[key])
  compute = cfg.pop('compute', None)
  if 'compute' in {f.name for f in dataclasses.fields(cls)}:
    cfg['compute'] = compute if isinstance(compute, Compute) else ops.for_backend(compute)
  elif not isinstance(compute, Compute):  # e.g. the roadmap models: plain layers, no speed paths to choose
    resolve(compute, {}, name)  # any field set is a one-line error
  elif compute != Compute():
    raise UserError(f'{name} has no compute policy; it was given {compute}')
  return cls(**cfg)


def param_count(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> int:
  """Number of parameters, computed abstractly with ``jax.eval_shape`` (nothing is materialised)."""
  x = jax.ShapeDtypeStruct((1, *input_size, model.in_chans), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes['params'])))
