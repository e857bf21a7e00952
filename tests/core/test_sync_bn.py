"""Synchronized BatchNorm: under jit over a batch-sharded mesh, BN statistics are over the GLOBAL batch.

The same train steps run in two subprocesses, one with 1 CPU device and one with 8 simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8; the batch split 8 ways by core_jax.parallel's batch
sharding, the step jitted as core_jax.train does). The batch_stats, params, loss and eval outputs agree to
float tolerance, the 8-device program contains cross-device all-reduces, and, as a control that the check can
fail, per-shard statistics (what unsynchronized BN would use, averaged over the 8 shards) differ in the
variances (the small model's control; the HRNet's checks the sharded program only). A small BN CNN (float32);
the anytime HRNet (digit_scenes' 'w8_nano' with exits 1 and 4, AnytimeSegTask's loss, one 32x64 example per
device) slow.

The HRNet runs in float64 (SYNC_BN_X64=1 in the workers): in float32 its params after 2 SGD steps differ between
1 and 8 devices by up to 8% relative (abs <= 2e-5, median 3e-5 relative), in BN biases whose gradient nearly
cancels (the next BN removes a constant shift), so the summation order of the 8-way split is amplified; in float64
the same comparison gives at most 1.4e-14 relative (measured), so the sharded program computes the same function
(global BN statistics, global weighted-CE normalization) and the params are compared at 1e-9.

Worker: python tests/core/test_sync_bn.py KIND OUT.npz
"""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICES = 8
BATCH = 16


def _small_model():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from core_jax.task import Task, apply_model  # pylint: disable=import-outside-toplevel

  class SmallBN(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = False):
      # momentum 0: the running statistics ARE the last batch's statistics
      x = nn.Conv(8, (3, 3), name='conv1')(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.0, name='bn1')(x))
      x = nn.Conv(16, (3, 3), strides=2, name='conv2')(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.0, name='bn2')(x))
      return nn.Dense(5, name='head')(x.mean((1, 2)))

  class SmallTask(Task):

    def build_model(self):
      return SmallBN()

    def train_loss(self, model, variables, batch, rng):
      logits, new_vars = apply_model(model, variables, batch['image'], train=True, rng=rng)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, ({'loss': loss, 'accuracy': jnp.float32(0)}, new_vars)

  rng = np.random.RandomState(0)
  batch = {
      'image': rng.randn(BATCH, 8, 8, 3).astype(np.float32) * 2 + rng.randn(BATCH, 1, 1, 3).astype(np.float32),
      'label': rng.randint(0, 5, BATCH).astype(np.int32),
  }
  task = SmallTask(None, None)
  return task, task.build_model(), batch, 1.0


def _hrnet_model():
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  class Info:
    num_classes = 11

  config = cli.load_config_file(os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py'))
  config.model.confidence_adaptive = os.environ.get('SYNC_BN_CA', '0') == '1'
  # exits 1 and 4 of the job's four: exit 1's RH head has every kind of exit BN that exits 2 and 3 have (pooled
  # down steps at 1/8..1/32, up steps), exit 4 is the segmentation head, and the backbone's BNs are all there;
  # the two other heads only lengthened the compile of each worker's sharded step
  config.model.exits = (1, 4)
  config.model.rh_max_depth = 3  # the paper's three down steps for exit 1 (the job scales them down to one)
  config.loss.exit_weights = (1.0, 1.0)
  task = AnytimeSegTask(config, Info())
  rng = np.random.RandomState(0)
  n = DEVICES  # one example per device: the statistics are still over 8 x 8 x 16 pixels, and float64 is slow
  label = rng.randint(0, 11, (n, 32, 64)).astype(np.uint8)
  label[:, :4] = 255
  batch = {
      'image': rng.randn(n, 32, 64, 3).astype(np.float32) + rng.randn(n, 1, 1, 3).astype(np.float32),
      'segmentation': label,
  }
  return task, task.build_model(), batch, 0.01  # BN momentum 0.99: the stats move by 0.01 x the batch's


def worker(kind: str, out: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from core_jax import parallel, train  # pylint: disable=import-outside-toplevel
  from core_jax.weights import flatten  # pylint: disable=import-outside-toplevel

  x64 = os.environ.get('SYNC_BN_X64', '0') == '1'
  if x64:
    jax.config.update('jax_enable_x64', True)
  task, model, batch, rate = {'small': _small_model, 'hrnet': _hrnet_model}[kind]()
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'mesh': {'fsdp': 1}}))
  shard, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  if kind == 'hrnet':
    from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

    # drawn in numpy as the init does (an eager `model.init` compiles each initializer: half the worker's time)
    variables = hrnet.random_variables(model, *batch['image'].shape[1:3])
    # N(0, 0.001) kernels give activations with variance below BN's eps, where the BN gradients amplify float
    # rounding by orders of magnitude; He-scaled kernels keep the comparison well conditioned.
    variables = {
        **variables,
        'params': jax.tree_util.tree_map_with_path(
            lambda p, v: v * np.sqrt(2.0 / np.prod(v.shape[:-1])) / 0.001 if p[-1].key == 'kernel' else v,
            variables['params'],
        ),
    }
  else:
    variables = model.init(jax.random.PRNGKey(0), batch['image'][:1], train=False)
  if x64:  # every float in float64: what is left of a 1-vs-8-device difference is not float32 rounding
    variables = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
    batch = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in batch.items()}
  tx = optax.sgd(0.05, momentum=0.9)
  state = train.TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=tx.init(variables['params']),
      ema_params=None,
      rng=jax.random.PRNGKey(1),
  )
  init_stats = flatten(jax.tree.map(np.asarray, variables['batch_stats']))
  state = jax.device_put(state, replicated)
  global_batch = jax.device_put(batch, shard)
  assert len(global_batch['image'].sharding.device_set) == jax.device_count()
  step = jax.jit(
      functools.partial(train.train_step, task, model, tx),
      in_shardings=(replicated, shard),
      out_shardings=(replicated, replicated),
  )
  hlo = step.lower(state, global_batch).compile().as_text()
  losses = []
  for _ in range(2):
    state, m = step(state, global_batch)
    losses.append(float(m.compute()['loss']))
  stats = flatten(jax.tree.map(np.asarray, state.batch_stats))
  result = {f'stats/{k}': (v - init_stats[k]) / rate for k, v in stats.items()}  # the batches' statistics
  result.update({f'params/{k}': np.asarray(v) for k, v in flatten(state.params).items()})
  result['loss'] = np.asarray(losses)
  apply = jax.jit(
      lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=False),
      in_shardings=(replicated, replicated, shard),
  )
  outputs = apply(state.params, state.batch_stats, global_batch['image'])
  outputs = outputs['logits'] if isinstance(outputs, dict) else (outputs,)
  result.update({f'out/{i}': np.asarray(o) for i, o in enumerate(outputs)})
  result['all_reduce'] = np.asarray('all-reduce' in hlo)
  if jax.device_count() == 1 and kind == 'small':  # the control: statistics of each 1/8 shard on its own, averaged
    # (the small model's: it shows the comparison can fail; the HRNet's would only compile another program)
    # jitted: one compile serves the 8 shards (op-by-op dispatch of the HRNet was most of the test's time)
    train_stats = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1]['batch_stats'])
    per_shard = []
    for i in range(DEVICES):
      part = {k: v[i * BATCH // DEVICES : (i + 1) * BATCH // DEVICES] for k, v in batch.items()}  # BATCH: small's
      new_stats = train_stats(variables, part[task.input_key if hasattr(task, 'input_key') else 'image'])
      per_shard.append(flatten(jax.tree.map(np.asarray, new_stats)))
    for k in init_stats:
      result[f'local/{k}'] = (np.mean([p[k] for p in per_shard], axis=0) - init_stats[k]) / rate
    first = flatten(jax.tree.map(np.asarray, train_stats(variables, batch['image'])))
    result.update({f'first/{k}': (v - init_stats[k]) / rate for k, v in first.items()})
  np.savez(out, **result)


def _run_worker(kind: str, devices: int, out: str, x64: bool = False) -> dict:
  import xla_test_flags  # pylint: disable=import-outside-toplevel  (tests/: not on this file's path as a script)

  env = dict(
      os.environ,
      SYNC_BN_X64='1' if x64 else '0',
      JAX_PLATFORMS='cpu',
      PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
      XLA_FLAGS=xla_test_flags.with_devices(devices),
  )
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), kind, out], env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def _check(kind: str, tmp_path, x64: bool = False) -> None:
  one = _run_worker(kind, 1, str(tmp_path / 'one.npz'), x64)
  eight = _run_worker(kind, DEVICES, str(tmp_path / 'eight.npz'), x64)
  assert bool(eight['all_reduce']) and not bool(one['all_reduce'])
  assert one[next(k for k in one if k.startswith('params/'))].dtype == (np.float64 if x64 else np.float32)
  # float32: sums in another order (near-zero means carry an error of the stats' scale); float64: only rounding
  # at 1e-16 is left, so 1e-9 (relative to each array's scale) is far above it and far below any real difference
  tol = 1e-9 if x64 else None
  np.testing.assert_allclose(eight['loss'], one['loss'], rtol=tol or 1e-5)
  stat_keys = [k for k in one if k.startswith('stats/')]
  assert stat_keys
  for k in stat_keys:
    np.testing.assert_allclose(eight[k], one[k], rtol=tol or 1e-4, atol=(tol or 1e-3) * np.abs(one[k]).max(), err_msg=k)
  weight_keys = [k for k in one if k.startswith(('params/', 'out/'))]
  assert weight_keys
  for k in weight_keys:
    np.testing.assert_allclose(
        eight[k], one[k], rtol=tol or 1e-4, atol=tol * np.abs(one[k]).max() if tol else 1e-5, err_msg=k
    )
  if kind != 'small':
    return
  # the control: per-shard (unsynchronized) variances differ from the global batch's by far more than the tolerance
  var_keys = [k for k in stat_keys if k.endswith('/var')]
  gaps = []
  for k in var_keys:
    name = k[len('stats/') :]
    first_step = one[f'first/{name}']
    scale = np.abs(first_step).max() + 1e-12
    gaps.append(np.abs(one[f'local/{name}'] - first_step).max() / scale)
  assert max(gaps) > 1e-2, gaps


@pytest.mark.slow  # two subprocesses, each compiling its steps: ~20 s
def test_sync_bn_small_model_8_devices_equal_1(tmp_path):
  _check('small', tmp_path)


@pytest.mark.slow
def test_sync_bn_anytime_hrnet_8_devices_equal_1(tmp_path):
  # float64 (module docstring): loss, BN statistics, params after 2 steps and eval logits agree to 1e-9
  _check('hrnet', tmp_path, x64=True)


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  worker(sys.argv[1], sys.argv[2])
