"""The sparse ADP-C model exported for serving (`jax.export`): with a fixed batch it serializes, deserializes and
gives the jitted model's logits; with a symbolic batch size (one artifact for every batch) it exports, where the
sparse loops' static chunk size was a ConcretizationTypeError traceback, computing masked-dense in those segments:
the same logits (fp32, 1e-4) at two batch sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from test_sparse_conv import assert_exits_equal, tiny_hrnets


def _models():
  rng = np.random.RandomState(0)
  image = rng.randn(1, 32, 32, 3).astype(np.float32)
  x = jnp.asarray(np.concatenate([image, 10 * image[:, ::-1]]))  # the second example far more confident
  dense, sparse, variables = tiny_hrnets(x, rng)
  return dense, sparse, variables, x


def _symbolic_batch():
  (b,) = export.symbolic_shape('b')
  return jax.ShapeDtypeStruct((b, 32, 32, 3), jnp.float32)


def test_sparse_model_exports_with_a_symbolic_batch():
  _, sparse, variables, _ = _models()
  v = {**variables, 'constants': {'tau': jnp.float32(0.8)}}
  exported = export.export(jax.jit(lambda v, x: sparse.apply(v, x)['logits']))(v, _symbolic_batch())
  assert [str(a.shape) for a in exported.out_avals] == ['(b, 8, 8, 4)'] * 4


@pytest.mark.slow  # four tiny-HRNet compiles: ~40 s idle
def test_exported_sparse_model_gives_the_logits_of_masked_dense():
  dense, sparse, variables, x = _models()
  apply = lambda model: jax.jit(lambda v, x: model.apply(v, x)['logits'])
  want_fn = apply(dense)
  conf1 = np.asarray(jax.nn.softmax(want_fn({**variables, 'constants': {'tau': jnp.float32(1.0)}}, x)[0]).max(-1))
  v = {**variables, 'constants': {'tau': jnp.float32(np.quantile(conf1, 0.5))}}
  want = want_fn(v, x)
  fixed = export.deserialize(export.export(apply(sparse))(v, x).serialize())
  assert_exits_equal(want, fixed.call(v, x), 'fixed batch, serialized')
  any_batch = export.deserialize(export.export(apply(sparse))(v, _symbolic_batch()).serialize())
  assert_exits_equal(want, any_batch.call(v, x), 'symbolic batch, at 2')
  assert_exits_equal([a[1:] for a in want], any_batch.call(v, x[1:]), 'symbolic batch, at 1')
