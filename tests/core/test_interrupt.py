"""Ctrl-C: the first press stops a single-process run like a preemption (save at the end of the step, exit 0; the
loop's path is the SIGTERM tests'), a second press stops at once with one line and exit 130, the saved steps kept;
the handlers found before the run are put back when its checkpointer closes."""

import os
import signal

import pytest

from core_jax import checkpoint, cli

DIGITS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'configs', 'convnext', 'digits.py')


@pytest.fixture
def default_sigint():
  before = signal.signal(signal.SIGINT, signal.default_int_handler)  # what a command line starts with
  yield
  signal.signal(signal.SIGINT, before)


def test_first_ctrl_c_asks_for_a_save_and_stop_the_second_stops_now(tmp_path, default_sigint, capsys):
  del default_sigint
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), save_every_steps=4)
  assert not ckpt.should_stop_for_preemption(1) and ckpt.stop_reason == 'preempted'
  os.kill(os.getpid(), signal.SIGINT)
  assert ckpt.should_stop_for_preemption(1) and ckpt.stop_reason == 'interrupted (Ctrl-C)'
  assert 'saving at the end of this step, then stopping (Ctrl-C again stops now)' in capsys.readouterr().err
  with pytest.raises(KeyboardInterrupt):
    os.kill(os.getpid(), signal.SIGINT)
  ckpt.close()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_still_reads_as_a_preemption(tmp_path, default_sigint):
  del default_sigint
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), save_every_steps=4)
  os.kill(os.getpid(), signal.SIGTERM)
  assert ckpt.should_stop_for_preemption(1) and ckpt.stop_reason == 'preempted'
  ckpt.close()


def test_an_interrupt_outside_the_steps_is_one_line_and_exit_130(tmp_path, capsys):
  def run(config, workdir):
    raise KeyboardInterrupt

  assert cli.run_main(run, [f'--config={DIGITS}', f'--workdir={tmp_path}']) == 130
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ['error: interrupted (Ctrl-C); the steps already saved are kept: rerun the same command to resume']
