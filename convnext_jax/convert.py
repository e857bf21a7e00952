"""ConvNeXt weights in and out: official facebookresearch `.pth`, timm `.safetensors`/`.pth`, Flax msgpack.

Layouts (detected from the keys, see `detect_layout`):
  'official'      facebookresearch/ConvNeXt: downsample_layers.0.0.weight, stages.i.j.dwconv.weight, norm, head
  'timm'          timm: stem.0, stages.i.downsample.k, stages.i.blocks.j.conv_dw / mlp.fc1 / mlp.fc2, head.norm,
                  head.fc; MLP weights are (out, in) or, for timm conv_mlp=True models (atto/femto/pico/nano),
                  (out, in, 1, 1) -- both are read; export writes what timm builds for that name
  'official_iso'  isotropic ConvNeXt: stem, blocks.j.*, norm, head (timm has no isotropic ConvNeXt, so iso
                  exports always use this layout, also inside .safetensors)
  'flax'          our own param tree, '/'-joined (msgpack files)
The Flax <-> official <-> timm key table is documented in `convnext_jax.models`; the rules below implement it
with `core_jax.weights` (one table per layout, used in both directions).

Checkpoint files are read by `core_jax.weights.read_weights`: `.pth/.pt/.bin` with ``torch.load(weights_only=True)``
(no pickled code runs), unwrapped from ``model`` / ``state_dict`` (``model_ema`` / ``state_dict_ema`` with
``ema=True``, or when they are the only choice); `.safetensors` with ``safetensors.numpy`` (no torch); `.msgpack`
with flax.serialization.

Python API
  read_checkpoint(path, ema=False) -> {key: np.ndarray}
  detect_layout(keys) -> str
  external_to_flax(state_dict, layout=None) -> flat Flax dict (no target, non-strict about the architecture)
  infer_arch(state_dict_or_flat_flax) -> (registry name, create_model overrides)
  load_pretrained(params_target, path, *, arch=None, reinit_head=False, ema=False) -> params (target's structure)
  import_checkpoint(path, *, arch=None, num_classes=None, ema=False) -> (params, arch, overrides)
  flax_to_timm(params, arch) / flax_to_official(params, arch) -> {key: np.ndarray}
  save_timm_safetensors(params, path, arch) / save_official_pth(params, path, arch)
  save_flax(params, path, *, arch, ...) / load_flax(path) -> (params, meta)
  timm_recipe(arch, overrides) -> {model_name, kwargs, identity, python}: how timm 1.0.x builds exactly that model
  timm_model_for(export.safetensors | sidecar path | sidecar dict) -> the timm module (weights loaded strictly)

Which model: a training step directory carries its config, so its model is rebuilt exactly from model.name and
model.overrides (num_classes from the head); a .msgpack's sidecar names arch and overrides; any other file is
matched against the registry by its shapes (`infer_arch`; `--arch` to force).

CLI
  python -m convnext_jax.convert --src PATH --dst PATH [--arch NAME] [--num-classes N] [--ema] [--input-size S]
  src: .pth/.pt/.bin/.safetensors (official or timm layout), .msgpack (Flax; its .json sidecar gives the arch) or
       a training step WORKDIR/checkpoints/STEP (params, or EMA params with --ema)
  dst: .msgpack | .safetensors (timm layout) | .pth (official layout, {'model': state_dict}); each gets a .json
       sidecar (arch, overrides, num_classes, preprocessing, eval metrics of a training step, and the timm recipe).
       When timm needs more than timm.create_model(arch) (overrides, or convnext_digits' stride-2 stem, for which
       timm adds a stage-0 downsample the model does not have), the CLI prints the recipe as code.
  --num-classes N different from the checkpoint's head re-initializes the head (N classes) with a message.
  Bad input -> one line 'error: ...' on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from core_jax.errors import UserError
from core_jax.weights import (
    CONV,
    CONV1X1_AS_LINEAR,
    LINEAR,
    Rule,
    RuleTable,
    Weights,
    export_tensors,
    file_kind,
    flatten,
    format_shape,
    import_tensors,
    merge_params,
    one_line,
    read_sidecar,
    read_weights,
    shape_of,
    sidecar_path,
    unflatten,
)

log = logging.getLogger(__name__)

__all__ = [
    'read_checkpoint',
    'detect_layout',
    'rule_table',
    'external_to_flax',
    'infer_arch',
    'load_pretrained',
    'import_checkpoint',
    'flax_to_timm',
    'flax_to_official',
    'save_timm_safetensors',
    'save_official_pth',
    'save_flax',
    'load_flax',
    'sidecar_path',
    'sidecar',
    'write_sidecar',
    'timm_recipe',
    'timm_model_for',
    'CONV_MLP_ARCHS',
    'TIMM_NAMES',
    'main',
]

# timm builds these with conv_mlp=True: MLP weights are 1x1 convs (out, in, 1, 1).
CONV_MLP_ARCHS = frozenset({'convnext_atto', 'convnext_femto', 'convnext_pico', 'convnext_nano'})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------------
# Rule tables
# --------------------------------------------------------------------------------------------------------------
def _block_rules(flax_prefix: str, ext_prefix: str, names: Mapping[str, str], mlp) -> list:
  """The 9 tensors of a block. names: our sub-module -> external sub-module name."""
  f, e = flax_prefix, ext_prefix
  return [
      Rule(f'{f}/gamma', f'{e}.gamma'),
      Rule(f'{f}/dwconv/kernel', f'{e}.{names["dwconv"]}.weight', CONV),
      Rule(f'{f}/dwconv/bias', f'{e}.{names["dwconv"]}.bias'),
      Rule(f'{f}/norm/scale', f'{e}.norm.weight'),
      Rule(f'{f}/norm/bias', f'{e}.norm.bias'),
      Rule(f'{f}/pwconv1/kernel', f'{e}.{names["pwconv1"]}.weight', mlp),
      Rule(f'{f}/pwconv1/bias', f'{e}.{names["pwconv1"]}.bias'),
      Rule(f'{f}/pwconv2/kernel', f'{e}.{names["pwconv2"]}.weight', mlp),
      Rule(f'{f}/pwconv2/bias', f'{e}.{names["pwconv2"]}.bias'),
  ]


def _conv_rules(flax_prefix, ext_prefix):
  return [
      Rule(f'{flax_prefix}/kernel', f'{ext_prefix}.weight', CONV),
      Rule(f'{flax_prefix}/bias', f'{ext_prefix}.bias'),
  ]


def _ln_rules(flax_prefix, ext_prefix):
  return [Rule(f'{flax_prefix}/scale', f'{ext_prefix}.weight'), Rule(f'{flax_prefix}/bias', f'{ext_prefix}.bias')]


def _head_rules(norm, fc):
  return _ln_rules('head_norm', norm) + [Rule('head/kernel', f'{fc}.weight', LINEAR), Rule('head/bias', f'{fc}.bias')]


_OFFICIAL_NAMES = {'dwconv': 'dwconv', 'pwconv1': 'pwconv1', 'pwconv2': 'pwconv2'}
_TIMM_NAMES = {'dwconv': 'conv_dw', 'pwconv1': 'mlp.fc1', 'pwconv2': 'mlp.fc2'}
_I = '{i:[1-9][0-9]*}'  # downsample index: stage 0 has the stem instead


def rule_table(layout: str, conv_mlp: bool = False) -> RuleTable:
  """The Flax <-> `layout` table. conv_mlp: the MLP weights are (out, in, 1, 1) 1x1 convs on the external side."""
  mlp = CONV1X1_AS_LINEAR if conv_mlp else LINEAR
  if layout == 'official':
    rules = (
        _conv_rules('stem_conv', 'downsample_layers.0.0')
        + _ln_rules('stem_norm', 'downsample_layers.0.1')
        + _ln_rules(f'downsample_{_I}/norm', f'downsample_layers.{_I}.0')
        + _conv_rules(f'downsample_{_I}/conv', f'downsample_layers.{_I}.1')
        + _block_rules('stages_{i}_block_{j}', 'stages.{i}.{j}', _OFFICIAL_NAMES, mlp)
        + _head_rules('norm', 'head')
    )
  elif layout == 'timm':
    rules = (
        _conv_rules('stem_conv', 'stem.0')
        + _ln_rules('stem_norm', 'stem.1')
        + _ln_rules(f'downsample_{_I}/norm', f'stages.{_I}.downsample.0')
        + _conv_rules(f'downsample_{_I}/conv', f'stages.{_I}.downsample.1')
        + _block_rules('stages_{i}_block_{j}', 'stages.{i}.blocks.{j}', _TIMM_NAMES, mlp)
        + _head_rules('head.norm', 'head.fc')
    )
  elif layout == 'official_iso':
    rules = (
        _conv_rules('stem_conv', 'stem')
        + _block_rules('blocks_{j}', 'blocks.{j}', _OFFICIAL_NAMES, mlp)
        + _head_rules('norm', 'head')
    )
  elif layout == 'flax':
    rules = [Rule('{path:.+}', '{path:.+}')]
  else:
    raise ValueError(f'unknown layout {layout!r}')
  return RuleTable(rules, name=f'{layout}{" conv_mlp" if conv_mlp else ""} ConvNeXt')


def detect_layout(keys) -> str:
  keys = list(keys)
  ks = set(keys)
  if any('/' in k for k in keys):
    return 'flax'
  if 'downsample_layers.0.0.weight' in ks or any(k.startswith('downsample_layers.') for k in keys):
    return 'official'
  if 'stem.0.weight' in ks or 'head.norm.weight' in ks or any(re.match(r'stages\.\d+\.blocks\.', k) for k in keys):
    return 'timm'
  if 'stem.weight' in ks or any(re.match(r'blocks\.\d+\.', k) for k in keys):
    return 'official_iso'
  shown = ', '.join(keys[:3]) if keys else 'no keys'
  raise UserError(f'unknown checkpoint layout (not official, timm or isotropic ConvNeXt): first keys {shown}')


def _is_conv_mlp(sd: Mapping[str, Any], layout: str) -> bool:
  """True when the checkpoint stores the MLP as 1x1 convs; mixed layouts are rejected."""
  pat = re.compile(r'.*\.(pwconv[12]|mlp\.fc[12])\.weight$')
  ndims = {len(shape_of(v)) for k, v in sd.items() if pat.match(k)}
  return ndims == {4}


# --------------------------------------------------------------------------------------------------------------
# Reading files (core_jax.weights.read_weights)
# --------------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str, *, ema: bool = False) -> dict[str, np.ndarray]:
  """Any supported file -> flat {key: np.ndarray} (torch tensors converted; wrappers removed; 'module.' stripped).

  A directory is a training checkpoint step (`WORKDIR/checkpoints/STEP`) or a workdir (its latest step): its
  params, or EMA params with `ema`.
  """
  return _read(path, ema)[0]


def _read(path: str, ema: bool) -> tuple[dict[str, np.ndarray], Weights]:
  """(flat params of a step / the file's state dict, what core_jax.weights.read_weights found)."""
  found = read_weights(path, ema=ema)
  if found.kind != 'step':
    return found.tensors, found
  prefix = 'params/'
  return {k[len(prefix) :]: v for k, v in found.tensors.items() if k.startswith(prefix)}, found


# --------------------------------------------------------------------------------------------------------------
# Architecture inference
# --------------------------------------------------------------------------------------------------------------
def external_to_flax(sd: Mapping[str, Any], layout: str | None = None) -> dict[str, np.ndarray]:
  """Renames + transforms every tensor to its Flax path without a target (unmapped key -> UserError)."""
  layout = layout or detect_layout(sd)
  return import_tensors(sd, rule_table(layout, _is_conv_mlp(sd, layout)), None)


def _flax_shapes(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Flat Flax {path: shape} for a checkpoint in any layout (shapes only where possible)."""
  layout = detect_layout(sd)
  table = rule_table(layout, _is_conv_mlp(sd, layout))
  out = {}
  for k, v in sd.items():
    hit = table.to_flax_key(k)
    if hit is None:
      raise UserError(f'unexpected key {k} in checkpoint: no {table.name} rule maps it')
    path, rule = hit
    s = shape_of(v)
    if rule.transform.external_ndim is not None and len(s) != rule.transform.external_ndim:
      raise UserError(f'{k}: expected a {rule.transform.external_ndim}-d tensor but checkpoint has {format_shape(s)}')
    out[path] = rule.transform.flax_shape(s)
  return out


def _describe(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
  """Architecture facts from flat Flax shapes."""
  if 'stem_conv/kernel' not in shapes:
    raise UserError('checkpoint has no stem conv (stem_conv/kernel); cannot infer the architecture')
  kh, _, in_chans, _ = shapes['stem_conv/kernel']
  d: dict[str, Any] = {
      'patch_size': kh,
      'in_chans': in_chans,
      'num_classes': shapes['head/bias'][0] if 'head/bias' in shapes else 0,
  }
  blocks = [re.match(r'stages_(\d+)_block_(\d+)/', p) for p in shapes]
  blocks = [(int(m.group(1)), int(m.group(2))) for m in blocks if m]
  iso = [int(m.group(1)) for m in (re.match(r'blocks_(\d+)/', p) for p in shapes) if m]
  if blocks:
    n = max(i for i, _ in blocks) + 1
    d['isotropic'] = False
    d['depths'] = tuple(max([j for i, j in blocks if i == s], default=-1) + 1 for s in range(n))
    d['dims'] = tuple(shapes.get(f'stages_{s}_block_0/dwconv/bias', (0,))[0] for s in range(n))
    first = 'stages_0_block_0'
  elif iso:
    d['isotropic'] = True
    d['depth'] = max(iso) + 1
    d['dim'] = shapes['stem_conv/kernel'][3]
    first = 'blocks_0'
  else:
    raise UserError('checkpoint has no ConvNeXt blocks; cannot infer the architecture')
  if f'{first}/dwconv/kernel' in shapes:
    d['kernel_size'] = shapes[f'{first}/dwconv/kernel'][0]
  d['layer_scale'] = f'{first}/gamma' in shapes
  return d


def infer_arch(sd: Mapping[str, Any], arch: str | None = None) -> tuple[str, dict[str, Any]]:
  """(registry name, create_model overrides) for a checkpoint (any layout, incl. flat Flax).

  Without `arch`, the registry model with the same depths/dims (or depth/dim), patch size, kernel size and
  input channels is chosen; overrides carry num_classes and the layer-scale switch when they differ.
  """
  from convnext_jax.models import ConvNeXt, ConvNeXtIsotropic, create_model, list_models

  d = _describe(_flax_shapes(sd))
  if arch is None:
    for name in list_models():
      m = create_model(name)
      if not isinstance(m, (ConvNeXt, ConvNeXtIsotropic)):  # e.g. roadmap models share the registry
        continue
      if d['isotropic'] != (not hasattr(m, 'depths')):
        continue
      same = (
          ((m.depth, m.dim) == (d['depth'], d['dim']))
          if d['isotropic']
          else (tuple(m.depths) == d['depths'] and tuple(m.dims) == d['dims'])
      )
      if (
          same
          and m.patch_size == d['patch_size']
          and m.in_chans == d['in_chans']
          and m.kernel_size == d.get('kernel_size', m.kernel_size)
      ):
        arch = name
        break
    else:
      what = f'depth={d["depth"]}, dim={d["dim"]}' if d['isotropic'] else f'depths={d["depths"]}, dims={d["dims"]}'
      raise UserError(
          f'checkpoint architecture ({what}, patch_size={d["patch_size"]}) matches no registered model; ' f'pass --arch'
      )
  try:
    m = create_model(arch)
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'unknown --arch {arch!r}: {one_line(e)}') from None
  overrides: dict[str, Any] = {}
  if m.num_classes != d['num_classes']:
    overrides['num_classes'] = d['num_classes']
  if d['layer_scale'] and m.layer_scale_init_value <= 0:
    overrides['layer_scale_init_value'] = 1e-6
  elif not d['layer_scale'] and m.layer_scale_init_value > 0:
    overrides['layer_scale_init_value'] = 0.0
  return arch, overrides


# --------------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------------
_HEAD = ('head/kernel', 'head/bias')


def _unwrap_target(target: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
  target = dict(target) if not isinstance(target, dict) else target
  if set(target) == {'params'}:
    return target['params'], True
  return target, False


def load_pretrained(
    params_target: Mapping[str, Any],
    path: str,
    *,
    arch: str | None = None,
    reinit_head: bool = False,
    ema: bool = False,
    as_numpy: bool = False,
):
  """Loads `path` (any supported format/layout) into the structure of `params_target`, strictly.

  params_target: the model's params (or ``{'params': ...}``); leaves may be arrays or jax.ShapeDtypeStruct
    (only shapes/dtypes are used), except the head when `reinit_head` (its values are kept).
  arch: registry name of the target model; checked against the checkpoint's architecture when given.
  reinit_head: keep the target's head/{kernel,bias} (freshly initialized) instead of the checkpoint's, e.g.
    22K (21841) -> 1K or -> N classes; one line says so. Without it a head-size mismatch is a UserError naming
    the head key and both shapes.
  Returns the params with the target's structure (jax arrays; numpy with as_numpy=True).
  """
  import jax
  import jax.numpy as jnp

  tgt, wrapped = _unwrap_target(params_target)
  tree = _load_into(flatten(tgt), read_checkpoint(path, ema=ema), path=path, arch=arch, reinit_head=reinit_head)
  if not as_numpy:
    tree = jax.tree_util.tree_map(jnp.asarray, tree)
  return {'params': tree} if wrapped else tree


def _load_into(
    flat_t: dict[str, Any], sd: dict[str, np.ndarray], *, path: str, arch: str | None, reinit_head: bool
) -> dict[str, Any]:
  """Strict external state dict -> params tree with exactly the target's paths (see load_pretrained): the rule
  table renames and checks in the checkpoint's own key names, core_jax.weights.merge_params keeps the head."""
  layout = detect_layout(sd)
  if arch is not None and layout != 'flax':
    iso_ckpt = layout == 'official_iso'
    if iso_ckpt != ('iso' in arch):
      raise UserError(f'{path} holds a{"n isotropic" if iso_ckpt else " hierarchical"} ConvNeXt but arch is {arch}')
  table = rule_table(layout, _is_conv_mlp(sd, layout))
  ignore = ()
  head_rules = {p: table.to_external_key(p) for p in _HEAD}
  head_keys = {p: r[0] for p, r in head_rules.items()}
  head_t = head_rules['head/kernel'][1].transform
  if reinit_head:
    found = sd.get(head_keys['head/kernel'])
    found = format_shape(shape_of(found)) if found is not None else '(none)'
    want = format_shape(head_t.external_shape(shape_of(flat_t['head/kernel']))) if 'head/kernel' in flat_t else '(none)'
    log.warning(
        'head re-initialized: %s keeps the freshly initialized target values %s instead of the ' "checkpoint's %s",
        re.sub(r'[./](weight|kernel)$', '', head_keys['head/kernel']),
        want,
        found,
    )
    ignore = _HEAD
  else:
    k = head_keys['head/kernel']
    if k in sd and 'head/kernel' in flat_t:
      want = head_t.external_shape(shape_of(flat_t['head/kernel']))
      if shape_of(sd[k]) != want:
        raise UserError(
            f'{k}: expected shape {format_shape(want)} but checkpoint has {format_shape(shape_of(sd[k]))}'
            f' (head size mismatch; use reinit_head=True / --num-classes to re-initialize the head)'
        )
  flat = import_tensors(sd, table, flat_t, source='checkpoint', ignore_flax=ignore)
  return merge_params(flat, flat_t, keep_fresh=[re.escape(p) for p in ignore], source=path)


# create_model fields that change how a model runs or trains, not its parameters: not part of an export's recipe.
_RUN_FIELDS = frozenset({'compute', 'dtype', 'drop_path_rate', 'head_init_scale'})


def _plain(value):
  """JSON lists back to the tuples create_model takes."""
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _recorded_arch(flat: Mapping[str, Any], arch: str | None, overrides: Mapping[str, Any], where: str):
  """(arch, overrides) for a model a checkpoint names itself (its training config or a sidecar): the
  architecture overrides, plus num_classes when the head differs from the registry default."""
  from convnext_jax.models import create_model, model_config

  overrides = {k: _plain(v) for k, v in dict(overrides or {}).items() if k not in _RUN_FIELDS}
  try:
    defaults = model_config(arch)
  except ValueError:
    raise UserError(f'{where} names model {arch!r}, which convnext_jax does not register') from None
  classes = int(flat['head/bias'].shape[0]) if 'head/bias' in flat else 0
  overrides.pop('num_classes', None)
  if classes != defaults.get('num_classes', 1000):
    overrides['num_classes'] = classes
  try:
    create_model(arch, **overrides)
  except (TypeError, ValueError) as e:
    raise UserError(f'{where}: cannot build {arch} with {overrides}: {one_line(e)}') from None
  return arch, overrides


def _eval_preprocessing(transforms) -> dict[str, Any]:
  """What a training's eval transform list says about preprocessing: mean/std of its `normalize(...)` op, and the
  size (input_size), crop_pct and interpolation of its last op with a `size`, where it has them."""
  import ast

  found: dict[str, Any] = {}
  for spec in transforms or ():
    try:
      call = ast.parse(str(spec), mode='eval').body
      kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if isinstance(call, ast.Call) else {}
    except (SyntaxError, ValueError):
      continue
    name = getattr(call.func, 'id', '') if isinstance(call, ast.Call) else ''
    if name == 'normalize':
      found.update(mean=list(kw.get('mean', (0.0, 0.0, 0.0))), std=list(kw.get('std', (1.0, 1.0, 1.0))))
    if isinstance(kw.get('size'), int):
      found['input_size'] = [3, kw['size'], kw['size']]
      found['crop_pct'] = float(kw.get('crop_pct', 1.0))  # a squash resize or plain crop keeps the whole image
      if isinstance(kw.get('interpolation'), str):
        found['interpolation'] = kw['interpolation']
  return found


def _read_source(path: str, ema: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(flat state dict, what the source says about itself): a training step's meta gives 'arch' and
  'overrides' (from its config), 'metrics' and 'eval_transforms'; a .msgpack's sidecar gives its fields."""
  sd, found = _read(path, ema)
  if found.kind == 'step':
    meta = found.meta
    config = meta.get('config') or {}
    model = config.get('model') or {}
    info: dict[str, Any] = {}
    if model.get('name'):
      info.update(arch=model['name'], overrides=model.get('overrides') or {}, where=f'the training config of {path}')
    if meta.get('metrics'):  # eval metrics of the weights exported (the EMA ones carry an 'ema_' prefix)
      info['metrics'] = {
          k[len('ema_') :] if ema else k: v for k, v in meta['metrics'].items() if k.startswith('ema_') == ema
      }
    eval_tf = (config.get('data') or {}).get('eval_transforms')
    if eval_tf:
      info['eval_transforms'] = list(eval_tf)
      info.update(_eval_preprocessing(eval_tf))
    return sd, info
  info = {}
  if found.kind == 'msgpack' and found.meta:  # a .msgpack's sidecar names its model; other files are matched
    info = dict(found.meta, where=f'sidecar {sidecar_path(path)}')
  return sd, info


def _import(path: str, *, arch: str | None, num_classes: int | None, ema: bool, seed: int = 0):
  """import_checkpoint, plus what the source says about itself (see _read_source)."""
  import jax
  import jax.numpy as jnp

  from convnext_jax.layers import trunc_normal_init
  from convnext_jax.models import ConvNeXt, ConvNeXtIsotropic, create_model

  sd, info = _read_source(path, ema)
  if (arch is None or arch == info.get('arch')) and info.get('arch') and detect_layout(sd) == 'flax':
    # the checkpoint names its own model (e.g. trained with model.overrides): rebuild exactly that one
    arch, overrides = _recorded_arch(sd, info['arch'], info.get('overrides'), info['where'])
    if not isinstance(create_model(arch), (ConvNeXt, ConvNeXtIsotropic)):
      # e.g. a roadmap step: exportable only where its param tree is a ConvNeXt's (the last step is ConvNeXt-T)
      try:
        arch, overrides = infer_arch(sd)
      except UserError:
        raise UserError(
            f'{info["arch"]} is a {type(create_model(info["arch"])).__name__} whose parameters are not '
            f"a ConvNeXt's: there is no timm or official layout to export it to"
        ) from None
  else:
    arch, overrides = infer_arch(sd, arch)
  ckpt_classes = overrides.get('num_classes', create_model(arch).num_classes)
  reinit = num_classes is not None and num_classes != ckpt_classes
  if reinit:
    overrides['num_classes'] = num_classes
    if num_classes == create_model(arch).num_classes:
      overrides.pop('num_classes')
  model = create_model(arch, **overrides)
  size = model.patch_size * (1 if hasattr(model, 'depth') else 8)  # param shapes do not depend on it
  x = jax.ShapeDtypeStruct((1, size, size, model.in_chans), jnp.float32)
  target = flatten(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params'])
  if reinit and 'head/kernel' in target:
    shape = target['head/kernel'].shape
    target['head/kernel'] = np.asarray(
        trunc_normal_init(0.02, scale=model.head_init_scale)(jax.random.PRNGKey(seed), shape)
    )
    target['head/bias'] = np.zeros(target['head/bias'].shape, np.float32)
  params = _load_into(target, sd, path=path, arch=arch, reinit_head=reinit)
  return params, arch, overrides, info


def import_checkpoint(
    path: str, *, arch: str | None = None, num_classes: int | None = None, ema: bool = False, seed: int = 0
):
  """Reads a checkpoint and returns ``(params, arch, overrides)`` with ``create_model(arch, **overrides)``
  matching the params. A training step directory (its config) or a .msgpack (its sidecar) names its own model,
  overrides included; other files are matched against the registry (`infer_arch`). num_classes different from
  the checkpoint's head -> fresh head (trunc-normal 0.02, zero bias) with a message."""
  params, arch, overrides, _ = _import(path, arch=arch, num_classes=num_classes, ema=ema, seed=seed)
  return params, arch, overrides


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------
def _flat_numpy(params) -> dict[str, np.ndarray]:
  tgt, _ = _unwrap_target(params)
  return {k: np.asarray(v) for k, v in flatten(tgt).items()}


def flax_to_timm(params, arch: str) -> dict[str, np.ndarray]:
  """Flax params -> timm state dict (numpy). atto/femto/pico/nano: MLP as (out, in, 1, 1) (timm conv_mlp=True).
  Isotropic models have no timm version: they get the official isotropic layout."""
  flat = _flat_numpy(params)
  if 'iso' in arch or 'blocks_0/dwconv/kernel' in flat:
    return export_tensors(flat, rule_table('official_iso'))
  return export_tensors(flat, rule_table('timm', conv_mlp=arch in CONV_MLP_ARCHS))


def flax_to_official(params, arch: str) -> dict[str, np.ndarray]:
  """Flax params -> facebookresearch layout (Linear MLP (out, in), also for atto..nano)."""
  flat = _flat_numpy(params)
  if 'iso' in arch or 'blocks_0/dwconv/kernel' in flat:
    return export_tensors(flat, rule_table('official_iso'))
  return export_tensors(flat, rule_table('official'))


def _check_dst_dir(path: str):
  d = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(d):
    raise UserError(f'output directory does not exist: {d}')


def _atomic_write(path: str, write):
  _check_dst_dir(path)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# --------------------------------------------------------------------------------------------------------------
# timm recipe: how timm 1.0.x builds exactly our model
# --------------------------------------------------------------------------------------------------------------
# Our registry names that are timm model names with the same architecture.
TIMM_NAMES = frozenset(
    {
        'convnext_atto',
        'convnext_femto',
        'convnext_pico',
        'convnext_nano',
        'convnext_tiny',
        'convnext_small',
        'convnext_base',
        'convnext_large',
        'convnext_xlarge',
    }
)


def timm_recipe(arch: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What timm 1.0.x needs to build exactly ``create_model(arch, **overrides)`` (hierarchical ConvNeXt):

    {'model_name': a timm name, 'kwargs': timm.create_model keyword arguments (every architecture field),
     'builder': 'create_model', or 'ConvNeXt' (timm.models.convnext.ConvNeXt(**kwargs)) for models without
                layer scale, because timm.create_model drops the ls_init_value=None that turns it off,
     'identity': module paths to replace by torch.nn.Identity() before loading (else []),
     'python': the same as code,
     'python_pretrained' (only with create_model and identity []): the same through timm's pretrained path}

  timm's ConvNeXt gives stage 0 a stride-2 downsample (LN + 2x2 conv) whenever the stem stride is 2 (our
  patch_size=2, e.g. convnext_digits); our model has no such layer, so `identity` names `stages.0.downsample`.
  Without replacements (`identity == []`) the export also loads through timm's own
  ``create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=..., num_classes=N), **kwargs)``
  (num_classes in the overlay too: else timm drops a head whose size differs from the named model's).
  UserError when timm cannot build the model at all (isotropic, not 4 stages, a stem stride that makes timm
  dilate the last stage)."""
  from convnext_jax.models import ConvNeXt, create_model

  overrides = {k: v for k, v in dict(overrides or {}).items() if k not in _RUN_FIELDS}
  model = create_model(arch, **overrides)
  if not isinstance(model, ConvNeXt):
    raise UserError(f'timm has no {type(model).__name__} ({arch}); its export uses the official layout')
  depths, dims = [int(d) for d in model.depths], [int(d) for d in model.dims]
  if len(depths) != 4:
    raise UserError(f"timm's ConvNeXt has 4 stages; {arch} has {len(depths)} (depths={tuple(depths)})")
  stride, strides = int(model.patch_size), []
  for i in range(4):  # timm.models.convnext.ConvNeXt.__init__'s stage strides (output_stride=32)
    s = 2 if stride == 2 or i > 0 else 1
    if stride >= 32 and s > 1:
      raise UserError(
          f'timm cannot build {arch} with patch_size={model.patch_size}: it would dilate stage {i} '
          f'instead of downsampling'
      )
    stride *= s
    strides.append(s)
  identity = ['stages.0.downsample'] if strides[0] == 2 else []
  ls = float(model.layer_scale_init_value)
  kwargs = {
      'depths': depths,
      'dims': dims,
      'in_chans': int(model.in_chans),
      'num_classes': int(model.num_classes),
      'patch_size': int(model.patch_size),
      'kernel_sizes': int(model.kernel_size),
      'ls_init_value': ls if ls > 0 else None,
      'conv_mlp': arch in CONV_MLP_ARCHS,
  }
  name = arch if arch in TIMM_NAMES else 'convnext_tiny'
  args = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
  # timm.create_model drops None-valued kwargs, so "no layer scale" (ls_init_value=None) needs the class itself
  builder = 'create_model' if kwargs['ls_init_value'] is not None else 'ConvNeXt'
  build = (
      f'timm.create_model({name!r}, pretrained=False, {args})'
      if builder == 'create_model'
      else f'timm.models.convnext.ConvNeXt({args})'
  )
  code = ['import safetensors.torch, timm, torch', f'model = {build}']
  code += [
      f'model.{_torch_attr(p)} = torch.nn.Identity()  # timm adds this layer; the trained model has none'
      for p in identity
  ]
  code += ['model.load_state_dict(safetensors.torch.load_file(PATH), strict=True)']
  recipe = {'model_name': name, 'builder': builder, 'kwargs': kwargs, 'identity': identity, 'python': '\n'.join(code)}
  if not identity and builder == 'create_model':
    # timm's pretrained path; num_classes in the overlay too, or timm drops a head of another size
    recipe['python_pretrained'] = (
        f'model = timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH, '
        f'num_classes={kwargs["num_classes"]}), {args})'
    )
  return recipe


def _torch_attr(path: str) -> str:
  """'stages.0.downsample' -> 'stages[0].downsample'."""
  return re.sub(r'\.(\d+)', r'[\1]', path)


def timm_model_for(source, *, load_weights: bool = True):
  """The exact timm module for an export: `source` is an exported .safetensors file (its .json sidecar next to
  it gives the recipe; the weights are loaded with strict=True unless `load_weights` is False), a sidecar path,
  or a sidecar / recipe dict (no weights loaded). Returns the module in eval mode."""
  import timm
  import torch

  weights = None
  if isinstance(source, Mapping):
    meta = dict(source)
  else:
    path = str(source)
    side = path if path.endswith('.json') else sidecar_path(path)
    if not path.endswith('.json'):
      weights = path
    try:
      with open(side) as f:
        meta = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f'cannot read sidecar {side}: {one_line(e)}') from None
  recipe = meta.get('timm', meta)
  if 'model_name' not in recipe or 'kwargs' not in recipe:
    raise UserError('no timm recipe (its sidecar has no "timm" entry: not a hierarchical ConvNeXt export?)')
  kwargs = dict(recipe['kwargs'])
  for key in ('depths', 'dims'):
    kwargs[key] = tuple(kwargs[key])
  if recipe.get('builder', 'create_model') == 'create_model':
    model = timm.create_model(recipe['model_name'], pretrained=False, **kwargs)
  else:
    model = timm.models.convnext.ConvNeXt(**kwargs)
  for p in recipe.get('identity', []):
    parent, _, leaf = p.rpartition('.')
    setattr(model.get_submodule(parent), leaf, torch.nn.Identity())
  if weights is not None and load_weights:
    if file_kind(weights) != 'safetensors':
      raise UserError(f'{weights}: timm_model_for loads .safetensors exports')
    from safetensors.torch import load_file

    model.load_state_dict(load_file(weights), strict=True)
  return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------------------------
def save_timm_safetensors(params, path: str, arch: str) -> dict[str, np.ndarray]:
  """Writes the timm-layout .safetensors file. For a registry model timm knows by the same name (TIMM_NAMES)
  without overrides, ``timm.create_model(arch).load_state_dict(..., strict=True)`` and
  ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))`` load it; any other model
  needs `timm_recipe` (which `convert` writes into the .json sidecar; `timm_model_for` applies it)."""
  from safetensors.numpy import save_file

  sd = flax_to_timm(params, arch)
  _atomic_write(path, lambda p: save_file(sd, p, metadata={'format': 'pt'}))
  return sd


def save_official_pth(params, path: str, arch: str) -> dict[str, np.ndarray]:
  """Writes ``{'model': state_dict}`` in the facebookresearch layout (needs torch)."""
  try:
    import torch
  except ImportError:
    raise UserError('writing .pth needs PyTorch; write .safetensors instead') from None
  sd = flax_to_official(params, arch)
  _atomic_write(
      path,
      lambda p: torch.save(
          {'model': {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in sd.items()}}, p
      ),
  )
  return sd


def sidecar(
    params,
    *,
    arch: str,
    num_classes: int | None = None,
    input_size: int = 224,
    metrics: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation: str = 'bicubic',
    crop_pct: float | None = None,
    **extra,
) -> dict[str, Any]:
  """The JSON written next to an export: {arch, num_classes, input_size (C, H, W as timm), mean, std,
  interpolation, crop_pct, metrics[, overrides][, timm (timm_recipe)]} plus `extra` entries.
  crop_pct defaults to 0.875 at 224 and 1.0 (squash resize) above."""
  flat = _flat_numpy(params)
  if num_classes is None:
    num_classes = int(flat['head/bias'].shape[0]) if 'head/bias' in flat else 0
  in_chans = int(flat['stem_conv/kernel'].shape[2]) if 'stem_conv/kernel' in flat else 3
  meta = {
      'arch': arch,
      'num_classes': int(num_classes),
      'input_size': [in_chans, int(input_size), int(input_size)],
      'mean': list(mean),
      'std': list(std),
      'interpolation': interpolation,
      'crop_pct': float(crop_pct if crop_pct is not None else (0.875 if input_size <= 224 else 1.0)),
      'metrics': dict(metrics or {}),
  }
  ov = {k: list(v) if isinstance(v, tuple) else v for k, v in (overrides or {}).items() if k != 'num_classes'}
  if ov:
    meta['overrides'] = ov
  if 'stages_0_block_0/dwconv/kernel' in flat:
    try:
      meta['timm'] = timm_recipe(arch, overrides)
    except UserError:
      pass  # a model timm cannot build: the sidecar says nothing about timm
  meta.update(extra)
  return meta


def write_sidecar(path: str, meta: Mapping[str, Any]) -> str:
  """Writes `meta` as JSON next to the export `path`; returns the sidecar path."""
  side = sidecar_path(path)
  _atomic_write(side, lambda p: open(p, 'w').write(json.dumps(meta, indent=1) + '\n'))
  return side


def save_flax(params, path: str, *, arch: str, **sidecar_fields) -> str:
  """msgpack of the params tree (flax.serialization.to_bytes) + JSON sidecar next to it (`sidecar_path`;
  its fields: see `sidecar`). Returns the sidecar path."""
  from flax import serialization

  tgt, _ = _unwrap_target(params)
  data = serialization.to_bytes(unflatten(_flat_numpy(tgt)))

  def write(p):
    with open(p, 'wb') as f:
      f.write(data)

  meta = sidecar(tgt, arch=arch, **sidecar_fields)
  _atomic_write(path, write)
  return write_sidecar(path, meta)


def load_flax(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params tree of numpy arrays, sidecar dict or {} when there is none)."""
  flat = read_checkpoint(path)
  if detect_layout(flat) != 'flax':
    raise UserError(f'{path} is not a Flax param tree')
  meta = read_sidecar(path)
  return unflatten(flat), meta


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UserError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(
      prog='python -m convnext_jax.convert',
      description='Convert ConvNeXt weights: official/timm .pth/.safetensors <-> Flax .msgpack.',
  )
  p.add_argument('--src', required=True, help='.pth/.pt/.bin/.safetensors (official or timm) or .msgpack (Flax)')
  p.add_argument('--dst', required=True, help='.msgpack (Flax + .json sidecar), .safetensors (timm) or .pth (official)')
  p.add_argument('--arch', default=None, help='registry name (default: inferred from the checkpoint)')
  p.add_argument(
      '--num-classes',
      type=int,
      default=None,
      help='classes of the output model; differing from the checkpoint re-initializes the head',
  )
  p.add_argument('--ema', action='store_true', help='take model_ema / state_dict_ema from a training checkpoint')
  p.add_argument(
      '--input-size',
      type=int,
      default=None,
      help="resolution recorded in the sidecar (default: the source sidecar's, else 224)",
  )
  return p


def convert(
    src: str,
    dst: str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    ema: bool = False,
    input_size: int | None = None,
) -> str:
  """File -> file (+ .json sidecar); returns the summary printed by the CLI: one line, then the timm recipe
  when a .safetensors export needs more than ``timm.create_model(arch)``."""
  dst_ext = os.path.splitext(dst)[1].lower()
  if dst_ext not in ('.msgpack', '.safetensors', '.pth'):
    raise UserError(f'--dst must end in .msgpack, .safetensors or .pth, got {dst}')
  if os.path.abspath(src) == os.path.abspath(dst):
    raise UserError('--src and --dst are the same file')
  if os.path.abspath(sidecar_path(dst)) == os.path.abspath(src):
    raise UserError(f'--dst {dst} would overwrite --src {src} with its sidecar')
  _check_dst_dir(dst)
  params, arch, overrides, info = _import(src, arch=arch, num_classes=num_classes, ema=ema)
  n = sum(int(np.prod(v.shape)) for v in flatten(params).values())
  # preprocessing facts travel with the weights: from the source's sidecar or training config
  fields = {k: info[k] for k in ('mean', 'std', 'interpolation', 'crop_pct', 'eval_transforms') if k in info}
  if input_size is None:
    input_size = int(info['input_size'][-1]) if info.get('input_size') else 224
  if dst_ext == '.msgpack':
    save_flax(params, dst, arch=arch, input_size=input_size, overrides=overrides, metrics=info.get('metrics'), **fields)
    what = 'Flax msgpack'
  elif dst_ext == '.safetensors':
    save_timm_safetensors(params, dst, arch)
    what = 'timm safetensors' if 'iso' not in arch else 'official isotropic layout safetensors'
  else:
    save_official_pth(params, dst, arch)
    what = 'official .pth'
  meta = sidecar(params, arch=arch, input_size=input_size, overrides=overrides, metrics=info.get('metrics'), **fields)
  if dst_ext != '.msgpack':
    write_sidecar(dst, meta)
  extra = f' {overrides}' if overrides else ''
  summary = f'{src} -> {dst}: {arch}{extra}, {n:,} params, {what} + {os.path.basename(sidecar_path(dst))}'
  recipe = meta.get('timm')
  if dst_ext == '.safetensors' and recipe and (recipe['identity'] or overrides or arch not in TIMM_NAMES):
    summary += (
        '\ntimm builds this model as follows (also in the sidecar\'s "timm" entry; '
        'convnext_jax.convert.timm_model_for(PATH) does it):\n' + recipe['python'].replace('PATH', repr(dst))
    )
  return summary


def main(argv=None) -> int:
  try:
    args = _parser().parse_args(argv)
    print(
        convert(
            args.src, args.dst, arch=args.arch, num_classes=args.num_classes, ema=args.ema, input_size=args.input_size
        )
    )
  except UserError as e:
    print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
