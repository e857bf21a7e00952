"""Network Slimming (Liu et al., ICCV 2017), as the paper's code does it (`cifar/network-slimming/*`).

Sparsity training: `sparsity_transform(model, s)` adds s * sign(gamma) to the gradient of every BatchNorm scale
that scores a channel set (all BN2d layers; on the ImageNet VGG-11 also the head's BN1d), applied to the raw
gradients before weight decay: it belongs in the Task's `pre` optimizer transforms (`Task.optimizer_transforms`).
The paper: s = 1e-4 for VGG-19, 1e-5 for PreResNet-164, DenseNet-40 and ImageNet VGG-11.

Pruning: one global threshold over the |gamma| of all those BNs, concatenated in forward order, sorted
ascending, taken at position int(total * percent); channels with |gamma| strictly greater are kept. Gamma and
beta of pruned channels are zeroed, then the model is cut physically through pruning_jax.surgery: VGG slices
conv / BN / next conv / the first Linear; PreResNet slices bn2 / bn3 with their convs and turns each block-input
BN's mask into the block's channel selection (conv1's input sliced, the residual stream untouched); DenseNet
slices no BN at all -- every BN's mask becomes the next channel selection. A channel set that would lose every
channel keeps its largest-|gamma| channel, and the report says so (the original crashes there).

  sparsity_transform(s, model=None)      optax GradientTransformation for the `pre` list (every BN scale; with
                                         `model`, the scored BNs only -- the same set for these families)
  plan(model, variables, percent)        ({set name: kept indices}, report)
  prune(model_name_or_family, cfg, variables, percent, mask=False)  -> methods.PruneResult: the smaller model
                                         and its variables, or with mask=True the large model, its variables
                                         with the pruned channels zeroed and the {0, 1} params mask (the mask
                                         implementation of the ImageNet VGG-11 experiment)
"""

import logging
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core_jax.errors import UserError
from pruning_jax import models, surgery
from pruning_jax.methods import PruneResult, resolve_model


def scored_bns(model) -> list[str]:
  """Module paths of the BNs whose |gamma| enter the global threshold, in forward order."""
  return [cs.bn for cs in surgery.channel_sets(model) if cs.bn is not None]


def sparsity_transform(s: float, model=None) -> optax.GradientTransformation:
  """g += s * sign(gamma) on BatchNorm scales (L1 subgradient), before the optimizer's chain."""
  if isinstance(s, nn.Module):  # sparsity_transform(model, s)
    s, model = model, s
  targets = None if model is None else {tuple(p.split('/')) + ('scale',) for p in scored_bns(model)}

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('sparsity_transform needs params in update()')

    def add(path, g, p):
      key = tuple(getattr(k, 'key', k) for k in path)
      hit = key[-1] == 'scale' if targets is None else key in targets
      return g + s * jnp.sign(p).astype(g.dtype) if hit else g

    return jax.tree_util.tree_map_with_path(add, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _leaf(tree, path: str):
  node = tree
  for part in path.split('/'):
    node = node[part]
  return np.asarray(jax.device_get(node))


def plan(model, variables: Mapping, percent: float):
  """({channel set: kept indices}, report) of the global |gamma| threshold at `percent`."""
  if not 0.0 <= percent < 1.0:
    raise UserError(f'slimming percent must be in [0, 1), got {percent}')
  sets = [cs for cs in surgery.channel_sets(model) if cs.bn is not None]
  params = variables['params']
  gammas = []
  for cs in sets:
    g = np.abs(_leaf(params, f'{cs.bn}/scale'))
    if cs.kind == 'selection':  # only channels the current selection still reads take part
      sel = getattr(model, 'selections', None)
      cur = None if sel is None else sel[cs.selection_index]
      g = g if cur is None else g[list(cur)]
    gammas.append(g)
  total = sum(g.size for g in gammas)
  flat = np.sort(np.concatenate(gammas))
  index = int(total * percent)
  threshold = float(flat[index])
  keep, emptied, cfg_counts = {}, [], {}
  for cs, g in zip(sets, gammas):
    if cs.kind == 'selection':
      sel = getattr(model, 'selections', None)
      cur = list(range(cs.width)) if sel is None or sel[cs.selection_index] is None else list(sel[cs.selection_index])
    else:
      cur = list(range(cs.width))
    kept = [c for c, v in zip(cur, g) if v > threshold]
    if not kept:
      kept = [cur[int(np.argmax(g))]]
      emptied.append(cs.name)
      logging.warning(
          'slimming: threshold %.6g would remove every channel of %s; keeping its strongest one', threshold, cs.name
      )
    keep[cs.name] = kept
    cfg_counts[cs.name] = len(kept)
  report = {
      'percent': percent,
      'threshold': threshold,
      'total_channels': int(total),
      'pruned_channels': int(total - sum(cfg_counts.values())),
      'kept': cfg_counts,
      'emptied': emptied,
  }
  return keep, report


def zero_pruned(model, variables: Mapping, keep: Mapping[str, list[int]]) -> dict:
  """Gamma and beta of every pruned channel set to 0 (what the original does before building the small net)."""
  params = jax.tree_util.tree_map(lambda x: np.array(jax.device_get(x)), dict(variables['params']))
  for cs in surgery.channel_sets(model):
    if cs.bn is None or cs.name not in keep:
      continue
    drop = np.setdiff1d(np.arange(cs.width), np.asarray(keep[cs.name]))
    node = params
    for part in cs.bn.split('/'):
      node = node[part]
    for leaf in ('scale', 'bias'):
      node[leaf][drop] = 0
  return dict(variables, params=params)


def prune(
    model_name_or_family,
    cfg,
    variables: Mapping,
    percent: float,
    *,
    mask: bool = False,
    num_classes: int | None = None,
    selections=None,
) -> PruneResult:
  """Threshold, zero gamma / beta, then physical surgery (or, with mask=True, the mask in the large shape)."""
  model = resolve_model(model_name_or_family, cfg, num_classes, selections, variables)
  keep, report = plan(model, variables, percent)
  report['method'] = 'slimming'
  zeroed = zero_pruned(model, variables, keep)
  if mask:
    channel_mask = surgery.channel_mask(model, zeroed, keep)
    masked = dict(zeroed, params=surgery.apply_mask(zeroed['params'], channel_mask))
    report['cfg'] = list(models.cfg_of(model))
    report['pruned_cfg'] = list(models.cfg_of(surgery.prune(model, zeroed, keep)[0]))
    return PruneResult(model, masked, report, channel_mask)
  small, small_vars = surgery.prune(model, zeroed, keep)
  report['cfg'] = list(models.cfg_of(small))
  return PruneResult(small, small_vars, report)
