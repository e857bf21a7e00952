"""What the loop guarantees when checkpoints or training go wrong (issue 11), with the toy task as processes.

- A workdir whose checkpoints are all unreadable stops with one line (moved steps, how to start fresh on
  purpose); a failed restore leaves the data iterator untouched, so the deliberate fresh start reads the same
  batches as an uninterrupted run; each fallback warning is printed once and the last promises nothing.
- A non-finite state is never saved; `checkpoint.restore_step=N` restarts from any kept step (later steps are
  moved aside, not deleted) and the divergence error names the kept steps and that option.
- A failing init_from or dataset name leaves no empty checkpoints/ or tensorboard/ folder behind.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_runs

from core_jax import parallel, train

DIGESTS = '--config.debug.write_batch_digests=True'


@pytest.fixture(scope='module', autouse=True)
def _remove_compile_cache():
  yield
  shutil.rmtree(toy_runs.COMPILE_CACHE, ignore_errors=True)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, tfds_dir):
  """12 steps, checkpoints at 4, 8, 12 (all kept)."""
  workdir = tmp_path_factory.mktemp('reference')
  toy_runs.run(workdir, tfds_dir, DIGESTS)
  assert toy_runs.steps(workdir) == [4, 8, 12]
  return workdir


def _copy_for_rerun(reference, tmp_path):
  """The reference workdir as it stood before its final results were written: checkpoints only."""
  workdir = tmp_path / 'w'
  shutil.copytree(reference / 'checkpoints', workdir / 'checkpoints')
  return workdir


def _truncate_state(workdir, step):
  n = 0
  for root, _, files in os.walk(workdir / 'checkpoints' / str(step) / 'state'):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 3)
        n += 1
  assert n


def _assert_same_params(a, b):
  ref, got = toy_runs.read_state(a), toy_runs.read_state(b)
  assert ref.keys() == got.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@pytest.mark.slow
def test_all_checkpoints_unreadable_stops_then_fresh_start_reads_the_same_data(reference, tfds_dir, tmp_path):
  workdir = _copy_for_rerun(reference, tmp_path)
  for step in (4, 8, 12):
    _truncate_state(workdir, step)
  proc = toy_runs.run(workdir, tfds_dir, DIGESTS, check=False)
  line = toy_runs.one_line_error(
      proc,
      'no readable checkpoint',
      'steps 4, 8, 12',
      'checkpoints_corrupt',
      '--config.checkpoint.allow_fresh_start=True',
  )
  assert 'was moved' in line or 'were just moved' in line
  everything = proc.stdout + proc.stderr
  for step, then in (
      (12, 'falling back to step 8'),
      (8, 'falling back to step 4'),
      (4, 'no older checkpoint to fall back to'),
  ):
    assert everything.count(f'checkpoint step {step} is unreadable') == 1, everything[-3000:]  # once, not twice
    assert then in [ln for ln in everything.splitlines() if f'step {step} is unreadable' in ln][0]
  assert 'previous' not in everything
  assert toy_runs.steps(workdir, 'checkpoints_corrupt') == [4, 8, 12] and not toy_runs.steps(workdir)
  assert not (workdir / 'tensorboard').exists()
  # the same command again still refuses (the moved steps are remembered) ...
  toy_runs.one_line_error(toy_runs.run(workdir, tfds_dir, DIGESTS, check=False), 'allow_fresh_start')
  # ... and a deliberate fresh start trains on exactly the batches an uninterrupted run sees
  out = toy_runs.run(workdir, tfds_dir, DIGESTS, '--config.checkpoint.allow_fresh_start=True')
  assert 'fresh start' in out.stdout
  assert toy_runs.digests(workdir) == toy_runs.digests(reference)
  _assert_same_params(reference, workdir)


@pytest.mark.slow
def test_corrupt_latest_falls_back_once_with_the_iterator_of_the_older_step(reference, tfds_dir, tmp_path):
  workdir = _copy_for_rerun(reference, tmp_path)
  _truncate_state(workdir, 12)
  out = toy_runs.run(workdir, tfds_dir, DIGESTS)
  everything = out.stdout + out.stderr
  assert everything.count('checkpoint step 12 is unreadable') == 1 and 'falling back to step 8' in everything
  assert 'resumed from step 8' in out.stdout
  digests = toy_runs.digests(workdir)
  assert sorted(digests, key=int) == ['8', '9', '10', '11']
  assert all(toy_runs.digests(reference)[s] == d for s, d in digests.items())
  _assert_same_params(reference, workdir)


@pytest.mark.slow
def test_restore_step_restarts_from_a_kept_step(reference, tfds_dir, tmp_path):
  workdir = _copy_for_rerun(reference, tmp_path)
  restore = '--config.checkpoint.restore_step=4'
  out = toy_runs.run(workdir, tfds_dir, DIGESTS, restore)
  assert 'resumed from step 4' in out.stdout and 'moved later steps 8, 12' in out.stdout
  assert toy_runs.steps(workdir, 'checkpoints_superseded') == [8, 12]  # kept, not deleted
  assert sorted(toy_runs.digests(workdir), key=int) == [str(s) for s in range(4, 12)]
  _assert_same_params(reference, workdir)
  # the same command again resumes the new branch instead of going back to step 4 once more
  out = toy_runs.run(workdir, tfds_dir, restore)
  assert 'was applied by an earlier run' in out.stdout and 'resumed from step 12' in out.stdout
  assert toy_runs.steps(workdir, 'checkpoints_superseded') == [8, 12]
  # a step that is not kept: one line naming those that are
  toy_runs.one_line_error(
      toy_runs.run(workdir, tfds_dir, '--config.checkpoint.restore_step=5', check=False),
      'restore_step=5',
      'kept steps: 4, 8, 12',
  )


@pytest.mark.slow
def test_non_finite_parameters_are_never_saved(tfds_dir, tmp_path):
  """An infinite gradient at step 1: its loss (of the step's input params) is finite, the params after it are
  not; the checkpoint due at that step is refused."""
  proc = toy_runs.run(
      tmp_path,
      tfds_dir,
      '--config.toy.grad_offset=1e39',
      '--config.checkpoint.every_steps=1',
      '--config.log_every_steps=1',
      check=False,
  )
  toy_runs.one_line_error(proc, 'parameters became non-finite at step 1 (not saved)', 'no checkpoint was kept')
  assert not toy_runs.steps(tmp_path)


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_finite_check_finds_a_non_finite_float_in_params_or_batch_stats(monkeypatch, backend):
  """The check before each checkpoint: numpy on a CPU host, the jitted reduction elsewhere ('gpu' routes a CPU
  array there); integer leaves are not checked, bfloat16 ones are."""
  if backend != 'cpu':
    monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  finite = train._finite_check(parallel.replicated(jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))))
  params = {'w': jnp.ones((3, 4)), 'h': jnp.ones((2,), jnp.bfloat16), 'count': jnp.zeros((), jnp.int32)}
  stats = {'mean': jnp.zeros((4,))}
  assert finite(params, stats) is True
  for leaf, bad in (('w', jnp.nan), ('h', jnp.inf)):
    assert finite({**params, leaf: params[leaf].at[0].set(bad)}, stats) is False
  assert finite(params, {'mean': stats['mean'].at[1].set(-jnp.inf)}) is False
  assert finite(params, {}) is True


@pytest.mark.slow
def test_divergence_error_names_the_kept_steps_and_restore_step(tfds_dir, tmp_path):
  proc = toy_runs.run(
      tmp_path,
      tfds_dir,
      '--config.optimizer.lr=1e4',
      '--config.checkpoint.every_steps=1',
      '--config.log_every_steps=1',
      check=False,
  )
  kept = toy_runs.steps(tmp_path)
  # the loss-spike guard (core_jax.guard) stops it, moves the steps of the exploding trajectory aside and offers
  # the last step before the spike (at lr 1e4 the loss of step 2 already explodes: no step before it is kept)
  way_back = f'--config.checkpoint.restore_step={kept[-1]}' if kept else 'start again with a lower learning rate'
  line = toy_runs.one_line_error(proc, 'not saved', way_back)
  assert 'became' in line or 'exceeds' in line
  assert toy_runs.steps(tmp_path, 'checkpoints_superseded') or not kept
  for step in kept:
    state = toy_runs.read_state(tmp_path, step)
    assert all(np.isfinite(v).all() for k, v in state.items() if k.startswith('params/'))


def test_failing_init_from_leaves_no_folders(tfds_dir, tmp_path):
  workdir = tmp_path / 'fresh'
  proc = toy_runs.run(workdir, tfds_dir, f'--config.init_from={tmp_path / "missing.npz"}', check=False)
  toy_runs.one_line_error(proc, 'missing.npz')
  assert not workdir.exists()  # train.run makes its workdir only once the inputs have loaded


def test_unknown_dataset_writes_no_tensorboard_events(tfds_dir, tmp_path):
  workdir = tmp_path / 'fresh'
  proc = toy_runs.run(workdir, tfds_dir, '--config.data.name=no_such_dataset', check=False)
  toy_runs.one_line_error(proc, 'no_such_dataset')
  assert not workdir.exists()  # train.run makes its workdir only once the inputs have loaded


@pytest.mark.slow
def test_results_of_the_reference_run(reference):
  results = json.load(open(reference / 'results.json'))
  assert results['step'] == 12 and results['epochs_seen'] == 1


def test_close_waits_for_the_cleanup_of_half_written_saves(tmp_path):
  """The manager deletes an earlier run's half-written saves in a background thread as it opens; close() must
  wait for it, or a run stopping early on bad input exits with that thread alive (orbax then fails loudly in
  interpreter shutdown, after our one-line error)."""
  from orbax.checkpoint._src.path import atomicity_types  # pylint: disable=import-outside-toplevel

  from core_jax import checkpoint  # pylint: disable=import-outside-toplevel

  leftovers = [tmp_path / 'checkpoints' / f'{step}{atomicity_types.TMP_DIR_SUFFIX}1234' for step in (4, 8)]
  for d in leftovers:
    (d / 'state').mkdir(parents=True)
    (d / 'state' / 'data').write_bytes(b'x' * 4096)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), save_every_steps=4)
  assert ckpt.all_steps() == []  # opens the manager
  ckpt.close()
  assert not any(d.exists() for d in leftovers)


def _corrupt_tensor_data(workdir, step):
  """Truncates the tensor data files of a step's state and keeps its metadata readable: orbax then fails inside
  TensorStore, whose threads report each failed read once more after orbax's event loop has closed."""
  n = 0
  for root, _, files in os.walk(workdir / 'checkpoints' / str(step) / 'state'):
    if os.path.basename(root) == 'd':
      for name in files:
        path = os.path.join(root, name)
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 3)
        n += 1
  assert n


@pytest.mark.slow
def test_unreadable_tensors_leave_one_line_on_stderr_and_the_details_in_the_log(reference, tfds_dir, tmp_path):
  """Issue 23 item 3: before the fix this case printed ~125 lines of `RuntimeError: Event loop is closed`
  tracebacks from TensorStore's threads on stderr (every time: the data files, not the metadata, are corrupt)."""
  workdir = _copy_for_rerun(reference, tmp_path)
  for step in (4, 8, 12):
    _corrupt_tensor_data(workdir, step)
  proc = toy_runs.run(workdir, tfds_dir, check=False)
  toy_runs.one_line_error(proc, 'no readable checkpoint', 'steps 4, 8, 12')
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
  warnings = [ln for ln in proc.stdout.splitlines() if 'is unreadable' in ln]
  assert len(warnings) == 3 and all(len(ln) < 600 and 'tensorstore_spec' not in ln for ln in warnings), warnings
  log = (workdir / 'log.txt').read_text()
  assert 'checkpoint step 12 is unreadable' in log and 'Traceback' in log


def _abstract(tree):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def _state(width, head='head'):
  return {
      'params': {
          'conv': {'kernel': np.zeros((3, 3, 3, width), np.float32)},
          head: {'kernel': np.zeros((width, 10), np.float32)},
      }
  }


@pytest.mark.parametrize(
    'other, message',
    [
        # orbax's text was 'Requested shape: (16, 10) is not compatible ...' without the array's name, read as a
        # corrupt step: restore_latest moved every good checkpoint to checkpoints_corrupt/
        (_state(16), r'params.conv.kernel is \(3, 3, 3, 8\) in the checkpoint, \(3, 3, 3, 16\) in the model \(2 of 2'),
        # a multi-line tree diff before, its first line ending in a colon
        (_state(8, head='fc'), r'params.fc.kernel is in the model, not in the checkpoint \(2 of 3 arrays differ'),
    ],
)
def test_another_models_checkpoint_is_one_line_naming_the_first_array_and_is_kept(tmp_path, other, message):
  import grain  # pylint: disable=import-outside-toplevel

  from core_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from core_jax.errors import UserError  # pylint: disable=import-outside-toplevel

  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), save_every_steps=1, asynchronous=False)
  ckpt.save(1, _state(8), it, {'config': {}}, force=True)
  ckpt.wait()
  for restore in (
      lambda: ckpt.restore_step(1, _abstract(other), it),
      lambda: ckpt.restore_latest(_abstract(other), it),
  ):
    with pytest.raises(UserError, match=rf'^checkpoint step 1 in .* does not match the model: {message}') as e:
      restore()
    assert '\n' not in str(e.value) and str(e.value).endswith('use a new workdir)')
  assert ckpt.all_steps() == [1] and not (tmp_path / 'checkpoints_corrupt').exists()
  assert next(it) == 1  # the iterator is where it was
  state, _ = ckpt.restore_latest(_abstract(_state(8)), it)
  assert state['params']['conv']['kernel'].shape == (3, 3, 3, 8)
  ckpt.close()


@pytest.mark.slow  # a ConvNeXt run of 2 steps and two reruns: ~25 s on 2 cores
def test_resuming_another_model_names_the_change_then_the_array_and_keeps_the_steps(tfds_dir, tmp_path):
  """The toy task has no width to change: the digits ConvNeXt, whose model.name picks another width."""
  import sys  # pylint: disable=import-outside-toplevel

  command = [sys.executable, '-m', 'convnext_jax.main', f'--config={toy_runs.REPO}/configs/convnext/digits.py']
  short = ('--config.num_train_steps=2', '--config.optimizer.warmup_epochs=0', '--config.checkpoint.every_steps=1')
  workdir = tmp_path / 'w'
  toy_runs.run(workdir, tfds_dir, *short, command=command)
  atto = '--config.model.name=convnext_atto'
  proc = toy_runs.run(workdir, tfds_dir, *short, atto, command=command, check=False)
  # was 'does not match the model: User-provided restore item and on-disk value metadata tree structures ...:'
  toy_runs.one_line_error(proc, 'holds step 2 of another run: model.name ', "-> 'convnext_atto'", 'allow_config_change')
  proc = toy_runs.run(
      workdir, tfds_dir, *short, atto, '--config.checkpoint.allow_config_change=True', command=command, check=False
  )
  toy_runs.one_line_error(proc, 'checkpoint step 2 in ', 'does not match the model: params.', ' in the checkpoint, ')
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2'] and not (workdir / 'checkpoints_corrupt').exists()
  assert 'resumed from step 2 of 2' in toy_runs.run(workdir, tfds_dir, *short, command=command).stdout
