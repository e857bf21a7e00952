"""Structured pruning of any Linen model along its traced channel groups (pruning_jax.graph): a real smaller model.

    result = pruning_jax.prune(model, variables, x, ratio=0.5, criterion='l1')
    logits = result.model.apply(result.variables, x, train=False)

Each prunable group keeps floor(C * (1 - ratio)) of its C channels (at least `min_width`, at least one: the
report says where that floor decided), the ones the criterion scores highest; every member of a dropped channel
(kernel rows and columns, biases, norm vectors and statistics, the consumers' inputs at their offsets) is sliced
away. `result.model` is the same module run with its layers' widths replaced (`rewidth.Rewidthed`; pruning a pruned
model again gives one Rewidthed over the original module with both prunings' widths): an `nn.Conv(24)`
or `feature_group_count=24` written as a literal in `@nn.compact` code gets the pruned width through Flax's
method interception, so no constructor has to expose it.

Criteria (`importance`), each summed over a group's members as Torch-Pruning's group importance:
  'l1' / 'l2'   the L1 / L2 norm of every weight of the channel (params only, not the running statistics)
  'bn_scale'    |scale| of the group's BatchNorm / LayerNorm (Network Slimming); groups without one use 'l1'
  'taylor'      first-order Taylor |w * dL/dw| summed over the channel's weights, gradients from `batches`
`scope='layer'` prunes `ratio` of each group; `scope='global'` ranks every channel of all groups together
(scores divided by their group's mean, Torch-Pruning's default normalizer) and removes `ratio` of them all.
`ratio` may be a {group name: ratio} dict (groups not named keep every channel).
"""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core_jax.compute import Compute
from core_jax.errors import UserError
from core_jax.weights import flatten, flatten_variables, merge_params, unflatten
from pruning_jax import graph, rewidth
from pruning_jax.methods import PruneResult

CRITERIA = ('l1', 'l2', 'bn_scale', 'taylor')
SCOPES = ('layer', 'global')


def _as_tuple(inputs) -> tuple:
  return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _host(variables) -> dict:
  return {
      c: {p: np.asarray(jax.device_get(x)) for p, x in flatten(dict(tree)).items()} for c, tree in variables.items()
  }


def _channel_values(member: graph.Member, leaf: np.ndarray, reduce: Callable) -> np.ndarray:
  moved = np.moveaxis(np.asarray(leaf, np.float64), member.axis, 0).reshape(leaf.shape[member.axis], -1)
  per_index = reduce(moved)
  return np.asarray([per_index[list(ps)].sum() if ps else 0.0 for ps in member.positions])


def _is_norm_scale(member: graph.Member, leaf) -> bool:
  return member.collection == 'params' and member.path.rsplit('/', 1)[-1] == 'scale' and np.ndim(leaf) == 1


def importance(groups, variables, criterion: str = 'l1', grads=None) -> dict[str, np.ndarray]:
  """{group name: score per channel} for the prunable groups (see the module docstring)."""
  if criterion not in CRITERIA:
    raise UserError(f'unknown pruning criterion {criterion!r} (known: {", ".join(CRITERIA)})')
  flat = _host(variables)['params']
  flat_grads = None if grads is None else {p: np.asarray(g) for p, g in flatten(dict(grads)).items()}
  if criterion == 'taylor' and flat_grads is None:
    raise UserError("criterion 'taylor' needs batches to take gradients on")
  scores = {}
  for g in groups:
    if not g.prunable:
      continue
    params = [m for m in g.members if m.collection == 'params']
    norms = [m for m in params if _is_norm_scale(m, flat[m.path])] if criterion == 'bn_scale' else []
    if norms:
      s = sum(_channel_values(m, flat[m.path], lambda w: np.abs(w[:, 0])) for m in norms)
    elif criterion == 'taylor':
      s = sum(_channel_values(m, flat[m.path] * flat_grads[m.path], lambda w: np.abs(w).sum(1)) for m in params)
    elif criterion == 'l2':
      s = np.sqrt(sum(_channel_values(m, flat[m.path], lambda w: np.square(w).sum(1)) for m in params))
    else:
      s = sum(_channel_values(m, flat[m.path], lambda w: np.abs(w).sum(1)) for m in params)
    scores[g.name] = np.asarray(s, np.float64)
  return scores


def taylor_grads(model, variables, batches, loss_fn=None, apply_kwargs=None):
  """Mean dL/dparams over `batches` ((x, labels) pairs); `loss_fn(outputs, labels)` defaults to softmax cross
  entropy of the first output leaf (the logits) against integer labels."""
  kw = {'train': False} if apply_kwargs is None else dict(apply_kwargs)
  if loss_fn is None:

    def loss_fn(outputs, labels):
      logits = jax.tree_util.tree_leaves(outputs)[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  rest = {c: v for c, v in variables.items() if c != 'params'}
  grad = jax.jit(jax.grad(lambda p, x, y: loss_fn(model.apply({'params': p, **rest}, x, **kw), y)))
  total, n = None, 0
  for x, y in batches:
    g = grad(variables['params'], jnp.asarray(x), jnp.asarray(y))
    total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
    n += 1
  if n == 0:
    raise UserError("criterion 'taylor' needs at least one batch")
  return jax.tree_util.tree_map(lambda t: t / n, total)


def _num_keep(c: int, ratio: float, min_width: int) -> int:
  return max(math.floor(c * (1.0 - ratio) + 1e-9), min(min_width, c), 1)


def choose(groups, scores, ratio, scope: str = 'layer', min_width: int = 1) -> tuple[dict[str, list[int]], list[str]]:
  """({group name: kept channel indices (group order)}, notes on groups the minimum width decided)."""
  if scope not in SCOPES:
    raise UserError(f'unknown pruning scope {scope!r} (known: {", ".join(SCOPES)})')
  by_name = {g.name: g for g in groups}
  if isinstance(ratio, Mapping):
    unknown = sorted(set(ratio) - set(by_name))
    if unknown:
      raise UserError(f'no channel group {unknown[0]!r} (groups: {", ".join(list(by_name)[:6])}, ...)')
    for name in ratio:
      if not by_name[name].prunable:
        raise UserError(f'group {name} cannot be pruned: {by_name[name].reason}')
    ratios = {name: float(r) for name, r in ratio.items()}
  else:
    ratios = {name: float(ratio) for name in scores}
  bad = [r for r in ratios.values() if not 0.0 <= r < 1.0]
  if bad:
    raise UserError(f'a pruning ratio is the fraction of channels removed, in [0, 1): got {bad[0]}')
  keep, notes = {}, []
  if scope == 'global' and not isinstance(ratio, Mapping):
    normalized = {n: s / max(float(np.mean(s)), 1e-30) for n, s in scores.items()}
    everything = np.sort(np.concatenate(list(normalized.values()))) if normalized else np.zeros(0)
    n_drop = math.floor(everything.size * float(ratio))
    threshold = everything[n_drop - 1] if n_drop > 0 else -np.inf
    for name, s in normalized.items():
      k = max(int(np.sum(s > threshold)), min(min_width, s.size), 1)
      if k > int(np.sum(s > threshold)):
        notes.append(
            f'{name}: the global threshold would keep {int(np.sum(s > threshold))} of {s.size} channels;'
            f' keeps its strongest {k}'
        )
      keep[name] = sorted(np.argsort(-s, kind='stable')[:k].tolist())
    return keep, notes
  for name, r in ratios.items():
    s = scores[name]
    c = s.size
    k = _num_keep(c, r, min_width)
    floor = math.floor(c * (1.0 - r) + 1e-9)
    if k > floor:
      notes.append(f'{name}: ratio {r} would keep {floor} of {c} channels; keeps its strongest {k}')
    keep[name] = sorted(np.argsort(-s, kind='stable')[:k].tolist())
  return keep, notes


def dropped_positions(groups, keep: Mapping[str, Sequence[int]]) -> dict[tuple[str, str, int], np.ndarray]:
  """{(collection, path, axis): positions removed} over every member of the pruned channels."""
  out: dict[tuple[str, str, int], set] = {}
  for g in groups:
    if g.name not in keep:
      continue
    drop = sorted(set(range(g.channels)) - {int(i) for i in keep[g.name]})
    for m in g.members:
      out.setdefault(m.key, set()).update(p for c in drop for p in m.positions[c])
  return {k: np.asarray(sorted(v), np.int64) for k, v in out.items() if v}


def channel_mask(params, dropped) -> dict:
  """A {0, 1} tree shaped like `params` zeroing every params member position in `dropped`."""
  flat = {p: np.ones(np.shape(x), np.float32) for p, x in flatten(dict(params)).items()}
  for (collection, path, axis), pos in dropped.items():
    if collection == 'params':
      index = [slice(None)] * flat[path].ndim
      index[axis] = pos
      flat[path][tuple(index)] = 0.0
  return unflatten(flat)


def slice_variables(variables, dropped) -> dict:
  flat = _host(variables)
  for (collection, path, axis), pos in dropped.items():
    leaf = flat[collection][path]
    flat[collection][path] = np.delete(leaf, pos, axis=axis)
  return {c: unflatten(v) for c, v in flat.items()}


def _modules_by_path(model, variables, inputs, kw) -> dict[tuple, nn.Module]:
  seen: dict[tuple, nn.Module] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if module.scope is not None:
      seen.setdefault(tuple(module.scope.path), module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, *xs: model.apply(v, *xs, **kw), variables, *inputs)
  return seen


def _int_fields(module) -> list[tuple[str, int]]:
  out = []
  for f in dataclasses.fields(module):
    if f.name in ('parent', 'name'):
      continue
    v = getattr(module, f.name, None)
    if isinstance(v, int) and not isinstance(v, bool):
      out.append((f.name, v))
  return out


def width_overrides(model, variables, new_variables, inputs, kw) -> tuple:
  """((module path, ((field, new value), ...)), ...) for every module whose own params changed shape."""
  old = {p: np.shape(x) for p, x in flatten(dict(variables.get('params', {}))).items()}
  new = {p: np.shape(x) for p, x in flatten(dict(new_variables.get('params', {}))).items()}
  changed: dict[tuple, list[tuple[str, tuple, tuple]]] = {}
  for p in old:
    if old[p] != new[p]:
      *mod, leaf = p.split('/')
      changed.setdefault(tuple(mod), []).append((leaf, old[p], new[p]))
  if not changed:
    return ()
  modules = _modules_by_path(model, variables, inputs, kw)
  out = []
  for path, leaves in sorted(changed.items()):
    module = modules.get(path)
    if module is None:
      continue
    shapes = {leaf: (o, n) for leaf, o, n in leaves}
    fields = []
    if isinstance(module, (nn.Conv, nn.ConvTranspose, nn.Dense)) and 'kernel' in shapes:
      o, n = shapes['kernel']
      fields.append(('features', int(n[-1])))
      groups = getattr(module, 'feature_group_count', 1)
      if groups > 1:
        if (groups * n[-1]) % o[-1]:
          raise UserError(f'{"/".join(path)}: feature_group_count={groups} does not divide the pruned width')
        fields.append(('feature_group_count', groups * int(n[-1]) // int(o[-1])))
    else:
      mapping: dict[int, int] = {}
      ordered = sorted(leaves, key=lambda t: (len(t[1]) != 1, t[0]))
      for _, o, n in ordered:
        for k in sorted(range(len(o)), key=lambda k: k != len(o) - 1):
          if o[k] != n[k]:
            mapping.setdefault(int(o[k]), int(n[k]))
      fields = [(f, mapping[v]) for f, v in _int_fields(module) if v in mapping]
    if fields:
      out.append((path, tuple(fields)))
  return tuple(out)


def check_variables(model, variables, inputs, kw) -> None:
  """One line naming the first key whose shape differs from what `model` builds (weights of another architecture,
  or of another width), or a key one side lacks, with both shapes (core_jax.weights.merge_params)."""
  key = jax.random.PRNGKey(0)
  try:
    want = jax.eval_shape(lambda *xs: model.init({'params': key, 'dropout': key}, *xs, **kw), *inputs)
  except Exception:  # pylint: disable=broad-except  # needs more than these rngs to init: the trace reports errors
    return
  collections = tuple(c for c in ('params', 'batch_stats') if c in want)
  merge_params(
      flatten_variables(variables, collections),
      flatten_variables(want, collections),
      source='the weights tree',
      hint=f' (not weights of this {type(model).__name__})',
  )


def plain_policy(model: nn.Module) -> nn.Module:
  """`model` computed the plain XLA way (``core_jax.compute.Compute()``; a Rewidthed's base likewise): the channel
  tracer follows XLA ops, not the custom calls of a faster policy (ConvNeXt's C++ kernels on CPU). The variables and
  the function are the same whatever the policy, so the widths found hold for `model` itself."""
  if isinstance(model, rewidth.Rewidthed):
    return rewidth.Rewidthed(plain_policy(model.base), model.widths)
  return model.clone(compute=Compute()) if isinstance(getattr(model, 'compute', None), Compute) else model


def prune(
    model: nn.Module,
    variables,
    example_inputs,
    ratio=0.5,
    criterion: str = 'l1',
    *,
    scope: str = 'layer',
    min_width: int = 1,
    batches=None,
    loss_fn=None,
    apply_kwargs: Mapping | None = None,
    fixed_outputs: Sequence[int] | None = None,
) -> PruneResult:
  """`model` with `ratio` of each prunable channel group removed -> PruneResult(smaller model, its variables,
  report). `example_inputs`: an array (or a tuple of the apply's positional inputs); `apply_kwargs` default
  {'train': False}. Traced under the plain policy (`plain_policy`); the smaller model keeps `model`'s."""
  kw = {'train': False} if apply_kwargs is None else dict(apply_kwargs)
  inputs = _as_tuple(example_inputs)
  traced = plain_policy(model)
  check_variables(traced, variables, inputs, kw)
  groups = graph.channel_groups(traced, variables, *inputs, fixed_outputs=fixed_outputs, **kw)
  prunable = [g for g in groups if g.prunable]
  if not prunable:
    blocked = next((g for g in groups if g.reason and 'tracer' in g.reason), None)
    first = blocked or next((g for g in groups if g.reason), None)
    raise UserError(f'no prunable channel group in {type(model).__name__}' + (f': {first.reason}' if first else ''))
  grads = taylor_grads(model, variables, batches or (), loss_fn, kw) if criterion == 'taylor' else None
  scores = importance(groups, variables, criterion, grads)
  keep, notes = choose(groups, scores, ratio, scope, min_width)
  dropped = dropped_positions(groups, keep)
  small_vars = slice_variables(variables, dropped)
  widths = width_overrides(traced, variables, small_vars, inputs, kw)
  small = rewidth.rewidthed(model, widths)  # computed by `model`'s own policy
  try:
    jax.eval_shape(lambda v, *xs: small.apply(v, *xs, **kw), small_vars, *inputs)
  except Exception as e:  # the module computes a width the trace could not see (a literal reshape, ...)
    raise UserError(f'the pruned {type(model).__name__} cannot be rebuilt: {str(e).splitlines()[0]}') from None
  report = {
      'method': 'graph',
      'criterion': criterion,
      'ratio': dict(ratio) if isinstance(ratio, Mapping) else float(ratio),
      'scope': scope,
      'min_width': min_width,
      'groups': [
          {**g.describe(), 'kept': len(keep[g.name]) if g.name in keep else g.channels, 'members': len(g.members)}
          for g in groups
      ],
      'notes': notes,
      'unprunable': graph.describe_unprunable(groups),
  }
  return PruneResult(small, small_vars, report)
