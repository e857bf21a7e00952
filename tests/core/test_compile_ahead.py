"""core_jax.train.CompiledAhead: the eval step compiled on a worker thread (config `compile_eval_ahead`) gives the
jit's metrics, is the program `evaluate` runs (the jit compiles nothing), and a call of another signature falls
back to the jit. In process, with the core's toy task (tests/core/toy_task.py)."""

import jax
import jax.numpy as jnp
import toy_task

from core_jax import metrics, train
from core_jax.data import pipeline


def test_eval_compiled_ahead_is_the_program_evaluate_runs(tfds_dir):
  c = toy_task.get_config()
  c.data.data_dir = str(tfds_dir)
  b = train.build(c, '/nonexistent', toy_task.ToyTask)
  state = b.init_fn()
  steps = train.compile_steps(b)
  ahead = train.compile_eval_ahead(b, steps, state)
  assert isinstance(ahead.eval, train.CompiledAhead)

  got = train.evaluate(b, ahead, state, with_ema=False)
  assert steps.eval._cache_size() == 0  # the worker's program ran every batch: the jit compiled nothing
  want = train.evaluate(b, steps, state, with_ema=False)
  assert steps.eval._cache_size() == 1
  assert got == want

  # another batch size: not the signature compiled ahead, so the jit compiles and runs it
  local = next(iter(b.data.eval_batches))
  half = pipeline.to_global({k: v[: len(v) // 2] for k, v in local.items()}, b.batch_sharding)
  constants = jax.tree.map(jnp.asarray, b.task.eval_constants())
  out = ahead.eval(state.params, state.batch_stats, half, constants)
  assert steps.eval._cache_size() == 2
  assert metrics.to_floats(out) == metrics.to_floats(steps.eval(state.params, state.batch_stats, half, constants))
