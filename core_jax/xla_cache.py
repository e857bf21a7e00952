"""An experiment's JAX persistent compilation cache in WORKDIR/xla_cache: armed by the experiment
(`compilation_cache`, also reachable as `core_jax.experiment.compilation_cache`), switched on by
`core_jax.train.run` (`start_compilation_cache`) once a run's inputs have loaded.

A leaf module (it imports nothing of core_jax), so that both `experiment`, which imports `train`, and `train`
can use it without an import circle.
"""

import contextlib
import os

import jax

CACHE_DIR = 'xla_cache'
_pending_cache_dir: str | None = None  # set by compilation_cache, switched on by start_compilation_cache


@contextlib.contextmanager
def compilation_cache(workdir: str, enabled: bool = True):
  """JAX's persistent compilation cache in WORKDIR/xla_cache while an experiment runs: its phases compile the
  same programs (a second seed's steps, every eval-only phase's eval and init), so later phases load them. A
  cache directory the process already has (JAX_COMPILATION_CACHE_DIR, the tests') wins; the earlier settings
  come back afterwards (a driver or the tests may run many experiments in one process).

  The cache is only armed here: it is switched on by `start_compilation_cache()`, which core_jax.train.run calls
  once the data, the model and the weights of its run have loaded. Compiles before that (the init, a data
  stage) are not kept, so input that fails to load (weights of another width, an export without its sidecar)
  leaves no WORKDIR/xla_cache behind: nothing is written before the inputs are checked."""
  global _pending_cache_dir
  if not enabled or jax.config.jax_compilation_cache_dir:
    yield
    return
  cache_dir = os.path.join(os.path.abspath(workdir), CACHE_DIR)
  min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
  _pending_cache_dir = cache_dir
  try:
    yield
  finally:
    _pending_cache_dir = None
    if jax.config.jax_compilation_cache_dir == cache_dir:  # it was switched on: put the earlier settings back
      from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=import-outside-toplevel

      jax.config.update('jax_compilation_cache_dir', None)
      jax.config.update('jax_persistent_cache_min_compile_time_secs', min_seconds)
      cc.reset_cache()


def start_compilation_cache() -> None:
  """Switches on the cache a surrounding `compilation_cache` armed (no-op without one, or when already on)."""
  if _pending_cache_dir is None or jax.config.jax_compilation_cache_dir:
    return
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=import-outside-toplevel

  cc.reset_cache()  # jax settles on "no cache" at the first compile; forget that so the directory takes effect
  jax.config.update('jax_compilation_cache_dir', _pending_cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)  # evals and inits are short compiles
