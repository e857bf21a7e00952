"""Table-driven weight conversion between Flax param trees and external (PyTorch-style) state dicts.

One table of `Rule`s per model family / external layout, used in BOTH directions:

  Rule(flax='stages_{i}_block_{j}/dwconv/kernel', external='stages.{i}.blocks.{j}.conv_dw.weight', transform=CONV)

Templates hold literal text plus placeholders: ``{name}`` matches a decimal integer, ``{name:REGEX}`` matches
REGEX (e.g. ``{i:[1-9][0-9]*}``; a regex given on one side of a rule applies to both sides). Both templates of
a rule must use the same placeholders; a key is converted
by matching it against one side and formatting the other side with the captured values. The FIRST rule that
matches wins, so put specific rules before general ones.

A `Transform` maps a tensor (and its shape) external -> Flax (`to_flax`) and back (`to_external`):

  IDENTITY                          unchanged (biases, LayerNorm scale/bias, layer scale)
  CONV      (O, I, kh, kw) <-> (kh, kw, I, O)      PyTorch Conv2d weight <-> Flax nn.Conv kernel
  LINEAR    (out, in)      <-> (in, out)           PyTorch Linear weight <-> Flax nn.Dense kernel
  CONV1X1_AS_LINEAR (out, in, 1, 1) <-> (in, out)  1x1 Conv2d weight     <-> Flax nn.Dense kernel

`import_tensors` / `export_tensors` are strict: the FIRST offending key is reported by name in a one-line
`core_jax.errors.UserError` -- an external key no rule maps, a key the target does not have, a key the target
needs but the source lacks, or a shape mismatch, worded
``"<key>: expected shape (a, b) but checkpoint has (c, d)"`` (shapes in the source's own layout).
All tensors are numpy arrays; nothing here needs torch.

Files and trees, once for every line:
  read_weights(path, ema=False) -> Weights(tensors, meta, kind): the ONE reader of weight files. `.pth/.pt/.bin/.tar`
      with ``torch.load(weights_only=True)`` (a file with pickled objects besides tensors is refused in one line,
      nothing in it runs), `.safetensors` (no torch), `.msgpack` (flax.serialization), a training step directory
      (core_jax.checkpoint) or a workdir (its latest step). Flat {key: np.ndarray}; `meta` is what the file says
      about itself besides tensors (a torch file's other top-level entries such as 'cfg', a step's JSON meta, or
      the `.json` sidecar next to a file).
  merge_params(loaded, fresh, keep_fresh=(), optional=()) -> the fresh tree with the loaded values, after
      big_vision's `merge_params`: exact key and shape match by default; `keep_fresh` patterns (kept from the
      fresh init, e.g. a reinitialized head) and `optional` patterns (may be missing from the file); the first
      mismatching key is one UserError naming it and both shapes.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from core_jax import checkpoint
from core_jax.errors import UserError, read_json_dict

__all__ = [
    'Transform',
    'IDENTITY',
    'CONV',
    'LINEAR',
    'CONV1X1_AS_LINEAR',
    'Rule',
    'RuleTable',
    'flatten',
    'flatten_variables',
    'unflatten',
    'shape_of',
    'format_shape',
    'import_tensors',
    'export_tensors',
    'Weights',
    'read_weights',
    'sidecar_path',
    'merge_params',
]

Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------------------------------
# Flat '/'-joined paths
# --------------------------------------------------------------------------------------------------------------
def flatten(tree: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """Nested mapping (dict / FrozenDict) -> {'a/b/c': leaf}, in insertion order. Empty sub-dicts are dropped."""
  out: dict[str, Any] = {}

  def walk(node, prefix):
    for k, v in node.items():
      if not isinstance(k, str):
        raise TypeError(f'param tree keys must be strings, got {k!r} under {prefix or "<root>"!r}')
      path = f'{prefix}{sep}{k}' if prefix else k
      if isinstance(v, Mapping):
        walk(v, path)
      else:
        out[path] = v

  walk(tree, '')
  return out


def flatten_variables(variables: Mapping[str, Any], collections=('params', 'batch_stats')) -> dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} -> {'params/<path>': leaf, 'batch_stats/<path>': leaf}: the flat form the
  converters of models with BatchNorm map (a missing collection adds nothing)."""
  return {f'{col}/{k}': v for col in collections for k, v in flatten(variables.get(col, {})).items()}


def unflatten(flat: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested plain dicts (inverse of `flatten`)."""
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    parts = path.split(sep)
    node = tree
    for p in parts[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f'path {path!r} collides with a leaf at {p!r}')
    if parts[-1] in node:
      raise ValueError(f'duplicate path {path!r}')
    node[parts[-1]] = v
  return tree


def shape_of(x: Any) -> Shape:
  """Shape of a numpy/jax/torch array, a jax.ShapeDtypeStruct, or a plain shape tuple."""
  if isinstance(x, tuple):
    return tuple(int(d) for d in x)
  return tuple(int(d) for d in x.shape)


def format_shape(shape: Sequence[int]) -> str:
  return str(tuple(int(d) for d in shape))


# --------------------------------------------------------------------------------------------------------------
# Tensor transforms
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Transform:
  """external -> Flax (`to_flax`) and Flax -> external (`to_external`), for arrays and for shapes."""

  name: str
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_external: Callable[[np.ndarray], np.ndarray]
  flax_shape: Callable[[Shape], Shape]
  external_shape: Callable[[Shape], Shape]
  external_ndim: int | None = None  # ndim the external tensor must have (None: any)
  flax_ndim: int | None = None

  def __repr__(self):
    return f'Transform({self.name})'


def _ident(x):
  return x


IDENTITY = Transform('identity', _ident, _ident, _ident, _ident)

CONV = Transform(
    'conv OIHW<->HWIO',
    to_flax=lambda w: np.transpose(w, (2, 3, 1, 0)),
    to_external=lambda k: np.transpose(k, (3, 2, 0, 1)),
    flax_shape=lambda s: (s[2], s[3], s[1], s[0]),
    external_shape=lambda s: (s[3], s[2], s[0], s[1]),
    external_ndim=4,
    flax_ndim=4,
)

LINEAR = Transform(
    'linear (out,in)<->(in,out)',
    to_flax=lambda w: np.transpose(w),
    to_external=lambda k: np.transpose(k),
    flax_shape=lambda s: (s[1], s[0]),
    external_shape=lambda s: (s[1], s[0]),
    external_ndim=2,
    flax_ndim=2,
)

CONV1X1_AS_LINEAR = Transform(
    '1x1 conv (out,in,1,1)<->(in,out)',
    to_flax=lambda w: np.transpose(w.reshape(w.shape[0], w.shape[1])),
    to_external=lambda k: np.transpose(k)[:, :, None, None],
    flax_shape=lambda s: (s[1], s[0]),
    external_shape=lambda s: (s[1], s[0], 1, 1),
    external_ndim=4,
    flax_ndim=2,
)


# --------------------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r'\{(\w+)(?::([^{}]+))?\}')


class _Template:
  """'a.{i}.b.{j:[0-9]+}' -> a full-match regex with named groups, and a formatter back."""

  def __init__(self, text: str, patterns: Mapping[str, str] | None = None):
    self.text = text
    patterns = patterns or {}
    pattern, fmt, names, pos = [], [], [], 0
    for m in _PLACEHOLDER.finditer(text):
      literal = text[pos : m.start()]
      pattern.append(re.escape(literal))
      fmt.append(literal.replace('{', '{{').replace('}', '}}'))
      name, rx = m.group(1), m.group(2) or patterns.get(m.group(1), r'[0-9]+')
      if name in names:
        raise ValueError(f'placeholder {{{name}}} used twice in {text!r}')
      names.append(name)
      pattern.append(f'(?P<{name}>{rx})')
      fmt.append('{' + name + '}')
      pos = m.end()
    pattern.append(re.escape(text[pos:]))
    fmt.append(text[pos:].replace('{', '{{').replace('}', '}}'))
    self.names = frozenset(names)
    self.regex = re.compile(''.join(pattern))
    self.fmt = ''.join(fmt)

  def match(self, key: str) -> dict[str, str] | None:
    m = self.regex.fullmatch(key)
    return m.groupdict() if m else None

  def format(self, groups: Mapping[str, str]) -> str:
    return self.fmt.format(**groups)


@dataclasses.dataclass(frozen=True)
class Rule:
  """One Flax path template <-> one external key template, with the tensor transform between them."""

  flax: str
  external: str
  transform: Transform = IDENTITY

  def __post_init__(self):
    # a placeholder's regex given on either side applies to both sides
    patterns: dict[str, str] = {}
    for text in (self.flax, self.external):
      for m in _PLACEHOLDER.finditer(text):
        if m.group(2):
          if patterns.setdefault(m.group(1), m.group(2)) != m.group(2):
            raise ValueError(f'rule {self.flax!r} <-> {self.external!r}: two regexes for {{{m.group(1)}}}')
    f, e = _Template(self.flax, patterns), _Template(self.external, patterns)
    if f.names != e.names:
      raise ValueError(
          f'rule {self.flax!r} <-> {self.external!r}: placeholders differ ({sorted(f.names)} vs ' f'{sorted(e.names)})'
      )
    object.__setattr__(self, '_f', f)
    object.__setattr__(self, '_e', e)


class RuleTable:
  """An ordered list of rules; maps single keys either way (first matching rule wins)."""

  def __init__(self, rules: Iterable[Rule], name: str = 'rules'):
    self.rules: list[Rule] = list(rules)
    self.name = name

  def to_flax_key(self, external_key: str) -> tuple[str, Rule] | None:
    for r in self.rules:
      g = r._e.match(external_key)
      if g is not None:
        return r._f.format(g), r
    return None

  def to_external_key(self, flax_path: str) -> tuple[str, Rule] | None:
    for r in self.rules:
      g = r._f.match(flax_path)
      if g is not None:
        return r._e.format(g), r
    return None

  def rename_to_flax(self, external_keys: Iterable[str]) -> dict[str, str]:
    """{external key: flax path} for the keys some rule maps (unmapped keys are left out; no strictness)."""
    out = {}
    for k in external_keys:
      hit = self.to_flax_key(k)
      if hit is not None:
        out[k] = hit[0]
    return out


# --------------------------------------------------------------------------------------------------------------
# Strict conversion
# --------------------------------------------------------------------------------------------------------------
def _more(n: int) -> str:
  return f' (and {n} more)' if n > 0 else ''


def _shape_error(key: str, expected: Shape, found: Shape, source: str, hint: str = '') -> UserError:
  return UserError(f'{key}: expected shape {format_shape(expected)} but {source} has {format_shape(found)}{hint}')


def import_tensors(
    external: Mapping[str, Any],
    table: RuleTable,
    target: Mapping[str, Any] | None = None,
    *,
    source: str = 'checkpoint',
    dtype: Any = None,
    ignore_flax: Iterable[str] = (),
) -> dict[str, np.ndarray]:
  """External state dict -> flat Flax dict {path: np.ndarray}, strictly.

  external: {key: array} (numpy, or anything `np.asarray` takes).
  target:   flat {flax path: array | ShapeDtypeStruct | shape tuple}. When given, the result has exactly the
            target's paths (in target order) and shapes; checkpoint-layout shapes are compared BEFORE the
            transform, so the message speaks the checkpoint's layout. Leaves with a dtype set the output dtype.
  dtype:    cast every tensor to this dtype (overrides the target's dtypes).
  ignore_flax: Flax paths that are neither loaded nor required (e.g. a head being re-initialized): the
            checkpoint's tensors for them are skipped and they are absent from the result.
  Raises UserError naming the first offending key: unmapped / unexpected key, shape mismatch, missing key.
  """
  ignore = set(ignore_flax)
  mapped: dict[str, tuple[str, Rule]] = {}
  unmapped = [k for k in external if table.to_flax_key(k) is None]
  if unmapped:
    raise UserError(f'unexpected key {unmapped[0]} in {source}: no {table.name} rule maps it{_more(len(unmapped) - 1)}')
  for k in external:
    path, rule = table.to_flax_key(k)
    if path in mapped:
      raise UserError(f'{k} and {mapped[path][0]} in {source} both map to Flax param {path}')
    mapped[path] = (k, rule)

  if target is not None:
    unexpected = [mapped[p][0] for p in mapped if p not in target and p not in ignore]
    if unexpected:
      raise UserError(
          f'unexpected key {unexpected[0]} in {source}: the model has no param '
          f'{table.to_flax_key(unexpected[0])[0]}{_more(len(unexpected) - 1)}'
      )
    for p, (k, rule) in mapped.items():
      if p in ignore:
        continue
      want = rule.transform.external_shape(shape_of(target[p])) if _ndim_ok(rule.transform, target[p]) else None
      got = shape_of(external[k])
      if want is None or want != got:
        want = want if want is not None else shape_of(target[p])
        raise _shape_error(k, want, got, source)
    missing = [p for p in target if p not in mapped and p not in ignore]
    if missing:
      hit = table.to_external_key(missing[0])
      name = hit[0] if hit else missing[0]
      raise UserError(f'missing key {name} in {source} (Flax param {missing[0]}){_more(len(missing) - 1)}')
    order = [p for p in target if p not in ignore]
  else:
    order = [p for p in mapped if p not in ignore]

  out: dict[str, np.ndarray] = {}
  for p in order:
    k, rule = mapped[p]
    x = np.asarray(external[k])
    if rule.transform.external_ndim is not None and x.ndim != rule.transform.external_ndim:
      raise UserError(
          f'{k}: expected a {rule.transform.external_ndim}-d tensor ({rule.transform.name}) but '
          f'{source} has shape {format_shape(x.shape)}'
      )
    y = rule.transform.to_flax(x)
    want_dtype = dtype if dtype is not None else (getattr(target[p], 'dtype', None) if target is not None else None)
    if want_dtype is not None and y.dtype != np.dtype(want_dtype):
      y = y.astype(want_dtype)
    out[p] = y
  return out


def _ndim_ok(t: Transform, leaf: Any) -> bool:
  return t.flax_ndim is None or len(shape_of(leaf)) == t.flax_ndim


def export_tensors(
    flat: Mapping[str, Any], table: RuleTable, expected: Mapping[str, Any] | None = None, *, source: str = 'Flax params'
) -> dict[str, np.ndarray]:
  """Flat Flax dict -> external state dict {key: C-contiguous np.ndarray}, strictly.

  expected: optional {external key: array | shape}; when given the output must have exactly these keys and
  shapes (e.g. a freshly built PyTorch model's state dict), else the first offending key is reported.
  """
  out: dict[str, np.ndarray] = {}
  for p, v in flat.items():
    hit = table.to_external_key(p)
    if hit is None:
      raise UserError(f'unexpected Flax param {p} in {source}: no {table.name} rule maps it')
    k, rule = hit
    x = np.asarray(v)
    if rule.transform.flax_ndim is not None and x.ndim != rule.transform.flax_ndim:
      raise UserError(
          f'{p}: expected a {rule.transform.flax_ndim}-d array ({rule.transform.name}) but {source} '
          f'has shape {format_shape(x.shape)}'
      )
    if k in out:
      raise UserError(f'two Flax params map to {k}')
    out[k] = np.ascontiguousarray(rule.transform.to_external(x))
  if expected is not None:
    for k, v in out.items():
      if k not in expected:
        raise UserError(f'unexpected key {k} (from Flax param {table.to_flax_key(k)[0]}): the target has no such key')
      if shape_of(expected[k]) != v.shape:
        raise _shape_error(k, shape_of(expected[k]), v.shape, source)
    missing = [k for k in expected if k not in out]
    if missing:
      raise UserError(f'missing key {missing[0]}: {source} provide no value for it{_more(len(missing) - 1)}')
  return out


# --------------------------------------------------------------------------------------------------------------
# Reading weight files
# --------------------------------------------------------------------------------------------------------------
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.tar')
_WRAPPERS = ('model', 'state_dict')
_EMA_WRAPPERS = ('model_ema', 'state_dict_ema')
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


@dataclasses.dataclass
class Weights:
  """What `read_weights` found: flat {key: np.ndarray} in the file's own key names ('/'-joined paths for Flax
  trees; 'params/...' and 'batch_stats/...' for a training step), what the source says about itself, and its
  kind ('torch', 'safetensors', 'msgpack' or 'step')."""

  tensors: dict[str, np.ndarray]
  meta: dict[str, Any]
  kind: str


def one_line(e: BaseException) -> str:
  """An exception as one short line (ANSI colours and newlines removed)."""
  text = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__
  text = ' '.join(_ANSI.sub('', text).split())
  return text if len(text) <= 300 else text[:297] + '...'


def sidecar_path(path: str) -> str:
  """The JSON written next to a weights file: 'x.safetensors' -> 'x.json'."""
  return os.path.splitext(path)[0] + '.json'


def read_sidecar(path: str) -> dict[str, Any]:
  """The sidecar of `path` as a dict, {} when there is none."""
  side = sidecar_path(path)
  if not os.path.isfile(side):
    return {}
  return read_json_dict(side, 'the sidecar', f'fix or remove it (it describes {path})')


def _pickled_objects_error(path: str, e: Exception) -> UserError:
  """torch's weights-only refusal, in our words: what the file holds and that nothing in it ran."""
  found = re.search(r'GLOBAL ([\w.]+)', str(e))
  what = f' ({found.group(1)})' if found else ''
  return UserError(
      f'{path} holds pickled Python objects{what} besides tensors, which can run code when loaded, so it was not '
      f'loaded (torch.load weights_only=True); if you trust its source, re-save its state_dict with torch.save or '
      f'as .safetensors and read that'
  )


def file_kind(path: str) -> str:
  """'torch', 'safetensors' or 'msgpack', by extension, else by the first bytes."""
  lower = path.lower()
  if lower.endswith(TORCH_SUFFIXES):
    return 'torch'
  if lower.endswith('.safetensors'):
    return 'safetensors'
  if lower.endswith('.msgpack'):
    return 'msgpack'
  try:
    with open(path, 'rb') as f:
      head = f.read(16)
  except OSError as e:
    raise UserError(f'cannot read {path}: {one_line(e)}') from None
  if head[:2] == b'PK':  # torch's zip format
    return 'torch'
  if len(head) >= 9 and head[8:9] == b'{':  # 8-byte header length, then the JSON header
    return 'safetensors'
  raise UserError(f'cannot tell the format of {path}: use a .pth/.pt/.bin, .safetensors or .msgpack file')


def _unwrap(obj: Any, path: str, ema: bool) -> tuple[Mapping[str, Any], dict[str, Any]]:
  """(the state dict inside a torch checkpoint, its other top-level entries that are not dicts)."""
  if not isinstance(obj, Mapping):
    raise UserError(f'{path} holds a {type(obj).__name__}, not a state dict')
  order = _EMA_WRAPPERS + _WRAPPERS if ema else _WRAPPERS + _EMA_WRAPPERS
  for w in order:
    if w in obj and isinstance(obj[w], Mapping):
      return obj[w], {str(k): v for k, v in obj.items() if not isinstance(v, Mapping) and not _is_tensor(v)}
  if ema:
    raise UserError(f'{path} has no EMA weights (no model_ema / state_dict_ema entry)')
  return obj, {}


def _is_tensor(v: Any) -> bool:
  return isinstance(v, np.ndarray) or (hasattr(v, 'detach') and hasattr(v, 'numpy'))


def _to_numpy(k: str, v: Any, path: str) -> np.ndarray:
  if isinstance(v, np.ndarray):
    return v
  if hasattr(v, 'detach') and hasattr(v, 'numpy'):  # torch.Tensor
    import torch  # pylint: disable=import-outside-toplevel  (torch only for torch files)

    t = v.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
      t = t.float()
    return t.numpy()
  raise UserError(f'{k} in {path} is a {type(v).__name__}, not a tensor')


def _read_torch(path: str, ema: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  try:
    import torch  # pylint: disable=import-outside-toplevel  (torch only for torch files)
  except ImportError:
    raise UserError(f'reading {path} needs PyTorch (pip install torch), or convert it to .safetensors') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise _pickled_objects_error(path, e) from None
  sd, meta = _unwrap(obj, path, ema)
  return {str(k): _to_numpy(str(k), v, path) for k, v in sd.items()}, meta


def _read_msgpack(path: str) -> dict[str, np.ndarray]:
  from flax import serialization  # pylint: disable=import-outside-toplevel  (flax only for msgpack files)

  with open(path, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  if not isinstance(tree, Mapping):
    raise UserError(f'{path} holds a {type(tree).__name__}, not a param tree')
  if set(tree) == {'params'}:
    tree = tree['params']
  return {k: np.asarray(v) for k, v in flatten(tree).items()}


def _read_step(path: str, ema: bool) -> Weights:
  step_dir = path
  if not os.path.isdir(os.path.join(path, 'state')):
    step_dir = checkpoint.latest_step_dir(path)
    if step_dir is None:
      raise UserError(f'{path} is neither a training checkpoint step (WORKDIR/checkpoints/STEP) nor a workdir with one')
  ckpt = checkpoint.read_training_checkpoint(step_dir)
  params = ckpt['params']
  if ema:
    params = ckpt['ema_params']
    if not params:
      raise UserError(f'{step_dir} has no ema_params (was EMA on in that run?)')
  tensors = {f'params/{k}': np.asarray(v) for k, v in flatten(params).items()}
  tensors.update({f'batch_stats/{k}': np.asarray(v) for k, v in flatten(ckpt['batch_stats'] or {}).items()})
  return Weights(tensors, dict(ckpt['meta'] or {}, step_dir=step_dir), 'step')


def read_weights(path: str, *, ema: bool = False) -> Weights:
  """Any weights file, a training step directory or a workdir -> `Weights` (see the module docstring).

  A torch file is unwrapped from 'model' / 'state_dict' ('model_ema' / 'state_dict_ema' with `ema`, or when they
  are the only choice); keys all prefixed 'module.' (DataParallel) lose it. A step dir gives 'params/...' (its
  EMA params with `ema`) and 'batch_stats/...'. Bad input is a one-line UserError."""
  if not path:
    raise UserError('no weights path given')
  if os.path.isdir(path):
    return _read_step(path, ema)
  if not os.path.isfile(path):
    raise UserError(f'weights not found: {path}')
  kind = file_kind(path)
  meta: dict[str, Any] = {}
  try:
    if kind == 'torch':
      sd, meta = _read_torch(path, ema)
    elif kind == 'safetensors':
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel  (an optional package)

      sd = dict(load_file(path))
    else:
      sd = _read_msgpack(path)
  except UserError:
    raise
  except Exception as e:  # corrupt / truncated / not this format: one line, no traceback
    raise UserError(f'cannot read {path} as {kind}: {one_line(e)}') from None
  if kind != 'torch' and ema:
    raise UserError(f'EMA weights can be read from .pth checkpoints and training steps only ({path} is {kind})')
  if not sd:
    raise UserError(f'{path} holds no tensors')
  if all(k.startswith('module.') for k in sd):  # DataParallel / DistributedDataParallel wrapper
    sd = {k[len('module.') :]: v for k, v in sd.items()}
  if kind != 'torch':
    meta = read_sidecar(path)
  return Weights(sd, meta, kind)


# --------------------------------------------------------------------------------------------------------------
# Merging loaded weights into a fresh tree
# --------------------------------------------------------------------------------------------------------------
def _compile(patterns: Iterable[str]) -> list[re.Pattern]:
  return [re.compile(p) for p in patterns]


def _matches(key: str, patterns: Sequence[re.Pattern]) -> bool:
  return any(p.fullmatch(key) for p in patterns)


def merge_params(
    loaded: Mapping[str, Any],
    fresh: Mapping[str, Any],
    *,
    keep_fresh: Iterable[str] = (),
    optional: Iterable[str] = (),
    source: str = 'checkpoint',
    hint: str = '',
) -> dict[str, Any]:
  """`fresh` (a nested tree or a flat '/'-joined dict) with every leaf replaced by the same key of `loaded`
  (nested or flat), cast to the fresh leaf's dtype; returns a nested tree of numpy arrays.

  keep_fresh: regexes (full match on the '/'-joined key): these leaves keep their fresh values (which must be
    concrete arrays), and `loaded`'s values for them are ignored, present or not.
  optional:   regexes: these leaves may be missing from `loaded` (they keep their fresh values), and `loaded`
    may hold them where the model has none.
  Anything else is strict: the first key the model needs and `loaded` lacks, the first shape mismatch, and the
  first key of `loaded` the model lacks are each one UserError naming the key (and both shapes), with `hint`
  appended (e.g. ': the cfg does not match this checkpoint')."""
  keep, opt = _compile(keep_fresh), _compile(optional)
  want, have = flatten(fresh), flatten(loaded)
  kept = {k for k in want if _matches(k, keep) or (k not in have and _matches(k, opt))}
  # a shape mismatch says the most about what is wrong, so it is reported before a missing or unexpected key
  for key, leaf in want.items():
    if key not in kept and key in have and shape_of(have[key]) != shape_of(leaf):
      raise UserError(
          f'{key}: the model has shape {format_shape(shape_of(leaf))} but {source} has '
          f'{format_shape(shape_of(have[key]))}{hint}'
      )
  merged: dict[str, Any] = {}
  for key, leaf in want.items():
    if key in kept:
      if not hasattr(leaf, '__array__'):
        raise UserError(f'{key} keeps its fresh value, so it needs a concrete initial value, not {type(leaf).__name__}')
      merged[key] = np.asarray(leaf)
    elif key not in have:
      raise UserError(f'{source} has no {key} (the model needs shape {format_shape(shape_of(leaf))}){hint}')
    else:
      merged[key] = np.asarray(have[key]).astype(leaf.dtype, copy=False)
  extra = [k for k in have if k not in want and not _matches(k, keep) and not _matches(k, opt)]
  if extra:
    raise UserError(
        f'{source} has {extra[0]} (shape {format_shape(shape_of(have[extra[0]]))}), which the model lacks'
        f'{_more(len(extra) - 1)}{hint}'
    )
  return unflatten(merged)


def write_atomic(path: str, write: Callable[[str], Any]) -> None:
  """`write(tmp)` then a rename onto `path`, so a reader (or a rerun after a kill) never sees half a weights file;
  a missing output folder is one line, and the temporary file is removed whatever happens."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UserError(f'output directory does not exist: {folder}')
  if os.path.isdir(path):  # os.replace's IsADirectoryError was a traceback, after the work
    raise UserError(f'output {path} is a folder: name a file to write')
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
  """`text` into `path` through `write_atomic`: a results file is whole or absent, never half written."""

  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      f.write(text)

  write_atomic(path, write)
