"""Fixtures for core tests: one TFDS data dir per session, so embedded datasets prepare once."""

import pytest


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def digits_train(tfds_dir):
  from core_jax.data.sources import load_source

  return load_source('digits', 'train', tfds_dir)


@pytest.fixture(scope='session')
def digits_test(tfds_dir):
  from core_jax.data.sources import load_source

  return load_source('digits', 'test', tfds_dir)
