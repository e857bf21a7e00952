"""Tests for convnext_jax.zoo (params / GMACs of every ImageNet variant, computed abstractly).

Run: .venv/bin/python -m pytest tests/convnext/test_zoo.py -q
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from convnext_jax import models, zoo  # noqa: E402
from convnext_jax import report as convnext_report  # noqa: E402
from convnext_jax.ops import for_backend  # noqa: E402
from core_jax.compute import Compute  # noqa: E402

# name: (params with a 1000-class head, GMACs @224, GMACs @384 or None) -- fact sheet Sec. 1.6 / 1.7
EXPECTED = {
    'convnext_atto': (3_695_520, 0.55, 1.61),
    'convnext_femto': (5_217_784, 0.78, 2.29),
    'convnext_pico': (9_045_672, 1.37, 4.02),
    'convnext_nano': (15_593_560, 2.45, 7.19),
    'convnext_tiny': (28_589_128, 4.46, 13.09),
    'convnext_small': (50_223_688, 8.68, 25.52),
    'convnext_base': (88_591_464, 15.35, 45.12),
    'convnext_large': (197_767_336, 34.36, 100.98),
    'convnext_xlarge': (350_196_968, 60.92, 179.03),
    'convnext_iso_small': (None, 4.29, None),
    'convnext_iso_base': (None, 16.90, None),
    'convnext_iso_large': (None, 59.70, None),
}
# Paper Table 2 prints iso params rounded: 22M / 87M / 306M.
ISO_PARAMS_M = {'convnext_iso_small': 22, 'convnext_iso_base': 87, 'convnext_iso_large': 306}


@pytest.fixture(scope='module')
def rows():
  """Every zoo model at 224 and 384 (about 7 s of one core: the slow tests only)."""
  return {r['model']: r for r in zoo.zoo_table()}


@pytest.fixture(scope='module')
def tiny_row():
  """ConvNeXt-T's row alone (two traces, about 0.5 s): the tests of the not-slow set."""
  (row,) = zoo.zoo_table(['convnext_tiny'])
  return row


def test_zoo_covers_registered_imagenet_models():
  imagenet = [n for n in models.list_models('convnext_*') if n != 'convnext_digits']
  assert sorted(zoo.ZOO_MODELS) == sorted(imagenet)
  assert set(zoo.REFERENCE_TOP1) == set(zoo.ZOO_MODELS)


@pytest.mark.parametrize('name', sorted(EXPECTED))
@pytest.mark.slow
def test_params_and_gmacs(rows, name):
  params, g224, g384 = EXPECTED[name]
  r = rows[name]
  if params is not None:
    assert r['params'] == params
  else:
    assert round(r['params'] / 1e6) == ISO_PARAMS_M[name]
  assert r['gmacs_224'] == g224
  if g384 is not None:
    assert r['gmacs_384'] == g384


def test_exact_macs_tiny(tiny_row):
  assert tiny_row['macs_224'] == 4_455_531_264
  assert (tiny_row['params'], tiny_row['gmacs_384']) == (28_589_128, 13.09)


def test_count_does_not_depend_on_the_compute_policy():
  """The zoo counts with the plain policy (``Compute()``); the CPU's (fusion barriers, patch matmuls, the native
  depthwise conv, the custom weight gradient) goes through the same layers: the same params and MACs."""
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  plain = models.create_model('convnext_atto', compute=Compute())
  cpu = models.create_model('convnext_atto', compute=for_backend(None))
  assert cpu.compute != plain.compute and cpu.compute.fusion_barriers
  assert zoo.params_and_macs(cpu, x) == zoo.params_and_macs(plain, x)


def test_reference_accuracies():
  assert zoo.REFERENCE_TOP1['convnext_tiny'][0] == 82.1
  assert zoo.REFERENCE_TOP1['convnext_base'][:2] == (83.8, 85.1)
  assert zoo.REFERENCE_TOP1['convnext_iso_large'][0] == 82.6


def test_outputs(tiny_row):
  md = convnext_report.format_markdown([tiny_row])
  assert '| convnext_tiny | 28,589,128 | 4.46 | 13.09 | 82.1 |' in md
  assert json.loads(json.dumps([tiny_row]))[0]['params'] == 28_589_128
