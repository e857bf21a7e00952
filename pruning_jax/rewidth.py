"""A Linen module run with some submodules' widths replaced: the model `pruning_jax.prune` returns.

    small = Rewidthed(model, ((('stages_0_block_0', 'pwconv1'), (('features', 64),)), ...))
    small.apply(sliced_variables, x, train=False)

Each submodule at a listed path gets the listed dataclass fields (`features`, `feature_group_count`, a custom
`dim`) replaced right before its method runs, through Flax's method interception (`nn.intercept_methods`), so a
width written as a literal inside `@nn.compact` code (`nn.Conv(24, ...)`) changes without any constructor exposing
it. `Rewidthed` shares `base`'s scope: its variables are `base`'s, with the new shapes. `widths_jsonable` /
`widths_from_json` carry the table through a JSON sidecar or a config.
"""

import flax.linen as nn


class Rewidthed(nn.Module):
  base: nn.Module
  widths: tuple = ()  # ((module path as a tuple of names, ((field, value), ...)), ...)

  def setup(self):
    nn.share_scope(self, self.base)

  def __call__(self, *args, **kwargs):
    table = dict(self.widths)

    def replace_widths(next_fun, args, kwargs, context):
      module = context.module
      if not isinstance(module, Rewidthed) and module.scope is not None:
        for field, value in table.get(tuple(module.scope.path), ()):
          object.__setattr__(module, field, value)  # before the method builds its params from it
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(replace_widths):
      return self.base(*args, **kwargs)


def rewidthed(model: nn.Module, widths) -> Rewidthed:
  """`model` run with `widths`; a model that is already a Rewidthed keeps one wrapper over its base, its own
  table updated by `widths` (read off the rewidthed modules, so a later width wins)."""
  if not isinstance(model, Rewidthed):
    return Rewidthed(model, tuple(widths))
  table = {path: dict(fields) for path, fields in model.widths}
  for path, fields in widths:
    table.setdefault(path, {}).update(dict(fields))
  return Rewidthed(model.base, tuple((path, tuple(fields.items())) for path, fields in sorted(table.items())))


def widths_jsonable(widths) -> list:
  return [['/'.join(path), [[f, int(v)] for f, v in fields]] for path, fields in widths]


def widths_from_json(widths) -> tuple:
  return tuple(
      (tuple(p for p in str(path).split('/') if p), tuple((str(f), int(v)) for f, v in fields))
      for path, fields in widths
  )
