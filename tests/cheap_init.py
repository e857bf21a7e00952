"""`model.init` compiled the way core_jax.train compiles a run's init, for tests that only need variables.

At XLA's default optimization level, compiling a model's init on CPU spends most of its time optimizing the
threefry calls of its initializers (the init of a 4-stage toy ConvNeXt or a pruned CIFAR ResNet: 20-30 s of one
core); at level 0 it compiles in a few seconds and runs in milliseconds. The drawn values are those of the same
keys and initializers (float rounding aside: the optimizing backend may reassociate the truncated-normal math),
which is also what a training run starts from."""

import jax

CHEAP = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def init(model, *args, rng=None, **kwargs):
  """`model.init(rng, *args, **kwargs)` (rng: PRNGKey(0) when None, or a dict of rngs), compiled cheaply on CPU."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  lowered = jax.jit(lambda r, *a: model.init(r, *a, **kwargs)).lower(rng, *args)
  compiled = lowered.compile(compiler_options=CHEAP) if jax.default_backend() == 'cpu' else lowered.compile()
  return compiled(rng, *args)
