"""The pruning line's classification task on the shared loop (`core_jax.train.run`).

Config fields read here (the rest is core_jax.config.base_config):
  model.name        a named model of pruning_jax.models ('vgg16', 'resnet56', ...) or a family ('vgg_l1', ...)
  model.cfg         the channel configuration (None: the named model's own); a pruned model is its family
                    built from a smaller cfg
  model.selections  channel_selection indices (PreResNet / DenseNet / ResNet-50; None: every channel)
  model.widths      the traced surgery's layer widths over the cfg (a `graph`-pruned model, rewidth.Rewidthed)
  model.block_scale True: Sparse Structure Selection's factor on every residual branch, trained by its proximal
                    step (sss.gamma, sss.momentum; pruning_jax.methods.sss) instead of the configured optimizer
  sparsity.s        > 0: Network Slimming's sparsity training, s * sign(gamma) added to the BN-scale gradients
                    before weight decay (the `pre` optimizer transform)
  mask.path         '' or a mask file written by the prune phase (pruning_jax.job): the mask
                    implementation, whose updates are multiplied by the mask so masked weights stay exactly 0
                    (the `post` transform; its state is part of the checkpointed optimizer state)
  init_from         a pruned-model export (.safetensors + .json sidecar, pruning_jax.io), a training step dir
                    or a workdir (its latest step; core_jax.weights.read_weights) or an official PyTorch checkpoint
                    (.pth / .pth.tar / .pt, pruning_jax.io.import_torch_checkpoint): every variable (params and
                    BatchNorm statistics) must match the configured model's shape, or the run stops with one line
                    naming the first mismatching key and both shapes.

results.json gets (extra_results): model {family, cfg, selections, num_classes}, params, nonzero_params, macs
(conv + Linear multiply-accumulates of one image of the dataset's size, core_jax.counting), input_shape; with a
mask also nonzero_macs (each conv counting its non-zero weights only, pruning_jax.methods.magnitude).
"""

import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import counting, weights
from core_jax.classification import ClassificationTask
from core_jax.compute import Compute, compute_dtype
from core_jax.errors import UserError
from core_jax.weights import flatten, format_shape, unflatten
from pruning_jax import models
from pruning_jax.rewidth import Rewidthed, widths_from_json

# The classifier of each family: `init_reinit_head` keeps its fresh initialization.
HEADS = {
    'vgg_l1': 'fc2',
    'vgg_slimming': 'fc',
    'vgg_imagenet': 'fc3',
    'vgg_bn_imagenet': 'fc3',
    'vgg_gap_imagenet': 'fc',
    'convnext': 'head',
    'convnext_tiny': 'head',
}
TORCH_SUFFIXES = ('.pth', '.pth.tar', '.pt', '.tar')
MASK_PREFIX = 'params/'


def build_from_config(model_cfg, num_classes: int | None, dtype=None, compute: Compute | Mapping | None = None):
  """The model config.model describes (a named model, or a family with its cfg / selections); `dtype` and
  `compute` as `models.build`'s."""
  name = model_cfg.get('name') or ''
  if not name:
    raise UserError('config.model.name is empty: name a model (e.g. vgg16, resnet56) or a family')
  cfg = model_cfg.get('cfg') or None
  model = models.create(
      name,
      cfg=None if cfg is None else list(cfg),
      num_classes=num_classes,
      selections=model_cfg.get('selections') or None,
      dtype=dtype,
      compute=compute,
      block_scale=bool(model_cfg.get('block_scale') or False),
  )
  widths = model_cfg.get('widths') or None
  return Rewidthed(model, widths_from_json(widths)) if widths else model


def read_weights(path: str) -> tuple[dict | None, dict]:
  """(model description or None, {'params', 'batch_stats'} host numpy) of a weights file, step dir or workdir."""
  if not path:
    raise UserError('no weights path given')
  if path.endswith('.safetensors'):
    from pruning_jax import io  # pylint: disable=import-outside-toplevel  (safetensors)

    model, variables = io.load_pruned(path)
    return models.describe(model), variables
  if os.path.isdir(path):
    return None, unflatten(weights.read_weights(path).tensors)
  if path.endswith(TORCH_SUFFIXES):
    from pruning_jax import io  # pylint: disable=import-outside-toplevel  (torch)

    model, variables = io.import_torch_checkpoint(path)
    return models.describe(model), variables
  if not os.path.exists(path):
    raise UserError(f'weights not found: {path}')
  raise UserError(f'{path}: not a pruned-model export (.safetensors), a training step dir or a PyTorch checkpoint')


def _architecture(d: dict) -> tuple:
  cfg = list(models.normalize_cfg(d['cfg']))
  return d['family'], cfg, d.get('selections'), d.get('widths') or None, bool(d.get('block_scale'))


def _same_architecture(want: dict, got: dict) -> bool:
  return _architecture(want) == _architecture(got)


def merge_weights(variables: dict, loaded: dict, path: str, keep_fresh: tuple[str, ...] = ()) -> dict:
  """`variables` with every leaf replaced by the same-shaped leaf of `loaded`, except those of the top-level
  modules named in keep_fresh (core_jax.weights.merge_params: the first mismatch is one line naming the key and
  both shapes)."""
  keep = [rf'(params|batch_stats)/{re.escape(m)}/.*' for m in keep_fresh]
  return weights.merge_params(
      loaded, variables, keep_fresh=keep, source=path, hint=': the cfg does not match this checkpoint'
  )


def save_mask(path: str, mask: dict) -> None:
  """A params-shaped {0, 1} tree (None leaves: not masked) as .safetensors, written atomically."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  tensors = {MASK_PREFIX + k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten(mask).items() if v is not None}
  weights.write_atomic(path, lambda tmp: save_file(tensors, tmp))


def load_mask(path: str, params) -> dict:
  """The mask of `save_mask` as a tree shaped like `params` (None where the file has no leaf)."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  try:
    tensors = load_file(path)
  except Exception as e:  # missing, truncated or not safetensors
    raise UserError(f'cannot read the mask {path}: {str(e).splitlines()[0][:200]}') from None
  flat = {}
  for key, leaf in flatten(dict(params)).items():
    m = tensors.pop(MASK_PREFIX + key, None)
    if m is not None and tuple(m.shape) != tuple(np.shape(leaf)):
      raise UserError(f'mask {path}: {key} has shape {format_shape(m.shape)}, the model {format_shape(np.shape(leaf))}')
    flat[key] = m
  if tensors:
    raise UserError(f'mask {path} has {sorted(tensors)[0]}, which the model lacks')
  return unflatten(flat)


def count_nonzero(tree) -> int:
  from pruning_jax import zoo  # pylint: disable=import-outside-toplevel  (core_jax.counting's nonzero count)

  return zoo.count_nonzero_params(jax.device_get(tree))


class PruningTask(ClassificationTask):
  """Classification with a pruning_jax model; the hooks above (sparsity, masks, weights in, counts out)."""

  def __init__(self, config, dataset_info):
    super().__init__(config, dataset_info)
    self._model = None
    self._input_shape = (1, 32, 32, 3)

  def build_model(self):
    if self._model is None:
      num_classes = self.config.model.get('num_classes') or self.dataset_info.num_classes
      self._model = build_from_config(
          self.config.model,
          num_classes,
          dtype=compute_dtype(self.config.compute_dtype),
          compute=self.config.get('compute'),  # resolved for the model's family (models.policy_for)
      )
    return self._model

  def init_inputs(self, example_batch):
    self._input_shape = (1,) + tuple(np.shape(example_batch[self.input_key])[1:])
    return super().init_inputs(example_batch)

  def optimizer_transforms(self):
    pre, post = [], []
    s = float(self.config.get('sparsity', {}).get('s', 0.0) or 0.0)
    if s < 0:
      raise UserError(f'sparsity.s must be >= 0, got {s}')
    if s > 0:
      from pruning_jax.methods import slimming  # pylint: disable=import-outside-toplevel

      pre.append(slimming.sparsity_transform(s, self.build_model()))
    mask_path = self.config.get('mask', {}).get('path', '') or ''
    if mask_path:
      from pruning_jax import masking  # pylint: disable=import-outside-toplevel

      post.append(masking.keep_masked(lambda params: load_mask(mask_path, params)))
    return pre, post

  def own_optimizer(self, schedule):
    """Sparse Structure Selection's block factors (model.block_scale) on its proximal gradient step, at the run's
    lr with sss.gamma and sss.momentum; the other parameters keep the configured optimizer."""
    if not self.config.model.get('block_scale'):
      return None
    from pruning_jax.methods import sss  # pylint: disable=import-outside-toplevel

    group = self.config.get('sss') or {}
    tx = sss.proximal_gradient(schedule, float(group.get('gamma', 0.0)), float(group.get('momentum', 0.9)))
    return sss.is_factor, tx

  def load_pretrained(self, variables, path, reinit_head):
    description, loaded = read_weights(path)
    model = self.build_model()
    if description is not None and not _same_architecture(models.describe(model), description):
      want = models.describe(model)
      raise UserError(
          f'{path} holds {description["family"]} cfg {description["cfg"]}, but config.model builds '
          f'{want["family"]} cfg {want["cfg"]}'
      )
    keep = (HEADS.get(models.family_of(model), 'fc'),) if reinit_head else ()
    return merge_weights(variables, loaded, path, keep)

  def macs(self) -> int:
    return counting.count_macs(self.build_model(), jax.ShapeDtypeStruct(self._input_shape, jnp.float32))

  def extra_results(self, state):
    out = {
        'model': models.describe(self.build_model()),
        'params': counting.count_params(state.params),
        'nonzero_params': count_nonzero(state.params),
        'macs': int(self.macs()),
        'input_shape': list(self._input_shape),
    }
    if self.config.get('mask', {}).get('path', ''):  # the mask implementation: also the MACs of the kept weights
      from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

      variables = {'params': jax.device_get(state.params), 'batch_stats': jax.device_get(state.batch_stats)}
      out['nonzero_macs'] = magnitude.nonzero_macs(self.build_model(), variables, self._input_shape)
    return out


class SoftFilterTask(PruningTask):
  """Soft filter pruning's training (pruning_jax.methods.sfp): at every epoch boundary, before eval and checkpoint
  (so a resumed run zeroes the same filters), each conv's weakest filters at sfp.keep_rate are set to 0 and keep
  learning."""

  def on_epoch_end(self, state, epoch):
    del epoch
    from pruning_jax.methods import sfp  # pylint: disable=import-outside-toplevel

    params, batch_stats = sfp.soft_prune(state.params, state.batch_stats, float(self.config.sfp.keep_rate))
    return state.replace(params=params, batch_stats=batch_stats)
