"""ConvNeXt in Flax Linen (NHWC). See ``convnext_jax.models`` for the param-tree / checkpoint mapping."""
from .models import (Block, ConvNeXt, ConvNeXtIsotropic, create_model, list_models, model_config, param_count,
                     register_model)
from .layers import DWCONV_IMPLS, DepthwiseConv, DropPath, depthwise_conv2d, resolve_dwconv_impl, trunc_normal_init

__all__ = ["Block", "ConvNeXt", "ConvNeXtIsotropic", "create_model", "list_models", "model_config", "param_count",
           "register_model", "DWCONV_IMPLS", "DepthwiseConv", "DropPath", "depthwise_conv2d", "resolve_dwconv_impl",
           "trunc_normal_init"]
