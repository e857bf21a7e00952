"""core_jax.host_memory: a freed big buffer is reused without page faults, also from a worker thread."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Allocates, touches and frees 256 MB twice from a new thread (XLA:CPU allocates a step's temporaries
# from a worker thread, i.e. from a secondary glibc arena); prints whether the settings applied and the
# minor page faults of the second round.
_PROBE = textwrap.dedent("""
  import ctypes, resource, threading
  from core_jax import host_memory
  applied = host_memory.retain_freed_memory()
  libc = ctypes.CDLL(None)
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  n = 256 << 20
  faults = []
  def round_trip():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
  for _ in range(2):
    t = threading.Thread(target=round_trip)
    t.start(); t.join()
  print(applied, faults[1])
""")


def _probe(switch):
  env = dict(os.environ, PYTHONPATH=REPO, CORE_JAX_RETAIN_HOST_MEMORY=switch)
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True, check=True)
  applied, faults = out.stdout.split()
  return applied == 'True', int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_freed_memory_is_reused_without_page_faults():
  pages = (256 << 20) // os.sysconf('SC_PAGE_SIZE')
  applied, faults = _probe('1')
  assert applied
  assert faults < pages // 100, faults  # memory came back from the heap, already mapped
  applied, faults = _probe('0')  # the switch turns it off, and then every round faults the pages in again
  assert not applied
  assert faults > pages // 2, faults
