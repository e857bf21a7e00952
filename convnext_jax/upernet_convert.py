"""UperNet weights in and out: the official ConvNeXt ADE20K checkpoints (mmseg layout) <-> our variables.

One `core_jax.weights.RuleTable`, used in both directions, over the flat Flax variables
{'params/<module path>/<leaf>', 'batch_stats/<module path>/<mean|var>'} of ``convnext_jax.upernet.UperNet``:

  Flax module                                   mmseg state dict (facebookresearch/ConvNeXt semantic_segmentation)
  backbone/stem_conv, stem_norm, downsample_i,  backbone.downsample_layers.*, backbone.stages.i.j.*   (the ConvNeXt
    stages_i_block_j                              official table of ``convnext_jax.convert``, under ``backbone.``)
  backbone/norm{i}                              backbone.norm{i}
  decode_head/psp_modules_{i}                   decode_head.psp_modules.{i}.1   (index 0 is the pooling)
  decode_head/bottleneck, fpn_bottleneck        decode_head.bottleneck, decode_head.fpn_bottleneck
  decode_head/lateral_convs_{i}, fpn_convs_{i}  decode_head.lateral_convs.{i}, decode_head.fpn_convs.{i}
  auxiliary_head/convs_{i}                      auxiliary_head.convs.{i}
  {decode,auxiliary}_head/conv_seg              {decode,auxiliary}_head.conv_seg
  ConvModule leaves: conv/kernel <-> .conv.weight (OIHW <-> HWIO), bn/scale|bias <-> .bn.weight|bias,
                     batch_stats bn/mean|var <-> .bn.running_mean|running_var.
BN ``num_batches_tracked`` counters (PyTorch uses them only for momentum=None, which mmseg's BN never has) are
ignored when read and written as 0; every other tensor round-trips bit for bit.

Checks, each one line (core_jax.errors.UserError): a checkpoint of another backbone size names both sizes; a
head with another class count names both counts (reinit_head keeps the fresh classifiers); any other missing,
unexpected or mis-shaped key is named by ``core_jax.weights``.

`load_pretrained` (the Task contract) takes an mmseg UperNet checkpoint (everything), or an ImageNet ConvNeXt
(official / timm / our classifier export, or a classifier's training workdir / step): the backbone's stem,
downsampling layers and blocks; the classifier's ``norm``/``head`` are dropped and ``norm0..3`` and the heads keep
their fresh values (the official init).
Files: .pth/.pt/.bin (torch.load(weights_only=True), mmcv's {'meta', 'state_dict', ...} unwrapped) or
.safetensors (``core_jax.weights.read_weights``).
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from convnext_jax import convert, upernet
from core_jax import weights as W
from core_jax.errors import UserError

# (flax module, mmseg module) of every ConvModule
_CONV_MODULES = [
    ('decode_head/psp_modules_{i}', 'decode_head.psp_modules.{i}.1'),
    ('decode_head/bottleneck', 'decode_head.bottleneck'),
    ('decode_head/lateral_convs_{i}', 'decode_head.lateral_convs.{i}'),
    ('decode_head/fpn_convs_{i}', 'decode_head.fpn_convs.{i}'),
    ('decode_head/fpn_bottleneck', 'decode_head.fpn_bottleneck'),
    ('auxiliary_head/convs_{i}', 'auxiliary_head.convs.{i}'),
]
_CLASSIFIERS = ('decode_head', 'auxiliary_head')


def _backbone_rules() -> list[W.Rule]:
  """The official ConvNeXt table (stem, downsampling, blocks) under 'params/backbone/' and 'backbone.'."""
  rules = [
      W.Rule(f'params/backbone/{r.flax}', f'backbone.{r.external}', r.transform)
      for r in convert.rule_table('official').rules
      if not r.flax.startswith('head')
  ]
  rules += [
      W.Rule('params/backbone/norm{i}/scale', 'backbone.norm{i}.weight'),
      W.Rule('params/backbone/norm{i}/bias', 'backbone.norm{i}.bias'),
  ]
  return rules


def rule_table() -> W.RuleTable:
  rules = _backbone_rules()
  for f, e in _CONV_MODULES:
    rules += [
        W.Rule(f'params/{f}/conv/kernel', f'{e}.conv.weight', W.CONV),
        W.Rule(f'params/{f}/bn/scale', f'{e}.bn.weight'),
        W.Rule(f'params/{f}/bn/bias', f'{e}.bn.bias'),
        W.Rule(f'batch_stats/{f}/bn/mean', f'{e}.bn.running_mean'),
        W.Rule(f'batch_stats/{f}/bn/var', f'{e}.bn.running_var'),
    ]
  for head in _CLASSIFIERS:
    rules += [
        W.Rule(f'params/{head}/conv_seg/kernel', f'{head}.conv_seg.weight', W.CONV),
        W.Rule(f'params/{head}/conv_seg/bias', f'{head}.conv_seg.bias'),
    ]
  return W.RuleTable(rules, name='mmseg ConvNeXt UperNet')


def _variables(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {'params': tree.get('params', {}), 'batch_stats': tree.get('batch_stats', {})}


def is_mmseg(keys) -> bool:
  return any(k.startswith('decode_head.') for k in keys)


# --------------------------------------------------------------------------------------------------------------
# Architecture checks
# --------------------------------------------------------------------------------------------------------------
def backbone_arch(sd: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(depths, dims) of the ConvNeXt backbone of an mmseg UperNet state dict."""
  table = rule_table()
  flat = {hit[0]: v for k, v in sd.items() if (hit := table.to_flax_key(k)) is not None}
  arch = _flax_arch(flat)
  if not arch[0]:
    raise UserError('no ConvNeXt blocks (backbone.stages.<i>.<j>.dwconv) in the checkpoint')
  return arch


def size_name(depths, dims) -> str:
  """'ConvNeXt-T' ... 'ConvNeXt-XL' for the paper's sizes, else the depths and dims."""
  for size, cfg in upernet.SIZES.items():
    if tuple(cfg['depths']) == tuple(depths) and tuple(cfg['dims']) == tuple(dims):
      return f'ConvNeXt-{ {"tiny": "T", "small": "S", "base": "B", "large": "L", "xlarge": "XL"}[size]}'
  return f'ConvNeXt depths={tuple(depths)} dims={tuple(dims)}'


def _flax_arch(flat: Mapping[str, Any], prefix: str = 'params/backbone/') -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(depths, dims) of the ConvNeXt blocks in flat Flax paths under `prefix`."""
  pat = re.compile(re.escape(prefix) + r'stages_(\d+)_block_(\d+)/dwconv/bias$')
  blocks = [(int(m.group(1)), int(m.group(2)), W.shape_of(v)[0]) for k, v in flat.items() if (m := pat.match(k))]
  if not blocks:
    return (), ()
  n = max(i for i, _, _ in blocks) + 1
  depths = tuple(max([j for i, j, _ in blocks if i == s], default=-1) + 1 for s in range(n))
  dims = tuple(next((c for i, _, c in blocks if i == s), 0) for s in range(n))
  return depths, dims


def _check_arch(sd, flat, source):
  got, want = backbone_arch(sd), _flax_arch(flat)
  if got != want:
    raise UserError(f'{source} is a {size_name(*got)} backbone but the model is a {size_name(*want)}')


def _num_classes(sd, flat, source, head):
  key, path = f'{head}.conv_seg.bias', f'params/{head}/conv_seg/bias'
  if key in sd and path in flat:
    got, want = W.shape_of(sd[key])[0], W.shape_of(flat[path])[0]
    if got != want:
      raise UserError(
          f'{key}: {source} has {got} classes but the model has {want} (init_reinit_head=True keeps the fresh '
          'classifiers)'
      )


# --------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------
def mmseg_to_variables(
    sd: Mapping[str, Any], variables: Mapping[str, Any], *, source: str = 'checkpoint', reinit_head: bool = False
) -> dict[str, Any]:
  """An mmseg UperNet state dict loaded into `variables` ({'params', 'batch_stats'}; the same tree returned),
  strictly; `reinit_head` keeps the fresh ``conv_seg`` of both heads (another class count)."""
  sd = {k: v for k, v in sd.items() if not k.endswith('.num_batches_tracked')}
  flat = W.flatten_variables(variables)
  _check_arch(sd, flat, source)
  keep: list[str] = []
  if reinit_head:
    keep = [k for k in flat if re.fullmatch(r'params/\w+_head/conv_seg/\w+', k)]
    sd = {k: v for k, v in sd.items() if not re.fullmatch(r'\w+_head\.conv_seg\.\w+', k)}
  else:
    for head in _CLASSIFIERS:
      _num_classes(sd, flat, source, head)
  target = {k: v for k, v in flat.items() if k not in keep}
  loaded = W.import_tensors(sd, rule_table(), target, source=source)
  return _variables(W.merge_params(loaded, flat, keep_fresh=[re.escape(k) for k in keep], source=source))


def variables_to_mmseg(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} -> the mmseg state dict (``num_batches_tracked`` = 0 for every BN)."""
  flat = {k: np.asarray(v) for k, v in W.flatten_variables(variables).items()}
  sd = W.export_tensors(flat, rule_table())
  for k in [k for k in sd if k.endswith('.running_var')]:
    sd[k[: -len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  return sd


def imagenet_to_variables(sd: Mapping[str, Any], variables: Mapping[str, Any], *, source: str) -> dict[str, Any]:
  """An ImageNet ConvNeXt (official / timm / Flax classifier) loaded into the backbone: stem, downsampling
  layers and blocks, strictly; its ``norm``/``head`` are dropped, ``norm0..3`` and the heads keep their values."""
  classifier = convert.external_to_flax(sd)
  classifier = {k: v for k, v in classifier.items() if not k.startswith(('head/', 'head_norm/'))}
  flat = W.flatten_variables(variables)
  want = {k: v for k, v in flat.items() if k.startswith('params/backbone/') and not re.match(r'.*/norm\d/', k)}
  got = {f'params/backbone/{k}': v for k, v in classifier.items()}
  got_arch, want_arch = _flax_arch(got), _flax_arch(flat)
  if got_arch != want_arch:
    raise UserError(f"{source} is a {size_name(*got_arch)} but the model's backbone is a {size_name(*want_arch)}")
  keep = [re.escape(k) for k in flat if k not in want]
  return _variables(W.merge_params(got, flat, keep_fresh=keep, source=source))


def load_pretrained(variables: Mapping[str, Any], path: str, reinit_head: bool = False) -> dict[str, Any]:
  """The Task.load_pretrained contract (`variables` host arrays): an mmseg UperNet file, or ImageNet ConvNeXt
  weights for the backbone (see the module docstring)."""
  sd = convert.read_checkpoint(path)  # a classifier's training step / workdir gives its params without 'params/'
  if is_mmseg(sd):
    return mmseg_to_variables(sd, variables, source=path, reinit_head=reinit_head)
  return imagenet_to_variables(sd, variables, source=path)


def save_mmseg(variables: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
  """Writes `variables` as an mmseg checkpoint ({'state_dict': ...} .pth, or a .safetensors), atomically;
  returns the state dict written."""
  sd = variables_to_mmseg(variables)

  def write(tmp):
    if path.endswith('.safetensors'):
      from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

      save_file(sd, tmp, metadata={'format': 'pt'})
    else:
      import torch  # pylint: disable=import-outside-toplevel

      torch.save({'state_dict': {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, tmp)

  W.write_atomic(path, write)
  return sd
