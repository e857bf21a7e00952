"""ConvNeXt image classification as a `core_jax` Task: the model comes from the registry by name.

Config fields read here: model.name, model.drop_path_rate, model.overrides (any create_model field),
model.head_init_scale (optional; fine-tuning uses 0.001), optimizer.layer_decay (optional, < 1 turns
layer-wise lr decay on), init_from_ema (optional: `init_from` loads the checkpoint's EMA weights).

Layer-wise lr decay (`convnext_layer_id`): official ConvNeXt (facebookresearch `optim_factory.
get_num_layer_for_convnext`) uses 14 groups, scale = decay ** (13 - id):
  stem (stem_conv, stem_norm)                     -> 0
  stages_0_*                                      -> 1
  downsample_1, stages_1_*                        -> 2
  downsample_2                                    -> 3
  stages_2_block_j                                -> 3 + j // 3     (27 blocks -> 3..11)
  downsample_3, stages_3_*                        -> 12
  head_norm, head                                 -> 13  (scale 1)
The official code asserts 27 blocks in stage 2 (S/B/L/XL). Generalization used here, for any stage-2
depth d: stages_2_block_j -> 3 + (j * 9) // d. For d = 27 this is exactly j // 3 (the official table);
for ConvNeXt-T (d = 9) it is one group per block (3..11). The number of groups stays 14 and every
non-stage-2 parameter keeps its official id, so the stem always gets decay ** 13 and stage 3 decay ** 1:
a decay value tuned for S/B/L/XL (0.8 / 0.7) spans the same lr range on T, and stage-2 blocks at the same
relative depth get the same scale (block j of d sits at fraction j / d, like block 3j of 27).
Other depths (e.g. d = 6 for atto: ids 3, 4, 6, 7, 9, 10) skip some ids but remain monotone in depth.
Isotropic ConvNeXt (BEiT style): stem_conv -> 0, blocks_j -> j + 1, head_norm/head -> depth + 1.
"""

import re

from convnext_jax import models
from core_jax import compute, optim
from core_jax.classification import ClassificationTask
from core_jax.errors import UserError

NUM_LAYER_GROUPS = 14  # official ConvNeXt: ids 0..13


def convnext_layer_id(path, depths) -> int:
  """Official-compatible layer group (0..13) of a hierarchical ConvNeXt parameter; see the module doc."""
  name = path[0] if path else ''
  if name.startswith('stem_'):
    return 0
  m = re.fullmatch(r'downsample_(\d+)', name)
  if m:
    return {1: 2, 2: 3, 3: 12}[int(m.group(1))]
  m = re.fullmatch(r'stages_(\d+)_block_(\d+)', name)
  if m:
    stage, j = int(m.group(1)), int(m.group(2))
    if stage == 2:
      return 3 + (j * 9) // int(depths[2])
    return {0: 1, 1: 2, 3: 12}[stage]
  return NUM_LAYER_GROUPS - 1  # head_norm, head


def isotropic_layer_id(path, depth: int) -> int:
  name = path[0] if path else ''
  if name.startswith('stem_'):
    return 0
  m = re.fullmatch(r'blocks_(\d+)', name)
  if m:
    return int(m.group(1)) + 1
  return depth + 1


def layer_decay_scale_fn(model_name: str, decay: float, overrides=None):
  """`lr_scale_fn(path_names, leaf)` for `optim.build_optimizer`: decay ** (13 - layer id)."""
  cfg = models.model_config(model_name, **dict(overrides or {}))
  if 'depth' in cfg and 'depths' not in cfg:  # isotropic
    depth = int(cfg['depth'])
    return optim.layerwise_lr_decay_scale(depth, decay, lambda p: isotropic_layer_id(p, depth))
  depths = tuple(int(d) for d in cfg.get('depths', models.ConvNeXt.depths))
  if len(depths) != 4:
    raise UserError(f'layer_decay supports 4-stage ConvNeXt models; {model_name} has depths {depths}')
  return optim.layerwise_lr_decay_scale(NUM_LAYER_GROUPS - 2, decay, lambda p: convnext_layer_id(p, depths))


class ConvNeXtTask(ClassificationTask):

  def _overrides(self) -> dict:
    mcfg = self.config.model
    overrides = dict(mcfg.get('overrides', None) or {})
    if mcfg.get('head_init_scale', None) is not None:
      overrides['head_init_scale'] = float(mcfg.head_init_scale)
    return overrides

  def build_model(self):
    mcfg = self.config.model
    return models.create_model(
        mcfg.name,
        num_classes=self.dataset_info.num_classes,
        drop_path_rate=mcfg.drop_path_rate,
        dtype=compute.compute_dtype(self.config.compute_dtype),
        compute=self.config.get('compute'),  # resolved by create_model (ops.for_backend)
        **self._overrides(),
    )

  def lr_scale_fn(self):
    decay = self.config.optimizer.get('layer_decay', None)
    if decay is None or float(decay) >= 1.0:
      return None
    return layer_decay_scale_fn(self.config.model.name, float(decay), self._overrides())

  def load_pretrained(self, variables, path, reinit_head):
    """ConvNeXt has no batch_stats: the file's weights go into `variables['params']`."""
    from convnext_jax import convert  # pylint: disable=import-outside-toplevel

    params = convert.load_pretrained(
        variables['params'],
        path,
        arch=self.config.model.name,
        reinit_head=reinit_head,
        ema=bool(self.config.get('init_from_ema', False)),
        as_numpy=True,
    )
    return {**variables, 'params': params}
