"""Sparse Structure Selection (Huang & Wang, ECCV 2018): residual blocks removed by sparse learned factors.

Every residual branch is multiplied by a scalar factor lambda (the models' block_scale=True, init 1):
out = ReLU(lambda * F(x) + shortcut). Training minimizes loss + gamma * sum |lambda| with the weights on the
configured optimizer and the factors on an accelerated proximal gradient step (`proximal_gradient`: the authors'
MXNet APGNAG optimizer, NAG momentum on the factors, no weight decay on them):
  v <- mu * v;  z <- S(lambda - lr * g, lr * gamma);  v <- z - lambda + v;  lambda <- max(0, z + mu * v)
with S(x, t) = sign(x) max(|x| - t, 0), the proximal operator of t |.|, which sets small factors exactly to 0.
The Task gives that transformation only the factors (core_jax.task.Task.own_optimizer).

Pruning (`prune`): a block whose factor is exactly 0 is removed -- its branch is gone, the block is its shortcut
(identity, or the downsample conv + BN of a stage's first ResNet-50 block), written in the cfg as width 0 -- and
every kept factor is folded into the branch's last BatchNorm (scale and bias times lambda), so the pruned model has
no factors and computes what the factor model computes. A stage left without any parameterized layer (a CIFAR
ResNet stage whose every branch is at 0: its shortcuts have no weights) keeps its strongest block (largest factor;
all at 0: the largest last-BN scale norm) and the report names it, as Network Slimming keeps a layer's strongest
channel; with prune.on_empty_layer='error' it is a one-line error instead. A ResNet-50 stage whose branches all go
keeps its projection shortcut (the paper's ResNet-41 and -26 do this to stage 1).

The paper's fixed architectures (Liu et al.'s README; `STAGE_BLOCKS`): per ResNet-50 stage (a, b), a branches
kept, b whether the stage's first (downsampling) block keeps its branch; depth 2 + 3 * sum(a). Which of the equal
later blocks stay is not given; the first ones do (params and MACs do not depend on it).

  proximal_gradient(learning_rate, gamma, momentum=0.9)  the optax transformation of the factors
  is_factor(names)                  the factors' leaves (path names ending in 'block_scale')
  factors(params)                   {block name: lambda} (host floats)
  plan(model, variables, on_empty)  (removed block indices, report)
  remove_blocks(model, variables, removed)  -> (smaller model, its variables): the surgery
  prune(model, variables, on_empty_layer='keep_strongest') -> methods.PruneResult
  stage_blocks_cfg(stages), fixed(model, variables, name)  the paper's ResNet-41 / 32 / 26
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core_jax.errors import UserError
from pruning_jax import models
from pruning_jax.methods import PruneResult
from pruning_jax.models import resnet_cifar, resnet_imagenet

FACTOR = 'block_scale'
ON_EMPTY = ('keep_strongest', 'error')
STAGE_BLOCKS = resnet_imagenet.SSS_STAGE_BLOCKS  # the paper's ResNet-41 / 32 / 26


# ----------------------------------------------------------------------------------------------- training
def soft_threshold(x, t):
  """S(x, t) = sign(x) * max(|x| - t, 0): the proximal operator of t * |x|."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)


class ProximalState(NamedTuple):
  count: jax.Array  # updates so far (the schedule's argument)
  velocity: optax.Params  # v of the NAG form, per factor


def proximal_gradient(
    learning_rate: float | Callable, gamma: float, momentum: float = 0.9, nonnegative: bool = True
) -> optax.GradientTransformation:
  """APG in its NAG form (SSS eq. 10-12, the authors' APGNAG): the factors' updates from their raw gradients.

  learning_rate: a float or a schedule of the update count (the run's schedule: the weights' lr); gamma: the
  sparsity penalty; nonnegative: factors clipped at 0 (the authors' code does). A factor that the threshold sets
  to 0 is exactly 0 (lambda + (0 - lambda) is exact in floating point)."""
  gamma, momentum = float(gamma), float(momentum)
  if gamma < 0 or not np.isfinite(gamma):
    raise UserError(f'sss.gamma must be >= 0, got {gamma}')
  if not 0.0 <= momentum < 1.0:
    raise UserError(f'sss.momentum must be in [0, 1), got {momentum}')

  def init(params):
    return ProximalState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('proximal_gradient needs params in update()')
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    tmap = jax.tree_util.tree_map
    lr_of = lambda w: jnp.asarray(lr, w.dtype)
    z = tmap(lambda g, w: soft_threshold(w - lr_of(w) * g.astype(w.dtype), lr_of(w) * gamma), grads, params)
    velocity = tmap(lambda z, w, v: z - w + momentum * v, z, params, state.velocity)
    new = tmap(lambda z, v: z + momentum * v, z, velocity)
    if nonnegative:
      new = tmap(lambda x: jnp.maximum(x, 0.0), new)
    updates = tmap(lambda n, w: n - w, new, params)
    return updates, ProximalState(optax.safe_increment(state.count), velocity)

  return optax.GradientTransformation(init, update)


def is_factor(names: Sequence[str]) -> bool:
  return bool(names) and names[-1] == FACTOR


# ----------------------------------------------------------------------------------------------- blocks
def _check_family(model) -> str:
  family = models.family_of(model)
  if family not in models.BLOCK_FAMILIES:
    raise UserError(
        f'Sparse Structure Selection removes residual blocks: {family} is not one of '
        f'{", ".join(models.BLOCK_FAMILIES)}'
    )
  return family


def blocks(model) -> list[dict]:
  """Every residual block in forward order: {index, name, stage, first, removed, last_bn}."""
  family = _check_family(model)
  cfg = models.cfg_of(model)
  if family == 'resnet_cifar':
    per_stage = (resnet_cifar.blocks_per_stage(model.depth),) * len(resnet_cifar.STAGE_WIDTHS)
  else:
    per_stage = resnet_imagenet.STAGES[50]
  out, k = [], 0
  for s, n in enumerate(per_stage):
    for b in range(n):
      removed = cfg[k] == 0 if family == 'resnet_cifar' else cfg[3 * k + 1] == 0
      last_bn = 'bn2' if family == 'resnet_cifar' else 'bn3'
      out.append(dict(index=k, name=f'layer{s + 1}_{b}', stage=s, first=b == 0, removed=bool(removed), last_bn=last_bn))
      k += 1
  return out


def _stage_has_weights_without_branches(family: str) -> bool:
  """A stage with every branch removed still computes something learned: ResNet-50's first block projects."""
  return family == 'resnet50'


def _host(tree):
  return jax.tree_util.tree_map(lambda x: np.array(jax.device_get(x)), dict(tree))


def factors(params) -> dict[str, float]:
  return {
      name: float(np.asarray(jax.device_get(node[FACTOR])))
      for name, node in dict(params).items()
      if isinstance(node, Mapping) and FACTOR in node
  }


def plan(model, variables: Mapping, on_empty_layer: str = 'keep_strongest'):
  """(removed block indices, report): blocks whose factor is exactly 0, a stage left empty handled as documented."""
  if on_empty_layer not in ON_EMPTY:
    raise UserError(f'prune.on_empty_layer must be one of {", ".join(ON_EMPTY)}, got {on_empty_layer!r}')
  family = _check_family(model)
  params = variables['params']
  lam = factors(params)
  if not lam:
    raise UserError('sss: the model has no block factors (train it with model.block_scale=True)')
  all_blocks = blocks(model)
  removed = {b['index'] for b in all_blocks if b['removed'] or lam.get(b['name'], 1.0) == 0.0}
  kept_anyway = []
  if not _stage_has_weights_without_branches(family):
    for s in sorted({b['stage'] for b in all_blocks}):
      stage = [b for b in all_blocks if b['stage'] == s]
      if all(b['index'] in removed for b in stage):
        names = ', '.join(b['name'] for b in stage)
        if on_empty_layer == 'error':
          raise UserError(
              f'sss: every block of stage {s + 1} ({names}) has its factor at 0, which would leave the stage without '
              'weights; lower sss.gamma, or set prune.on_empty_layer=keep_strongest'
          )
        candidates = [b for b in stage if not b['removed']]
        if not candidates:
          raise UserError(f'sss: stage {s + 1} of the model has no block left ({names})')

        def strength(b):
          scale = np.asarray(jax.device_get(params[b['name']][b['last_bn']]['scale']))
          return (lam.get(b['name'], 0.0), float(np.linalg.norm(scale)))

        best = max(candidates, key=strength)
        removed.discard(best['index'])
        kept_anyway.append(best['name'])
        logging.warning('sss: every factor of stage %d is 0; keeping its strongest block %s', s + 1, best['name'])
  report = {
      'method': 'sss',
      'factors': lam,
      'removed_blocks': [b['name'] for b in all_blocks if b['index'] in removed],
      'kept_blocks': [b['name'] for b in all_blocks if b['index'] not in removed],
      'emptied': kept_anyway,
      'depth': 2 + (2 if family == 'resnet_cifar' else 3) * sum(1 for b in all_blocks if b['index'] not in removed),
  }
  return removed, report


def remove_blocks(model, variables: Mapping, removed, fold_factors: bool = True):
  """(smaller model, its host variables): the blocks in `removed` lose their branch (cfg width 0; their branch's
  params and statistics dropped, a ResNet-50 downsample kept); with fold_factors each kept block's factor is
  multiplied into its branch's last BatchNorm scale and bias and the factors are dropped. The smaller model has
  no factors (block_scale=False)."""
  family = _check_family(model)
  params, stats = _host(variables['params']), _host(variables.get('batch_stats', {}))
  cfg = list(models.cfg_of(model))
  keep_in_removed = ('downsample_conv', 'downsample_bn')
  for b in blocks(model):
    name = b['name']
    if b['index'] in removed:
      if family == 'resnet_cifar':
        cfg[b['index']] = 0
      else:
        cfg[3 * b['index'] + 1] = cfg[3 * b['index'] + 2] = 0
      for tree in (params, stats):
        if name in tree:
          kept = {k: v for k, v in tree[name].items() if k in keep_in_removed}
          if kept:
            tree[name] = kept
          else:
            del tree[name]
      continue
    if name in params and FACTOR in params[name]:
      lam = params[name].pop(FACTOR)
      if fold_factors:
        bn = params[name][b['last_bn']]
        bn['scale'] = (bn['scale'] * lam).astype(bn['scale'].dtype)
        bn['bias'] = (bn['bias'] * lam).astype(bn['bias'].dtype)
  small = models.build(
      family, cfg, int(model.num_classes), getattr(model, 'selections', None), model.dtype, model.compute
  )
  return small, {'params': params, 'batch_stats': stats}


def prune(
    model_name_or_family,
    cfg,
    variables: Mapping,
    *,
    on_empty_layer: str = 'keep_strongest',
    num_classes: int | None = None,
) -> PruneResult:
  """Blocks with factor 0 removed, the rest folded -> PruneResult (the smaller model, no factors)."""
  from pruning_jax.methods import resolve_model  # pylint: disable=import-outside-toplevel

  model = resolve_model(model_name_or_family, cfg, num_classes, variables=variables)
  removed, report = plan(model, variables, on_empty_layer)
  small, small_vars = remove_blocks(model, variables, removed)
  report['cfg'] = list(models.cfg_of(small))
  return PruneResult(small, small_vars, report)


# ----------------------------------------------------------------------------------------------- fixed architectures
def stage_blocks_cfg(stages: Sequence[tuple[int, bool]]) -> tuple[int, ...]:
  """The ResNet-50 cfg of per-stage (branches kept, first block kept): removed blocks as [in, 0, 0]."""
  try:
    return resnet_imagenet.stage_blocks_cfg(stages)
  except ValueError as e:
    raise UserError(f'sss: {e}') from None


def fixed(model, variables: Mapping, name: str):
  """(model, variables) of the paper's ResNet-41 / 32 / 26 cut from a trained ResNet-50 (its kept blocks' weights;
  factors, when the model has them, folded)."""
  if name not in STAGE_BLOCKS:
    raise UserError(f'sss.architecture must be one of {", ".join(STAGE_BLOCKS)} (or empty), got {name!r}')
  if models.family_of(model) != 'resnet50':
    raise UserError(f'the SSS architecture {name} is a ResNet-50 variant, not {models.family_of(model)}')
  cfg = stage_blocks_cfg(STAGE_BLOCKS[name])
  return remove_blocks(model, variables, {k for k in range(len(cfg) // 3) if cfg[3 * k + 1] == 0})
