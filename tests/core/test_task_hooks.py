"""The Task hooks through the shared loop, with the core's toy task (tests/core/toy_task.py).

In process: the train step called directly (a pre transform acts on the raw gradient, before weight decay),
the epoch hook, init_from over params and batch_stats with the mask rebuilt from the loaded weights.
As processes: one run with every hook on (a post-update mask through momentum and weight decay, an epoch
hook, extra results, a dict eval metric choosing the best checkpoint), SIGKILL + resume bitwise, and a
preempted run resumed on 8 devices.
"""

import functools
import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_runs
import toy_task

from core_jax import checkpoint as checkpoint_lib
from core_jax import train
from core_jax.task import Task

LR, WD = 0.05, 5e-4
HOOKS = (
    '--config.toy.prune_threshold=0.1',
    '--config.toy.epoch_head_scale=0.5',
    '--config.toy.grad_offset=1e-5',
    '--config.num_train_steps=25',
    '--config.eval_every_epochs=1.0',
    '--config.checkpoint.every_steps=5',
    '--config.checkpoint.keep=1',
    f'--config.toy.primary_metric={toy_task.ERROR}',
    '--config.debug.write_batch_digests=True',
)


@pytest.fixture(scope='module', autouse=True)
def _remove_compile_cache():
  yield
  shutil.rmtree(toy_runs.COMPILE_CACHE, ignore_errors=True)


def _config(tfds_dir, **toy):
  c = toy_task.get_config()
  c.data.data_dir = str(tfds_dir)
  c.toy.update(toy)
  return c


def _one_step(b, state, batch):
  step = jax.jit(functools.partial(train.train_step, b.task, b.model, b.tx, ema_decay=b.ema_decay))
  return step(state, batch)[0]


@pytest.fixture(scope='module')
def batch(tfds_dir):
  b = train.build(_config(tfds_dir), '/nonexistent', toy_task.ToyTask)
  return {k: jnp.asarray(v) for k, v in next(iter(b.data.eval_batches)).items() if k != 'mask'}


# ------------------------------------------------------------------------------------------------ in process
@pytest.mark.slow
def test_pre_transform_acts_on_raw_gradients_before_weight_decay(tfds_dir, batch):
  """grad_scale=0 zeroes the raw gradient: only weight decay moves the params (p * (1 - lr * wd)); were the
  transform after the optimizer's chain, nothing would move. An offset c on the gradient moves them by -lr * c."""
  plain = train.build(_config(tfds_dir), '/nonexistent', toy_task.ToyTask)
  state0 = plain.init_fn()
  p0 = jax.tree.map(np.asarray, state0.params)
  moved = jax.tree.map(np.asarray, _one_step(plain, plain.init_fn(), batch).params)

  frozen = train.build(_config(tfds_dir, grad_scale=0.0), '/nonexistent', toy_task.ToyTask)
  got = _one_step(frozen, frozen.init_fn(), batch).params
  jax.tree.map(lambda g, p: np.testing.assert_allclose(g, p * (1 - LR * WD), rtol=1e-6, atol=1e-9), got, p0)
  assert any(np.abs(m - p).max() > 1e-4 for m, p in zip(jax.tree.leaves(moved), jax.tree.leaves(p0)))

  offset = train.build(_config(tfds_dir, grad_offset=0.01), '/nonexistent', toy_task.ToyTask)
  got = _one_step(offset, offset.init_fn(), batch).params
  jax.tree.map(lambda g, m: np.testing.assert_allclose(g - m, -LR * 0.01, rtol=1e-3, atol=1e-7), got, moved)


def test_epoch_hook_is_jitted_over_the_state(tfds_dir):
  b = train.build(_config(tfds_dir, epoch_head_scale=0.5), '/nonexistent', toy_task.ToyTask)
  state = b.init_fn()
  head = np.asarray(state.params['head']['kernel'])
  steps = train.compile_steps(b)
  assert steps.epoch_end is not None
  out = steps.epoch_end(state, np.int32(3))
  assert int(out.batch_stats['epochs']) == 3
  np.testing.assert_array_equal(np.asarray(out.params['head']['kernel']), head * 0.5)

  class NoHook(toy_task.ToyTask):
    on_epoch_end = Task.on_epoch_end

  assert train.compile_steps(train.build(_config(tfds_dir), '/nonexistent', NoHook)).epoch_end is None


def test_init_from_loads_params_and_batch_stats_and_rebuilds_the_mask(tfds_dir, tmp_path, batch):
  """Weights with a zero pattern unrelated to magnitude: the mask is that pattern (it comes from the loaded
  weights, not from the random init), and training keeps those entries exactly 0."""
  b = train.build(_config(tfds_dir, prune_threshold=0.0), str(tmp_path), toy_task.ToyTask)
  fresh = b.init_fn()
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda p: np.asarray(p) * (rng.random(p.shape) < 0.5 if p.ndim >= 2 else 1.0) + 0.0, fresh.params
  )
  batch_stats = jax.tree.map(np.asarray, fresh.batch_stats)
  batch_stats['bn1']['mean'] = np.full_like(batch_stats['bn1']['mean'], 0.25)
  path = str(tmp_path / 'pruned.npz')
  toy_task.save_variables(path, {'params': params, 'batch_stats': batch_stats})

  c = _config(tfds_dir, prune_threshold=0.0)
  c.init_from = path
  b = train.build(c, str(tmp_path / 'w'), toy_task.ToyTask)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'w' / 'checkpoints'), save_every_steps=4)
  state, _ = train.restore_or_init(b, ckpt)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), params)
  np.testing.assert_array_equal(np.asarray(state.batch_stats['bn1']['mean']), 0.25)
  mask = state.opt_state[-1]['mask']
  jax.tree.map(
      lambda m, p: np.testing.assert_array_equal(np.asarray(m), (p != 0) if p.ndim >= 2 else True), mask, params
  )
  steps = train.compile_steps(b)
  for _ in range(3):
    state, _ = steps.train(state, batch)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    if want.ndim >= 2:
      assert np.all(np.asarray(got)[want == 0] == 0)
      assert np.all(np.asarray(got)[want != 0] != want[want != 0])  # the kept ones trained
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')  # nothing saved, so no folder


# ------------------------------------------------------------------------------------------------ the loop
@pytest.fixture(scope='module')
def hooks_run(tmp_path_factory, tfds_dir):
  workdir = tmp_path_factory.mktemp('hooks')
  (workdir / 'stdout.txt').write_text(toy_runs.run(workdir, tfds_dir, *HOOKS).stdout)
  return workdir


def _masked(state):
  """{kernel path: bool array of entries the mask holds at 0}."""
  return {
      k[len('opt_state/2/mask/') :]: ~v for k, v in state.items() if k.startswith('opt_state/2/mask/') and v.ndim >= 2
  }


@pytest.mark.slow
def test_hooks_in_one_run(hooks_run):
  results = json.load(open(hooks_run / 'results.json'))
  state = toy_runs.read_state(hooks_run)
  assert results['step'] == 25
  # the progress line shows the task's progress_metrics (only 'loss' for the toy) and the run's speed
  line = [ln for ln in (hooks_run / 'stdout.txt').read_text().splitlines() if ln.startswith('step 25/25')][0]
  assert 'loss ' in line and 'accuracy' not in line, line
  assert all(s in line for s in (' steps/s', ' examples/s', 'ETA ')), line
  # post-update mask: pruned kernel entries exactly 0 through momentum and weight decay, the rest trained
  masked = _masked(state)
  assert masked and all(m.any() for m in masked.values())
  for k, m in masked.items():
    assert np.all(state['params/' + k][m] == 0), k
    assert np.all(state['params/' + k][~m] != 0), k
  # extra_results merged into results.json
  assert results['nonzero_params'] == sum(int(np.count_nonzero(v)) for k, v in state.items() if k.startswith('params/'))
  assert results['epochs_seen'] == 2
  # a dict eval metric ('cls/error' once metrics.to_floats flattens) picks the best checkpoint
  evals = {h['step']: h[toy_task.ERROR] for h in results['history_this_run']}
  assert sorted(evals) == [10, 20, 25]
  best = max(evals.values())
  assert set(toy_runs.steps(hooks_run)) in [{25, s} for s, e in evals.items() if e == best]
  # the epoch hook ran before the checkpoint of its step
  for s in toy_runs.steps(hooks_run):
    assert toy_runs.read_state(hooks_run, s)['batch_stats/epochs'] == s // 10


@pytest.mark.slow
def test_dict_metric_keys_reach_results(hooks_run):
  results = json.load(open(hooks_run / 'results.json'))
  assert results['primary_metric'] == 'cls/error' and 'cls/accuracy' in results['eval']
  assert results['cls/error'] == pytest.approx(1 - results['eval']['cls/accuracy'])


@pytest.mark.slow
def test_sigkill_resume_with_hooks_is_bitwise(hooks_run, tfds_dir, tmp_path):
  rc, _ = toy_runs.start_and_signal(
      tmp_path, tfds_dir, signal.SIGKILL, *HOOKS, '--config.debug.step_delay_s=0.3', after_step=10
  )
  assert rc == -signal.SIGKILL
  out = toy_runs.run(tmp_path, tfds_dir, *HOOKS)
  assert 'resumed from step' in out.stdout
  ref, got = toy_runs.read_state(hooks_run), toy_runs.read_state(tmp_path)
  assert ref.keys() == got.keys() and any(k.startswith('opt_state/2/mask/') for k in ref)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  assert toy_runs.digests(tmp_path) == toy_runs.digests(hooks_run)


@pytest.mark.slow
def test_mask_survives_a_restore_on_eight_devices(hooks_run, tfds_dir, tmp_path):
  rc, output = toy_runs.start_and_signal(
      tmp_path, tfds_dir, signal.SIGTERM, *HOOKS, '--config.debug.step_delay_s=0.3', after_step=5
  )
  assert rc == 0 and 'preempted: saved step' in output, output[-3000:]
  saved = max(toy_runs.steps(tmp_path))
  assert saved < 25
  out = toy_runs.run(tmp_path, tfds_dir, *HOOKS, devices=8)
  assert f'resumed from step {saved}' in out.stdout
  ref, got = toy_runs.read_state(hooks_run), toy_runs.read_state(tmp_path)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-6, err_msg=k)
  for k, m in _masked(got).items():
    np.testing.assert_array_equal(m, _masked(ref)[k])
    assert np.all(got['params/' + k][m] == 0), k
  assert got['batch_stats/epochs'] == 2
