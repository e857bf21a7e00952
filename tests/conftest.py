"""Test-wide settings: XLA's fast-compiling flags (tests/xla_test_flags.py), a persistent JAX compilation cache,
highest matmul precision for parity checks, and one TFDS data dir per session.

The compilation cache (``.cache/jax`` in the repository, git-ignored; ``JAX_COMPILATION_CACHE_DIR`` overrides it,
``JAX_ENABLE_COMPILATION_CACHE=false`` turns it off) lets a rerun of the suite load the programs an earlier run
compiled instead of compiling them again: most of a test's time on CPU is XLA compiling it. Entries are keyed by
the program, the XLA flags and the jax/jaxlib version, so a changed test or library compiles afresh. No size cap
(jax's LRU mode breaks when a subprocess without it writes the same directory); `rm -rf .cache/jax` clears it.
"""

import importlib
import os

# PyTorch (and torchvision's triton) before TensorFlow: importing triton after TensorFlow (tfds, clu's writers)
# segfaults in this stack (torch 2.14 + tensorflow-cpu 2.21), so a test that first touches torchvision after a
# training test would crash the session. Importing them first, when installed, makes the order safe.
for _name in ('torch', 'triton', 'torchvision'):
  try:
    importlib.import_module(_name)
  except ImportError:
    pass

import jax  # noqa: E402
import pytest  # noqa: E402
import xla_test_flags  # noqa: E402
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401

# LLVM at its lowest level in this process and (os.environ) its subprocesses: compiling is most of the suite's time
xla_test_flags.set_for_this_process()

pytest_plugins = ('pytester',)  # tests/core/test_skip_policy.py runs pytest on a file of skips

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if jax.config.jax_compilation_cache_dir is None:
  jax.config.update('jax_compilation_cache_dir', os.path.join(REPO, '.cache', 'jax'))
# jax caches only compiles slower than this; the default (1 s) would leave out most of the suite's small programs.
# Through os.environ too: the test subprocesses that share a cache directory (a run and its SIGKILLed resume, the
# toy runs of tests/core/toy_runs.py) then load each other's inits and eval steps instead of compiling them again.
_MIN_COMPILE_S = os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
jax.config.update('jax_persistent_cache_min_compile_time_secs', float(_MIN_COMPILE_S))


@pytest.fixture(scope='session')
def repo_root():
  return REPO


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """One TFDS data dir per test session: embedded datasets are prepared into it once, on first use."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture
def highest_precision():
  """fp32 matmuls/convs at full precision, for parity checks against PyTorch."""
  prev = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  yield
  jax.config.update('jax_default_matmul_precision', prev)
