"""C++ kernels compiled on first use with the machine's C++ compiler: XLA FFI custom calls for XLA:CPU
(`load`), and plain C functions for host-side work such as the input pipeline (`library`, via ctypes).

Some CPU hot spots XLA cannot generate well (e.g. depthwise convolutions); a line ships the C++ source of a
kernel next to its model and calls `load(source, {ffi_name: symbol})`. The first call compiles it (`$CXX` or
c++/g++, -O3 -march=native; seconds, see benchmarks/ANALYSIS.md) into a cache keyed by the source, the flags, the
compiler and this CPU (and the jaxlib version for FFI kernels), so later processes only load it. Without a
compiler, or if it fails, the loader says why once (a warning) and returns False/None: callers then use their
pure-XLA (or Pillow/numpy) path, which computes the same function. `pip install` needs no compiler; the kernels
are an acceleration, never a requirement.

  CORE_JAX_NATIVE_KERNELS=0       never compile or load (pure XLA / Pillow everywhere)
  CORE_JAX_KERNEL_CACHE=DIR       cache folder (default ~/.cache/core_jax/kernels)
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')
_lock = threading.Lock()
_loaded: dict[str, bool] = {}  # source path -> FFI targets registered?
_libraries: dict[tuple, ctypes.CDLL | None] = {}  # (source, flags) -> library, None if unavailable


def enabled() -> bool:
  return os.environ.get('CORE_JAX_NATIVE_KERNELS', '1') != '0'


def _compiler() -> str | None:
  for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
    path = shutil.which(name) if name else None
    if path:
      return path
  return None


def _cpu_signature() -> str:
  """-march=native code must not run on another CPU sharing the cache (a home dir on NFS)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _cache_dir() -> str:
  return os.environ.get('CORE_JAX_KERNEL_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'core_jax', 'kernels'
  )


def _build(source: str, compiler: str, extra_flags: tuple = (), ffi_headers: bool = True) -> str:
  with open(source, 'rb') as f:
    text = f.read()
  flags = (*_FLAGS, *extra_flags)
  key_parts = [text, ' '.join(flags).encode(), compiler.encode(), _cpu_signature().encode()]
  include = []
  if ffi_headers:  # only FFI kernels depend on jaxlib (its headers and ABI)
    import jax  # pylint: disable=import-outside-toplevel
    import jaxlib  # pylint: disable=import-outside-toplevel

    key_parts.append(jaxlib.__version__.encode())
    include = ['-I', jax.ffi.include_dir()]
  key = hashlib.sha256(b'\0'.join(key_parts)).hexdigest()[:16]
  name = os.path.splitext(os.path.basename(source))[0]
  out = os.path.join(_cache_dir(), f'{name}-{key}.so')
  if os.path.exists(out):
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  # One process compiles, the others wait for it (make demo's jobs start side by side on a fresh machine).
  with open(out + '.lock', 'a') as lock:
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    if os.path.exists(out):
      return out
    # Build next to the target, then rename: a process that does not take the lock never loads a half-written file.
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(out))
    os.close(fd)
    try:
      cmd = [compiler, *flags, *include, source, '-o', tmp]
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
      if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed: {proc.stderr.strip()[-1500:]}')
      os.replace(tmp, out)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return out


def _open(source: str, extra_flags: tuple, ffi_headers: bool) -> ctypes.CDLL:
  """The compiled (or cached) library of `source`; raises with the reason if there is none."""
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError('no C++ compiler found (set $CXX)')
  return ctypes.CDLL(_build(source, compiler, tuple(extra_flags), ffi_headers=ffi_headers))


def _warn(source: str, e: Exception, fallback: str):
  logging.warning(
      'native kernels in %s unavailable, using the %s path: %s',
      os.path.basename(source),
      fallback,
      str(e).splitlines()[0] if str(e) else type(e).__name__,
  )


def library(source: str, extra_flags: tuple = (), fallback: str = 'Python') -> ctypes.CDLL | None:
  """Compiles (or finds cached) `source` with `extra_flags` and loads it with ctypes, for plain
  `extern "C"` functions; no jax import. None if unavailable (one warning naming `fallback`, the path
  callers take instead). Thread-safe, compiled once per (source, flags) and process."""
  key = (source, tuple(extra_flags))
  with _lock:
    if key not in _libraries:
      lib = None
      if enabled():
        try:
          lib = _open(source, extra_flags, ffi_headers=False)
        except Exception as e:  # pylint: disable=broad-except
          _warn(source, e, fallback)
      _libraries[key] = lib
    return _libraries[key]


def load(source: str, targets: dict[str, str]) -> bool:
  """Compiles (or finds cached) `source` and registers each exported handler `symbol` as the CPU FFI
  target `name` (targets: name -> symbol). True if the targets are usable; thread-safe, once per source."""
  with _lock:
    if source in _loaded:
      return _loaded[source]
    ok = False
    if enabled():
      try:
        import jax  # pylint: disable=import-outside-toplevel

        lib = _open(source, (), ffi_headers=True)
        for name, symbol in targets.items():
          jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
        ok = True
      except Exception as e:  # pylint: disable=broad-except
        _warn(source, e, 'XLA')
    _loaded[source] = ok
    return ok
