"""ConvNeXt weights out: Flax params -> timm `.safetensors`, official `.pth`, Flax msgpack, each with a JSON
sidecar, the timm recipe that rebuilds the exact model, and the converter CLI (reading: `convnext_jax.convert`).

Python API
  flax_to_timm(params, arch) / flax_to_official(params, arch) -> {key: np.ndarray}
  save_timm_safetensors(params, path, arch) / save_official_pth(params, path, arch)
  save_flax(params, path, *, arch, ...)  (read back with convnext_jax.convert.load_flax)
  sidecar(params, *, arch, ...) / write_sidecar(path, meta)
  timm_recipe(arch, overrides) -> {model_name, kwargs, identity, python}: how timm 1.0.x builds exactly that model
  timm_model_for(export.safetensors | sidecar path | sidecar dict) -> the timm module (weights loaded strictly)

CLI
  python -m convnext_jax.convert --src PATH --dst PATH [--arch NAME] [--num-classes N] [--ema] [--input-size S]
  (python -m convnext_jax.export is the same)
  src: .pth/.pt/.bin/.safetensors (official or timm layout), .msgpack (Flax; its .json sidecar gives the arch),
       a training step WORKDIR/checkpoints/STEP or a WORKDIR (its latest step) (params, or EMA params with --ema)
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
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from convnext_jax import models
from convnext_jax.convert import CONV_MLP_ARCHS, RUN_FIELDS, import_with_info, rule_table, unwrap_params
from core_jax.errors import UserError
from core_jax.weights import export_tensors, file_kind, flatten, one_line, sidecar_path, unflatten, write_atomic

__all__ = [
    'flax_to_timm',
    'flax_to_official',
    'save_timm_safetensors',
    'save_official_pth',
    'save_flax',
    'sidecar',
    'write_sidecar',
    'timm_recipe',
    'timm_model_for',
    'TIMM_NAMES',
    'convert',
    'main',
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------------
# Flax -> external state dicts
# --------------------------------------------------------------------------------------------------------------
def _flat_numpy(params) -> dict[str, np.ndarray]:
  tgt, _ = unwrap_params(params)
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
  if os.path.isdir(path):  # before the import's work, not at the write (core_jax.weights.write_atomic says it too)
    raise UserError(f'output {path} is a folder: name a file to write')


# --------------------------------------------------------------------------------------------------------------
# timm recipe: how timm 1.0.x builds exactly our model
# --------------------------------------------------------------------------------------------------------------
# Our registry names that are timm model names with the same architecture.
TIMM_NAMES = frozenset(n for n in models.IMAGENET_MODELS if models.MODELS.entry(n)[0] is models.ConvNeXt)


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

  overrides = {k: v for k, v in dict(overrides or {}).items() if k not in RUN_FIELDS}
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
  write_atomic(path, lambda p: save_file(sd, p, metadata={'format': 'pt'}))
  return sd


def save_official_pth(params, path: str, arch: str) -> dict[str, np.ndarray]:
  """Writes ``{'model': state_dict}`` in the facebookresearch layout (needs torch)."""
  try:
    import torch
  except ImportError:
    raise UserError('writing .pth needs PyTorch; write .safetensors instead') from None
  sd = flax_to_official(params, arch)
  write_atomic(
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
  interpolation, crop_pct, metrics[, overrides][, timm (timm_recipe) | timm_cannot_build]} plus `extra` entries.
  crop_pct defaults to 0.875 at 224 and 1.0 (squash resize) above. The stage widths are read from `params`, so a
  pruned model's per-stage `dims` reach the overrides and the timm recipe; per-block MLP widths that timm cannot
  build (`mlp_widths_timm_cannot_build`) are listed under 'timm_cannot_build' instead of a recipe."""
  flat = _flat_numpy(params)
  hierarchical = 'stages_0_block_0/dwconv/kernel' in flat
  if hierarchical:  # a pruned model's stage widths (per-stage `dims` are a timm argument): from the weights
    dims = stage_dims(flat)
    if dims != list(dict(overrides or {}).get('dims') or models.create_model(arch).dims):
      overrides = dict(overrides or {}, dims=tuple(dims))
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
  unbuildable = mlp_widths_timm_cannot_build(flat) if hierarchical else {}
  if unbuildable:
    meta['timm_cannot_build'] = {
        'why': (
            "timm 1.0.x's ConvNeXt builds every block's MLP hidden width as 4 x its stage width; these blocks"
            ' have other widths (per-block widths of a pruned model), so no timm.create_model call builds this model'
        ),
        'mlp_hidden': unbuildable,
    }
  elif hierarchical:
    try:
      meta['timm'] = timm_recipe(arch, overrides)
    except UserError:
      pass  # a model timm cannot build: the sidecar says nothing about timm
  meta.update(extra)
  return meta


def stage_dims(flat: Mapping[str, Any]) -> list[int]:
  """The stage widths of a hierarchical ConvNeXt's flat params: the stem's and each downsampling conv's outputs."""
  dims, i = [int(np.shape(flat['stem_conv/kernel'])[-1])], 1
  while f'downsample_{i}/conv/kernel' in flat:
    dims.append(int(np.shape(flat[f'downsample_{i}/conv/kernel'])[-1]))
    i += 1
  return dims


def mlp_widths_timm_cannot_build(flat: Mapping[str, Any]) -> dict[str, dict[str, int]]:
  """{block: {'hidden': its MLP hidden width, 'timm': the width timm builds}} for every block whose pwconv1 width
  is not timm's int(4 * stage width) (timm 1.0.x's ConvNeXt passes no mlp_ratio to its blocks): what a pruned
  model with per-block widths cannot say in timm's arguments."""
  out = {}
  for path in sorted(flat):
    m = re.fullmatch(r'(stages_\d+_block_\d+)/pwconv1/kernel', path)
    if m:
      hidden = int(np.shape(flat[path])[-1])
      width = int(np.shape(flat[f'{m.group(1)}/dwconv/kernel'])[-1])
      if hidden != 4 * width:
        out[m.group(1)] = {'hidden': hidden, 'timm': 4 * width}
  return out


def write_sidecar(path: str, meta: Mapping[str, Any]) -> str:
  """Writes `meta` as JSON next to the export `path`; returns the sidecar path."""
  side = sidecar_path(path)
  write_atomic(side, lambda p: open(p, 'w').write(json.dumps(meta, indent=1) + '\n'))
  return side


def save_flax(params, path: str, *, arch: str, **sidecar_fields) -> str:
  """msgpack of the params tree (flax.serialization.to_bytes) + JSON sidecar next to it (`sidecar_path`;
  its fields: see `sidecar`). Returns the sidecar path."""
  from flax import serialization

  tgt, _ = unwrap_params(params)
  data = serialization.to_bytes(unflatten(_flat_numpy(tgt)))

  def write(p):
    with open(p, 'wb') as f:
      f.write(data)

  meta = sidecar(tgt, arch=arch, **sidecar_fields)
  write_atomic(path, write)
  return write_sidecar(path, meta)


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
  params, arch, overrides, info = import_with_info(src, arch=arch, num_classes=num_classes, ema=ema)
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
        'convnext_jax.export.timm_model_for(PATH) does it):\n' + recipe['python'].replace('PATH', repr(dst))
    )
  return summary


def main(argv=None) -> int:
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  # orbax's 'Metadata file does not exist' warning when reading a training step: stderr is for our one line
  absl_logging.set_verbosity(absl_logging.ERROR)
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
