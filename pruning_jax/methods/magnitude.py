"""Unstructured magnitude pruning (Han et al. 2015), as the paper's code does it (`cifar/weight-level/*`).

Only conv weights are pruned (4-D kernels, and ConvNeXt's pointwise convs `pwconv1` / `pwconv2`, which it writes
as Linear layers over channels-last maps; the classifier Linear, norms and biases are kept). One global threshold
over all of them: |w| of every conv kernel concatenated and sorted ascending, the threshold is the value at position
int(total * percent), and weights with |w| strictly greater are kept. Pruned weights are set to 0 and the mask
implementation (pruning_jax.masking.keep_masked, the Task's `post` transform) keeps them exactly 0 through
training, checkpoints and resumes: the mask is part of the optimizer state.

Given a current mask (iterative pruning, the lottery-ticket rounds), the threshold is taken over the weights the
mask still keeps, so `percent` removes that fraction of the *remaining* weights.

Scratch-E / Scratch-B (`cifar_E.py`, `cifar_B.py`): the model freshly initialized, then every conv kernel
re-drawn as Normal(0, sqrt(2 / n)) with n = nnz(mask) / in_channels (He fan-in of the sparse layer) and masked.
The Scratch-B budget counts MACs over the non-zero conv weights (`nonzero_macs`), from the mask the pruned model
actually has.

  is_conv_kernel(path, leaf)              the filter: 4-D 'kernel' leaves and 2-D pwconv kernels
  threshold(params, percent, mask=None)   the global |w| threshold (over the weights `mask` keeps)
  plan(params, percent, mask=None)        (params-shaped {0, 1} mask, None off conv kernels; report)
  prune(model_name_or_family, cfg, variables, percent, mask=None)  -> methods.PruneResult: the large model,
                                          its variables with the pruned weights zeroed, the report and the mask
  sparse_reinit(params, mask, seed)       the Scratch-E/B conv re-initialization (scratch.init='sparse_he'; 'model'
                                          keeps the model's own init under the mask: ConvNeXt's truncated normal
                                          of std 0.02 does not depend on the fan-in)
  nonzero_macs(model, variables, input_shape)  MACs with every conv counting only its non-zero weights
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import counting
from core_jax.errors import UserError
from core_jax.weights import flatten, unflatten
from pruning_jax import surgery
from pruning_jax.methods import PruneResult, resolve_model

POINTWISE_CONVS = ('pwconv1', 'pwconv2')  # ConvNeXt's 1x1 convs, nn.Dense over the channels of NHWC maps


def is_conv_kernel(path: tuple, leaf) -> bool:
  if not path or path[-1] != 'kernel':
    return False
  return np.ndim(leaf) == 4 or (np.ndim(leaf) == 2 and len(path) >= 2 and path[-2] in POINTWISE_CONVS)


def _conv_kernels(params) -> dict[str, np.ndarray]:
  """{path: host kernel} of every conv kernel, in sorted path order (the order does not change the threshold)."""
  return {
      p: np.asarray(jax.device_get(x))
      for p, x in sorted(flatten(dict(params)).items())
      if is_conv_kernel(tuple(p.split('/')), x)
  }


def _mask_leaf(mask, path: str):
  node = mask
  for part in path.split('/'):
    if node is None or part not in node:
      return None
    node = node[part]
  return None if node is None else np.asarray(node)


def check_percent(percent: float, what: str = 'prune.percent') -> float:
  percent = float(percent)
  if not 0.0 <= percent < 1.0:
    raise UserError(f'{what} must be in [0, 1) (a keep ratio in (0, 1]), got {percent}')
  return percent


def threshold(params, percent: float, mask=None) -> float:
  """The value at int(n * percent) of the sorted |w| over every conv weight (that `mask` keeps, when given)."""
  percent = check_percent(percent)
  values = []
  for path, w in _conv_kernels(params).items():
    m = _mask_leaf(mask, path) if mask is not None else None
    a = np.abs(w).reshape(-1)
    values.append(a if m is None else a[np.asarray(m).reshape(-1) != 0])
  flat = np.sort(np.concatenate(values)) if values else np.zeros((0,))
  if flat.size == 0:
    raise UserError('magnitude pruning: the model has no conv weight left to prune')
  return float(flat[int(flat.size * percent)])


def plan(params, percent: float, mask=None):
  """(mask, report): 1 on conv weights with |w| > threshold (and still kept by `mask`), None on other leaves."""
  t = threshold(params, percent, mask)
  kernels = _conv_kernels(params)
  flat_mask, per_layer = {}, {}
  for path in flatten(dict(params)):
    if path not in kernels:
      flat_mask[path] = None
      continue
    w = kernels[path]
    keep = np.abs(w) > t
    previous = _mask_leaf(mask, path) if mask is not None else None
    if previous is not None:
      keep &= previous != 0
    flat_mask[path] = keep.astype(w.dtype)
    per_layer[path] = float(keep.mean())
  total = sum(k.size for k in kernels.values())
  kept = int(sum(int(flat_mask[p].sum()) for p in kernels))
  report = {
      'method': 'magnitude',
      'percent': float(percent),
      'threshold': t,
      'conv_weights': int(total),
      'kept_conv_weights': kept,
      'conv_sparsity': 1.0 - kept / total,
      'kept_fraction_per_layer': per_layer,
  }
  return unflatten(flat_mask), report


def apply(params, mask):
  """params * mask leafwise (None mask leaves: unchanged), as host numpy."""
  return surgery.apply_mask(jax.device_get(dict(params)), mask)


def prune(
    model_name_or_family, cfg, variables: Mapping, percent: float, *, mask=None, num_classes: int | None = None
) -> PruneResult:
  """One global magnitude threshold over the conv weights -> PruneResult (the large model, zeroed, and the mask)."""
  model = resolve_model(model_name_or_family, cfg, num_classes, variables=variables)
  new_mask, report = plan(variables['params'], percent, mask)
  masked = dict(variables, params=apply(variables['params'], new_mask))
  from pruning_jax import models  # pylint: disable=import-outside-toplevel

  report['cfg'] = list(models.cfg_of(model))
  return PruneResult(model, masked, report, new_mask)


def sparse_reinit(params, mask, seed: int) -> dict:
  """params with every masked conv kernel re-drawn as Normal(0, sqrt(2 / n)) * mask, n = nnz(mask) / in_channels
  (flax kernels are (kh, kw, in, out), pointwise (in, out)); other leaves unchanged. Kernel i (sorted path order)
  draws from numpy's default_rng([seed, i]) (host-side: no program to compile per kernel shape)."""
  flat = {p: np.asarray(jax.device_get(x)) for p, x in flatten(dict(params)).items()}
  for i, path in enumerate(sorted(flat)):
    m = _mask_leaf(mask, path)
    if m is None or not is_conv_kernel(tuple(path.split('/')), flat[path]):
      continue
    n = float(m.sum()) / flat[path].shape[-2]
    if n == 0:  # every weight of the layer pruned
      flat[path] = np.zeros_like(flat[path])
      continue
    draw = np.random.default_rng([int(seed), i]).standard_normal(flat[path].shape)
    flat[path] = (draw * math.sqrt(2.0 / n) * m).astype(flat[path].dtype)
  return unflatten(flat)


def nonzero_macs(model, variables: Mapping, input_shape) -> int:
  """The model's MACs for one image with each conv counting only its non-zero weights (output positions x nnz):
  the dense count (core_jax.counting) less, per conv, positions x (zero weights)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  dense = counting.count_macs(model, x, variables=variables)
  maps = conv_output_maps(model, variables, input_shape)
  zeros = 0
  for path, w in _conv_kernels(variables['params']).items():
    zeros += math.prod(maps[path]) * int(w.size - np.count_nonzero(w))
  return int(dense - zeros)


def conv_output_maps(model, variables: Mapping, input_shape) -> dict[str, tuple[int, ...]]:
  """{conv kernel path: the spatial shape of that conv's output} for one image of `input_shape` (abstract: nothing
  is computed)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

  def intermediates():
    return model.apply(
        variables, jnp.zeros(x.shape, x.dtype), capture_intermediates=True, mutable=['intermediates'], train=False
    )[1]['intermediates']

  outputs = {  # module path -> its __call__'s (first) output
      '/'.join(str(getattr(k, 'key', '')) for k in keys[:-2]): leaf
      for keys, leaf in jax.tree_util.tree_flatten_with_path(jax.eval_shape(intermediates))[0]
      if len(keys) >= 2 and getattr(keys[-2], 'key', None) == '__call__' and getattr(keys[-1], 'idx', None) == 0
  }
  maps = {}
  for path in _conv_kernels(variables['params']):
    out = outputs.get(path.rsplit('/', 1)[0])
    if out is None:
      raise UserError(f'nonzero_macs: no output recorded for the conv {path}')
    maps[path] = tuple(int(d) for d in out.shape[1:-1])
  return maps
