"""C++ kernels for XLA:CPU, compiled on first use with the machine's C++ compiler and called as XLA FFI
custom calls.

Some CPU hot spots XLA cannot generate well (e.g. depthwise convolutions); a line ships the C++ source
of a kernel next to its model and calls `load(source, {ffi_name: symbol})`. The first call compiles it
(`$CXX` or c++/g++, -O3 -march=native, ~7 s) into a cache keyed by the source, the jaxlib version and
this CPU, so later processes only load it. Without a compiler, or if it fails, `load` says why once
(a warning) and returns False: callers then use their pure-XLA path, which computes the same function.
`pip install` needs no compiler; the kernels are an acceleration, never a requirement.

  CORE_JAX_NATIVE_KERNELS=0       never compile or load (pure XLA everywhere)
  CORE_JAX_KERNEL_CACHE=DIR       cache folder (default ~/.cache/core_jax/kernels)
"""

from __future__ import annotations

import ctypes
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
_loaded: dict[str, bool] = {}  # source path -> registered?


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
      os.path.expanduser('~'), '.cache', 'core_jax', 'kernels')


def _build(source: str, compiler: str) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  with open(source, 'rb') as f:
    text = f.read()
  key = hashlib.sha256(b'\0'.join([text, ' '.join(_FLAGS).encode(), compiler.encode(),
                                   jaxlib.__version__.encode(), _cpu_signature().encode()])).hexdigest()[:16]
  name = os.path.splitext(os.path.basename(source))[0]
  out = os.path.join(_cache_dir(), f'{name}-{key}.so')
  if os.path.exists(out):
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  # Build next to the target, then rename: concurrent processes never load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(out))
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, '-I', jax.ffi.include_dir(), source, '-o', tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
      raise RuntimeError(f'{" ".join(cmd)} failed: {proc.stderr.strip()[-1500:]}')
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


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
        compiler = _compiler()
        if compiler is None:
          raise RuntimeError('no C++ compiler found (set $CXX)')
        lib = ctypes.CDLL(_build(source, compiler))
        for name, symbol in targets.items():
          jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
        ok = True
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('native kernels in %s unavailable, using the XLA path: %s', os.path.basename(source),
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
    _loaded[source] = ok
    return ok
