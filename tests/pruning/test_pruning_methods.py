"""L1-norm and Network Slimming on small models, the named L1 schemes' cfgs, and the Scratch-B budget rule."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core_jax import counting
from core_jax.errors import UserError
from pruning_jax import budget, masking, models, surgery, zoo
from pruning_jax.methods import l1_norm, slimming

L1_NAMED = [('vgg16_a', 'vgg16'), ('resnet56_a', 'resnet56'), ('resnet56_b', 'resnet56'),
            ('resnet110_a', 'resnet110'), ('resnet110_b', 'resnet110'), ('resnet34_a', 'resnet34'),
            ('resnet34_b', 'resnet34')]


@pytest.mark.parametrize('scheme, base', L1_NAMED)
def test_l1_schemes_give_reference_cfgs(scheme, base):
  assert l1_norm.target_cfg(models.create(base), scheme) == models.NAMED[scheme].cfg


def test_l1_keeps_largest_filters_with_argsort_ties():
  model = models.build('resnet_cifar', (10, 10, 10), 3)  # ResNet-8: layer ids 2, 4, 6
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(np.float32), variables['params'])
  k = np.array(params['layer2_0']['conv1']['kernel'])
  k[..., 3] = 0.0  # smallest
  k[..., 7] = k[..., 2]  # a tie between filters 2 and 7
  params['layer2_0']['conv1']['kernel'] = k
  keep = l1_norm.plan(model, {'params': params}, {'skip': [2], 'ratios': [0.5, 0.35, 0.0]})
  assert set(keep) == {'layer2_0/conv1'}  # id 2 skipped, stage 3 ratio 0
  norms = np.abs(k).transpose(3, 2, 0, 1).sum(axis=(1, 2, 3))
  assert keep['layer2_0/conv1'] == sorted(np.argsort(norms)[::-1][:6].tolist())  # floor(10 * 0.65) = 6
  assert 3 not in keep['layer2_0/conv1']


def test_l1_prune_result():
  model = models.build('resnet_cifar', (10, 10, 10), 3)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  rng = np.random.RandomState(0)
  v = jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(np.float32), v)
  result = l1_norm.prune('resnet_cifar', (10, 10, 10), v, {'skip': [4], 'ratios': [0.5, 0.5, 0.5]})
  assert result.cfg == [5, 10, 5] and result.model.num_classes == 3 and result.report['kept'] == {
    'layer1_0/conv1': 5, 'layer3_0/conv1': 5}
  assert result.variables['params']['layer3_0']['conv2']['kernel'].shape == (3, 3, 5, 64)


@pytest.mark.parametrize('scheme, message', [
  ({'skip': [3], 'ratios': [0.1] * 3}, 'layer id 3'),
  ({'skip': [], 'ratios': [0.1] * 2}, '3 per-stage ratios'),
  ({'skip': [], 'ratios': [1.0, 0.1, 0.1]}, 'outside'),
  ('resnet57_a', 'unknown L1-norm scheme'),
])
def test_l1_bad_schemes(scheme, message):
  with pytest.raises(UserError, match=message):
    l1_norm.target_cfg(models.create('resnet56'), scheme)


def test_slimming_threshold_strictly_greater_and_empty_layer_kept():
  model = models.build('vgg_slimming', (4, 'M', 6, 'M', 'M', 'M'), 3)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  params = jax.tree_util.tree_map(lambda s: np.ones(s.shape, np.float32), variables['params'])
  params['bn0']['scale'] = np.array([0.1, -0.5, 0.3, 0.2], np.float32)
  params['bn1']['scale'] = np.array([0.05, 0.01, -0.02, 0.04, 0.03, 0.06], np.float32)
  v = {'params': params, 'batch_stats': jax.tree_util.tree_map(lambda s: np.ones(s.shape, np.float32),
                                                               variables['batch_stats'])}
  # sorted |gamma| of all 10: .01 .02 .03 .04 .05 .06 .1 .2 .3 .5; int(10 * 0.6) = 6 -> threshold 0.1 (kept: > 0.1)
  keep, report = slimming.plan(model, v, 0.6)
  assert report['threshold'] == pytest.approx(0.1)
  assert keep['conv0'] == [1, 2, 3] and keep['conv1'] == [5] and report['emptied'] == ['conv1']
  result = slimming.prune('vgg_slimming', (4, 'M', 6, 'M', 'M', 'M'), v, 0.6)
  assert result.report['cfg'] == result.cfg == [3, 'M', 1, 'M', 'M', 'M'] and result.model.num_classes == 3
  np.testing.assert_array_equal(result.variables['params']['bn0']['scale'], np.float32([-0.5, 0.3, 0.2]))
  masked = slimming.prune(model, None, v, 0.6, mask=True)
  zeroed, mask = masked.variables, masked.mask
  assert masked.cfg == [4, 'M', 6, 'M', 'M', 'M'] and masked.report['pruned_cfg'] == [3, 'M', 1, 'M', 'M', 'M']
  assert float(zeroed['params']['bn0']['scale'][0]) == 0 and float(zeroed['params']['bn0']['bias'][0]) == 0
  assert float(np.abs(zeroed['params']['conv0']['kernel'][..., 0]).max()) == 0
  # mask mode keeps exactly the physically pruned model's weights non-zero (all test weights are non-zero)
  assert zoo.count_nonzero_params(zeroed['params']) == counting.count_params(result.variables['params'])
  with pytest.raises(UserError, match='percent'):
    slimming.plan(model, v, 1.0)


def test_slimming_preresnet_selection_and_densenet_no_bn_sliced():
  model = models.build('preresnet', (16, 16, 16, 64, 32, 32, 128, 64, 64, 256), 3)
  x = np.random.RandomState(0).randn(2, 8, 8, 3).astype(np.float32)
  rng = np.random.RandomState(1)
  v = jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(np.float32),
                             jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x)))
  v['batch_stats'] = jax.tree_util.tree_map(np.abs, v['batch_stats'])
  for path in slimming.scored_bns(model):
    node = v['params']
    for part in path.split('/'):
      node = node[part]
    node['scale'] = rng.rand(*node['scale'].shape).astype(np.float32)
  result = slimming.prune(model, None, v, 0.5)
  small, sv, report = result.model, result.variables, result.report
  assert sv['params']['layer2_0']['bn1']['scale'].shape == (64,)  # block-input BN not sliced
  assert len(small.selections[1]) == report['kept']['layer2_0/select'] == sv['params']['layer2_0']['conv1'][
    'kernel'].shape[2]
  assert sv['params']['fc']['kernel'].shape[0] == report['kept']['select']
  out_small = jax.jit(lambda v: small.apply(v, x)[0])(sv)
  zeroed = slimming.zero_pruned(model, v, slimming.plan(model, v, 0.5)[0])
  np.testing.assert_allclose(out_small, jax.jit(lambda v: model.apply(v, x)[0])(zeroed), rtol=1e-4, atol=1e-5)
  dn = models.build('densenet', (24, 36, 36, 48, 48, 60), 3)
  dv = jax.tree_util.tree_map(lambda s: np.full(s.shape, 0.5, np.float32),
                              jax.eval_shape(lambda: dn.init(jax.random.PRNGKey(0), x)))
  dsv = slimming.prune(dn, None, dv, 0.0).variables  # all gammas 0.5: threshold 0.5, nothing strictly greater
  shapes = jax.tree_util.tree_map(np.shape, dsv['params'])
  assert shapes['dense1_0']['bn1']['scale'] == (24,) and shapes['dense1_0']['conv1']['kernel'][2] == 1


def test_sparsity_transform_adds_sign_before_decay():
  model = models.build('vgg_slimming', (4, 'M', 6, 'M', 'M', 'M'), 3)
  params = jax.tree_util.tree_map(lambda s: -jnp.ones(s.shape), jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))['params'])
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  for tx in (slimming.sparsity_transform(1e-4), slimming.sparsity_transform(1e-4, model)):
    out, _ = tx.update(grads, tx.init(params), params)
    assert float(out['bn0']['scale'][0]) == pytest.approx(-1e-4) and float(out['bn0']['bias'][0]) == 0
    assert float(jnp.abs(out['conv0']['kernel']).max()) == 0


def test_keep_masked_keeps_zeros_through_momentum_and_decay():
  params = {'w': jnp.array([1.0, 0.0, 2.0]), 'b': jnp.array([0.0])}
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9),
                   masking.keep_masked(lambda p: masking.nonzero_mask(p, lambda path, leaf: path[-1] == 'w')))
  state = tx.init(params)
  for _ in range(3):
    grads = {'w': jnp.array([0.5, 0.7, -0.1]), 'b': jnp.array([0.3])}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(params['w'][1]) == 0.0 and float(params['w'][0]) != 1.0 and float(params['b'][0]) != 0.0


@pytest.mark.parametrize('scheme, base, epochs', [
  ('vgg16_a', 'vgg16', 243), ('resnet56_a', 'resnet56', 178), ('resnet56_b', 'resnet56', 220),
  ('resnet110_a', 'resnet110', 190), ('resnet110_b', 'resnet110', 260)])
def test_scratch_b_epochs_cifar(scheme, base, epochs):
  _, macs_large = zoo.params_and_macs(models.create(base), 'cifar')
  _, macs_pruned = zoo.params_and_macs(models.create(scheme), 'cifar')
  assert budget.scratch_b(160, macs_large, macs_pruned).epochs == epochs
  assert budget.scratch_b_epochs(160, macs_large, macs_pruned) == epochs


@pytest.mark.slow
def test_scratch_b_epochs_imagenet_capped():
  _, large = zoo.params_and_macs(models.create('resnet34'), 'imagenet')
  got = [budget.scratch_b(90, large, zoo.params_and_macs(models.create(n), 'imagenet')[1], cap=2.0).epochs
         for n in ('resnet34_a', 'resnet34_b')]
  assert got == [106, 118]


def test_scratch_b_cap():
  assert budget.scratch_b(90, 300, 100, cap=2.0) == budget.Budget(180, 3.0, True)
  assert budget.scratch_b(90, 300, 100).epochs == 270
  with pytest.raises(UserError):
    budget.scratch_b(90, 300, 0)
