"""End-to-end behaviour of the shared loop, each as real `python -m convnext_jax.main` processes.

Resume after SIGKILL is bitwise; 8 devices and 2 processes x 4 devices match 1 device; checkpoints move
between device counts; bad input ends in one clear line without losing saved work.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xla_test_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, 'tests', 'core', 'tiny_config.py')


# Runs with the same device count share compiled programs through JAX's persistent cache.
_COMPILE_CACHE = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'core_jax_test_compile_cache_{os.getpid()}')


def _env(data_dir, devices=1, extra=None):
  env = dict(os.environ)
  env.update(
      TEST_TFDS_DIR=str(data_dir),
      TF_CPP_MIN_LOG_LEVEL='3',
      JAX_PLATFORMS='cpu',
      JAX_COMPILATION_CACHE_DIR=_COMPILE_CACHE,
      XLA_FLAGS=xla_test_flags.with_devices(devices),
      PYTHONPATH=REPO,
  )
  env.update(extra or {})
  return env


def _cmd(workdir, *overrides):
  return [
      sys.executable,
      '-m',
      'convnext_jax.main',
      f'--config={TINY}',
      f'--workdir={workdir}',
      '--config.debug.write_batch_digests=True',
      *overrides,
  ]


def _run(workdir, data_dir, *overrides, devices=1, check=True, timeout=300):
  proc = subprocess.run(
      _cmd(workdir, *overrides), env=_env(data_dir, devices), cwd=REPO, capture_output=True, text=True, timeout=timeout
  )
  if check and proc.returncode != 0:
    raise AssertionError(f'run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


def _final_params(workdir):
  """Parameters of the newest checkpoint as a flat {path: numpy array}."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  ckpt_dir = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  path = os.path.join(ckpt_dir, str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  # Onto this process's single device, whatever device count saved it.
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), checkpointer.metadata(path).item_metadata.tree
  )
  tree = checkpointer.restore(path, target)
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f'{prefix}/{k}', v)
    else:
      flat[prefix] = np.asarray(node)

  walk('', tree['params'])
  return step, flat


def _digests(workdir, process=0):
  seen = {}
  with open(os.path.join(workdir, f'batch_digests.{process}.txt')) as f:
    for line in f:
      step, digest = line.split()
      if step in seen:  # a step re-run after the kill must have seen the very same batch
        assert seen[step] == digest, f'step {step} saw a different batch after resume'
      seen[step] = digest
  return seen


SLOW = '--config.debug.step_delay_s=0.5'  # same numerics, but a signal surely lands mid-run


def _start_and_signal(workdir, data_dir, sig, *, after_step, devices=1):
  """Starts a (slowed) run, sends `sig` once a checkpoint >= `after_step` has committed, waits for exit."""
  proc = subprocess.Popen(
      _cmd(workdir, SLOW),
      env=_env(data_dir, devices),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  ckpt_dir = workdir / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpt_dir.exists() and any(d.isdigit() and int(d) >= after_step for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'training finished before the signal; make it longer'
  proc.send_signal(sig)
  output = proc.communicate(timeout=120)[0]
  return proc.returncode, output


@pytest.fixture(scope='module', autouse=True)
def _remove_compile_cache():
  yield
  shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, tfds_dir):
  """The uninterrupted 1-device run every other test compares with."""
  workdir = tmp_path_factory.mktemp('reference')
  _run(workdir, tfds_dir)
  return workdir


@pytest.mark.slow
def test_reference_run_writes_results(reference_run):
  results = json.load(open(os.path.join(reference_run, 'results.json')))
  assert results['step'] == 12
  assert 0.0 <= results['accuracy'] <= 1.0
  assert os.listdir(os.path.join(reference_run, 'tensorboard'))


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(reference_run, tfds_dir, tmp_path):
  workdir = tmp_path / 'killed'
  returncode, _ = _start_and_signal(workdir, tfds_dir, signal.SIGKILL, after_step=8)
  assert returncode == -signal.SIGKILL
  assert not (workdir / 'results.json').exists()
  out = _run(workdir, tfds_dir, SLOW)  # the same command again
  assert 'resumed from step' in out.stdout
  ref_step, ref = _final_params(reference_run)
  step, got = _final_params(workdir)
  assert step == ref_step == 12
  assert ref.keys() == got.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  assert _digests(workdir) == _digests(reference_run)


@pytest.mark.slow
def test_eight_devices_match_one_device(reference_run, tfds_dir, tmp_path):
  _run(tmp_path, tfds_dir, devices=8)
  _, ref = _final_params(reference_run)
  _, got = _final_params(tmp_path)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-6, err_msg=k)
  assert _digests(tmp_path) == _digests(reference_run)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_device(reference_run, tfds_dir, tmp_path):
  port = _free_port()
  procs = []
  for pid in range(2):
    env = _env(
        tfds_dir,
        devices=4,
        extra=dict(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid)),
    )
    procs.append(
        subprocess.Popen(_cmd(tmp_path), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
  outs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert '2 process(es)' in outs[0]
  _, ref = _final_params(reference_run)
  _, got = _final_params(tmp_path)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-6, err_msg=k)
  # Each process read a disjoint half of every global batch.
  d0, d1 = _digests(tmp_path, 0), _digests(tmp_path, 1)
  assert d0.keys() == d1.keys() and all(d0[s] != d1[s] for s in d0)
  assert json.load(open(tmp_path / 'results.json'))['processes'] == 2


@pytest.mark.parametrize('first,second', [(8, 1), (1, 8)])
@pytest.mark.slow
def test_preempted_run_resumes_on_another_device_count(reference_run, tfds_dir, tmp_path, first, second):
  """SIGTERM saves and exits cleanly; the checkpoint then resumes on a different device count."""
  returncode, output = _start_and_signal(tmp_path, tfds_dir, signal.SIGTERM, after_step=4, devices=first)
  assert returncode == 0, output[-3000:]
  assert 'preempted: saved step' in output
  assert not (tmp_path / 'results.json').exists()
  saved = max(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  assert 4 <= saved < 12
  out = _run(tmp_path, tfds_dir, devices=second)
  assert f'resumed from step {saved}' in out.stdout
  _, ref = _final_params(reference_run)
  _, got = _final_params(tmp_path)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-6, err_msg=k)


# ---------------------------------------------------------------------------------------------- bad input
def _one_line_error(proc, *needles):
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert err and err[-1].startswith('error: '), proc.stderr[-2000:]
  for needle in needles:
    assert needle in err[-1], err[-1]
  return err[-1]


def test_unknown_config_key_is_one_line(tfds_dir, tmp_path):
  proc = _run(tmp_path, tfds_dir, '--config.optimizer.lrr=0.1', check=False)
  _one_line_error(proc, "unknown config key 'optimizer.lrr'")
  proc = _run(tmp_path, tfds_dir, '--config.batch_size=big', check=False)
  _one_line_error(proc, "bad value for config key 'batch_size'")
  assert not os.listdir(tmp_path)  # nothing was started


def test_missing_dataset_is_one_line(tmp_path):
  proc = _run(tmp_path / 'w', tmp_path / 'empty_tfds', '--config.data.name=cifar10', check=False)
  _one_line_error(proc, 'cifar10')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('bad', ['--config.data.name=nope', '--config.init_from=/no/such/weights.msgpack'])
def test_bad_input_leaves_no_folder(tfds_dir, tmp_path, bad):
  """The workdir (and its missing parents) is made only once the data, the model and the weights have loaded."""
  proc = _run(tmp_path / 'new' / 'w', tfds_dir, bad, check=False)
  _one_line_error(proc, bad.split('=')[1])
  assert not os.listdir(tmp_path)


def test_unwritable_workdir_is_one_line(tfds_dir, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  proc = _run(blocker / 'workdir', tfds_dir, check=False)
  _one_line_error(proc, 'not writable')


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back(reference_run, tfds_dir, tmp_path):
  workdir = tmp_path / 'w'
  _run(workdir, tfds_dir)
  os.remove(workdir / 'results.json')
  latest = workdir / 'checkpoints' / '12' / 'state'
  corrupted = 0
  for root, _, files in os.walk(latest):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 3)
        corrupted += 1
  assert corrupted
  out = _run(workdir, tfds_dir)
  assert 'checkpoint step 12 is unreadable' in out.stdout
  assert 'resumed from step 8' in out.stdout
  assert (workdir / 'checkpoints_corrupt' / '12').is_dir()  # kept for inspection, not deleted
  _, ref = _final_params(reference_run)
  _, got = _final_params(workdir)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@pytest.mark.slow
def test_nan_loss_stops_with_message(tfds_dir, tmp_path):
  proc = _run(tmp_path, tfds_dir, '--config.optimizer.lr=1e30', check=False)
  _one_line_error(proc, 'training loss became')
