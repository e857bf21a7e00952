"""Model families: exact params / MACs against the reference sheet, cfg handling and bad input."""

import cheap_init
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pruning_helpers import random_variables

from core_jax.compute import Compute
from core_jax.errors import UserError
from pruning_jax import models, zoo

# Exact integers computed by our counter; the reference sheet's rounded values are asserted alongside.
EXACT = {
    'vgg16': (14_987_722, 313_463_808),
    'vgg19': (20_035_018, 398_136_320),
    'resnet56': (853_018, 125_485_696),
    'resnet110': (1_727_962, 252_887_680),
    'preresnet164': (1_703_258, 247_646_720),
    'densenet40': (1_059_298, 282_917_328),
}
EXACT_IMAGENET = {
    'resnet34': (21_797_672, 3_663_761_408),
    'resnet50': (25_560_872, 4_089_184_256),
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_inits_follow_reference():
  m = models.create('resnet_cifar', cfg=(16, 32, 64))  # ResNet-8
  # compiled as a training run compiles its init (optimizing the threefry calls was most of the test's time)
  v = cheap_init.init(m, jnp.zeros((1, 32, 32, 3)))
  k = np.asarray(v['params']['layer3_0']['conv2']['kernel'])  # (3, 3, 64, 64): std sqrt(2 / (9 * 64))
  assert abs(k.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05  # 36,864 draws
  assert np.all(np.asarray(v['params']['bn1']['scale']) == 1.0)
  fc = np.asarray(v['params']['fc']['kernel'])
  assert np.abs(fc).max() <= 1 / 8 and np.abs(np.asarray(v['params']['fc']['bias'])).max() <= 1 / 8
  vgg = models.create('vgg_slimming', cfg=(8, 'M', 'M', 'M', 'M', 512))
  vg = cheap_init.init(vgg, jnp.zeros((1, 32, 32, 3)))
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


@pytest.mark.parametrize(
    'call, message',
    [
        (lambda: models.create('resnet57'), 'unknown model'),
        (lambda: models.create('resnet_cifar', cfg=[16] * 4), r'depth 6n\+2'),
        (lambda: models.create('resnet_cifar'), 'needs a cfg'),
        (lambda: models.create('vgg_l1', cfg=[64, 0]), 'positive'),
        (lambda: models.create('resnet56', selections=[None]), 'no channel selection'),
    ],
)
def test_bad_input_is_one_line_user_error(call, message):
  with pytest.raises(UserError, match=message) as e:
    call().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert '\n' not in str(e.value)


def test_zoo_cli_prints_exact_counts(capsys):
  zoo.main(['resnet56', 'resnet56_a'])
  out = capsys.readouterr().out
  assert '| resnet56_a | resnet_cifar | cifar | 773,336 | 112,435,840 |' in out and '9.3% / 10.4% of resnet56' in out


@pytest.mark.parametrize('cin, cout, hw, k, stride', [(5, 7, 2, 3, 1), (6, 4, 7, 3, 2), (3, 8, 8, 7, 2)])
def test_small_output_conv_equals_flax_conv(cin, cout, hw, k, stride, highest_precision):
  """layers.Conv's patches @ kernel path (<= 16 output positions) == nn.Conv: variables, outputs, grads, MACs."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from core_jax import counting  # pylint: disable=import-outside-toplevel
  from pruning_jax.models import layers  # pylint: disable=import-outside-toplevel

  x = jnp.asarray(np.random.RandomState(0).randn(2, hw, hw, cin).astype(np.float32))
  ours = layers.conv(cout, k, stride, name='c', use_bias=True, compute=Compute(small_conv='matmul'))
  ref = nn.Conv(cout, (k, k), strides=(stride, stride), padding=((k // 2, k // 2),) * 2, use_bias=True)
  jaxpr = str(jax.make_jaxpr(lambda: ours.init(jax.random.PRNGKey(0), x))())
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr  # the matmul path ran
  shapes = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), x))
  assert shapes == jax.eval_shape(lambda: ref.init(jax.random.PRNGKey(0), x))
  rng = np.random.RandomState(1)
  v = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.randn(*s.shape).astype(np.float32)), shapes)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda v, m=m: jnp.sum(m.apply(v, x) ** 2))(v) for m in (ours, ref)]
  for a, b in zip(*map(jax.tree_util.tree_leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  assert counting.count_macs(ours, x) == counting.count_macs(ref, x)


@pytest.mark.parametrize('cin, cout, hw, k, stride', [(6, 57, 10, 3, 2), (22, 19, 6, 1, 1), (3, 4, 8, 3, 1)])
def test_channel_padded_conv_equals_flax_conv(cin, cout, hw, k, stride, highest_precision):
  """layers.Conv with channel counts computed zero-padded to multiples of 8 == nn.Conv: variables (exact, unpadded
  shapes), outputs, grads, MACs; counts <= 4 (the RGB input) are not padded."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from core_jax import counting  # pylint: disable=import-outside-toplevel
  from pruning_jax.models import layers  # pylint: disable=import-outside-toplevel

  compute = Compute(channel_multiple=8)
  assert [compute.padded_channels(c) for c in (3, 4, 6, 14, 16, 57)] == [3, 4, 8, 16, 16, 64]
  assert Compute(channel_multiple=1).padded_channels(57) == 57
  x = jnp.asarray(np.random.RandomState(0).randn(2, hw, hw, cin).astype(np.float32))
  ours = layers.conv(cout, k, stride, name='c', use_bias=True, compute=compute)
  ref = nn.Conv(cout, (k, k), strides=(stride, stride), padding=((k // 2, k // 2),) * 2, use_bias=True)
  shapes = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), x))
  assert shapes == jax.eval_shape(lambda: ref.init(jax.random.PRNGKey(0), x))
  rng = np.random.RandomState(1)
  v = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.randn(*s.shape).astype(np.float32)), shapes)
  jaxpr = str(jax.make_jaxpr(lambda v: ours.apply(v, x))(v))
  padded = (compute.padded_channels(cin), compute.padded_channels(cout)) != (cin, cout)
  assert ('name=_pad' in jaxpr) == padded, jaxpr  # the padded path ran where a count is not a multiple of 8
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda v, m=m: jnp.sum(m.apply(v, x) ** 2))(v) for m in (ours, ref)]
  for a, b in zip(*map(jax.tree_util.tree_leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  assert counting.count_macs(ours, x) == counting.count_macs(ref, x)
