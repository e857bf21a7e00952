"""ConvNeXt in Flax Linen (NHWC). See ``convnext_jax.models`` for the param-tree / checkpoint mapping."""
from .models import (Block, ConvNeXt, ConvNeXtIsotropic, create_model, list_models, model_config, param_count,
                     register_model)
from .layers import (DWCONV_IMPLS, PATCH_CONV_IMPLS, DepthwiseConv, DropPath, PatchConv, depthwise_conv2d,
                     fusion_barrier, gelu_exact, resolve_dwconv_impl, resolve_fusion_barriers, trunc_normal_init)

__all__ = ["Block", "ConvNeXt", "ConvNeXtIsotropic", "create_model", "list_models", "model_config", "param_count",
           "register_model", "DWCONV_IMPLS", "PATCH_CONV_IMPLS", "DepthwiseConv", "DropPath", "PatchConv",
           "depthwise_conv2d", "fusion_barrier", "gelu_exact", "resolve_dwconv_impl", "resolve_fusion_barriers",
           "trunc_normal_init"]
