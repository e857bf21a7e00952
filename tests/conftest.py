"""Test-wide settings: highest matmul precision for parity checks, and one TFDS data dir per session."""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


@pytest.fixture(scope='session')
def repo_root():
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """One TFDS data dir per test session: embedded datasets are prepared into it once, on first use."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture
def highest_precision():
  """fp32 matmuls/convs at full precision, for parity checks against PyTorch."""
  import jax  # pylint: disable=import-outside-toplevel

  prev = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  yield
  jax.config.update('jax_default_matmul_precision', prev)
