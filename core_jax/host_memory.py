"""Host allocator settings for a training process: keep freed memory for reuse (glibc only).

XLA:CPU allocates each step's temporaries as one buffer (2.85 GB for a ConvNeXt-T train step at batch 16) with
``posix_memalign`` from a worker thread. glibc serves a request that large with a fresh ``mmap`` and returns it
with ``munmap`` when the step ends, so every step first-touches the whole buffer again: hundreds of thousands of
page faults per step, a large share of the step in kernel time (measured with benchmarks/convnext_throughput.py;
numbers in benchmarks/ANALYSIS.md). The glibc knobs ``mmap_max`` and ``trim_threshold`` alone do not help,
because a worker thread allocates from a secondary arena, which falls back to ``mmap`` whatever the limit. With
one arena, no ``mmap`` and no trimming, the buffer comes from the main heap, and freed memory stays mapped for
the next step: no page faults after the first step. The price is that the process keeps its peak footprint (as a
GPU process does with its preallocated pool).

Call ``retain_freed_memory()`` first thing in the process, before JAX starts its thread pools:
glibc fixes the arena limit when the first secondary arena is made.  ``CORE_JAX_RETAIN_HOST_MEMORY=0``
turns it off.
"""

import ctypes
import os
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ENV_SWITCH = 'CORE_JAX_RETAIN_HOST_MEMORY'


def retain_freed_memory() -> bool:
  """Sets glibc malloc to one arena, no mmap, no trim. Returns whether the settings were applied."""
  if os.environ.get(ENV_SWITCH, '1') == '0' or not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc (musl, ...): leave its allocator alone
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # -1 as the trim threshold means never trim (documented in mallopt(3)).
  return all(
      mallopt(param, value) == 1 for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  )
