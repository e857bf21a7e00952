"""ConvNeXt in Flax Linen (NHWC). See ``convnext_jax.models`` for the param-tree / checkpoint mapping."""

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
from convnext_jax.ops import (
    DWCONV_IMPLS,
    PATCH_CONV_IMPLS,
    Ops,
    depthwise_conv2d,
    fusion_barrier,
    resolve_dwconv_impl,
    resolve_fusion_barriers,
)

__all__ = [
    'Block',
    'ConvNeXt',
    'ConvNeXtIsotropic',
    'create_model',
    'list_models',
    'model_config',
    'param_count',
    'register_model',
    'DWCONV_IMPLS',
    'PATCH_CONV_IMPLS',
    'DepthwiseConv',
    'DropPath',
    'LayerNorm',
    'Ops',
    'PatchConv',
    'depthwise_conv2d',
    'fusion_barrier',
    'gelu_exact',
    'resolve_dwconv_impl',
    'resolve_fusion_barriers',
    'trunc_normal_init',
]
