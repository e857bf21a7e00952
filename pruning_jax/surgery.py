"""One channel-surgery mechanism for every family: kept channel indices -> smaller model + sliced variables.

A model's prunable channels come in *channel sets* (`channel_sets(model)`), each listing every tensor axis that
shares it (the DepGraph "group", as data):
  kind 'conv'       the output channels of one conv: its kernel out-axis (and bias), the BatchNorm after it
                    (scale / bias in params, mean / var in batch_stats), and the consumer: the next conv's in-axis,
                    or the first Dense layer's input rows after a VGG flatten (one row per channel and position).
                    Keep indices are positions in the current width.
  kind 'selection'  a channel_selection (PreResNet, DenseNet, ResNet-50-2x): the BN before it keeps its full width
                    (the residual / concat stream is never shrunk); the kept channels become the selection
                    indices and the consumer conv's (or the fc's) in-axis is sliced. Keep indices are channel ids
                    of the full stream and must be a subset of the current selection.
Each set names the cfg entry it sizes, the BN whose |gamma| scores it (Network Slimming) and, for conv sets, the
conv whose filters score it (L1-norm).

  prune(model, variables, keep)       {set name: kept indices} -> (smaller model, its variables); sets not named
                                      keep every channel. The result is the same family built from a smaller
                                      cfg and trains through the same loop as any other model.
  channel_mask(model, variables, keep) the same choice in the large shape: a {0, 1} tree shaped like params that
                                      zeroes every member of the pruned channels (for sets without a BN-then-ReLU
                                      consumer the outputs equal the physically pruned model's; see tests).
  apply_mask(tree, mask)              elementwise product (None leaves untouched)
"""

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from core_jax.errors import UserError
from core_jax.weights import flatten, unflatten
from pruning_jax import models
from pruning_jax.models import densenet, preresnet, resnet_cifar, resnet_imagenet

Member = tuple[str, str, int, int]  # (collection, flax path of the leaf, axis, repeat: rows per channel)


@dataclasses.dataclass(frozen=True)
class ChannelSet:
  name: str
  kind: str  # 'conv' | 'selection'
  width: int  # current width (conv) or full stream width (selection)
  cfg_index: int
  bn: str | None  # module path of the BN whose |gamma| scores this set
  conv: str | None  # module path of the conv whose filters score this set (conv sets)
  members: tuple[Member, ...]  # sliced tensors (conv sets: all; selection sets: the consumer's in-axis)
  selection_index: int | None = None


def _bn_members(path: str) -> list[Member]:
  return [
      ('params', f'{path}/scale', 0, 1),
      ('params', f'{path}/bias', 0, 1),
      ('batch_stats', f'{path}/mean', 0, 1),
      ('batch_stats', f'{path}/var', 0, 1),
  ]


def _conv_set(name, width, cfg_index, conv, bn, consumer, consumer_axis=-2, conv_bias=False, repeat=1):
  members = [('params', f'{conv}/kernel', -1, 1)]
  if conv_bias:
    members.append(('params', f'{conv}/bias', 0, 1))
  if bn is not None:
    members += _bn_members(bn)
  members.append(('params', f'{consumer}/kernel', consumer_axis, repeat))
  return ChannelSet(name, 'conv', width, cfg_index, bn, conv, tuple(members))


def _selection_set(name, width, cfg_index, bn, consumer, selection_index, consumer_axis=-2):
  consumer_member = (('params', f'{consumer}/kernel', consumer_axis, 1),)
  return ChannelSet(name, 'selection', width, cfg_index, bn, None, consumer_member, selection_index)


def _vgg_sets(model) -> list[ChannelSet]:
  head = model.head
  cfg = tuple(model.cfg)
  body = cfg[:-2] if head == 'imagenet_bn' else cfg
  idx = [i for i, v in enumerate(body) if v != 'M']
  first_fc = {'l1': 'fc1', 'slimming': 'fc', 'imagenet': 'fc1', 'imagenet_bn': 'fc1', 'imagenet_gap': 'fc'}[head]
  pools = sum(1 for v in body if v == 'M')
  flattened = head in ('imagenet', 'imagenet_bn')  # NCHW flatten of the last map: channel-major rows
  repeat = (224 // 2**pools) ** 2 if flattened else 1
  sets = []
  for i, ci in enumerate(idx):
    last = i == len(idx) - 1
    consumer = first_fc if last else f'conv{i + 1}'
    sets.append(
        _conv_set(
            f'conv{i}',
            int(body[ci]),
            ci,
            f'conv{i}',
            None if head in ('imagenet', 'imagenet_gap') else f'bn{i}',
            consumer,
            0 if last else -2,
            conv_bias=head.startswith('imagenet'),
            repeat=repeat if last else 1,
        )
    )
  if head == 'imagenet_bn':
    for j, (fc, bn, nxt) in enumerate((('fc1', 'fc_bn1', 'fc2'), ('fc2', 'fc_bn2', 'fc3'))):
      sets.append(_conv_set(fc, int(cfg[len(cfg) - 2 + j]), len(cfg) - 2 + j, fc, bn, nxt, 0, conv_bias=True))
  return sets


def _resnet_basic_sets(model, n_per_stage) -> list[ChannelSet]:
  cfg = models.cfg_of(model)
  sets, k = [], 0
  for s, n in enumerate(n_per_stage):
    for b in range(n):
      blk = f'layer{s + 1}_{b}'
      sets.append(_conv_set(f'{blk}/conv1', int(cfg[k]), k, f'{blk}/conv1', f'{blk}/bn1', f'{blk}/conv2'))
      k += 1
  return sets


def _bottleneck_sets(blk: str, cfg, k: int, bns: tuple[str, str]) -> list[ChannelSet]:
  """The two inner widths of bottleneck block k (cfg entries 3k+1, 3k+2): conv1 -> BN -> conv2, conv2 -> BN -> conv3."""
  return [
      _conv_set(f'{blk}/conv{j}', int(cfg[3 * k + j]), 3 * k + j, f'{blk}/conv{j}', f'{blk}/{bn}', f'{blk}/conv{j + 1}')
      for j, bn in ((1, bns[0]), (2, bns[1]))
  ]


def _resnet50_sets(model) -> list[ChannelSet]:
  cfg = models.cfg_of(model)
  full = resnet_imagenet.block_input_widths(50)
  sets, k = [], 0
  for s, n in enumerate(resnet_imagenet.STAGES[50]):
    for b in range(n):
      blk = f'layer{s + 1}_{b}'
      sets.append(_selection_set(f'{blk}/select', full[k], 3 * k, None, f'{blk}/conv1', k))
      sets += _bottleneck_sets(blk, cfg, k, ('bn1', 'bn2'))
      k += 1
  return sets


def _preresnet_sets(model) -> list[ChannelSet]:
  cfg = models.cfg_of(model)
  n = preresnet.blocks_per_stage(model.depth)
  full = preresnet.selection_widths(model.depth)
  sets = []
  for s in range(3):
    for b in range(n):
      k = s * n + b
      blk = f'layer{s + 1}_{b}'
      sets.append(_selection_set(f'{blk}/select', full[k], 3 * k, f'{blk}/bn1', f'{blk}/conv1', k))
      sets += _bottleneck_sets(blk, cfg, k, ('bn2', 'bn3'))
  sets.append(_selection_set('select', full[-1], len(cfg) - 1, 'bn', 'fc', 3 * n, consumer_axis=0))
  return sets


def _densenet_sets(model) -> list[ChannelSet]:
  n = densenet.layers_per_block(model.depth)
  full = densenet.selection_widths(model.depth, model.growth)
  sets, k = [], 0
  for s in range(3):
    for i in range(n):
      m = f'dense{s + 1}_{i}'
      sets.append(_selection_set(f'{m}/select', full[k], k, f'{m}/bn1', f'{m}/conv1', k))
      k += 1
    if s < 2:
      sets.append(_selection_set(f'trans{s + 1}/select', full[k], k, f'trans{s + 1}/bn1', f'trans{s + 1}/conv1', k))
    else:
      sets.append(_selection_set('select', full[k], k, 'bn', 'fc', k, consumer_axis=0))
    k += 1
  return sets


def channel_sets(model) -> list[ChannelSet]:
  """Every prunable channel set of `model`, in forward order."""
  family = models.family_of(model)
  if family.startswith('vgg'):
    return _vgg_sets(model)
  if family == 'resnet_cifar':
    return _resnet_basic_sets(model, (resnet_cifar.blocks_per_stage(model.depth),) * 3)
  if family == 'resnet34':
    return _resnet_basic_sets(model, resnet_imagenet.STAGES[34])
  if family == 'resnet50':
    return _resnet50_sets(model)
  if family == 'preresnet':
    return _preresnet_sets(model)
  return _densenet_sets(model)


def _current_selection(model, cs: ChannelSet) -> list[int]:
  sel = getattr(model, 'selections', None)
  cur = None if sel is None else sel[cs.selection_index]
  return list(range(cs.width)) if cur is None else list(cur)


def _check_keep(model, cs: ChannelSet, keep) -> np.ndarray:
  keep = np.asarray(sorted(int(i) for i in keep), np.int64)
  if keep.size == 0:
    raise UserError(f'pruning would remove every channel of {cs.name} (keep at least one)')
  if len(set(keep.tolist())) != keep.size:
    raise UserError(f'{cs.name}: kept channel indices repeat')
  if keep[0] < 0 or keep[-1] >= cs.width:
    raise UserError(
        f'{cs.name}: kept channel {int(keep[-1]) if keep[-1] >= cs.width else int(keep[0])} is outside '
        f'[0, {cs.width})'
    )
  if cs.kind == 'selection':
    missing = sorted(set(keep.tolist()) - set(_current_selection(model, cs)))
    if missing:
      raise UserError(f'{cs.name}: channel {missing[0]} is not in the current selection')
  return keep


def _rows(keep_pos: np.ndarray, repeat: int) -> np.ndarray:
  return (keep_pos[:, None] * repeat + np.arange(repeat)[None, :]).reshape(-1)


def _plan(model, keep: Mapping[str, Sequence[int]]):
  """[(set, kept indices, positions on the members' axis)] for the sets `keep` names."""
  sets = {cs.name: cs for cs in channel_sets(model)}
  unknown = sorted(set(keep) - set(sets))
  if unknown:
    raise UserError(
        f'no prunable channel set {unknown[0]!r} in {models.family_of(model)} (known e.g. '
        f'{", ".join(list(sets)[:4])})'
    )
  plan = []
  for name, kept in keep.items():
    cs = sets[name]
    kept = _check_keep(model, cs, kept)
    if cs.kind == 'selection':
      position = {c: p for p, c in enumerate(_current_selection(model, cs))}
      pos = np.asarray([position[int(c)] for c in kept], np.int64)
    else:
      pos = kept
    plan.append((cs, kept, pos))
  return plan


def prune(model, variables: Mapping, keep: Mapping[str, Sequence[int]]):
  """(smaller model, its variables): every tensor sharing a pruned channel set sliced in one place."""
  plan = _plan(model, keep)
  flat = {
      c: {p: np.asarray(jax.device_get(x)) for p, x in flatten(dict(variables.get(c, {}))).items()}
      for c in ('params', 'batch_stats')
  }
  cfg = list(models.cfg_of(model))
  selections = getattr(model, 'selections', None)
  selections = None if selections is None else list(selections)
  for cs, kept, pos in plan:
    for collection, path, axis, repeat in cs.members:
      flat[collection][path] = np.take(flat[collection][path], _rows(pos, repeat), axis=axis)
    cfg[cs.cfg_index] = int(kept.size)
    if cs.kind == 'selection':
      if selections is None:
        selections = [None] * _num_selections(model)
      selections[cs.selection_index] = None if kept.size == cs.width else tuple(int(i) for i in kept)
  small = models.build(
      models.family_of(model), cfg, model.num_classes, selections, getattr(model, 'dtype', None), model.compute
  )
  return small, {c: unflatten(v) for c, v in flat.items() if v}


def _num_selections(model) -> int:
  return sum(1 for cs in channel_sets(model) if cs.kind == 'selection')


def channel_mask(model, variables: Mapping, keep: Mapping[str, Sequence[int]]) -> dict:
  """A {0, 1} tree shaped like variables['params'] zeroing every param member of the pruned channels; leaves no
  set touches are None. Selection sets zero their full-width BN's scale / bias and the consumer's in-axis."""
  plan = _plan(model, keep)
  params = flatten(dict(variables['params']))
  mask: dict[str, np.ndarray | None] = {p: None for p in params}

  def zero(path, axis, drop_positions):
    m = mask[path]
    if m is None:
      m = np.ones(np.shape(params[path]), np.asarray(params[path]).dtype)
    index = [slice(None)] * m.ndim
    index[axis] = drop_positions
    m[tuple(index)] = 0
    mask[path] = m

  for cs, kept, pos in plan:
    n_axis = cs.width if cs.kind == 'conv' else len(_current_selection(model, cs))
    drop_pos = np.setdiff1d(np.arange(n_axis), pos)
    for collection, path, axis, repeat in cs.members:
      if collection == 'params':
        zero(path, axis, _rows(drop_pos, repeat))
    if cs.kind == 'selection' and cs.bn is not None:
      drop = np.setdiff1d(np.asarray(_current_selection(model, cs)), kept)
      for leaf in ('scale', 'bias'):
        zero(f'{cs.bn}/{leaf}', 0, drop)
  return unflatten(mask)


def apply_mask(tree, mask):
  """tree * mask leafwise; None mask leaves keep the tree's leaf."""
  return jax.tree_util.tree_map(lambda m, x: x if m is None else x * m, mask, tree, is_leaf=lambda m: m is None)
