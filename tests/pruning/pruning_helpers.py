"""Test helpers: random variables for a model without compiling its init (jit of init dominates test time); the
recipes of configs/pruning (configs/pruning/_recipes.py, loaded as the configs load it)."""

import os

import jax
import numpy as np

from core_jax.config import load_sibling

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs', 'pruning')
recipes = load_sibling(os.path.join(CONFIGS, '_recipes.py'), '_recipes.py')


def random_variables(model, x, seed: int = 0) -> dict:
  """Host numpy variables of `model`'s shapes: kernels N(0, 1/fan_in), BN scale / var U(0.5, 1.5), BN bias / mean
  and Linear biases N(0, 0.1) -- non-trivial everywhere, so eval and train mode both test something."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1]))
  rng = np.random.RandomState(seed)
  flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for path, s in flat:
    name = path[-1].key
    if name == 'kernel':
      v = rng.randn(*s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    elif name in ('scale', 'var'):
      v = rng.uniform(0.5, 1.5, s.shape)
    else:
      v = 0.1 * rng.randn(*s.shape)
    out.append(np.asarray(v, np.float32))  # scalars too (SSS block factors)
  return jax.tree_util.tree_unflatten(treedef, out)
