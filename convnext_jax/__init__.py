"""ConvNeXt in Flax Linen (NHWC). See ``convnext_jax.models`` for the param-tree / checkpoint mapping."""

from convnext_jax import upernet  # noqa: F401  (registers upernet_convnext_* in models.MODELS)
from convnext_jax.layers import DepthwiseConv, DropPath, LayerNorm, PatchConv, gelu_exact, trunc_normal_init
from convnext_jax.models import (
    Block,
    ConvNeXt,
    ConvNeXtIsotropic,
    create_model,
    list_models,
    model_config,
    param_count,
    register_model,
)
from convnext_jax.ops import DWCONV_IMPLS, depthwise_conv2d, for_backend, resolve_dwconv_impl
from core_jax.compute import Compute, fusion_barrier

__all__ = [
    'Block',
    'ConvNeXt',
    'ConvNeXtIsotropic',
    'create_model',
    'list_models',
    'model_config',
    'param_count',
    'register_model',
    'Compute',
    'DWCONV_IMPLS',
    'DepthwiseConv',
    'DropPath',
    'LayerNorm',
    'PatchConv',
    'depthwise_conv2d',
    'for_backend',
    'fusion_barrier',
    'gelu_exact',
    'resolve_dwconv_impl',
    'trunc_normal_init',
]
