"""ConvNeXt weights in: official facebookresearch `.pth`, timm `.safetensors`/`.pth`, Flax msgpack -> Flax params.

Layouts (detected from the keys, see `detect_layout`):
  'official'      facebookresearch/ConvNeXt: downsample_layers.0.0.weight, stages.i.j.dwconv.weight, norm, head
  'timm'          timm: stem.0, stages.i.downsample.k, stages.i.blocks.j.conv_dw / mlp.fc1 / mlp.fc2, head.norm,
                  head.fc; MLP weights are (out, in) or, for timm conv_mlp=True models (atto/femto/pico/nano),
                  (out, in, 1, 1) -- both are read; export writes what timm builds for that name
  'official_iso'  isotropic ConvNeXt: stem, blocks.j.*, norm, head (timm has no isotropic ConvNeXt, so iso
                  exports always use this layout, also inside .safetensors)
  'flax'          our own param tree, '/'-joined (msgpack files)
The Flax <-> official <-> timm key table is documented in `convnext_jax.models`; the rules below implement it
with `core_jax.weights` (one table per layout, used in both directions; `convnext_jax.export` writes with them).

Checkpoint files are read by `core_jax.weights.read_weights`: `.pth/.pt/.bin` with ``torch.load(weights_only=True)``
(no pickled code runs), unwrapped from ``model`` / ``state_dict`` (``model_ema`` / ``state_dict_ema`` with
``ema=True``, or when they are the only choice); `.safetensors` with ``safetensors.numpy`` (no torch); `.msgpack`
with flax.serialization.

Python API (writing: `convnext_jax.export`)
  read_checkpoint(path, ema=False) -> {key: np.ndarray}
  detect_layout(keys) -> str
  external_to_flax(state_dict, layout=None) -> flat Flax dict (no target, non-strict about the architecture)
  infer_arch(state_dict_or_flat_flax) -> (registry name, create_model overrides)
  load_pretrained(params_target, path, *, arch=None, reinit_head=False, ema=False) -> params (target's structure)
  import_checkpoint(path, *, arch=None, num_classes=None, ema=False) -> (params, arch, overrides)
  load_flax(path) -> (params, meta)

Which model: a training step directory carries its config, so its model is rebuilt exactly from model.name and
model.overrides (num_classes from the head); a .msgpack's sidecar names arch and overrides; any other file is
matched against the registry by its shapes (`infer_arch`; `--arch` to force).

CLI: ``python -m convnext_jax.convert`` runs `convnext_jax.export.main` (see there).
"""

from __future__ import annotations

import logging
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
    'load_flax',
    'CONV_MLP_ARCHS',
]

# timm builds these with conv_mlp=True: MLP weights are 1x1 convs (out, in, 1, 1).
CONV_MLP_ARCHS = frozenset({'convnext_atto', 'convnext_femto', 'convnext_pico', 'convnext_nano'})


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
  except UserError as e:  # an unknown name: the registry's line, with the closest names
    raise UserError(f'--arch: {e}') from None
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


def unwrap_params(target: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
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

  tgt, wrapped = unwrap_params(params_target)
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
      # only the class count differs (the same features per class): the head, which reinit_head re-initializes;
      # another feature width is another model, named below by its first differing key (reinit_head would not do)
      if shape_of(sd[k]) != want and _same_features(shape_of(sd[k]), want, sd.get(head_keys['head/bias']), flat_t):
        raise UserError(
            f'{k}: expected shape {format_shape(want)} but checkpoint has {format_shape(shape_of(sd[k]))}'
            f' (head size mismatch; use reinit_head=True / --num-classes to re-initialize the head)'
        )
  flat = import_tensors(sd, table, flat_t, source='checkpoint', ignore_flax=ignore)
  return merge_params(flat, flat_t, keep_fresh=[re.escape(p) for p in ignore], source=path)


def _same_features(found: tuple, want: tuple, found_bias, flat_t) -> bool:
  """Whether two head kernels differ in their class count alone: the same number of inputs per class."""
  if found_bias is None or 'head/bias' not in flat_t:
    return True
  classes_found, classes_want = int(np.prod(shape_of(found_bias))), int(np.prod(shape_of(flat_t['head/bias'])))
  if not classes_found or not classes_want:
    return True
  return int(np.prod(found)) // classes_found == int(np.prod(want)) // classes_want


# create_model fields that change how a model runs or trains, not its parameters: not part of an export's recipe.
RUN_FIELDS = frozenset({'compute', 'dtype', 'drop_path_rate', 'head_init_scale'})


def _plain(value):
  """JSON lists back to the tuples create_model takes."""
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _recorded_arch(flat: Mapping[str, Any], arch: str | None, overrides: Mapping[str, Any], where: str):
  """(arch, overrides) for a model a checkpoint names itself (its training config or a sidecar): the
  architecture overrides, plus num_classes when the head differs from the registry default."""
  from convnext_jax.models import create_model, model_config

  overrides = {k: _plain(v) for k, v in dict(overrides or {}).items() if k not in RUN_FIELDS}
  try:
    defaults = model_config(arch)
  except UserError:
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


def import_with_info(path: str, *, arch: str | None, num_classes: int | None, ema: bool, seed: int = 0):
  """import_checkpoint, plus what the source says about itself (see _read_source)."""
  import jax
  import jax.numpy as jnp

  from convnext_jax.layers import trunc_normal_init
  from convnext_jax.models import ConvNeXt, ConvNeXtIsotropic, create_model

  if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
    # -3 wrote a head of no classes and reported success
    raise UserError(f'--num-classes must be a positive number of classes, got {num_classes!r}')
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
  params, arch, overrides, _ = import_with_info(path, arch=arch, num_classes=num_classes, ema=ema, seed=seed)
  return params, arch, overrides


def load_flax(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params tree of numpy arrays, sidecar dict or {} when there is none)."""
  flat = read_checkpoint(path)
  if detect_layout(flat) != 'flax':
    raise UserError(f'{path} is not a Flax param tree')
  meta = read_sidecar(path)
  return unflatten(flat), meta


if __name__ == '__main__':  # the CLI lives with the writers; `python -m convnext_jax.convert` keeps working
  from convnext_jax.export import main  # pylint: disable=import-outside-toplevel  (only when run as a script)

  sys.exit(main())
