"""Where library noise goes: WORKDIR/log.txt, so that stderr carries one line per problem, our own.

orbax and TensorStore report a failed restore more than once: each tensor's read error is re-raised from
TensorStore's threads after orbax's event loop has closed (`RuntimeError: Event loop is closed` tracebacks,
printed through `sys.excepthook` from those threads), coroutines that were never awaited are reported when they
are collected (`Exception ignored in: <coroutine ...>`, `sys.unraisablehook`), and library log records can carry
a TensorStore spec dozens of lines long. `capture(workdir)` sends all of that to WORKDIR/log.txt, with its
traceback, and leaves stderr to the one `error: ...` line of cli.run_main. An uncaught exception of the main
thread (a bug of ours) still prints its traceback on stderr as well, so nothing that stops a run is hidden.

`release()` puts the earlier hooks back (cli.run_main does when called in-process, e.g. by a test; a line's own
process keeps them to its exit, where orbax's last coroutines are collected).

Nothing is written before WORKDIR exists (a run creates it only once its inputs have loaded): records that come
earlier wait in memory and are written with the first record after it exists, or by `flush()`.
"""

import gc
import logging
import os
import sys
import threading
import time
import traceback
import warnings

LOG_FILE = 'log.txt'


class RunLog:
  """Appends text records to WORKDIR/log.txt once WORKDIR exists; holds them in memory until then."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOG_FILE)
    self._pending: list[str] = []
    self._lock = threading.Lock()
    self.release = self.flush  # capture() sets it to put the process's own hooks back

  def write(self, what: str, text: str) -> None:
    stamp = time.strftime('%Y-%m-%d %H:%M:%S')
    record = f'[{stamp} pid {os.getpid()} {threading.current_thread().name}] {what}\n{text.rstrip()}\n\n'
    with self._lock:
      self._pending.append(record)
      self._write_pending()

  def flush(self) -> None:
    with self._lock:
      self._write_pending()

  def _write_pending(self) -> None:
    if not self._pending or not os.path.isdir(os.path.dirname(self.path)):
      return
    try:
      with open(self.path, 'a') as f:
        f.writelines(self._pending)
      self._pending.clear()
    except (OSError, NameError):  # a full disk, or interpreter shutdown tearing down builtins: keep quiet
      pass


class _Handler(logging.Handler):

  def __init__(self, log: RunLog):
    super().__init__(logging.WARNING)
    self.log = log
    self.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))

  def emit(self, record):
    try:
      self.log.write(f'log record ({record.name})', self.format(record))
    except Exception:  # pylint: disable=broad-except  (a log record must never stop a run)
      pass


def capture(workdir: str) -> RunLog:
  """Routes library noise (see the module docstring) of this process to WORKDIR/log.txt; returns the log."""
  log = RunLog(workdir)
  default_excepthook = sys.excepthook

  def excepthook(exc_type, exc, tb):
    log.write('exception', ''.join(traceback.format_exception(exc_type, exc, tb)))
    if threading.current_thread() is threading.main_thread() and not _from_closed_loop(exc):
      default_excepthook(exc_type, exc, tb)  # ours, uncaught: it stays visible

  def unraisablehook(unraisable):
    text = ''.join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
    log.write(f'exception ignored in {unraisable.object!r}: {unraisable.err_msg or ""}', text)

  def thread_excepthook(args):
    log.write(
        f'exception in thread {args.thread.name if args.thread else "?"}',
        ''.join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)),
    )

  def showwarning(message, category, filename, lineno, file=None, line=None):
    del file, line
    log.write('warning', f'{filename}:{lineno}: {category.__name__}: {message}')

  root = logging.getLogger()
  before = (sys.excepthook, sys.unraisablehook, threading.excepthook, warnings.showwarning, list(root.handlers))
  sys.excepthook = excepthook
  sys.unraisablehook = unraisablehook
  threading.excepthook = thread_excepthook
  warnings.showwarning = showwarning
  for handler in before[-1]:
    root.removeHandler(handler)
  ours = _Handler(log)
  root.addHandler(ours)

  def release():
    gc.collect()  # coroutines orbax left unawaited are reported now, into the log, not after we let go
    sys.excepthook, sys.unraisablehook, threading.excepthook, warnings.showwarning = before[:4]
    root.removeHandler(ours)
    for handler in before[-1]:
      root.addHandler(handler)
    log.flush()

  log.release = release
  return log


def _from_closed_loop(exc) -> bool:
  return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)
