"""Helpers for loop tests that run the toy task (tests/core/toy_task.py) as real processes."""

import os
import subprocess
import sys
import time

import numpy as np
import xla_test_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(REPO, 'tests', 'core', 'toy_task.py')
# Runs with the same device count share compiled programs through JAX's persistent cache.
COMPILE_CACHE = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'core_jax_toy_compile_cache_{os.getpid()}')


def env(data_dir, devices=1):
  e = dict(os.environ)
  e.update(
      TEST_TFDS_DIR=str(data_dir),
      TF_CPP_MIN_LOG_LEVEL='3',
      JAX_PLATFORMS='cpu',
      JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE,
      PYTHONPATH=REPO,
      XLA_FLAGS=xla_test_flags.with_devices(devices),
  )
  return e


def cmd(workdir, *overrides):
  return [sys.executable, TOY, f'--config={TOY}', f'--workdir={workdir}', *overrides]


def run(workdir, data_dir, *overrides, devices=1, check=True, timeout=300, command=None):
  """`command` (argv without the workdir and overrides): another entry point than the toy task's."""
  proc = subprocess.run(
      (command or cmd(workdir)[:-1]) + [f'--workdir={workdir}', *overrides],
      env=env(data_dir, devices),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f'run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


def start_and_signal(workdir, data_dir, sig, *overrides, after_step, devices=1, command=None, wait_s=240):
  """Starts a run, sends `sig` once a checkpoint >= `after_step` has committed; returns (returncode, output)."""
  proc = subprocess.Popen(
      (command or cmd(workdir)[:-1]) + [f'--workdir={workdir}', *overrides],
      env=env(data_dir, devices),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + wait_s
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= after_step for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'training finished before the signal; make it longer'
  proc.send_signal(sig)
  output = proc.communicate(timeout=120)[0]
  return proc.returncode, output


def steps(workdir, folder='checkpoints'):
  d = os.path.join(workdir, folder)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def read_state(workdir, step=None) -> dict:
  """A checkpoint's whole state as a flat {'params/conv1/kernel': array, 'opt_state/...': ...} on one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  step = max(steps(workdir)) if step is None else step
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), checkpointer.metadata(path).item_metadata.tree
  )
  tree = checkpointer.restore(path, target)
  return {
      '/'.join(str(getattr(k, 'key', k)) for k in p): np.asarray(v)
      for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def digests(workdir) -> dict:
  seen = {}
  with open(os.path.join(workdir, 'batch_digests.0.txt')) as f:
    for line in f:
      step, digest = line.split()
      assert seen.get(step, digest) == digest, f'step {step} saw a different batch after resume'
      seen[step] = digest
  return seen


def one_line_error(proc, *needles) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
  err = proc.stderr.strip().splitlines()
  errors = [i for i, line in enumerate(err) if line.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert errors[0] == len(err) - 1, proc.stderr[-2000:]  # nothing after our line (no orbax shutdown noise)
  line = err[errors[0]]
  for needle in needles:
    assert needle in line, line
  return line
