"""Library noise goes to WORKDIR/log.txt, stderr keeps our one line (issue 23, item 3), forced in-process: the
three ways orbax/TensorStore reach stderr (a coroutine that fails as it is collected, an exception reported from
a non-Python thread through sys.excepthook, a warning record carrying a TensorStore spec of 40 lines) all happen
inside a run that then fails with a UserError. Whether orbax does so in a real run depends on timing; here it is
certain. Also: nothing is written before the workdir exists, and the process's hooks come back afterwards."""

import gc
import logging
import os
import sys
import threading

from core_jax import checkpoint, cli, run_log
from core_jax.errors import UserError

TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny_config.py')  # any loadable config
SPEC = '{\n' + ''.join(f'  "key{i}": {i},\n' for i in range(40)) + '}'


async def _refuses_to_close():
  try:
    await _never()
  finally:
    raise RuntimeError(f'coroutine failed while collected [tensorstore_spec={SPEC!r}]')


class _never:

  def __await__(self):
    yield


def _noisy_failing_run(workdir, make_workdir):
  def run(config, wd):
    del config
    if make_workdir:
      (workdir).mkdir()
    coro = _refuses_to_close()
    coro.send(None)  # suspended inside the try: closing it at collection raises -> sys.unraisablehook
    del coro
    gc.collect()
    thread = threading.Thread(target=lambda: sys.excepthook(RuntimeError, RuntimeError('Event loop is closed'), None))
    thread.start()
    thread.join()
    logging.getLogger('absl').warning('restore failed: %s', SPEC)
    raise UserError(f'no readable checkpoint in {wd}')

  return run


def test_noise_goes_to_the_log_and_stderr_keeps_one_line(tmp_path, capsys):
  workdir = tmp_path / 'run'
  hooks = (sys.excepthook, sys.unraisablehook, threading.excepthook, list(logging.getLogger().handlers))
  code = cli.run_main(_noisy_failing_run(workdir, True), [f'--config={TINY_CONFIG}', f'--workdir={workdir}'])
  err = capsys.readouterr().err
  assert code == 2 and err.strip().splitlines() == [f'error: no readable checkpoint in {workdir}'], err
  log = (workdir / run_log.LOG_FILE).read_text()
  assert 'coroutine failed while collected' in log and 'Event loop is closed' in log and '"key39": 39' in log
  assert (sys.excepthook, sys.unraisablehook, threading.excepthook, list(logging.getLogger().handlers)) == hooks


def test_nothing_is_written_before_the_workdir_exists(tmp_path, capsys):
  workdir = tmp_path / 'never_made'
  code = cli.run_main(_noisy_failing_run(workdir, False), [f'--config={TINY_CONFIG}', f'--workdir={workdir}'])
  assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
  assert not workdir.exists()


def test_warning_lines_drop_the_tensorstore_spec():
  error = ValueError(
      'OUT_OF_RANGE: Error reading "step/.zarray" [source locations=\'tensorstore/kvstore/x.cc:12\'] '
      f'[tensorstore_spec={SPEC!r}]'
  )
  assert checkpoint._first_line(error) == 'OUT_OF_RANGE: Error reading "step/.zarray"'
  assert len(checkpoint._first_line(ValueError('x' * 1000))) == 240
