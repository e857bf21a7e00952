"""Mesh and shardings: fsdp splits large leaves and leaves the math unchanged (8 simulated devices)."""

import os
import subprocess
import sys
import textwrap

import xla_test_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from core_jax import parallel
    from core_jax.errors import UserError
    cfg = ml_collections.ConfigDict(dict(mesh=dict(fsdp=4)))
    mesh = parallel.make_mesh(cfg)
    assert dict(mesh.shape) == {'data': 2, 'fsdp': 4}, mesh.shape
    tree = {'big': jax.ShapeDtypeStruct((512, 1024), jnp.float32),    # 2 MiB: split on its largest dim
            'odd': jax.ShapeDtypeStruct((513, 1023), jnp.float32),    # 2 MiB, no dim divisible by 4
            'small': jax.ShapeDtypeStruct((64,), jnp.float32)}
    sh = parallel.state_shardings(mesh, tree)
    assert sh['big'].spec == jax.sharding.PartitionSpec(None, 'fsdp'), sh['big'].spec
    assert sh['odd'].spec == jax.sharding.PartitionSpec(), sh['odd'].spec
    assert sh['small'].spec == jax.sharding.PartitionSpec()
    # Same result whether the weight is split over fsdp or replicated.
    w = np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)
    x = np.random.default_rng(1).normal(size=(16, 512)).astype(np.float32)
    f = lambda w, x: jnp.tanh(x @ w).sum(0)
    xb = jax.device_put(x, parallel.batch_sharding(mesh))
    split = jax.jit(f)(jax.device_put(w, sh['big']), xb)
    repl = jax.jit(f)(jax.device_put(w, parallel.replicated(mesh)), xb)
    np.testing.assert_allclose(np.asarray(split), np.asarray(repl), rtol=1e-5, atol=1e-5)
    try:
      parallel.make_mesh(ml_collections.ConfigDict(dict(mesh=dict(fsdp=3))))
      raise SystemExit('fsdp=3 on 8 devices should fail')
    except UserError as e:
      assert 'does not divide' in str(e)
    try:
      parallel.check_batch_size(12, mesh)
      raise SystemExit('batch 12 on 8 devices should fail')
    except UserError as e:
      assert 'not divisible' in str(e)
    print('OK')
""")


def test_fsdp_shardings_on_eight_devices():
  env = dict(os.environ, XLA_FLAGS=xla_test_flags.with_devices(8), JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('OK'), proc.stdout + proc.stderr[-3000:]


def test_distributed_is_initialized_once_per_process(monkeypatch):
  """A driver calling train.run several times in one multi-process job: later calls keep the first setup."""
  import jax
  import ml_collections

  from core_jax import parallel

  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  cfg = ml_collections.ConfigDict(
      dict(distributed=dict(coordinator_address='127.0.0.1:1', num_processes=2, process_id=0, auto=False))
  )
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: bool(calls))
  parallel.initialize_distributed(cfg)
  parallel.initialize_distributed(cfg)
  assert calls == [dict(coordinator_address='127.0.0.1:1', num_processes=2, process_id=0)]
