"""Model families: exact params / MACs against the reference sheet, cfg handling and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.errors import UserError
from pruning_jax import models, zoo

from pruning_helpers import random_variables

# Exact integers computed by our counter; the reference sheet's rounded values are asserted alongside.
EXACT = {
  'vgg16': (14_987_722, 313_463_808), 'vgg19': (20_035_018, 398_136_320), 'resnet56': (853_018, 125_485_696),
  'resnet110': (1_727_962, 252_887_680), 'preresnet164': (1_703_258, 247_646_720),
  'densenet40': (1_059_298, 282_917_328),
}
EXACT_IMAGENET = {
  'resnet34': (21_797_672, 3_663_761_408), 'resnet50': (25_560_872, 4_089_184_256),
  'vgg16_imagenet': (138_357_544, 15_470_264_320),
}


def _check_reference(name, params, macs):
  ref_p, ref_m = zoo.REFERENCE_COUNTS[name]
  digits = len(str(ref_p).split('.')[1])
  assert round(params / 1e6, digits) == ref_p
  if ref_m is not None:
    scale, ref = (1e9, ref_m / 1000) if ref_m >= 1000 else (1e6, ref_m)
    digits = len(f'{ref:g}'.split('.')[1]) if '.' in f'{ref:g}' else 0
    assert round(macs / scale, digits) == ref


@pytest.mark.parametrize('name', sorted(EXACT))
def test_cifar_counts_match_reference(name):
  params, macs = zoo.params_and_macs(models.create(name), 'cifar')
  assert (params, macs) == EXACT[name]
  _check_reference(name, params, macs)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(EXACT_IMAGENET))
def test_imagenet_counts_match_reference(name):
  params, macs = zoo.params_and_macs(models.create(name), 'imagenet')
  assert (params, macs) == EXACT_IMAGENET[name]
  _check_reference(name, params, macs)


def test_named_pruned_cifar_percentages():
  rows = {r['name']: r for r in zoo.zoo_rows(['vgg16_a', 'resnet56_a', 'resnet56_b', 'resnet110_a', 'resnet110_b'])}
  for name, row in rows.items():
    ref_p, ref_m = zoo.REFERENCE_PRUNED[name]
    assert round(row['params_pruned_pct'], 1) == ref_p, name
    assert round(row['macs_pruned_pct'], 1) == ref_m, name
  assert rows['vgg16_a']['params'] == 5_397_034


@pytest.mark.slow
def test_named_pruned_imagenet_percentages():
  rows = {r['name']: r for r in zoo.zoo_rows(['resnet34_a', 'resnet34_b'])}
  for name, row in rows.items():
    assert (round(row['params_pruned_pct'], 1), round(row['macs_pruned_pct'], 1)) == zoo.REFERENCE_PRUNED[name]


def test_vgg_heads_and_shapes():
  x = jnp.zeros((2, 32, 32, 3))
  cfg = (8, 'M', 16, 'M', 16, 'M', 24, 'M', 32)
  for family, head_stats in (('vgg_l1', {'fc_bn1'}), ('vgg_slimming', set())):
    m = models.create(family, cfg=cfg, num_classes=7)
    v = random_variables(m, x)
    logits, feats = jax.jit(m.apply)(v, x)
    assert logits.shape == (2, 7) and feats['pooled'].shape == (2, 32)
    assert set(v['batch_stats']) - {f'bn{i}' for i in range(5)} == head_stats


def test_inits_follow_reference():
  m = models.create('resnet_cifar', cfg=(16, 32, 64))  # ResNet-8
  v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  k = np.asarray(v['params']['layer3_0']['conv2']['kernel'])  # (3, 3, 64, 64): std sqrt(2 / (9 * 64))
  assert abs(k.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05  # 36,864 draws
  assert np.all(np.asarray(v['params']['bn1']['scale']) == 1.0)
  fc = np.asarray(v['params']['fc']['kernel'])
  assert np.abs(fc).max() <= 1 / 8 and np.abs(np.asarray(v['params']['fc']['bias'])).max() <= 1 / 8
  vg = jax.jit(models.create('vgg_slimming', cfg=(8, 'M', 'M', 'M', 'M', 512)).init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert np.all(np.asarray(vg['params']['bn0']['scale']) == 0.5)
  assert np.all(np.asarray(vg['params']['fc']['bias']) == 0)
  assert abs(np.asarray(vg['params']['fc']['kernel']).std() - 0.01) < 0.001  # 5,120 draws


def test_description_round_trip_and_selection():
  sel = [None] * 36 + [tuple(range(0, 300, 2)), None, None]
  cfg = list(models.densenet.default_cfg(40))
  cfg[36] = 150
  m = models.create('densenet', cfg=cfg, selections=sel)
  d = models.describe(m)
  assert d['family'] == 'densenet' and d['cfg'][36] == 150 and d['selections'][36][:3] == [0, 2, 4]
  assert models.from_description(d) == m


@pytest.mark.parametrize('call, message', [
  (lambda: models.create('resnet57'), 'unknown model'),
  (lambda: models.create('resnet_cifar', cfg=[16] * 4), r'depth 6n\+2'),
  (lambda: models.create('resnet_cifar'), 'needs a cfg'),
  (lambda: models.create('vgg_l1', cfg=[64, 0]), 'positive'),
  (lambda: models.create('resnet56', selections=[None]), 'no channel selection'),
])
def test_bad_input_is_one_line_user_error(call, message):
  with pytest.raises(UserError, match=message) as e:
    call().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert '\n' not in str(e.value)


def test_zoo_cli_prints_exact_counts(capsys):
  zoo.main(['resnet56', 'resnet56_a'])
  out = capsys.readouterr().out
  assert '| resnet56_a | resnet_cifar | cifar | 773,336 | 112,435,840 |' in out and '9.3% / 10.4% of resnet56' in out
