"""core_jax.native_kernels: compile-on-first-use C++ FFI kernels, with a clean fallback."""

import os
import subprocess
import sys

import pytest

from core_jax import native_kernels

needs_compiler = pytest.mark.skipif(native_kernels._compiler() is None, reason='no C++ compiler')

_ADD_ONE = r"""
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
static ffi::Error AddOne(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  for (size_t i = 0; i < x.element_count(); ++i) y->typed_data()[i] = x.typed_data()[i] + 1.0f;
  return ffi::Error::Success();
}
XLA_FFI_DEFINE_HANDLER_SYMBOL(TestAddOne, AddOne,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
"""


@needs_compiler
def test_load_compiles_caches_and_registers(tmp_path, monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  monkeypatch.setenv('CORE_JAX_KERNEL_CACHE', str(tmp_path / 'cache'))
  src = tmp_path / 'add_one.cc'
  src.write_text(_ADD_ONE)
  assert native_kernels.load(str(src), {'core_jax_test_add_one': 'TestAddOne'})
  built = [f for f in os.listdir(tmp_path / 'cache') if not f.endswith('.lock')]
  assert len(built) == 1 and built[0].startswith('add_one-') and built[0].endswith('.so')
  x = jnp.arange(5, dtype=jnp.float32)
  y = jax.jit(lambda x: jax.ffi.ffi_call('core_jax_test_add_one', jax.ShapeDtypeStruct(x.shape, x.dtype))(x))(x)
  assert y.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
  assert native_kernels.load(str(src), {'core_jax_test_add_one': 'TestAddOne'})  # once per source
  assert [f for f in os.listdir(tmp_path / 'cache') if not f.endswith('.lock')] == built  # no half-written temporaries


def test_broken_source_or_disabled_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv('CORE_JAX_KERNEL_CACHE', str(tmp_path / 'cache'))
  src = tmp_path / 'broken.cc'
  src.write_text('this is not C++')
  with caplog.at_level('WARNING'):
    assert not native_kernels.load(str(src), {'core_jax_test_broken': 'Nothing'})
  if native_kernels._compiler() is not None:
    assert any('broken.cc unavailable' in r.getMessage() for r in caplog.records)
    assert not [f for f in os.listdir(tmp_path / 'cache') if f.endswith('.so')]
  monkeypatch.setenv('CORE_JAX_NATIVE_KERNELS', '0')
  other = tmp_path / 'other.cc'
  other.write_text(_ADD_ONE)
  assert not native_kernels.load(str(other), {'core_jax_test_never': 'TestAddOne'})
  assert not os.path.exists(tmp_path / 'cache' / 'other')


def test_convnext_without_native_kernels_uses_the_xla_path():
  """CORE_JAX_NATIVE_KERNELS=0 (or no compiler): 'auto' resolves to the pure-XLA shifted conv."""
  code = (
      'from convnext_jax import resolve_dwconv_impl; print(resolve_dwconv_impl("auto"), '
      'resolve_dwconv_impl("native"))'
  )
  out = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      check=True,
      env=dict(os.environ, CORE_JAX_NATIVE_KERNELS='0', JAX_PLATFORMS='cpu'),
  )
  assert out.stdout.split() == ['shifted', 'shifted']


@needs_compiler
def test_library_loads_plain_functions_without_jax(tmp_path, monkeypatch, caplog):
  """`library` (ctypes, host-side kernels such as the image ones): compiled once per (source, flags),
  with the extra flags in the cache key; a broken source gives None and one warning."""
  monkeypatch.setenv('CORE_JAX_KERNEL_CACHE', str(tmp_path / 'cache'))
  src = tmp_path / 'twice.cc'
  src.write_text('extern "C" int twice(int x) { return 2 * x; }\n')
  lib = native_kernels.library(str(src))
  assert lib is not None and lib.twice(21) == 42
  assert native_kernels.library(str(src)) is lib
  assert native_kernels.library(str(src), ('-ffp-contract=off',)).twice(4) == 8
  assert len([f for f in os.listdir(tmp_path / 'cache') if f.endswith('.so')]) == 2  # the flags are in the key
  bad = tmp_path / 'bad.cc'
  bad.write_text('not C++')
  with caplog.at_level('WARNING'):
    assert native_kernels.library(str(bad), fallback='Pillow') is None
  assert any('bad.cc unavailable, using the Pillow path' in r.getMessage() for r in caplog.records)


@needs_compiler
def test_processes_starting_together_compile_once(tmp_path):
  """make demo starts its jobs side by side on a fresh machine: one compiles, the others wait and load it."""
  src = tmp_path / 'thrice.cc'
  src.write_text('extern "C" int thrice(int x) { return 3 * x; }\n')
  calls = tmp_path / 'compiler_calls'
  compiler = tmp_path / 'slow_cxx'  # the real compiler, slowed down so that the processes overlap
  compiler.write_text(f'#!/bin/sh\necho x >> {calls}\nsleep 2\nexec {native_kernels._compiler()} "$@"\n')
  compiler.chmod(0o755)
  env = {**os.environ, 'CXX': str(compiler), 'CORE_JAX_KERNEL_CACHE': str(tmp_path / 'cache')}
  code = f'from core_jax import native_kernels; print(native_kernels.library({str(src)!r}).thrice(14))'
  procs = [subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
  assert [p.communicate(timeout=120)[0].strip() for p in procs] == ['42'] * 3
  assert calls.read_text().count('x') == 1
