"""Named models, one small mechanism for every line: name -> constructor with its default keyword arguments.

    MODELS = Registry('ConvNeXt model')
    MODELS.register('convnext_tiny', ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))

    @MODELS.register('w48', arch='w48')
    def build(**kwargs): ...

    MODELS.create('convnext_tiny', num_classes=10)   # constructor(**{**defaults, **overrides})
    MODELS.list_models('convnext_iso_*')             # sorted names, optionally an fnmatch pattern

An unknown name is one UserError naming it and the registered names closest to it. The zoos, converters and
tests take their model lists from `list_models()` instead of typing them again.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from core_jax.errors import UserError


class Registry:
  """name -> (constructor, default keyword arguments); `kind` names what is registered in error messages."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}

  def register(self, name: str, constructor: Callable[..., Any] | None = None, **defaults):
    """`register(name, constructor, **defaults)`, or as a decorator: `@register(name, **defaults)`."""

    def add(fn):
      if name in self._entries and self._entries[name] != (fn, defaults):
        raise ValueError(f'{self.kind} {name!r} is already registered with another constructor or defaults')
      self._entries[name] = (fn, dict(defaults))
      return fn

    return add if constructor is None else add(constructor)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def list_models(self, pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by an fnmatch pattern."""
    return [n for n in sorted(self._entries) if pattern is None or fnmatch.fnmatch(n, pattern)]

  def entries(self) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """(name, constructor, defaults) in registration order (e.g. a zoo table's row order)."""
    return [(n, fn, dict(d)) for n, (fn, d) in self._entries.items()]

  def unknown(self, name: str) -> UserError:
    close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(close)}?' if close else f'; registered: {", ".join(self.list_models())}'
    return UserError(f'unknown {self.kind} {name!r}{hint}')

  def entry(self, name: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """(constructor, a copy of its defaults); UserError for an unknown name."""
    if name not in self._entries:
      raise self.unknown(name)
    constructor, defaults = self._entries[name]
    return constructor, dict(defaults)

  def config(self, name: str, **overrides) -> dict[str, Any]:
    """The keyword arguments `create(name, **overrides)` passes to the constructor."""
    _, defaults = self.entry(name)
    defaults.update(overrides)
    return defaults

  def create(self, name: str, **overrides):
    constructor, _ = self.entry(name)
    return constructor(**self.config(name, **overrides))
