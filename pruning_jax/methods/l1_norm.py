"""L1-norm filter pruning (Li et al., ICLR 2017), as the paper's code does it.

Criterion: the L1 norm of each output filter, sum |W| over (in, kh, kw), computed in the original's (O, I, kh, kw)
layout with numpy; keep the floor(C * (1 - p)) largest, ties broken as `np.argsort(norms)[::-1][:keep]` does
in the original (`cifar/l1-norm-pruning/res56prune.py`, `res110prune.py`, `imagenet/l1-norm-pruning/prune.py`).

Layer ids count the 3x3 / 7x7 convs in forward order (1x1 downsample convs skipped): the stem is id 1 and block
b (1-based) has its first conv at id 2b; ResNets prune only that first conv (the block's inner width), with the
per-stage ratio decided by id thresholds; skipped ids keep every filter. VGG-16-A is an explicit target cfg
(`vggprune.py`): each conv whose target width is smaller keeps its largest-norm filters.

  SCHEMES                          the named variants: 'resnet56_a', ..., 'resnet34_b' (skip ids, stage ratios)
  plan(model, variables, scheme)   {channel set name: kept indices} for pruning_jax.surgery
  prune(model_name_or_family, cfg, variables, scheme=None)  -> methods.PruneResult (the smaller model and its
                                   variables); scheme defaults to the named model's own (e.g. 'resnet56_a' needs a
                                   base: prune('resnet56', None, v, scheme='resnet56_a'))
  target_cfg(model, scheme)        the cfg the scheme produces (no weights needed)
A scheme is a name, or a dict {'skip': [...ids], 'ratios': [...per stage]} (ResNets) / {'cfg': [...]} (VGG).
"""
import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from core_jax.errors import UserError
from pruning_jax import models, surgery
from pruning_jax.methods import PruneResult, resolve_model


@dataclasses.dataclass(frozen=True)
class Scheme:
  skip: tuple[int, ...] = ()
  ratios: tuple[float, ...] = ()
  cfg: tuple | None = None  # VGG: explicit target cfg


SCHEMES: dict[str, Scheme] = {
  'vgg16_a': Scheme(cfg=(32, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 256, 256, 256, 'M', 256, 256, 256)),
  'resnet56_a': Scheme(skip=(16, 20, 38, 54), ratios=(0.1, 0.1, 0.1)),
  'resnet56_b': Scheme(skip=(16, 18, 20, 34, 38, 54), ratios=(0.6, 0.3, 0.1)),
  'resnet110_a': Scheme(skip=(36,), ratios=(0.5, 0.0, 0.0)),
  'resnet110_b': Scheme(skip=(36, 38, 74), ratios=(0.5, 0.4, 0.3)),
  'resnet34_a': Scheme(skip=(2, 8, 14, 16, 26, 28, 30, 32), ratios=(0.3, 0.3, 0.3, 0.0)),
  'resnet34_b': Scheme(skip=(2, 8, 14, 16, 26, 28, 30, 32), ratios=(0.5, 0.6, 0.4, 0.0)),
}


def get_scheme(scheme) -> Scheme:
  if isinstance(scheme, Scheme):
    return scheme
  if isinstance(scheme, str):
    if scheme not in SCHEMES:
      raise UserError(f'unknown L1-norm scheme {scheme!r} (known: {", ".join(SCHEMES)})')
    return SCHEMES[scheme]
  if isinstance(scheme, Mapping):
    unknown = sorted(set(scheme) - {'skip', 'ratios', 'cfg'})
    if unknown:
      raise UserError(f'L1-norm scheme has unknown key {unknown[0]!r} (use skip, ratios or cfg)')
    cfg = scheme.get('cfg')
    return Scheme(tuple(scheme.get('skip', ())), tuple(float(r) for r in scheme.get('ratios', ())),
                  None if cfg is None else models.normalize_cfg(cfg))
  raise UserError(f'an L1-norm scheme is a name or a dict, got {type(scheme).__name__}')


def filter_l1_norms(kernel) -> np.ndarray:
  """L1 norm per output filter of a flax (kh, kw, in, out) conv kernel, summed in PyTorch's (O, I, kh, kw) order
  (a Dense (in, out) kernel: per output unit)."""
  w = np.abs(np.asarray(jax.device_get(kernel), np.float32))
  if w.ndim == 2:
    return np.sum(w.T, axis=1)
  return np.sum(np.transpose(w, (3, 2, 0, 1)), axis=(1, 2, 3))


def keep_largest(norms: np.ndarray, num_keep: int) -> list[int]:
  """The original's choice: argsort ascending, reversed, first num_keep (then sorted as channel indices)."""
  return sorted(np.argsort(norms)[::-1][:num_keep].tolist())


def _stage_bounds(family: str, depth: int) -> list[int]:
  """Largest layer id of each stage (the code's thresholds: <= 2n, <= 4n, else)."""
  if family == 'resnet34':
    return [6, 14, 26, 10 ** 9]
  n = (depth - 2) // 6
  return [2 * n, 4 * n, 10 ** 9]


def _resnet_decisions(model, scheme: Scheme) -> list[tuple[int, int, float | None]]:
  """(block index, layer id of its first conv, prune ratio or None when skipped) per block."""
  family = models.family_of(model)
  cfg = models.cfg_of(model)
  bounds = _stage_bounds(family, getattr(model, 'depth', 34))
  if len(scheme.ratios) != len(bounds):
    raise UserError(f'{family}: {len(bounds)} per-stage ratios needed, got {len(scheme.ratios)}')
  for r in scheme.ratios:
    if not 0.0 <= r < 1.0:
      raise UserError(f'prune ratio {r} is outside [0, 1)')
  valid = {2 * (k + 1) for k in range(len(cfg))}
  bad = [i for i in scheme.skip if i not in valid]
  if bad:
    raise UserError(f'skip list names layer id {bad[0]}, which is not the first conv of a block of {family} '
                    f'(even ids 2..{2 * len(cfg)})')
  out = []
  for k in range(len(cfg)):
    layer_id = 2 * (k + 1)
    if layer_id in scheme.skip:
      out.append((k, layer_id, None))
    else:
      stage = next(s for s, b in enumerate(bounds) if layer_id <= b)
      out.append((k, layer_id, scheme.ratios[stage]))
  return out


def target_cfg(model, scheme) -> tuple:
  scheme = get_scheme(scheme)
  family = models.family_of(model)
  cfg = models.cfg_of(model)
  if family.startswith('vgg'):
    return _vgg_target(model, scheme)
  if family not in ('resnet_cifar', 'resnet34'):
    raise UserError(f'L1-norm pruning is defined for VGG and ResNet families, not {family}')
  new = list(cfg)
  for k, _, ratio in _resnet_decisions(model, scheme):
    if ratio is not None:
      new[k] = int(cfg[k] * (1 - ratio))  # the original's int(): floor for positive values
      if new[k] < 1:
        raise UserError(f'prune ratio {ratio} leaves no filter in block {k} (width {cfg[k]})')
  return tuple(new)


def _vgg_target(model, scheme: Scheme) -> tuple:
  if scheme.cfg is None:
    raise UserError('VGG L1-norm pruning needs an explicit target cfg (scheme {"cfg": [...]})')
  cfg = models.cfg_of(model)
  if [v == 'M' for v in scheme.cfg] != [v == 'M' for v in cfg]:
    raise UserError(f'target cfg {list(scheme.cfg)} does not have the layout of the model cfg {list(cfg)}')
  for a, b in zip(scheme.cfg, cfg):
    if a != 'M' and a > b:
      raise UserError(f'target cfg {list(scheme.cfg)} is wider than the model cfg {list(cfg)}')
  return tuple(scheme.cfg)


def plan(model, variables: Mapping, scheme) -> dict[str, list[int]]:
  """{channel set: kept filter indices} of the scheme, from the trained filters."""
  scheme = get_scheme(scheme)
  new_cfg = target_cfg(model, scheme)
  cfg = models.cfg_of(model)
  params = variables['params']
  keep = {}
  for cs in surgery.channel_sets(model):
    if cs.kind != 'conv' or cs.cfg_index >= len(cfg) or new_cfg[cs.cfg_index] == cfg[cs.cfg_index]:
      continue
    node = params
    for part in cs.conv.split('/'):
      node = node[part]
    keep[cs.name] = keep_largest(filter_l1_norms(node['kernel']), int(new_cfg[cs.cfg_index]))
  return keep


def prune(model_name_or_family, cfg, variables: Mapping, scheme=None, *, num_classes: int | None = None):
  """L1-norm pruning of `variables` (a model of that name / family and cfg) with `scheme` -> PruneResult."""
  if scheme is None:
    raise UserError(f'L1-norm pruning needs a scheme (one of {", ".join(SCHEMES)} or {{"skip", "ratios"}} / '
                    '{"cfg"})')
  model = resolve_model(model_name_or_family, cfg, num_classes, variables=variables)
  keep = plan(model, variables, scheme)
  small, small_vars = surgery.prune(model, variables, keep)
  name = scheme if isinstance(scheme, str) else None
  report = {'method': 'l1_norm', 'scheme': name or dataclasses.asdict(get_scheme(scheme)),
            'cfg': list(models.cfg_of(small)), 'kept': {k: len(v) for k, v in keep.items()}}
  return PruneResult(small, small_vars, report)
