"""Parameter counts and multiply-accumulates (the papers' "FLOPs"), from shapes only.

`count_macs` traces one forward pass with `jax.eval_shape` (no real compute) and adds up, for every
`__call__` of a flax layer it sees through `nn.intercept_methods`:
  nn.Conv            prod(output.shape[:-1]) * prod(kernel.shape)
                     = batch * prod(out spatial) * out_features * in_features / groups * prod(kernel_size)
  nn.ConvLocal       prod(output.shape[:-1]) * prod(kernel_size) * in_features * out_features
  nn.ConvTranspose   prod(input.shape[:-1]) * prod(kernel.shape)   (fvcore: input positions x kernel)
  nn.Dense / nn.DenseGeneral / nn.Einsum
                     output elements * product of the contracted dimensions
Biases, norms, activations, pooling, attention-score matmuls done with plain jnp ops: not counted (fvcore
convention as used by the ConvNeXt paper) unless a module reports them with `record_macs`.

Hook for custom modules: inside a module's forward pass call `core_jax.counting.record_macs(n)` with a
python int computed from static shapes, e.g. a depthwise k x k conv written as shifted multiply-adds:

    counting.record_macs(k * k * math.prod(x.shape))        # = batch * H * W * C * k * k

Outside `count_macs` the call is a no-op (cheap, safe under jit/scan/remat in training). Layers of the kinds
listed above that the module calls are still counted on their own, so report only the extra work.
Cumulative counts inside one forward pass: call `core_jax.counting.mark(name)` at a point of the forward
pass (e.g. right after exit k of a multi-exit network); `count_macs_by_mark` returns the MACs counted up to
each mark, plus 'total', from ONE abstract trace. Outside a count, `mark` is a no-op.

Data-dependent MACs (a layer that computes only part of its output, e.g. a masked conv): the layer calls
`core_jax.counting.sow_macs(self, name, value)` with a jnp value (a scalar, or a per-example (B,) vector),
which lands in the 'macs' collection when it is mutable (`apply(..., mutable=['macs'])`); reusing a module
adds up. `sum_macs(collection, name=...)` adds the sown leaves (optionally only those called `name`). The
static count above is unaffected: it still sees such a layer's dense cost.

Limitations: the count is of what Python sees while tracing, so a body traced once but run many times
(`nn.scan`, `nn.vmap`, `lax.fori_loop` / `lax.scan` in a custom op) is counted once; multiply yourself
(record_macs from outside the loop) where it matters.
"""

import contextlib
import math
import numbers
import threading

import flax.linen as nn
import jax
import numpy as np

_state = threading.local()


MACS_COLLECTION = 'macs'


def _counters() -> list:
  if not hasattr(_state, 'counters'):
    _state.counters = []
  return _state.counters


def record_macs(n: int) -> None:
  """Adds `n` MACs to the innermost active `count_macs`; a no-op when none is active."""
  counters = _counters()
  if counters:
    if not isinstance(n, numbers.Integral):
      raise TypeError(f'record_macs needs a static python int computed from shapes, got {type(n).__name__}')
    counters[-1].total += int(n)


def active() -> bool:
  """Whether a count is running: a forward that traces one part several times (e.g. once per branch of a switch)
  traces it once instead, so that its MACs count once."""
  return bool(_counters())


def mark(name: str) -> None:
  """Records the MACs counted so far (cumulative) under `name` in the innermost active count; else a no-op."""
  counters = _counters()
  if counters:
    cell = counters[-1]
    if name in cell.marks:
      raise ValueError(f'counting.mark({name!r}) reached twice in one trace; mark names must be unique')
    cell.marks[name] = cell.total


class _Cell:

  def __init__(self):
    self.total = 0
    self.marks: dict[str, int] = {}


@contextlib.contextmanager
def _counting():
  cell = _Cell()
  _counters().append(cell)
  try:
    yield cell
  finally:
    _counters().pop()


def count_params(params_tree, nonzero: bool = False) -> int:
  """Total number of elements over all leaves (arrays or ShapeDtypeStructs).

  nonzero=True counts only the elements that are not 0 (needs concrete arrays, e.g. pruned weights)."""
  leaves = jax.tree_util.tree_leaves(params_tree)
  if not nonzero:
    return int(sum(math.prod(np.shape(x)) for x in leaves))
  total = 0
  for x in leaves:
    if isinstance(x, jax.ShapeDtypeStruct):
      raise TypeError('count_params(nonzero=True) needs concrete arrays, got a ShapeDtypeStruct')
    total += int(np.count_nonzero(np.asarray(x)))
  return total


def sow_macs(module: nn.Module, name: str, value) -> None:
  """Sows the MACs a layer actually computed (jnp scalar or per-example (B,) vector) into the 'macs'
  collection under the module's path and `name`; calls with the same name on one module add up."""
  module.sow(MACS_COLLECTION, name, value, init_fn=lambda: 0, reduce_fn=lambda prev, new: prev + new)


def sum_macs(collection, name: str | None = None):
  """Sum of the leaves of a sown 'macs' collection (optionally only those sown under `name`); 0 if none."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(collection)[0]:
    key = path[-1].key if path and hasattr(path[-1], 'key') else None
    if name is None or key == name:
      total = total + leaf
  return total


def _shape(x) -> tuple[int, ...]:
  return tuple(int(d) for d in np.shape(x))


def _kernel_shape(module) -> tuple[int, ...]:
  kernel = nn.meta.unbox(module.variables['params']['kernel'])
  return _shape(kernel)


def _einsum_macs(einsum_str: str, lhs_shape, rhs_shape, out_shape) -> int:
  """Output elements times the sizes of labels that are summed over (absent from the output)."""
  einsum_str = einsum_str.replace(' ', '')
  ins, out = einsum_str.split('->')
  sizes = {}
  for spec, shape in zip(ins.split(','), (lhs_shape, rhs_shape)):
    labels = spec.replace('...', '')
    if '...' in spec:  # labels after the ellipsis align with the trailing dims
      head, tail = spec.split('...')
      dims = list(zip(head, shape[: len(head)])) + list(zip(tail, shape[len(shape) - len(tail) :]))
    else:
      dims = list(zip(labels, shape))
    for label, d in dims:
      sizes[label] = max(sizes.get(label, 1), d)
  summed = math.prod(d for label, d in sizes.items() if label not in out)
  return math.prod(out_shape) * summed


_CONV = getattr(nn.linear, '_Conv', nn.Conv)  # base of nn.Conv and nn.ConvLocal


def _layer_macs(module, args, kwargs, out) -> int | None:
  """MACs of one call of a known flax layer, or None for any other module."""
  x = args[0] if args else kwargs.get('inputs')
  if isinstance(module, _CONV):
    k = _kernel_shape(module)
    if module.shared_weights:
      return math.prod(_shape(out)[:-1]) * math.prod(k)
    return math.prod(_shape(out)[:-1]) * k[-2] * k[-1]  # ConvLocal: (spatial..., prod(ks) * in, out)
  if isinstance(module, nn.ConvTranspose):
    return math.prod(_shape(x)[:-1]) * math.prod(_kernel_shape(module))
  if isinstance(module, nn.Dense):
    return math.prod(_shape(out)) * _shape(x)[-1]
  if isinstance(module, nn.DenseGeneral):
    axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    xs = _shape(x)
    return math.prod(_shape(out)) * math.prod(xs[a] for a in axis)
  if isinstance(module, nn.Einsum):
    eq = args[1] if len(args) > 1 else kwargs.get('einsum_str')
    eq = eq if eq is not None else module.einsum_str
    return _einsum_macs(eq, _shape(x), _kernel_shape(module), _shape(out))
  return None


_KNOWN = (_CONV, nn.ConvTranspose, nn.Dense, nn.DenseGeneral, nn.Einsum)


def _make_interceptor():
  active: set[int] = set()  # known layers currently inside __call__ (guards super().__call__ re-entry)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, _KNOWN) or id(module) in active:
      return next_fun(*args, **kwargs)
    active.add(id(module))
    try:
      out = next_fun(*args, **kwargs)
    finally:
      active.discard(id(module))
    record_macs(_layer_macs(module, args, kwargs, out))
    return out

  return interceptor


def _is_array_like(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic))


def _trace(fn_or_module, inputs, *, method, variables, rngs, kwargs) -> _Cell:
  """Counts one abstract forward pass of a module (as `count_macs` documents) or of a plain function."""
  leaves, treedef = jax.tree_util.tree_flatten(inputs)
  dyn_idx = [i for i, leaf in enumerate(leaves) if _is_array_like(leaf)]
  dyn = [jax.ShapeDtypeStruct(np.shape(leaves[i]), leaves[i].dtype) for i in dyn_idx]

  def rebuild(dyn_vals):
    full = list(leaves)
    for i, v in zip(dyn_idx, dyn_vals):
      full[i] = v
    return jax.tree_util.tree_unflatten(treedef, full)

  if not isinstance(fn_or_module, nn.Module):
    if method is not None or variables is not None or rngs is not None:
      raise TypeError('method / variables / rngs apply to a flax module, not to a plain function')
    with _counting() as cell, nn.intercept_methods(_make_interceptor()):
      jax.eval_shape(lambda *d: fn_or_module(*rebuild(d), **kwargs), *dyn)
    return cell

  module = fn_or_module
  if rngs is None:
    rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  if variables is None:
    variables = jax.eval_shape(lambda r, *d: module.init(r, *rebuild(d), method=method, **kwargs), rngs, *dyn)

  def apply(v, r, *d):
    return module.apply(v, *rebuild(d), method=method, rngs=r, mutable=True, **kwargs)

  with _counting() as cell, nn.intercept_methods(_make_interceptor()):
    jax.eval_shape(apply, variables, rngs, *dyn)
  return cell


def count_macs(module: nn.Module, *inputs, method=None, variables=None, rngs=None, **kwargs) -> int:
  """MACs of one `module.apply(variables, *inputs, method=method, **kwargs)`, computed abstractly.

  `inputs` may be arrays or `jax.ShapeDtypeStruct`s (array leaves of pytrees too; other leaves are
  passed through as static values); `kwargs` (e.g. train=False) are static. `variables` defaults to an
  abstract `module.init`. `rngs` defaults to keys for 'params' and 'dropout'. The count scales with the
  batch of the inputs: pass a batch-1 input for per-image numbers.
  """
  return _trace(module, inputs, method=method, variables=variables, rngs=rngs, kwargs=kwargs).total


def count_macs_by_mark(fn_or_model, *inputs, method=None, variables=None, rngs=None, **kwargs) -> dict[str, int]:
  """{mark name: cumulative MACs when `mark(name)` ran, ..., 'total': all MACs} from one abstract trace.

  `fn_or_model` is a flax module (arguments as for `count_macs`) or a plain function of `inputs` (which may
  call flax modules' `apply` itself); marks keep the order the forward pass reached them."""
  cell = _trace(fn_or_model, inputs, method=method, variables=variables, rngs=rngs, kwargs=kwargs)
  if 'total' in cell.marks:
    raise ValueError("'total' is reserved for the whole count; use another mark name")
  return {**cell.marks, 'total': cell.total}
