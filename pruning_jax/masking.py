"""Weight masks that survive training: an optax transform for the Task's `post` list (`Task.optimizer_transforms`).

  keep_masked(mask_fn)   GradientTransformation: init(params) stores mask_fn(params) in its state (so the mask
                         is checkpointed, sharded and restored with opt_state); update() multiplies the final
                         updates by it. A weight that is 0 under the mask at init stays exactly 0: its update is
                         exactly 0, so weight decay and momentum never move it (they act before this transform).
  nonzero_mask(params, filter_fn=None)   1 where a weight is non-zero (leaves filter_fn rejects: None)
  mask_from_tree(mask)   a mask_fn returning a fixed mask tree (e.g. surgery.channel_mask's)

Mask trees mirror params; None leaves are not masked (stored as a scalar 1 in the state).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class KeepMaskedState(NamedTuple):
  mask: Any


def _fill_none(mask, params):
  def fill(m, p):
    return jnp.ones((), jnp.asarray(p).dtype) if m is None else jnp.asarray(m, p.dtype)

  return jax.tree_util.tree_map(fill, mask, params, is_leaf=lambda m: m is None)


def keep_masked(mask_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Updates multiplied by mask_fn(params at init), so masked weights never change."""

  def init(params):
    return KeepMaskedState(mask=_fill_none(mask_fn(params), params))

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, m: u * m.astype(u.dtype), updates, state.mask), state

  return optax.GradientTransformation(init, update)


def nonzero_mask(params, filter_fn: Callable[[tuple, Any], bool] | None = None):
  """{0, 1} where params are non-zero; leaves with filter_fn(path, leaf) False are None (not masked)."""

  def leaf(path, p):
    if filter_fn is not None and not filter_fn(tuple(getattr(k, 'key', k) for k in path), p):
      return None
    return (p != 0).astype(p.dtype)

  return jax.tree_util.tree_map_with_path(leaf, params)


def mask_from_tree(mask) -> Callable[[Any], Any]:
  return lambda params: mask
