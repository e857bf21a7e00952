"""The CPU speed paths under a batch-sharded jit (8 simulated devices): no activation crosses devices.

Two regressions this guards against, both found by benchmarks/devices_scaling.py (8 devices were far slower
than the same step written with shard_map; benchmarks/ANALYSIS.md, design measurements):
- the fusion barrier's predicate read an activation element, which GSPMD broadcast from its device at
  every barrier (an all-reduce per barrier per step);
- a scan over image chunks in the depthwise kernel gradient made GSPMD all-gather the whole batch.
"""

import os
import subprocess
import sys
import textwrap

import jax
import pytest
import xla_test_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PROBE = textwrap.dedent("""
  import jax, jax.numpy as jnp, optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from convnext_jax import create_model
  assert jax.device_count() == 8
  mesh = Mesh(jax.devices(), ('data',))
  model = create_model('convnext_digits', depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10,
                       compute=dict(dwconv='shifted', fusion_barriers=True, patch_conv='matmul'))
  x = jax.device_put(jnp.ones((16, 32, 32, 3)), NamedSharding(mesh, P('data')))
  y = jax.device_put(jnp.zeros((16,), jnp.int32), NamedSharding(mesh, P('data')))
  rep = NamedSharding(mesh, P())
  params = jax.device_put(model.init(jax.random.PRNGKey(0), x[:1])['params'], rep)
  tx = optax.adamw(1e-3)
  def step(p, o, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x)[0], y).mean()
    u, o = tx.update(jax.grad(loss)(p), o, p)
    return optax.apply_updates(p, u), o
  hlo = jax.jit(step, out_shardings=(rep, rep)).lower(params, tx.init(params), x, y).compile().as_text()
  print(hlo.count(' all-gather('), hlo.count(' all-reduce('), hlo.count(' conditional('))
""")


@pytest.mark.slow  # a subprocess compiling a train step for 8 simulated devices
def test_sharded_train_step_moves_no_activations():
  env = dict(
      os.environ,
      PYTHONPATH=REPO,
      JAX_PLATFORMS='cpu',
      TF_CPP_MIN_LOG_LEVEL='3',
      XLA_FLAGS=xla_test_flags.with_devices(8),
  )
  # the suite's persistent cache (tests/conftest.py; it exports the minimum compile time itself): reruns load the step
  if jax.config.jax_compilation_cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = jax.config.jax_compilation_cache_dir
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  all_gathers, all_reduces, conditionals = map(int, out.stdout.split())
  assert conditionals > 0  # the barriers are there (else this test checks nothing)
  assert all_gathers == 0
  assert all_reduces <= 2  # the gradients (XLA combines them into one tuple all-reduce), nothing per layer
