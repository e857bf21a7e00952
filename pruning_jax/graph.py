"""Coupled channel groups of any Linen model, traced from its computation (DepGraph's groups, from a jaxpr).

    groups = graph.channel_groups(model, variables, x, train=False)

`model.apply(variables, *inputs, **kwargs)` is traced to a jaxpr (`jax.make_jaxpr`; variables and inputs may be
arrays or `jax.ShapeDtypeStruct`s: nothing is computed). Every element of every variable axis and of every
traced tensor axis that can carry a channel is a node; the equations say which nodes are the same channel:
  conv_general_dilated   the input's feature axis = the kernel's in-feature axis; the output's feature axis is the
                         kernel's out-feature axis (a *producer*); depthwise convs (feature_group_count = C_in, one
                         input channel per group) couple each input channel with its outputs
  dot_general            contracted axes coupled; the free axes of the result are the operands' (producers)
  elementwise ops        every operand's axis of the result's size is coupled (BN / LN scale, bias and statistics
                         vectors, layer scales, residual adds: all summands)
  broadcast / transpose / squeeze / reshapes that only move or keep the channel axis, reductions over other axes
  concatenate            the output axis is the inputs' axes at their offsets (DenseNet's concat stream)
  reshape merging the channel axis with others (a flatten before a Dense): each merged row keeps its channel
A channel is a connected set of nodes; a *group* is the channels that share a variable axis (a conv's outputs,
or a residual stream's). Each member of a group is one variable axis and, per channel, the positions it has
there (`Member.positions`: one per channel, several for a flatten's rows, none where a concatenation puts the
channel elsewhere).

A group is prunable unless the trace could not follow it: an op that mixes or reorders channels or fixes their
count as a constant (a reshape splitting the channel axis, a gather, a sort, a grouped conv, padding or slicing
the channel axis, a loop, an unknown primitive) names itself and the parameter in `Group.reason`; a group fed by
the model's input or read as a fixed output (the first output leaf: the logits) or without a producer (only
consumers) is not prunable either.
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.extend import core as jcore
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Member:
  collection: str  # 'params', 'batch_stats', ...
  path: str  # flax path of the leaf inside its collection, '/'-joined
  axis: int  # non-negative
  size: int  # the axis' current length
  positions: tuple[tuple[int, ...], ...]  # per channel of the group (in the group's order): indices on the axis

  @property
  def key(self) -> tuple[str, str, int]:
    return (self.collection, self.path, self.axis)

  def span(self) -> tuple[int, int] | None:
    """(offset, rows per channel) when the group's channels sit contiguously in order on this axis, else None."""
    flat = [p for ps in self.positions for p in ps]
    if not flat or any(len(ps) != len(self.positions[0]) for ps in self.positions):
      return None
    return (flat[0], len(self.positions[0])) if flat == list(range(flat[0], flat[0] + len(flat))) else None


@dataclasses.dataclass(frozen=True)
class Group:
  name: str  # the variable axis whose outputs the group's channels first are ('conv0/kernel:3')
  channels: int
  members: tuple[Member, ...]
  prunable: bool
  reason: str | None = None  # why not prunable: the op and the parameter

  def member(self, collection: str, path: str, axis: int) -> Member | None:
    for m in self.members:
      if m.key == (collection, path, axis):
        return m
    return None

  def describe(self) -> dict:
    return {
        'name': self.name,
        'channels': self.channels,
        'prunable': self.prunable,
        'reason': self.reason,
        'members': [f'{m.collection}:{m.path}:{m.axis}' for m in self.members],
    }


@dataclasses.dataclass
class _Axis:
  labels: np.ndarray | None  # node ids, one per element (None: not tracked, carries no channel)
  channel: bool  # derived from a variable's channel axis or a layer's output features


# Primitives whose result element i depends only on the operands' elements i (size-1 axes broadcast).
_ELEMENTWISE = frozenset(
    'add add_any sub mul div rem pow max min neg sign floor ceil round is_finite exp exp2 log log1p expm1 tanh '
    'logistic sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh sqrt rsqrt cbrt integer_pow square abs '
    'erf erfc erf_inv lgamma digamma convert_element_type select_n clamp and or not xor eq ne lt le gt ge copy '
    'copy_p reduce_precision nextafter real imag stop_gradient'.split()
)
_REDUCTIONS = frozenset('reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin'.split())
_NO_CHANNELS = frozenset(
    'iota random_bits random_seed random_wrap random_unwrap random_fold_in random_split threefry2x32 '
    'rng_bit_generator rng_uniform'.split()
)
_CALLS = frozenset(
    'pjit jit closed_call core_call remat checkpoint custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr'.split()
)
_IDENTITY_MULTI = frozenset(('optimization_barrier', 'device_put'))
_ALONG_ONE_AXIS = {'cumsum': 'axis', 'cumprod': 'axis', 'cummax': 'axis', 'cummin': 'axis', 'cumlogsumexp': 'axis'}


class _Trace:

  def __init__(self):
    self.n = 0
    self.edges: list[tuple[np.ndarray, np.ndarray]] = []
    self.blocked: list[tuple[np.ndarray, str]] = []  # in trace order: the first reason names the group
    self.producers: list[np.ndarray] = []
    self.pad_nodes: list[np.ndarray] = []  # zero channels padded onto a channel axis
    self.dropped: list[tuple[np.ndarray, str]] = []  # channels a slice drops

  def fresh(self, size: int) -> np.ndarray:
    out = np.arange(self.n, self.n + size, dtype=np.int64)
    self.n += size
    return out

  def union(self, a: np.ndarray | None, b: np.ndarray | None):
    if a is not None and b is not None and a.size:
      self.edges.append((a, b))

  def block(self, labels: np.ndarray | None, reason: str):
    if labels is not None and labels.size:
      self.blocked.append((labels, reason))

  # -- equations ---------------------------------------------------------------------------------------------
  def run(self, jaxpr, env_in: list[list[_Axis] | None]) -> list[list[_Axis] | None]:
    env: dict = {}
    for v, axes in zip(jaxpr.invars, env_in):
      env[v] = axes
    for v in jaxpr.constvars:
      env[v] = None

    def read(atom):
      if isinstance(atom, jcore.Literal):
        return None
      return env.get(atom)

    for eqn in jaxpr.eqns:
      ins = [read(a) for a in eqn.invars]
      outs = self.equation(eqn, ins)
      for v, axes in zip(eqn.outvars, outs):
        env[v] = axes
    return [read(a) for a in jaxpr.outvars]

  def equation(self, eqn, ins):
    name = eqn.primitive.name
    shapes_out = [tuple(getattr(v.aval, 'shape', ())) for v in eqn.outvars]
    shapes_in = [tuple(getattr(a.aval, 'shape', ())) for a in eqn.invars]
    p = eqn.params
    if name in _ELEMENTWISE:
      return [self.elementwise(ins, shapes_in, shapes_out[0])]
    if name in _NO_CHANNELS:
      return [None] * len(shapes_out)
    if name in _IDENTITY_MULTI:
      return list(ins)
    if name in _CALLS:
      return self.call(eqn, ins, shapes_out)
    if name == 'broadcast_in_dim':
      return [self.broadcast(ins[0], shapes_in[0], shapes_out[0], p['broadcast_dimensions'])]
    if name == 'reshape':
      return [self.reshape(ins[0], shapes_in[0], shapes_out[0])]
    if name == 'squeeze':
      x = ins[0]
      dims = {d % len(shapes_in[0]) for d in p['dimensions']}
      return [None if x is None else [a for k, a in enumerate(x) if k not in dims]]
    if name == 'transpose':
      x = ins[0]
      return [None if x is None else [x[k] for k in p['permutation']]]
    if name in _REDUCTIONS:
      x = ins[0]
      axes = set(p['axes'])
      return [None if x is None else [a for k, a in enumerate(x) if k not in axes]]
    if name == 'concatenate':
      return [self.concatenate(ins, shapes_in, shapes_out[0], p['dimension'])]
    if name == 'pad':
      return [self.pad(ins[0], shapes_in[0], p['padding_config'])]
    if name == 'slice':
      return [self.slice(ins[0], shapes_in[0], p['start_indices'], p['limit_indices'], p['strides'])]
    if name == 'reduce_window' or name.startswith('reduce_window_'):
      return self.reduce_window(eqn, ins, shapes_in, shapes_out)
    if name == 'dynamic_slice':
      return [self.keep_full_axes(name, ins[0], shapes_in[0], shapes_out[0])]
    if name in _ALONG_ONE_AXIS or name in ('sort', 'rev'):
      axes = {'sort': lambda: [p['dimension']], 'rev': lambda: list(p['dimensions'])}.get(
          name, lambda: [p[_ALONG_ONE_AXIS[name]]]
      )()
      return self.along_axes(name, ins, axes, len(shapes_out))
    if name == 'conv_general_dilated':
      return [self.conv(ins, shapes_in, p)]
    if name == 'dot_general':
      return [self.dot(ins, shapes_in, p['dimension_numbers'])]
    return self.unknown(name, ins, shapes_out)

  def elementwise(self, ins, shapes_in, shape_out):
    out: list[_Axis] = []
    for k, size in enumerate(shape_out):
      present = [x[k] for x, s in zip(ins, shapes_in) if x is not None and len(s) == len(shape_out) and s[k] == size]
      present = [a for a in present if a.labels is not None]
      if not present:
        out.append(_Axis(None, False))
        continue
      channel = any(a.channel for a in present)
      if channel:
        for a in present[1:]:
          self.union(present[0].labels, a.labels)
      first = next((a for a in present if a.channel), present[0])
      out.append(_Axis(first.labels, channel))
    return out

  def broadcast(self, x, shape_in, shape_out, dims):
    out = [_Axis(None, False) for _ in shape_out]
    if x is None:
      return out
    for k, d in enumerate(dims):
      if shape_in[k] == shape_out[d]:
        out[d] = x[k]
    return out

  def reshape(self, x, shape_in, shape_out):
    out = [_Axis(None, False) for _ in shape_out]
    if x is None:
      return out
    what = f'reshape {shape_in} -> {shape_out}'
    for gi, go in _reshape_groups(shape_in, shape_out):
      ni = [k for k in gi if shape_in[k] > 1]
      no = [k for k in go if shape_out[k] > 1]
      channels = [k for k in ni if x[k].channel and x[k].labels is not None]
      if len(ni) <= 1 and len(no) <= 1:
        if ni and no:
          out[no[0]] = x[ni[0]]
        continue
      if not channels:
        continue
      if len(no) == 1 and len(channels) == 1:  # a merge keeping one channel axis: each row keeps its channel
        k = channels[0]
        inner = int(np.prod([shape_in[j] for j in gi if j > k]))
        rows = np.arange(shape_out[no[0]])
        out[no[0]] = _Axis(x[k].labels[(rows // inner) % shape_in[k]], True)
        continue
      reason = f'{what} merges channel axes' if len(no) == 1 else f'{what} splits a channel axis'
      for k in channels:
        self.block(x[k].labels, reason)
      for k in no:
        labels = self.fresh(shape_out[k])
        self.block(labels, reason)
        out[k] = _Axis(labels, True)
    return out

  def concatenate(self, ins, shapes_in, shape_out, dim):
    out: list[_Axis] = []
    for k, size in enumerate(shape_out):
      if k != dim:
        out.append(
            self.elementwise([None if x is None else [x[k]] for x in ins], [(s[k],) for s in shapes_in], (size,))[0]
        )
        continue
      parts, channel = [], False
      for x, s in zip(ins, shapes_in):
        if x is None or x[k].labels is None:
          parts.append(self.fresh(s[k]))
        else:
          parts.append(x[k].labels)
          channel = channel or x[k].channel
      out.append(_Axis(np.concatenate(parts), channel) if channel else _Axis(None, False))
    return out

  def pad(self, x, shape_in, config):
    if x is None:
      return None
    out = []
    for k, (lo, hi, interior) in enumerate(config):
      a = x[k]
      if lo == 0 and hi == 0 and interior == 0:
        out.append(a)
      elif not a.channel or a.labels is None:
        out.append(_Axis(None, False))
      elif interior:
        self.block(a.labels, f'pad with interior padding of a channel axis {shape_in}')
        out.append(_Axis(self.fresh(shape_in[k] + lo + hi + interior * (shape_in[k] - 1)), True))
      else:
        keep = a.labels[max(-lo, 0) : shape_in[k] - max(-hi, 0)]
        self._drop(np.setdiff1d(a.labels, keep), f'pad with negative padding of a channel axis {shape_in}')
        before, after = self.fresh(max(lo, 0)), self.fresh(max(hi, 0))
        self.pad_nodes += [before, after]
        out.append(_Axis(np.concatenate([before, keep, after]), True))
    return out

  def _drop(self, labels, reason):
    if labels.size:
      self.dropped.append((labels, reason))

  def slice(self, x, shape_in, start, limit, strides):
    if x is None:
      return None
    strides = strides or (1,) * len(shape_in)
    out = []
    for k, a in enumerate(x):
      if (start[k], limit[k], strides[k]) == (0, shape_in[k], 1):
        out.append(a)
      elif a.channel and a.labels is not None:
        keep = a.labels[start[k] : limit[k] : strides[k]]
        self._drop(np.setdiff1d(a.labels, keep), f'slice [{start[k]}:{limit[k]}:{strides[k]}] of a channel axis')
        out.append(_Axis(keep, True))
      else:
        out.append(_Axis(None, False))
    return out

  def keep_full_axes(self, name, x, shape_in, shape_out):
    if x is None:
      return None
    out = []
    for k, a in enumerate(x):
      if shape_in[k] == shape_out[k]:
        out.append(a)
      else:
        if a.channel:
          self.block(a.labels, f'{name} of a channel axis')
        out.append(_Axis(None, False))
    return out

  def reduce_window(self, eqn, ins, shapes_in, shapes_out):
    p = eqn.params
    n_out = len(shapes_out)
    window, strides, padding = p['window_dimensions'], p['window_strides'], p['padding']
    results = []
    for x, s in zip(ins[:n_out], shapes_in[:n_out]):
      if x is None:
        results.append(None)
        continue
      axes = []
      for k, a in enumerate(x):
        if window[k] == 1 and strides[k] == 1 and tuple(padding[k]) == (0, 0):
          axes.append(a)
        else:
          if a.channel:
            self.block(a.labels, f'{eqn.primitive.name} pooling over a channel axis {s}')
          axes.append(_Axis(None, False))
      results.append(axes)
    return results

  def along_axes(self, name, ins, axes, n_out):
    x = ins[0]
    if x is None:
      return [None] * n_out
    for k in axes:
      if x[k].channel:
        self.block(x[k].labels, f'{name} along a channel axis')
    return [list(x) for _ in range(n_out)]

  def conv(self, ins, shapes_in, p):
    lhs, rhs = ins[0], ins[1]
    dn = p['dimension_numbers']
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    out = [_Axis(None, False) for _ in out_spec]
    groups, batch_groups = p['feature_group_count'], p['batch_group_count']
    lhs_feat = None if lhs is None else lhs[lhs_spec[1]].labels
    if lhs is not None:
      out[out_spec[0]] = lhs[lhs_spec[0]]
    if rhs is None or rhs[rhs_spec[0]].labels is None:
      self.block(lhs_feat, 'conv_general_dilated with a kernel that is not a variable')
      return out
    k_out, k_in = rhs[rhs_spec[0]].labels, rhs[rhs_spec[1]].labels
    out[out_spec[1]] = _Axis(k_out, True)
    self.producers.append(k_out)
    if batch_groups != 1:
      reason = f'conv_general_dilated with batch_group_count={batch_groups}'
      for labels in (lhs_feat, k_in, k_out):
        self.block(labels, reason)
    elif groups == 1:
      self.union(lhs_feat, k_in)
    elif shapes_in[1][rhs_spec[1]] == 1:  # depthwise: input channel g feeds outputs g*m ... g*m + m - 1
      if lhs_feat is not None:
        self.union(np.repeat(lhs_feat, k_out.size // lhs_feat.size), k_out)
    else:
      reason = f'grouped conv_general_dilated (feature_group_count={groups})'
      for labels in (lhs_feat, k_in, k_out):
        self.block(labels, reason)
    return out

  def dot(self, ins, shapes_in, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    lhs, rhs = ins
    lhs = lhs if lhs is not None else [_Axis(None, False) for _ in shapes_in[0]]
    rhs = rhs if rhs is not None else [_Axis(None, False) for _ in shapes_in[1]]
    for a, b in zip(list(lc) + list(lb), list(rc) + list(rb)):
      x, y = lhs[a], rhs[b]
      if x.labels is not None and y.labels is not None:
        self.union(x.labels, y.labels)
      else:  # contracted against a constant: its size is fixed
        for z in (x, y):
          if z.channel:
            self.block(z.labels, 'dot_general with an operand that is not traced (a constant)')
    out = [lhs[a] if lhs[a].labels is not None else rhs[b] for a, b in zip(lb, rb)]
    for side, contracted, batch in ((lhs, lc, lb), (rhs, rc, rb)):
      for k, a in enumerate(side):
        if k not in contracted and k not in batch:
          out.append(a)
          if a.channel and a.labels is not None:
            self.producers.append(a.labels)
    return out

  def call(self, eqn, ins, shapes_out):
    sub = None
    for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
      if key in eqn.params:
        sub = eqn.params[key]
        break
    inner = getattr(sub, 'jaxpr', sub)
    if inner is None or len(inner.invars) != len(ins):
      return self.unknown(eqn.primitive.name, ins, shapes_out)
    return self.run(inner, ins)

  def unknown(self, name, ins, shapes_out):
    reason = f'{name} (not followed by the channel tracer)'
    touched = False
    for x in ins:
      for a in x or ():
        if a.channel and a.labels is not None:
          self.block(a.labels, reason)
          touched = True
    if not touched:
      return [None] * len(shapes_out)
    outs = []
    for shape in shapes_out:
      axes = []
      for size in shape:
        labels = self.fresh(size)
        self.block(labels, reason)
        axes.append(_Axis(labels, True))
      outs.append(axes)
    return outs


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
  """Contiguous runs of input and output axes with equal products (a reshape's axis correspondence)."""
  groups, i, j = [], 0, 0
  while i < len(a) or j < len(b):
    gi, gj = [], []
    pa = pb = 1
    if i < len(a):
      gi.append(i)
      pa = a[i]
      i += 1
    if j < len(b):
      gj.append(j)
      pb = b[j]
      j += 1
    while pa != pb:
      if pa < pb and i < len(a):
        gi.append(i)
        pa *= a[i]
        i += 1
      elif j < len(b):
        gj.append(j)
        pb *= b[j]
        j += 1
      else:
        break
    groups.append((gi, gj))
  return groups


def _channel_axes(shape) -> list[int]:
  """Axes of a variable that may carry channels: all of a vector's or matrix's; the last two of a kernel (HWIO)."""
  return list(range(len(shape))) if len(shape) <= 2 else [len(shape) - 2, len(shape) - 1]


def _leaf_path(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def _flatten_variables(variables) -> list[tuple[str, str, tuple]]:
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  out = []
  for path, leaf in leaves:
    names = _leaf_path(path).split('/')
    out.append((names[0], '/'.join(names[1:]), tuple(np.shape(leaf))))
  return out


def channel_groups(
    model, variables, *inputs, fixed_outputs: Sequence[int] | None = None, **apply_kwargs
) -> list[Group]:
  """The coupled channel groups of `model.apply(variables, *inputs, **apply_kwargs)`, in forward order.

  `fixed_outputs`: indices (in `jax.tree_util.tree_leaves` order) of the output leaves whose widths are the
  model's contract; None: every leaf under a 'logits' key, else the first leaf (a classifier's `(logits, aux)`).
  The other outputs (auxiliary features) may shrink."""
  try:
    closed, out_shapes = jax.make_jaxpr(lambda v, *xs: model.apply(v, *xs, **apply_kwargs), return_shape=True)(
        variables, *inputs
    )
  except Exception as e:  # the model does not run on these inputs: say so in one line
    raise UserError(f'cannot trace {type(model).__name__}.apply: {str(e).splitlines()[0]}') from None
  if fixed_outputs is None:
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(out_shapes)[0]]
    fixed_outputs = [i for i, path in enumerate(paths) if any(getattr(k, 'key', None) == 'logits' for k in path)]
    fixed_outputs = fixed_outputs or [0]
  jaxpr = closed.jaxpr
  leaves = _flatten_variables(variables)
  tr = _Trace()
  env: list = []
  var_nodes: list[tuple[str, str, tuple, list[np.ndarray | None]]] = []
  for collection, path, shape in leaves:
    axes, nodes = [], []
    eligible = _channel_axes(shape)
    for k, size in enumerate(shape):
      labels = tr.fresh(size)
      axes.append(_Axis(labels, k in eligible))
      nodes.append(labels if k in eligible else None)
    env.append(axes)
    var_nodes.append((collection, path, shape, nodes))
  input_nodes = []
  for v in jaxpr.invars[len(leaves) :]:
    axes = [_Axis(tr.fresh(size), False) for size in v.aval.shape]
    input_nodes += [a.labels for a in axes]
    env.append(axes)
  outs = tr.run(jaxpr, env)
  output_nodes = []
  for i in fixed_outputs:
    if i < len(outs) and outs[i] is not None:
      output_nodes += [a.labels for a in outs[i] if a.channel and a.labels is not None]
  return _groups(tr, var_nodes, input_nodes, output_nodes)


def _components(tr: _Trace) -> np.ndarray:
  if tr.edges:
    a = np.concatenate([e[0] for e in tr.edges])
    b = np.concatenate([e[1] for e in tr.edges])
  else:
    a = b = np.zeros(0, np.int64)
  graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(tr.n, tr.n))
  return connected_components(graph, directed=False)[1]


def _first_reason(comp: np.ndarray, tagged: list[tuple[np.ndarray, str]]) -> dict[int, str]:
  reasons: dict[int, str] = {}
  for labels, reason in tagged:
    for c in np.unique(comp[labels]).tolist():
      reasons.setdefault(c, reason)
  return reasons


def _groups(tr: _Trace, var_nodes, input_nodes, output_nodes) -> list[Group]:
  comp = _components(tr)

  def comps_of(arrays) -> set[int]:
    return set(np.unique(comp[np.concatenate(arrays)]).tolist()) if arrays else set()

  blocked = _first_reason(comp, tr.blocked)
  param_comps = comps_of([n for *_, nodes in var_nodes for n in nodes if n is not None])
  for c, reason in _first_reason(comp, tr.dropped).items():
    if c in param_comps:
      blocked.setdefault(c, reason)
  for c in comps_of(tr.pad_nodes) & param_comps:
    blocked.setdefault(c, 'pad of a channel axis (zero channels padded to a fixed width)')
  from_input, to_output, produced = comps_of(input_nodes), comps_of(output_nodes), comps_of(tr.producers)
  first_produced: dict[int, int] = {}
  node_produced = np.full(tr.n, 1 << 60, np.int64)  # the order in which a node was first a layer's output
  for order, labels in enumerate(tr.producers):
    for c in np.unique(comp[labels]).tolist():
      first_produced.setdefault(c, order)
    node_produced[labels] = np.minimum(node_produced[labels], order)

  # channels (components) -> members; groups: channels sharing a variable axis
  axis_keys, per_axis, axis_produced = [], [], []
  for collection, path, shape, nodes in var_nodes:
    for k, labels in enumerate(nodes):
      if labels is not None:
        axis_keys.append((collection, path, k, shape[k]))
        per_axis.append(comp[labels])
        axis_produced.append(int(node_produced[labels].min()) if labels.size else 1 << 60)
  chans = sorted(set(np.concatenate(per_axis).tolist())) if per_axis else []
  chan_index = {c: i for i, c in enumerate(chans)}
  # A group is the channels one layer output axis produces (DepGraph's group of a conv's out-channels); channels
  # no layer produces group by the variable axes they share. Other axes are members of every group they read.
  rows, cols = [], []
  uniq = [np.unique(cs).tolist() for cs in per_axis]
  on_producer = set()
  for j in range(len(per_axis)):
    if axis_produced[j] < 1 << 60:
      on_producer.update(uniq[j])
  for j in range(len(per_axis)):
    for c in uniq[j]:
      if axis_produced[j] < 1 << 60 or c not in on_producer:
        rows.append(chan_index[c])
        cols.append(len(chans) + j)
  n = len(chans) + len(per_axis)
  graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
  group_of = connected_components(graph, directed=False)[1]
  chans_of: dict[int, list[int]] = {}
  for c in chans:
    chans_of.setdefault(group_of[chan_index[c]], []).append(c)
  axes_of_chan: dict[int, list[int]] = {}
  for j in range(len(per_axis)):
    for c in uniq[j]:
      axes_of_chan.setdefault(c, []).append(j)

  cache: dict[int, dict[int, tuple[int, ...]]] = {}

  def where_on(j: int) -> dict[int, tuple[int, ...]]:
    """{channel: its positions on variable axis j}."""
    if j not in cache:
      labels = per_axis[j].tolist()
      if len(uniq[j]) == len(labels):  # one position per channel (all but a flatten's rows)
        cache[j] = {c: (i,) for i, c in enumerate(labels)}
      else:
        where: dict[int, list[int]] = {}
        for i, c in enumerate(labels):
          where.setdefault(c, []).append(i)
        cache[j] = {c: tuple(ps) for c, ps in where.items()}
    return cache[j]

  groups = []
  for channels in chans_of.values():
    axes = sorted({j for c in channels for j in axes_of_chan[c]})
    anchor = _anchor(axes, uniq, channels, axis_produced)
    first = where_on(anchor)
    channels.sort(key=lambda c: first[c][0] if c in first else 1 << 60)
    members = []
    for j in axes:
      collection, path, k, size = axis_keys[j]
      where = where_on(j)
      if not any(c in where for c in channels):
        continue
      members.append(Member(collection, path, k, size, tuple(where.get(c, ()) for c in channels)))
    collection, path, k, _ = axis_keys[anchor]
    name = f'{path}:{k}'
    reason = next((blocked[c] for c in channels if c in blocked), None)
    if reason is not None:
      reason = f'{reason}, reached from parameter {path}'
    elif any(c in from_input for c in channels):
      reason = f'fed by the model input (parameter {path})'
    elif any(c in to_output for c in channels):
      reason = f'a fixed model output (parameter {path})'
    elif not any(c in produced for c in channels):
      reason = f'no layer produces these channels (parameter {path} only reads them)'
    order = min((first_produced.get(c, len(tr.producers)) for c in channels), default=len(tr.producers))
    groups.append((order, Group(name, len(channels), tuple(members), reason is None, reason)))
  groups.sort(key=lambda og: og[0])
  return [g for _, g in groups]


def _anchor(axes, uniq, channels, axis_produced) -> int:
  """The member axis naming the group: the earliest layer output covering every channel (else any output)."""
  best, best_key = axes[0], None
  cset = set(channels)
  for j in axes:
    present = set(uniq[j])
    key = (not cset <= present, axis_produced[j], j)
    if best_key is None or key < best_key:
      best, best_key = j, key
  return best


def describe_unprunable(groups: Sequence[Group]) -> list[str]:
  """'name: reason' of each group that cannot be pruned, without the size-1 axes nothing produces (a depthwise
  kernel's one input channel per group)."""
  return [
      f'{g.name}: {g.reason}'
      for g in groups
      if not g.prunable and not (g.channels == 1 and all(m.size == 1 for m in g.members))
  ]
