"""Tests for convnext_jax.zoo (params / GMACs of every ImageNet variant, computed abstractly).

Run: .venv/bin/python -m pytest tests/convnext/test_zoo.py -q
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from convnext_jax import models, zoo  # noqa: E402

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
  return {r['model']: r for r in zoo.zoo_table()}


def test_zoo_covers_registered_imagenet_models():
  imagenet = [n for n in models.list_models('convnext_*') if n != 'convnext_digits']
  assert sorted(zoo.ZOO_MODELS) == sorted(imagenet)
  assert set(zoo.REFERENCE_TOP1) == set(zoo.ZOO_MODELS)


@pytest.mark.parametrize('name', sorted(EXPECTED))
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


def test_exact_macs_tiny(rows):
  assert rows['convnext_tiny']['macs_224'] == 4_455_531_264


def test_reference_accuracies():
  assert zoo.REFERENCE_TOP1['convnext_tiny'][0] == 82.1
  assert zoo.REFERENCE_TOP1['convnext_base'][:2] == (83.8, 85.1)
  assert zoo.REFERENCE_TOP1['convnext_iso_large'][0] == 82.6


def test_outputs(rows):
  ordered = [rows[n] for n in zoo.ZOO_MODELS]
  md = zoo.format_markdown(ordered)
  assert '| convnext_tiny | 28,589,128 | 4.46 | 13.09 | 82.1 |' in md
  assert json.loads(json.dumps(ordered))[4]['params'] == 28_589_128
