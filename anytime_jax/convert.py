"""HRNet / ADP-C weights <-> PyTorch state dicts: timm's HRNet backbones and the official ADP-C checkpoints.

One `core_jax.weights.RuleTable` per layout, used in both directions, over the flat Flax variables
{'params/<module path>/<leaf>', 'batch_stats/<module path>/<mean|var>'}:

  Flax module                          PyTorch module (timm = HRNet-Image-Classification = HRNet-Seg = ADP-C)
  conv1, bn1, conv2, bn2               conv1, bn1, conv2, bn2
  layer1_{b}/conv{n}, bn{n}            layer1.{b}.conv{n}, bn{n};  layer1_{b}/downsample/conv|bn -> .downsample.0|1
  transition{t}_{i}/conv|bn            transition{t}.{i}.0|1           (an existing branch changing channels)
  transition{t}_{i}_{j}/conv|bn        transition{t}.{i}.{j}.0|1       (a new branch's chain)
  stage{s}_{m}/branch{i}_{b}/conv{n}   stage{s}.{m}.branches.{i}.{b}.conv{n} (and bn{n})
  stage{s}_{m}/fuse{i}_{j}/conv|bn     stage{s}.{m}.fuse_layers.{i}.{j}.0|1     (j > i)
  stage{s}_{m}/fuse{i}_{j}_{k}/conv|bn stage{s}.{m}.fuse_layers.{i}.{j}.{k}.0|1 (j < i)
  exit{e}/conv{n}|bn{n}, last_layer/.. exit{e}.{n}, last_layer.{n}   (official only; n = nn.Sequential index)
  leaves: kernel <-> weight (OIHW <-> HWIO), conv bias <-> bias, rbf_lambda <-> Lambda, BN scale/bias <-> weight/bias,
          batch_stats mean/var <-> running_mean/running_var.

Layouts:
- 'timm': the backbone (stem .. stage4) only. Reading drops timm's classification head (incre_modules,
  downsamp_modules, final_layer, classifier) and loads every backbone tensor strictly into the model's
  backbone (exits, head and rbf_lambda keep their values: "ImageNet init"). Writing gives exactly the state dict
  of `timm.create_model(name, head='')` (strict load); `features_only`/classification models load it with
  strict=False.
- 'official': the whole anytime model as the ADP-C code saves it (`FullEEModel.state_dict()`: keys prefixed
  `model.`, plus the loss's `loss.criterion.weight`), masked convs with `Lambda` and their constant
  `square_dis` 7x7 buffer. Reading accepts keys with or without `model.`, checks `square_dis`, drops `loss.*`.
BN `num_batches_tracked` counters are written as 0 and ignored when read. Mismatching keys or shapes fail with
a one-line UserError naming the key (and a checkpoint of another HRNet width says which width it is).
Files: .safetensors, or .pth/.pt/.bin read with torch.load(weights_only=True).
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from anytime_jax import confidence
from core_jax import weights as W
from core_jax.errors import UserError

LAYOUTS = ('timm', 'official')
_TIMM_HEAD_PREFIXES = ('incre_modules.', 'downsamp_modules.', 'final_layer.', 'classifier.')

# (flax module template, external module template, kind)
_BACKBONE = [
    ('conv{n:[12]}', 'conv{n}', 'conv'),
    ('bn{n:[12]}', 'bn{n}', 'bn'),
    ('layer1_{b}/conv{n:[123]}', 'layer1.{b}.conv{n}', 'conv'),
    ('layer1_{b}/bn{n:[123]}', 'layer1.{b}.bn{n}', 'bn'),
    ('layer1_{b}/downsample/conv', 'layer1.{b}.downsample.0', 'conv'),
    ('layer1_{b}/downsample/bn', 'layer1.{b}.downsample.1', 'bn'),
    ('transition{t}_{i}/conv', 'transition{t}.{i}.0', 'conv'),
    ('transition{t}_{i}/bn', 'transition{t}.{i}.1', 'bn'),
    ('transition{t}_{i}_{j}/conv', 'transition{t}.{i}.{j}.0', 'conv'),
    ('transition{t}_{i}_{j}/bn', 'transition{t}.{i}.{j}.1', 'bn'),
    ('stage{s}_{m}/branch{i}_{b}/conv{n:[12]}', 'stage{s}.{m}.branches.{i}.{b}.conv{n}', 'conv'),
    ('stage{s}_{m}/branch{i}_{b}/bn{n:[12]}', 'stage{s}.{m}.branches.{i}.{b}.bn{n}', 'bn'),
    ('stage{s}_{m}/fuse{i}_{j}/conv', 'stage{s}.{m}.fuse_layers.{i}.{j}.0', 'conv'),
    ('stage{s}_{m}/fuse{i}_{j}/bn', 'stage{s}.{m}.fuse_layers.{i}.{j}.1', 'bn'),
    ('stage{s}_{m}/fuse{i}_{j}_{k}/conv', 'stage{s}.{m}.fuse_layers.{i}.{j}.{k}.0', 'conv'),
    ('stage{s}_{m}/fuse{i}_{j}_{k}/bn', 'stage{s}.{m}.fuse_layers.{i}.{j}.{k}.1', 'bn'),
]
# nn.Sequential indices: a conv's and a BN's keys differ only by index, which depends on the exit type
_HEAD = [('last_layer/conv{n:0|3}', 'last_layer.{n}', 'conv'), ('last_layer/bn{n:1}', 'last_layer.{n}', 'bn')]
_EXITS = {
    'ee': [('exit{e:[123]}/conv{n:0|3}', 'exit{e}.{n}', 'conv'), ('exit{e:[123]}/bn{n:1}', 'exit{e}.{n}', 'bn')],
    'rh': [
        ('exit{e:[123]}/conv{n:1|5|9|13|17|21}', 'exit{e}.{n}', 'conv'),
        ('exit{e:[123]}/bn{n:2|6|10|14|18}', 'exit{e}.{n}', 'bn'),
    ],
}


def _rules(modules, with_lambda: bool) -> list[W.Rule]:
  rules = []
  for f, e, kind in modules:
    if kind == 'conv':
      rules += [W.Rule(f'params/{f}/kernel', f'{e}.weight', W.CONV), W.Rule(f'params/{f}/bias', f'{e}.bias')]
      if with_lambda:
        rules.append(W.Rule(f'params/{f}/rbf_lambda', f'{e}.Lambda'))
    else:
      rules += [
          W.Rule(f'params/{f}/scale', f'{e}.weight'),
          W.Rule(f'params/{f}/bias', f'{e}.bias'),
          W.Rule(f'batch_stats/{f}/mean', f'{e}.running_mean'),
          W.Rule(f'batch_stats/{f}/var', f'{e}.running_var'),
      ]
  return rules


def rule_table(layout: str, exit_type: str = 'rh') -> W.RuleTable:
  """The table of `layout`; 'official' needs the exit type of exits 1..3 ('ee' or 'rh')."""
  if layout == 'timm':
    return W.RuleTable(_rules(_BACKBONE, with_lambda=False), name='timm HRNet')
  if layout == 'official':
    if exit_type not in _EXITS:
      raise UserError(f'unknown exit type {exit_type!r} (expected one of {tuple(_EXITS)})')
    return W.RuleTable(_rules(_BACKBONE + _EXITS[exit_type] + _HEAD, with_lambda=True), name=f'ADP-C ({exit_type})')
  raise UserError(f'unknown weights layout {layout!r} (expected one of {LAYOUTS})')


def exit_type_of(flat: Mapping[str, Any]) -> str:
  """'rh' when the flat variables hold redesigned exits (an exit conv at Sequential index 1), else 'ee'."""
  return 'rh' if any(k.startswith('params/exit') and '/conv1/' in k for k in flat) else 'ee'


def _is_backbone(path: str) -> bool:
  mod = path.split('/')[1]
  return not (mod.startswith('exit') or mod == 'last_layer') and not path.endswith('/rbf_lambda')


def _square_dis() -> np.ndarray:
  r = confidence.RBF_SIZE // 2
  d = np.arange(confidence.RBF_SIZE, dtype=np.float32) - r
  sq = d[:, None] ** 2 + d[None, :] ** 2
  sq[r, r] = confidence.RBF_CENTRE_DIST2
  return sq


def _width_hint(sd: Mapping[str, Any], flat_target: Mapping[str, Any]) -> str:
  key, path = 'transition1.0.0.weight', 'params/transition1_0/conv/kernel'
  if key in sd and path in flat_target:
    got, want = int(np.shape(sd[key])[0]), int(W.shape_of(flat_target[path])[-1])
    if got != want:
      return f'checkpoint is HRNet-W{got} but the model is HRNet-W{want}'
  return ''


def external_to_variables(
    sd: Mapping[str, Any], variables: Mapping[str, Any], layout: str, source: str = 'checkpoint'
) -> dict[str, Any]:
  """A PyTorch-layout state dict loaded into `variables` ({'params', 'batch_stats'}, same tree returned)."""
  sd = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
  if layout == 'timm':
    sd = {k: v for k, v in sd.items() if not k.startswith(_TIMM_HEAD_PREFIXES)}
  else:
    if any(k.startswith('model.') for k in sd):
      sd = {k[len('model.') :]: v for k, v in sd.items() if k.startswith('model.')}
    for k in [k for k in sd if k.endswith('.square_dis')]:
      if np.shape(sd[k]) != (confidence.RBF_SIZE,) * 2 or not np.array_equal(np.asarray(sd[k]), _square_dis()):
        raise UserError(f'{k} in {source} is not the constant 7x7 RBF distance table')
      del sd[k]
  flat = W.flatten_variables(variables)
  hint = _width_hint(sd, flat)
  if hint:
    raise UserError(f'{source}: {hint}')
  target = {k: v for k, v in flat.items() if layout == 'official' or _is_backbone(k)}
  loaded = W.import_tensors(sd, rule_table(layout, exit_type_of(flat)), target, source=source)
  # what the layout does not carry (a timm backbone: exits, head, lambdas) keeps the model's values
  keep = [re.escape(k) for k in flat if k not in target]
  tree = W.merge_params(loaded, flat, keep_fresh=keep, source=source)
  return {'params': tree.get('params', {}), 'batch_stats': tree.get('batch_stats', {})}


def variables_to_external(
    variables: Mapping[str, Any], layout: str, class_weights: tuple[float, ...] | None = None
) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} -> the PyTorch state dict of `layout` (num_batches_tracked = 0 added).

  The official layout carries the loss's class weights (`loss.criterion.weight`): `class_weights`, the training
  config's loss.class_weights (the Cityscapes table of configs/anytime/cityscapes.py), uniform when not given."""
  flat = {k: np.asarray(v) for k, v in W.flatten_variables(variables).items()}
  if layout == 'timm':
    flat = {k: v for k, v in flat.items() if _is_backbone(k)}
  table = rule_table(layout, exit_type_of(flat))
  sd = W.export_tensors(flat, table)
  for k, v in sd.items():  # export_tensors' ascontiguousarray makes 0-d tensors (Lambda) 1-d
    want = np.shape(flat[table.to_flax_key(k)[0]])
    if v.shape != want and v.size == 1:
      sd[k] = v.reshape(want)
  for k in [k for k in sd if k.endswith('.running_var')]:
    sd[k[: -len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  if layout == 'official':
    for k in [k for k in sd if k.endswith('.Lambda')]:
      sd[k[: -len('Lambda')] + 'square_dis'] = _square_dis()
    sd = {f'model.{k}': v for k, v in sd.items()}
    num_classes = int(np.shape(flat['params/last_layer/conv3/bias'])[0])
    if class_weights is None:  # a config's loss.class_weights (Cityscapes: configs/anytime/cityscapes.py)
      class_weights = (1.0,) * num_classes
    sd['loss.criterion.weight'] = np.asarray(class_weights, np.float32)
  return sd


# ------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A .safetensors or torch (.pth/.pt/.bin, weights_only=True) file -> {key: numpy array}
  (core_jax.weights.read_weights)."""
  if os.path.isdir(path):
    raise UserError(f'{path} is a directory, not a .safetensors / .pth weights file')
  return W.read_weights(path).tensors


def detect_layout(keys) -> str:
  keys = list(keys)
  if any(k.startswith(('model.', 'exit', 'last_layer.', 'loss.')) for k in keys) or any('.Lambda' in k for k in keys):
    return 'official'
  return 'timm'


def load_variables(path: str, variables: Mapping[str, Any], layout: str | None = None) -> dict[str, Any]:
  """`variables` with the weights of `path` loaded (layout detected from the keys unless given)."""
  sd = read_state_dict(path)
  return external_to_variables(sd, variables, layout or detect_layout(sd), source=path)


def load_pretrained(variables: Mapping[str, Any], path: str, reinit_head: bool = False) -> dict[str, Any]:
  """The Task.load_pretrained contract: `variables` ({'params', 'batch_stats'} host arrays) with `path` loaded.

  A timm file loads the backbone (exits and head keep their fresh values); an official ADP-C file loads
  everything, or with `reinit_head` only its backbone (e.g. another number of classes)."""
  sd = read_state_dict(path)
  layout = detect_layout(sd)
  if layout == 'official' and reinit_head:
    sd = {
        k: v
        for k, v in sd.items()
        if not k.startswith(('model.exit', 'model.last_layer', 'exit', 'last_layer', 'loss.'))
    }
    sd = {k[len('model.') :] if k.startswith('model.') else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(('.Lambda', '.square_dis'))}
    layout = 'timm'
  return external_to_variables(sd, variables, layout, source=path)


def save_variables(
    variables: Mapping[str, Any], path: str, layout: str, class_weights: tuple[float, ...] | None = None
) -> dict[str, np.ndarray]:
  """Writes `variables` in `layout` as .safetensors or .pth (atomically); returns the state dict written."""
  sd = variables_to_external(variables, layout, class_weights)
  d = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(d):
    raise UserError(f'output directory does not exist: {d}')
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    if path.endswith('.safetensors'):
      from safetensors.numpy import save_file

      save_file(sd, tmp, metadata={'format': 'pt'})
    else:
      import torch

      torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return sd
