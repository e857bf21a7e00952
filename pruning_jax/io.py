"""Pruned models in and out: our .safetensors + JSON sidecar, and the official repo's PyTorch checkpoints.

Ours (the format a pruning phase writes and `pruning_jax.load_pruned` reads):
  NAME.safetensors   every variable, keys 'params/<flax path>' and 'batch_stats/<flax path>'
  NAME.json          {'family', 'cfg', 'num_classes', 'selections', ...}: `pruning_jax.models.describe(model)`
                     plus whatever the caller adds (e.g. the method and prune ratio)
  save_pruned(path, model, variables, extra=None); load_pruned(path) -> (model, variables)
ConvNeXt (pruned or not) in timm's layout: export_timm(path, model, variables) / load_timm_export(path).

The official repo (Eric-mingjie/rethinking-network-pruning) saves `{'cfg': cfg, 'state_dict': ...}` after pruning
(`torch.save`), baselines `{'epoch', 'state_dict', 'best_prec1', 'optimizer'}`. Its key names per family:
  vgg_l1 / vgg_slimming  feature.{i} (nn.Sequential index: conv, bn, relu per cfg width, one maxpool per 'M'),
                         classifier.{0,1,3} (l1 head) or classifier (slimming head)
  resnet_cifar           conv1, bn1, layer{s}.{b}.{conv1,bn1,conv2,bn2}, fc
  preresnet              conv1, layer{s}.{b}.{bn1,select.indexes,conv1,bn2,conv2,bn3,conv3,downsample.0}, bn,
                         select.indexes, fc
  densenet               conv1, dense{s}.{i}.{bn1,select.indexes,conv1}, trans{s}.{bn1,select.indexes,conv1}, bn,
                         select.indexes, fc
  resnet34 / resnet50    torchvision names (downsample.0 conv, downsample.1 BN)
  vgg_imagenet / vgg_bn_imagenet  features.{i}, classifier.{0,3,6} (+ classifier.{1,4} BN1d)
  vgg_gap_imagenet       features.{i}, classifier.0 (ThiNet's VGG-GAP / VGG-Tiny)
`select.indexes` is the 0/1 channel_selection vector; it becomes our static `selections`. BN
`num_batches_tracked` (newer PyTorch) is not a weight and is ignored on import and not written on export.
Tensors: conv (O, I, kh, kw) <-> flax (kh, kw, I, O); Linear (out, in) <-> (in, out); vectors as they are.

import_torch_checkpoint(path, family=None) reads with `torch.load(weights_only=True)` (no pickled code runs), infers
the family from the key names and the cfg from the tensor shapes (checking it against the file's 'cfg' entry when
present) and returns (model, variables); to_torch_state_dict(model, variables) writes that layout back, and an
import -> export round trip reproduces every tensor bit for bit. Errors are one line naming the first offending
key and both shapes.
"""

import json
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import pause_points
from core_jax import weights as W
from core_jax.errors import UserError
from core_jax.weights import flatten, format_shape, sidecar_path, unflatten, write_atomic
from pruning_jax import models

_LEAF = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}
_VGG_HEAD_KEYS = {
    'vgg_l1': {'fc1': 'classifier.0', 'fc_bn1': 'classifier.1', 'fc2': 'classifier.3'},
    'vgg_slimming': {'fc': 'classifier'},
    'vgg_imagenet': {'fc1': 'classifier.0', 'fc2': 'classifier.3', 'fc3': 'classifier.6'},
    'vgg_gap_imagenet': {'fc': 'classifier.0'},
    'vgg_bn_imagenet': {
        'fc1': 'classifier.0',
        'fc_bn1': 'classifier.1',
        'fc2': 'classifier.3',
        'fc_bn2': 'classifier.4',
        'fc3': 'classifier.6',
    },
}

_VGG_NO_BN = ('vgg_imagenet', 'vgg_gap_imagenet')  # conv, relu per width in the nn.Sequential


# --------------------------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------------------------
def _vgg_feature_index(family: str, cfg) -> dict[str, int]:
  """conv{i} / bn{i} -> index in the original nn.Sequential (conv, [bn,] relu per width; one pool per 'M')."""
  body = cfg[:-2] if family == 'vgg_bn_imagenet' else cfg
  per_conv = 2 if family in _VGG_NO_BN else 3
  out, idx, i = {}, 0, 0
  for v in body:
    if v == 'M':
      idx += 1
      continue
    out[f'conv{i}'] = idx
    out[f'bn{i}'] = idx + 1
    idx += per_conv
    i += 1
  return out


def _module_key(family: str, cfg, parts: list[str]) -> str:
  if family.startswith('vgg'):
    (name,) = parts
    if name in _VGG_HEAD_KEYS[family]:
      return _VGG_HEAD_KEYS[family][name]
    prefix = 'features' if 'imagenet' in family else 'feature'
    return f'{prefix}.{_vgg_feature_index(family, cfg)[name]}'
  out = []
  for p in parts:
    m = re.fullmatch(r'(layer|dense)(\d+)_(\d+)', p)
    if m:
      out.append(f'{m.group(1)}{m.group(2)}.{m.group(3)}')
    elif p in ('downsample', 'downsample_conv'):
      out.append('downsample.0')
    elif p == 'downsample_bn':
      out.append('downsample.1')
    else:
      out.append(p)
  return '.'.join(out)


def torch_key(model, collection: str, path: str) -> str:
  """The official state_dict key of our variable `collection/path` (e.g. 'params', 'layer1_0/conv1/kernel')."""
  family = models.family_of(model)
  *parts, leaf = path.split('/')
  return f'{_module_key(family, models.cfg_of(model), parts)}.{_LEAF[leaf]}'


def _selection_keys(model) -> list[tuple[str, int]]:
  """(state_dict key of each channel_selection 'indexes', full width), in selection order."""
  family = models.family_of(model)
  if family == 'preresnet':
    n = models.preresnet.blocks_per_stage(model.depth)
    keys = [f'layer{s + 1}.{b}.select.indexes' for s in range(3) for b in range(n)] + ['select.indexes']
    return list(zip(keys, models.preresnet.selection_widths(model.depth)))
  if family == 'densenet':
    n = models.densenet.layers_per_block(model.depth)
    keys = []
    for s in range(3):
      keys += [f'dense{s + 1}.{i}.select.indexes' for i in range(n)]
      keys.append(f'trans{s + 1}.select.indexes' if s < 2 else 'select.indexes')
    return list(zip(keys, models.densenet.selection_widths(model.depth, model.growth)))
  return []


def _to_torch(leaf: str, x: np.ndarray) -> np.ndarray:
  if leaf == 'kernel':
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x.T)
  return x


def _to_flax(leaf: str, x: np.ndarray) -> np.ndarray:
  if leaf == 'kernel':
    return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)) if x.ndim == 4 else x.T)
  return x


def _torch_shape(leaf: str, shape) -> tuple[int, ...]:
  shape = tuple(shape)
  if leaf == 'kernel':
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
  return shape


def to_torch_state_dict(model, variables: Mapping) -> dict[str, np.ndarray]:
  """Our variables in the official layout (numpy arrays), selection vectors included."""
  sd = {}
  for collection in ('params', 'batch_stats'):
    for path, x in flatten(dict(variables.get(collection, {}))).items():
      sd[torch_key(model, collection, path)] = _to_torch(path.rsplit('/', 1)[-1], np.asarray(x))
  selections = getattr(model, 'selections', None)
  for k, (key, full) in enumerate(_selection_keys(model)):
    vec = np.zeros((full,), np.float32)
    sel = None if selections is None else selections[k]
    vec[list(range(full)) if sel is None else list(sel)] = 1.0
    sd[key] = vec
  if models.family_of(model) == 'resnet50' and getattr(model, 'selections', None) is not None:
    raise UserError('the official layout of ResNet-50 with channel selection (regression pruning) is not supported')
  return sd


# --------------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------------
def detect_family(sd: Mapping[str, np.ndarray]) -> str:
  keys = set(sd)
  if 'dense1.0.bn1.weight' in keys:
    return 'densenet'
  if 'layer1.0.select.indexes' in keys:
    return 'preresnet'
  if 'layer4.0.conv1.weight' in keys:
    return 'resnet50' if 'layer1.0.conv3.weight' in keys else 'resnet34'
  if 'layer1.0.conv1.weight' in keys:
    return 'resnet_cifar'
  if 'feature.0.weight' in keys:
    return 'vgg_l1' if 'classifier.0.weight' in keys else 'vgg_slimming'
  if 'features.0.weight' in keys:
    if 'classifier.1.running_mean' in keys:
      return 'vgg_bn_imagenet'
    return 'vgg_imagenet' if 'classifier.3.weight' in keys else 'vgg_gap_imagenet'
  raise UserError(f'cannot tell the model family from the checkpoint keys (first: {sorted(keys)[0] if keys else None})')


def _shape(sd, key) -> tuple[int, ...]:
  if key not in sd:
    raise UserError(f'checkpoint lacks {key}')
  return tuple(np.shape(sd[key]))


def infer_cfg(family: str, sd: Mapping[str, np.ndarray]):
  """(cfg, selections) of the model a state_dict in the official layout holds, from its shapes alone."""

  def count(prefix):
    return sum(1 for k in sd if re.fullmatch(rf'{prefix}\.\d+\.conv1\.weight', k))

  if family.startswith('vgg'):
    prefix = 'features' if 'imagenet' in family else 'feature'
    idx = sorted(
        int(m.group(1)) for k in sd if (m := re.fullmatch(rf'{prefix}\.(\d+)\.weight', k)) and len(np.shape(sd[k])) == 4
    )
    cfg, prev = [], None
    for i in idx:
      if prev is not None and i - prev > (2 if family in _VGG_NO_BN else 3):
        cfg.append('M')
      cfg.append(_shape(sd, f'{prefix}.{i}.weight')[0])
      prev = i
    if family in ('vgg_imagenet', 'vgg_bn_imagenet'):  # the 5th pool (the GAP head pools globally instead)
      cfg.append('M')
    if family == 'vgg_bn_imagenet':
      cfg += [_shape(sd, 'classifier.0.weight')[0], _shape(sd, 'classifier.3.weight')[0]]
    return tuple(cfg), None
  if family in ('resnet_cifar', 'resnet34'):
    n = [count(f'layer{s}') for s in range(1, 5 if family == 'resnet34' else 4)]
    return tuple(_shape(sd, f'layer{s + 1}.{b}.conv1.weight')[0] for s in range(len(n)) for b in range(n[s])), None
  if family == 'resnet50':
    cfg = []
    for s in range(1, 5):
      for b in range(count(f'layer{s}')):
        o1, i1 = _shape(sd, f'layer{s}.{b}.conv1.weight')[:2]
        cfg += [i1, o1, _shape(sd, f'layer{s}.{b}.conv2.weight')[0]]
    return tuple(cfg), None
  if family in ('preresnet', 'densenet'):
    cfg, selections = [], []
    select_keys = [k for k in sd if k.endswith('select.indexes')]
    order = _selection_order(family, sd)
    for key in order:
      if key not in select_keys:
        raise UserError(f'checkpoint lacks {key}')
      vec = np.asarray(sd[key])
      kept = tuple(int(i) for i in np.flatnonzero(vec))
      selections.append(None if len(kept) == vec.shape[0] else kept)
    if family == 'preresnet':
      n = count('layer1')
      for s in range(1, 4):
        for b in range(n):
          cfg += [
              _shape(sd, f'layer{s}.{b}.conv1.weight')[1],
              _shape(sd, f'layer{s}.{b}.conv1.weight')[0],
              _shape(sd, f'layer{s}.{b}.conv2.weight')[0],
          ]
      cfg.append(_shape(sd, 'fc.weight')[1])
    else:
      n = count('dense1')
      for s in range(1, 4):
        cfg += [_shape(sd, f'dense{s}.{i}.conv1.weight')[1] for i in range(n)]
        cfg.append(_shape(sd, f'trans{s}.conv1.weight')[1] if s < 3 else _shape(sd, 'fc.weight')[1])
    return tuple(cfg), (None if all(s is None for s in selections) else tuple(selections))
  raise UserError(f'unknown model family {family!r}')


def _selection_order(family, sd) -> list[str]:
  if family == 'preresnet':
    n = sum(1 for k in sd if re.fullmatch(r'layer1\.\d+\.conv1\.weight', k))
    return [f'layer{s}.{b}.select.indexes' for s in range(1, 4) for b in range(n)] + ['select.indexes']
  n = sum(1 for k in sd if re.fullmatch(r'dense1\.\d+\.conv1\.weight', k))
  keys = []
  for s in range(1, 4):
    keys += [f'dense{s}.{i}.select.indexes' for i in range(n)]
    keys.append(f'trans{s}.select.indexes' if s < 3 else 'select.indexes')
  return keys


def abstract_variables(model, dataset_hw: int = 32):
  x = jnp.zeros((1, dataset_hw, dataset_hw, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))


def _input_hw(family: str) -> int:
  return 224 if family in ('resnet34', 'resnet50') or family.endswith('_imagenet') else 32


def from_torch_state_dict(sd: Mapping, family: str | None = None, cfg=None, source: str = 'checkpoint'):
  """(model, variables) from a state_dict in the official layout; `cfg` (the file's entry) is checked."""
  sd = {str(k): np.asarray(v) for k, v in sd.items() if not str(k).endswith('num_batches_tracked')}
  if sd and all(k.startswith('module.') for k in sd):  # DataParallel wrapper of the ImageNet scripts
    sd = {k[len('module.') :]: v for k, v in sd.items()}
  family = family or detect_family(sd)
  inferred, selections = infer_cfg(family, sd)
  if cfg is not None:
    given = models.normalize_cfg(cfg)
    if tuple(given) != tuple(inferred):
      raise UserError(f'{source}: its cfg {list(given)} does not match its tensors (they give {list(inferred)})')
  fc_key = {
      'vgg_l1': 'classifier.3.weight',
      'vgg_slimming': 'classifier.weight',
      'vgg_imagenet': 'classifier.6.weight',
      'vgg_bn_imagenet': 'classifier.6.weight',
      'vgg_gap_imagenet': 'classifier.0.weight',
  }.get(family, 'fc.weight')
  num_classes = _shape(sd, fc_key)[0]
  model = models.build(family, inferred, num_classes, selections)
  target = abstract_variables(model, _input_hw(family))
  variables = {}
  used = set()
  for collection in ('params', 'batch_stats'):
    flat = {}
    for path, leaf in flatten(dict(target.get(collection, {}))).items():
      key = torch_key(model, collection, path)
      name = path.rsplit('/', 1)[-1]
      want = _torch_shape(name, leaf.shape)
      if key not in sd:
        raise UserError(f'{source}: missing {key} (expected shape {format_shape(want)})')
      if tuple(sd[key].shape) != want:
        raise UserError(f'{key}: expected shape {format_shape(want)} but {source} has {format_shape(sd[key].shape)}')
      flat[path] = _to_flax(name, sd[key]).astype(leaf.dtype, copy=False)
      used.add(key)
    variables[collection] = unflatten(flat)
  used |= {k for k, _ in _selection_keys(model)}
  extra = [k for k in sd if k not in used]
  if extra:
    raise UserError(f'{source}: unexpected key {extra[0]} (shape {format_shape(sd[extra[0]].shape)}) for {family}')
  return model, variables


def read_torch_checkpoint(path: str) -> tuple[dict, object]:
  """(state_dict as numpy, the file's 'cfg' or None), read by core_jax.weights.read_weights (weights_only=True)."""
  found = W.read_weights(path)
  return found.tensors, found.meta.get('cfg')


def import_torch_checkpoint(path: str, family: str | None = None):
  """(model, variables) of an official-repo .pth.tar ({'cfg', 'state_dict'} or a baseline checkpoint)."""
  sd, cfg = read_torch_checkpoint(path)
  return from_torch_state_dict(sd, family, cfg, source=path)


def save_torch_checkpoint(path: str, model, variables) -> None:
  """The official layout, {'cfg': cfg, 'state_dict': ...}, as the repo's prune scripts save it."""
  import torch  # pylint: disable=import-outside-toplevel

  sd = {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state_dict(model, variables).items()}
  cfg = list(models.cfg_of(model))
  write_atomic(path, lambda p: torch.save({'cfg': cfg, 'state_dict': sd}, p))


# --------------------------------------------------------------------------------------------------------------
# Our format
# --------------------------------------------------------------------------------------------------------------
def save_pruned(path: str, model, variables: Mapping, extra: dict | None = None) -> str:
  """Writes PATH (.safetensors, every variable) and its JSON sidecar; returns PATH."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  if not path.endswith('.safetensors'):
    raise UserError(f'pruned models are saved as .safetensors, got {path}')
  tensors = {}
  for collection in ('params', 'batch_stats'):
    for p, x in flatten(dict(variables.get(collection, {}))).items():
      tensors[f'{collection}/{p}'] = np.ascontiguousarray(np.asarray(jax.device_get(x)))
  meta = dict(models.describe(model), **(extra or {}))
  write_atomic(path, lambda p: save_file(tensors, p))
  pause_points.reach('save_pruned:weights_written')  # fault tests: the weights written, not yet their sidecar
  write_atomic(sidecar_path(path), lambda p: open(p, 'w').write(json.dumps(meta, indent=1) + '\n'))
  return path


def export_pruned(path: str, model_or_result, variables: Mapping | None = None, extra: dict | None = None) -> str:
  """save_pruned for a model + variables or a methods.PruneResult (its report goes into the sidecar)."""
  if variables is None:
    result = model_or_result
    extra = dict({'report': result.report}, **(extra or {}))
    return save_pruned(path, result.model, result.variables, extra)
  return save_pruned(path, model_or_result, variables, extra)


def export_timm(path: str, model, variables: Mapping, *, input_size: int = 32, **sidecar_fields) -> str:
  """A ConvNeXt family model (pruned or not) in timm's layout: PATH (.safetensors, convnext_jax.export) and its
  sidecar, which holds the timm recipe with the pruned per-stage `dims` where timm can build the model, else
  'timm_cannot_build' (the per-block MLP widths), and always 'pruned': this model's description (family, cfg,
  widths), from which `load_timm_export` rebuilds it. Returns PATH."""
  from convnext_jax import export  # pylint: disable=import-outside-toplevel

  family = models.family_of(model)
  if family not in models.CONVNEXT_FAMILIES:
    raise UserError(f'timm export is for the ConvNeXt families ({", ".join(models.CONVNEXT_FAMILIES)}), not {family}')
  if not path.endswith('.safetensors'):
    raise UserError(f'timm exports are .safetensors files, got {path}')
  arch = models.CONVNEXT_FAMILIES[family][0]
  params = jax.device_get(dict(variables['params']))
  meta = export.sidecar(
      params,
      arch=arch,
      input_size=input_size,
      pruned=dict(models.describe(model), loader='pruning_jax.io.load_timm_export(PATH)'),
      **sidecar_fields,
  )
  export.save_timm_safetensors(params, path, arch)
  export.write_sidecar(path, meta)
  return path


def load_timm_export(path: str, dtype=None):
  """(model, variables) of an `export_timm` file: the model rebuilt from the sidecar's 'pruned' description (its
  per-block widths too), the timm tensors renamed to Flax paths and loaded strictly (a mismatch: one line naming
  the first key and both shapes)."""
  from convnext_jax import convert  # pylint: disable=import-outside-toplevel

  meta = W.read_sidecar(path)
  if 'pruned' not in meta:
    raise UserError(f'{path}: its sidecar has no "pruned" entry (not written by pruning_jax.io.export_timm)')
  model = models.from_description(meta['pruned'], dtype)
  flat = convert.external_to_flax(convert.read_checkpoint(path), 'timm')
  target = abstract_variables(model)
  params = W.merge_params(flat, target['params'], source=path, hint=' (the model built from its sidecar)')
  return model, {'params': params}


def read_sidecar(path: str) -> dict:
  meta = W.read_sidecar(path)
  if not meta:
    raise UserError(f'{path}: its sidecar {sidecar_path(path)} (family, cfg, num_classes) is missing')
  return meta


def load_pruned(path: str, dtype=None):
  """(model, variables) of a model saved by `save_pruned`: rebuilt from the sidecar, weights checked and loaded."""
  meta = read_sidecar(path)
  model = models.from_description(meta, dtype)
  tensors = W.read_weights(path).tensors
  target = abstract_variables(model, _input_hw(meta['family']))
  target = {c: target[c] for c in ('params', 'batch_stats') if c in target}
  variables = W.merge_params(tensors, target, source=path, hint=' (the model built from its sidecar cfg)')
  return model, {c: variables.get(c, {}) for c in ('params', 'batch_stats')}
