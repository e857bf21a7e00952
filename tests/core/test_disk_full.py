"""A full disk during a checkpoint save, in a real process on the toy task (tests/core/toy_task.py).

The run's checkpoints folder is a 16 MiB tmpfs (root) of its own; once step 4 has committed, the test fills it to
the last block, so the save of step 8 fails with ENOSPC. Without root (no mount), the process's file size limit is
lowered instead (RLIMIT_FSIZE through prlimit: a write past it fails with EFBIG, which Python turns into an
OSError, as it ignores SIGXFSZ). Either way the run must stop with exit 2 and one line naming the step, keep no
half-written step, and leave step 4 restoring bit for bit; with the space back, the same command resumes from
step 4 and finishes.
"""

import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
import toy_runs


def _mount_tmpfs(path) -> bool:
  if os.geteuid() != 0:
    return False
  return (
      subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(path)], capture_output=True).returncode
      == 0
  )


def _fill(path) -> None:
  """Writes one file into `path` until its filesystem has no block left (unbuffered: nothing is left to flush)."""
  with open(os.path.join(path, 'filler'), 'wb', buffering=0) as f:
    for size in (1 << 16, 512, 1):
      try:
        while True:
          f.write(b'\0' * size)
      except OSError:
        pass


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_stops_with_one_line_and_keeps_the_earlier_steps(tmp_path, tfds_dir):
  workdir = tmp_path / 'run'
  ckpts = workdir / 'checkpoints'
  ckpts.mkdir(parents=True)
  mounted = _mount_tmpfs(ckpts)
  running = None
  try:
    running = proc = subprocess.Popen(
        toy_runs.cmd(workdir, '--config.debug.step_delay_s=0.5', '--config.checkpoint.asynchronous=True'),
        env=toy_runs.env(tfds_dir),
        cwd=toy_runs.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and 4 not in toy_runs.steps(workdir):
      time.sleep(0.05)
    assert proc.poll() is None and toy_runs.steps(workdir) == [4], 'the run did not reach step 4 in time'
    if mounted:
      _fill(ckpts)
    else:
      resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, 1))
    saved = toy_runs.read_state(workdir, 4)
    out, err = proc.communicate(timeout=240)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    reason = 'no space left on device' if mounted else 'file too large'
    toy_runs.one_line_error(proc, 'saving checkpoint step 8', reason, 'kept steps (4)')
    assert toy_runs.steps(workdir) == [4]  # the half-written step 8 is not a step
    if mounted:
      os.remove(ckpts / 'filler')
    again = toy_runs.read_state(workdir, 4)
    assert saved.keys() == again.keys()
    for k, v in saved.items():
      np.testing.assert_array_equal(again[k], v, err_msg=k)
    resumed = toy_runs.run(workdir, tfds_dir)
    assert 'resumed from step 4' in resumed.stdout, resumed.stdout[-2000:]
    assert toy_runs.steps(workdir)[-1] == 12
  finally:
    if running is not None and running.poll() is None:
      running.send_signal(signal.SIGKILL)
      running.wait()
    if mounted:
      subprocess.run(['umount', '-l', str(ckpts)], check=False)
