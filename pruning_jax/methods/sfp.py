"""Soft Filter Pruning (He et al., IJCAI 2018), as the paper's CIFAR appendix runs it (`cifar/soft-filter-pruning`).

After every epoch, in every conv (4-D kernel), the int(C_out * (1 - keep_rate)) filters with the smallest L2 norm
are set to 0 (keep_rate 0.7: 30% of each conv's filters; the original's `--rate 0.7`); they stay in the model and
keep receiving gradients, so a zeroed filter can grow back and another one be zeroed at the next epoch ("soft").
The original zeroes the conv weights only and says the feature map of a zero filter is 0 at inference; after a
BatchNorm it is not (it is ReLU(beta - gamma * mean / std)), so with the filter we also zero the BatchNorm's bias and
running mean of that channel (and a conv bias): the feature map is then exactly 0 in train and eval mode, while
gamma and the running variance are kept, so the filter's gradient (which flows through gamma) still lets it
recover. This makes the end of training what SFP says it is: removing the zero filters changes nothing.

Hard pruning at the end (`hard_prune`) goes through pruning_jax.surgery: every channel set the surgery can cut (a
block's inner width in the CIFAR ResNets, a VGG layer) loses the channels whose filter is 0, and the smaller model
computes what the soft model computes. Filters on channels the residual stream shares (the stem conv, each block's
last conv) cannot be cut by themselves: they stay in the smaller model as zero filters, and the report counts them.

  check_keep_rate(rate)                      (0, 1] or a one-line error
  pruned_count(filters, keep_rate)           int(filters * (1 - keep_rate)), the original's count
  soft_prune(params, batch_stats, keep_rate) jittable: (params, batch_stats) with each conv's weakest filters zeroed
  zeroed_filters(params)                     {conv kernel path: indices of its all-zero filters} (host)
  hard_prune(model, variables)               -> methods.PruneResult: the smaller model, its variables, the report
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from core_jax.errors import check_fraction
from core_jax.weights import flatten
from pruning_jax import models, surgery
from pruning_jax.methods import PruneResult


def check_keep_rate(rate, what: str = 'sfp.keep_rate') -> float:
  return check_fraction(rate, what, 'the fraction of filters kept')


def pruned_count(filters: int, keep_rate: float) -> int:
  return int(filters * (1.0 - keep_rate))


def _is_conv_kernel(path: str, leaf) -> bool:
  return path.endswith('/kernel') and np.ndim(leaf) == 4


def _bn_of(conv_path: str) -> str:
  """The BatchNorm that normalizes a conv's output, by the families' naming (conv1 -> bn1, downsample_conv ->
  downsample_bn)."""
  parent, _, name = conv_path.rpartition('/')
  bn = name.replace('conv', 'bn', 1)
  return f'{parent}/{bn}' if parent else bn


def _path(keys) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in keys)


def soft_prune(params, batch_stats, keep_rate: float):
  """(params, batch_stats) with, in every conv, the pruned_count smallest-L2 filters zeroed with their BN bias, BN
  running mean and conv bias (ties: the lower index first). Jittable; the trees keep their structure."""
  keep_rate = check_keep_rate(keep_rate)
  flat = flatten(params)
  keep = {}  # conv module path -> (C,) 0/1 of the filters kept
  for path, kernel in flat.items():
    if not _is_conv_kernel(path, kernel):
      continue
    n = pruned_count(kernel.shape[-1], keep_rate)
    if n == 0:
      continue
    norms = jnp.sqrt(jnp.sum(jnp.square(kernel.astype(jnp.float32)), axis=(0, 1, 2)))
    weakest = jnp.argsort(norms, stable=True)[:n]
    keep[path.rpartition('/')[0]] = jnp.ones(kernel.shape[-1], kernel.dtype).at[weakest].set(0)
  channel_of = {}  # leaf path -> the conv whose mask it takes
  for conv in keep:
    channel_of[f'{conv}/kernel'] = channel_of[f'{conv}/bias'] = conv
    channel_of[f'{_bn_of(conv)}/bias'] = channel_of[f'{_bn_of(conv)}/mean'] = conv

  def apply(keys, leaf):
    conv = channel_of.get(_path(keys))
    return leaf if conv is None else leaf * keep[conv].astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(apply, params), jax.tree_util.tree_map_with_path(apply, batch_stats)


def zeroed_filters(params) -> dict[str, list[int]]:
  """{conv kernel path: the indices of its filters that are entirely 0} (host numpy)."""
  out = {}
  for path, kernel in flatten(dict(params)).items():
    if _is_conv_kernel(path, kernel):
      k = np.asarray(jax.device_get(kernel))
      out[path] = np.flatnonzero(~np.any(k != 0, axis=(0, 1, 2))).tolist()
  return out


def hard_prune(model, variables: Mapping) -> PruneResult:
  """The zero filters removed wherever the surgery can cut their channel (see the module docstring)."""
  zeros = zeroed_filters(variables['params'])
  keep, cut = {}, set()
  for cs in surgery.channel_sets(model):
    if cs.kind != 'conv' or not cs.conv or f'{cs.conv}/kernel' not in zeros:
      continue
    dead = set(zeros[f'{cs.conv}/kernel'])
    if dead and len(dead) < cs.width:  # never a whole layer (keep_rate > 0 always leaves one filter)
      keep[cs.name] = [c for c in range(cs.width) if c not in dead]
      cut.add(f'{cs.conv}/kernel')
  small, small_vars = surgery.prune(model, variables, keep) if keep else (model, variables)
  report = {
      'method': 'sfp',
      'zero_filters': {p: len(v) for p, v in zeros.items() if v},
      'filters_removed': int(sum(len(zeros[p]) for p in cut)),
      'zero_filters_kept': int(sum(len(v) for p, v in zeros.items() if p not in cut)),
      'cfg': list(models.cfg_of(small)),
  }
  return PruneResult(small, small_vars, report)
