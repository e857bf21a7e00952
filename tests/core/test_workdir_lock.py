"""Two processes on one workdir (issue 23, faults): the second refuses with one line naming the first's process
before it writes anything; the lock of a SIGKILLed run is gone with it, so the same command then resumes."""

import os
import signal
import subprocess
import time

import pytest
import toy_runs

from core_jax import workdir_lock
from core_jax.errors import UserError


def test_a_second_lock_on_a_directory_names_the_holder(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(UserError, match=f'in use by process {os.getpid()}'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  again = workdir_lock.WorkdirLock(str(tmp_path))
  again.acquire()  # released: free again
  again.release()
  workdir_lock.WorkdirLock(str(tmp_path / 'not_yet')).acquire()  # nothing to lock before the folder exists


@pytest.mark.slow
def test_the_same_command_twice_then_after_sigkill(tfds_dir, tmp_path):
  workdir = tmp_path / 'w'
  steps = '--config.num_train_steps=100'  # with 2 s per step it outlasts a second process's start on a busy machine
  slow = '--config.debug.step_delay_s=2.0'
  first = subprocess.Popen(
      toy_runs.cmd(workdir, steps, slow),
      env=toy_runs.env(tfds_dir),
      cwd=toy_runs.REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not toy_runs.steps(workdir):
      assert first.poll() is None, 'the first run ended early'
      time.sleep(0.1)
    second = toy_runs.run(workdir, tfds_dir, steps, slow, check=False)
    toy_runs.one_line_error(second, f'in use by process {first.pid}')
    assert 'fresh start' not in second.stdout and 'resumed' not in second.stdout  # it stopped before restoring
    assert first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  finally:
    if first.poll() is None:
      first.kill()
  kept = toy_runs.steps(workdir)
  third = toy_runs.run(workdir, tfds_dir, steps)  # the kernel dropped the killed run's lock
  assert f'resumed from step {max(kept)}' in third.stdout
  assert toy_runs.steps(workdir)[-1] == 100
