"""One process per workdir: a run holds an exclusive flock on its workdir directory while it runs.

A user who launches the same command twice gets, from the second process, one line naming the first's process id
(read from /proc/locks), before the second writes anything: the lock is taken on the directory itself, so no lock
file is written, and a fresh workdir is locked the moment the run creates it (after its inputs have loaded).
The kernel drops the lock when its holder exits in any way, SIGKILL included, so a stale lock cannot block the
next start. Several processes of one multi-host job share a workdir on purpose: only process 0 takes the lock.
"""

import fcntl
import os

from core_jax.errors import UserError


class WorkdirLock:
  """`acquire()` once the directory exists (a no-op before, and after the first success); `release()` at the end."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.enabled = enabled
    self._fd = None

  def acquire(self) -> None:
    if not self.enabled or self._fd is not None or not os.path.isdir(self.workdir):
      return
    fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _holder_pid(fd)
      os.close(fd)
      who = f'process {holder}' if holder else 'another process'
      raise UserError(
          f'workdir {self.workdir} is in use by {who} (the same command running twice?); wait for it to end or '
          'give this run another --workdir'
      ) from None
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the only descriptor drops the flock
      self._fd = None


def _holder_pid(fd: int) -> int | None:
  """The pid holding a FLOCK on `fd`'s inode, from /proc/locks (Linux); None when it cannot be told."""
  st = os.fstat(fd)
  ident = f'{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}'
  try:
    with open('/proc/locks') as f:
      for line in f:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:123456 0 EOF" ("->" marks a waiter: skip those)
        if len(fields) >= 6 and fields[1] == 'FLOCK' and '->' not in fields and fields[5] == ident:
          return int(fields[4])
  except (OSError, ValueError):
    pass
  return None
