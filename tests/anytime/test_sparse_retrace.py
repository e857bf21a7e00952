"""The sparse evaluation compiles once: batches whose masks differ (how many pixels each segment keeps, which segment
kind it takes, `confidence.segment_kind`) and another threshold (an argument, `AnytimeSegTask.eval_constants`) run
the one compiled program. A recompile per batch would make the sparse path unusable; the counter is JAX's own
(`jax.monitoring`'s backend-compile event) beside the jitted function's cache size."""

import jax
import jax.numpy as jnp
import numpy as np
from test_sparse_conv import tiny_hrnets

from anytime_jax import confidence

# jax.monitoring's duration events of a jit's trace, lowering and XLA compile: a compile served by the persistent
# compilation cache (the suite's, tests/conftest.py) still traces and lowers
COMPILE_EVENTS = (
    '/jax/core/compile/jaxpr_trace_duration',
    '/jax/core/compile/jaxpr_to_mlir_module_duration',
    '/jax/core/compile/backend_compile_duration',
)


class CompileCounter:
  """Counts traces, lowerings and XLA compiles while it is installed (COMPILE_EVENTS)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if event in COMPILE_EVENTS:
      self.count += 1

  def close(self):
    jax.monitoring.unregister_event_duration_listener(self._listen)


def test_sparse_eval_compiles_once_for_batches_with_different_masks():
  rng = np.random.RandomState(1)
  image = rng.randn(1, 16, 32, 3).astype(np.float32)
  # the batches built on the host, as the eval loop feeds them (an eager op on a device array would compile)
  x = np.concatenate([image, 10 * image[:, ::-1]])
  batches = [x, x[::-1], rng.randn(*x.shape).astype(np.float32), 3 * x]
  _, sparse, variables = tiny_hrnets(jnp.asarray(x), rng)
  apply = jax.jit(lambda v, x: sparse.apply(v, x))
  with_tau = lambda tau: {**variables, 'constants': {'tau': np.float32(tau)}}
  first = apply(with_tau(1.0), x)  # compiles: every pixel kept, each segment 'plain'
  conf1 = np.asarray(jax.nn.softmax(first['logits'][0]).max(-1))
  counter = CompileCounter()
  try:
    kinds = set()
    for q in (0.1, 0.5, 0.95):
      tau = float(np.quantile(conf1, q))
      for batch in batches:
        out = apply(with_tau(tau), batch)
        for s, fraction in enumerate(np.asarray(out['fractions'])[1:]):  # segments 2..4: their batch's kept fraction
          above = confidence.SEGMENT_DENSE_MIN[s]
          plain = 1 - fraction.mean() <= confidence.PLAIN_SKIPPED_MAX
          kinds.add('plain' if plain else 'dense' if fraction.mean() > above else 'sparse')
    assert counter.count == 0, f'{counter.count} traces / lowerings / compiles for 12 batches after the first call'
    jax.jit(lambda a: a + 1)(np.zeros(3, np.float32))  # the control: a new program is counted
    assert counter.count >= 2, counter.count  # traced and lowered (its XLA compile may come from the cache)
  finally:
    counter.close()
  assert apply._cache_size() == 1  # pylint: disable=protected-access
  assert {'dense', 'sparse'} <= kinds, kinds  # the batches took more than one segment kind
