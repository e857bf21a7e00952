"""The transform registry: op names -> factories, and spec strings -> composed `f(example, rng)` transforms.

This module imports no ops. Op modules register into it with `@register('name')`; the explicit list of op
modules is `core_jax.data.ops.OP_MODULES`, and `core_jax.data.ops.build_transforms` (which imports them all)
is what pipelines call.

Example conventions every op follows:
- an example is a dict of numpy arrays (or PIL images between PIL ops); `image` is (H, W, C);
- `segmentation` (`LABEL_MAP_KEY`) is a uint8 (H, W) label map transformed together with the image;
  `IGNORE_LABEL` (255) marks pixels that count for nothing (padding, unlabelled);
- an op is pure given its `np.random.Generator`: the same example and generator state give the same output.

A spec is an op name or a call with literal arguments, e.g. 'flip_lr', 'random_crop(size=32, padding=4)',
'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))'.
"""

import ast
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from core_jax.errors import UserError

Example = dict[str, Any]
Transform = Callable[[Example, np.random.Generator], Example]

IGNORE_LABEL = 255
LABEL_MAP_KEY = 'segmentation'

_REGISTRY: dict[str, Callable[..., Transform]] = {}


def register(name: str):
  """Decorator registering a factory `(*args, **kwargs) -> Transform` under `name`."""

  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f'transform {name!r} already registered (by {_REGISTRY[name].__module__})')
    _REGISTRY[name] = factory
    return factory

  return deco


def registered() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def factory(name: str) -> Callable[..., Transform]:
  """The registered factory of op `name` (KeyError if none)."""
  return _REGISTRY[name]


def parse_spec(spec: str) -> tuple[str, tuple, dict]:
  """'name' or 'name(literal args)' -> (name, args, kwargs)."""
  try:
    node = ast.parse(spec.strip(), mode='eval').body
    if isinstance(node, ast.Name):
      return node.id, (), {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
      if len(kwargs) != len(node.keywords):
        raise ValueError('**kwargs not allowed')
      return node.func.id, args, kwargs
    raise ValueError('expected `name` or `name(key=literal, ...)`')
  except (SyntaxError, ValueError) as e:
    raise UserError(f'bad transform spec {spec!r}: {e}') from None


def get_transform(spec: str) -> Transform:
  """The op a spec string names, built with its arguments (UserError on an unknown name or bad arguments)."""
  name, args, kwargs = parse_spec(spec)
  if name not in _REGISTRY:
    raise UserError(f'unknown transform {name!r} in {spec!r}; known: {", ".join(registered())}')
  try:
    return _REGISTRY[name](*args, **kwargs)
  except TypeError as e:
    raise UserError(f'bad arguments for transform {spec!r}: {e}') from None


def compose(specs: Sequence[str] | str) -> Transform:
  """The ops of `specs` (already registered) applied left to right as one `f(example, rng) -> example`."""
  if isinstance(specs, str):
    specs = [specs]
  ops = [get_transform(s) for s in specs]

  def apply(example: Example, rng: np.random.Generator) -> Example:
    example = dict(example)  # sources may hand out shared/cached dicts
    for op in ops:
      example = op(example, rng)
    for key, value in example.items():  # PIL images (kept between PIL ops) leave as numpy arrays
      if isinstance(value, Image.Image):
        example[key] = np.asarray(value)
    return example

  return apply
