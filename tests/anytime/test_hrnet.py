"""HRNetV2 structure: param counts vs timm and the reference, backbone numerics vs timm, weight layouts."""

import functools

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
import timm
import torch

from anytime_jax import convert, hrnet  # noqa: E402
from core_jax import counting  # noqa: E402
from core_jax.errors import UserError  # noqa: E402


@functools.cache
def abstract_variables(model, shape=(1, 64, 64, 3)):
  """The shapes of `model`'s variables (an abstract init), traced once per equal model and input shape (equal Linen
  modules hash equal): a confidence-adaptive HRNet's trace takes seconds, and three tests build the same one."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def numpy_variables(model, shape=(1, 64, 64, 3), seed=0):
  """Random host variables without compiling init (each leaf N(0, 0.1); BN var positive)."""
  rng = np.random.RandomState(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    if name == 'scale':
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    if name == 'rbf_lambda':
      return np.asarray(rng.uniform(1.0, 3.0), s.dtype).reshape(s.shape)
    return (0.1 * rng.randn(*s.shape)).astype(s.dtype)

  v = abstract_variables(model, shape)
  return jax.tree_util.tree_map_with_path(fill, {'params': v['params'], 'batch_stats': v['batch_stats']})


@pytest.mark.parametrize('arch', ['w48', 'w18_small_v2', 'w18'])
@pytest.mark.slow
def test_param_counts_equal_timm_backbone_and_reference(arch):
  variables = abstract_variables(hrnet.base(arch))
  params = variables['params']
  total = counting.count_params(params)
  head = counting.count_params(params['last_layer'])
  tm = timm.create_model(hrnet.ARCHS[arch].timm_name, pretrained=False, head='')
  assert total - head == sum(p.numel() for p in tm.parameters())
  concat = sum(hrnet.ARCHS[arch].channels(4))
  assert head == concat * concat + concat + 2 * concat + concat * 19 + 19
  want = {'w48': (65_859_379, 65.86), 'w18_small_v2': (3_939_579, 3.94), 'w18': (9_641_119, 9.64)}[arch]
  assert total == want[0] and round(total / 1e6, 2) == want[1]
  # the BN statistics of the shared part match timm's buffers one to one
  stats = counting.count_params(variables['batch_stats']) - 2 * concat
  assert stats == sum(b.numel() for n, b in tm.named_buffers() if not n.endswith('num_batches_tracked'))


@pytest.fixture(scope='module')
def timm_w18s2():
  """timm hrnet_w18_small_v2 backbone with BN statistics calibrated on one batch (features of order 1-10)."""
  torch.manual_seed(0)
  tm = timm.create_model('hrnet_w18_small_v2', pretrained=False, head='')
  x = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
  for m in tm.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = 1.0
      torch.nn.init.constant_(m.weight, 0.5)
      torch.nn.init.uniform_(m.bias, -0.1, 0.1)
  with torch.no_grad():
    tm.train()
    tm.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  tm.eval()
  return tm, x


@pytest.mark.slow
def test_backbone_features_match_timm(timm_w18s2):
  tm, x = timm_w18s2
  for m in tm.modules():  # the segmentation HRNet fuses with bilinear (align_corners=False), not nearest
    if isinstance(m, torch.nn.Upsample):
      m.mode, m.align_corners = 'bilinear', False
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  model = hrnet.build('w18_small_v2', exit_type='rh', tau=0.99, num_classes=5)
  variables = convert.external_to_variables(sd, numpy_variables(model, x.shape), 'timm')
  with torch.no_grad():
    want = [t.numpy().transpose(0, 2, 3, 1) for t in tm.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))]
  got = jax.jit(lambda v, x: model.apply(v, x, features_only=True))(variables, x)
  assert [g.shape for g in got] == [w.shape for w in want] == [(2, 16 // 2**i, 16 // 2**i, 18 * 2**i) for i in range(4)]
  for g, w in zip(got, want):
    # Relative to the features' scale (5.5-8 here), so another CPU's float32 rounding cannot fail it: measured on an
    # Intel Xeon, max|diff| 6.0e-5 to 7.9e-5, i.e. up to 1.4e-5 of the largest feature.
    scale = float(np.abs(w).max())
    assert scale > 1.0  # not a comparison of zeros
    assert np.abs(np.asarray(g, np.float64) - w).max() <= 5e-5 * scale


@pytest.mark.slow
def test_timm_layout_round_trip_bit_exact_and_strict(timm_w18s2, tmp_path):
  tm, _ = timm_w18s2
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  model = hrnet.build('w18_small_v2', exit_type='ee', num_classes=5)
  fresh = numpy_variables(model)
  variables = convert.external_to_variables(sd, fresh, 'timm')
  # the exits and the head are not in a timm backbone: they keep their values
  np.testing.assert_array_equal(
      variables['params']['last_layer']['conv0']['kernel'], fresh['params']['last_layer']['conv0']['kernel']
  )
  back = convert.variables_to_external(variables, 'timm')
  assert set(back) == set(sd)
  for k, v in sd.items():
    if not k.endswith('num_batches_tracked'):
      assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
  tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=True)
  for ext in ('safetensors', 'pth'):
    path = str(tmp_path / f'w.{ext}')
    convert.save_variables(variables, path, 'timm')
    again = convert.load_variables(path, fresh)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(again)):
      assert np.array_equal(a, b)
  # a timm classification checkpoint (head keys) loads its backbone
  cls = timm.create_model('hrnet_w18_small_v2', pretrained=False).state_dict()
  convert.external_to_variables({k: v.numpy() for k, v in cls.items()}, fresh, 'timm')
  bad = dict(sd)
  bad['stage3.1.branches.2.0.conv1.weightx'] = bad.pop('stage3.1.branches.2.0.conv1.weight')
  with pytest.raises(UserError, match=r'stage3\.1\.branches\.2\.0\.conv1\.weightx'):
    convert.external_to_variables(bad, fresh, 'timm')
  bad = dict(sd)
  bad['stage4.1.fuse_layers.0.3.0.weight'] = np.zeros((18, 144, 3, 3), np.float32)
  with pytest.raises(UserError, match=r'^stage4\.1\.fuse_layers\.0\.3\.0\.weight: expected shape \(18, 144, 1, 1\)'):
    convert.external_to_variables(bad, fresh, 'timm')
  bad = dict(sd)
  del bad['layer1.1.bn3.running_var']
  with pytest.raises(UserError, match=r'missing key layer1\.1\.bn3\.running_var'):
    convert.external_to_variables(bad, fresh, 'timm')
  # weights of another width: one line saying so
  w48 = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(hrnet.base('w48')))
  with pytest.raises(UserError, match='checkpoint is HRNet-W18 but the model is HRNet-W48'):
    convert.external_to_variables(sd, w48, 'timm')


@pytest.mark.parametrize('exit_type,tau', [('rh', 0.998), ('ee', None)])
def test_official_layout_round_trip(exit_type, tau, tmp_path):
  model = hrnet.build('w8_tiny', exit_type=exit_type, tau=tau, num_classes=5)
  variables = numpy_variables(model)
  sd = convert.variables_to_external(variables, 'official')
  assert sd['loss.criterion.weight'].shape == (5,)
  if exit_type == 'rh':
    # Sequential indices of downup_pool_1x1_inter_triple / _double / plain, as in the ADP-C code
    assert {k for k in sd if k.startswith('model.exit1.') and k.endswith('.weight')} == {
        f'model.exit1.{i}.weight' for i in (1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21)
    }
    assert {k for k in sd if k.startswith('model.exit3.') and k.endswith('.weight')} == {
        'model.exit3.1.weight',
        'model.exit3.2.weight',
        'model.exit3.5.weight',
    }
    assert sd['model.stage2.0.branches.0.0.conv1.Lambda'].shape == ()
    assert sd['model.stage2.0.branches.0.0.conv1.square_dis'][3, 3] == 1e5
    assert 'model.exit1.1.Lambda' not in sd and 'model.layer1.0.conv1.Lambda' not in sd  # never masked
    assert 'model.last_layer.3.Lambda' in sd and 'model.transition1.0.0.Lambda' in sd
  else:
    assert {k for k in sd if k.startswith('model.exit2.') and k.endswith('.weight')} == {
        'model.exit2.0.weight',
        'model.exit2.1.weight',
        'model.exit2.3.weight',
    }
    assert not any(k.endswith('Lambda') for k in sd)
  zeros = jax.tree_util.tree_map(np.zeros_like, variables)
  for ext in ('pth', 'safetensors'):
    path = str(tmp_path / f'adpc.{ext}')
    convert.save_variables(variables, path, 'official')
    again = convert.load_variables(path, zeros)  # layout detected from the keys
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(again)):
      assert np.array_equal(a, b)
  back = convert.variables_to_external(convert.external_to_variables(sd, zeros, 'official'), 'official')
  assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
  bare = {k[len('model.') :]: v for k, v in sd.items() if k.startswith('model.')}  # test_ee.py strips 'model.'
  convert.external_to_variables(bare, zeros, 'official')
  if exit_type == 'rh':
    bad = dict(sd)
    bad['model.stage3.0.branch.0.0.conv1.Lambda'] = bad.pop('model.stage3.0.branches.0.0.conv1.Lambda')
    with pytest.raises(UserError, match=r'stage3\.0\.branch\.0\.0\.conv1\.Lambda'):
      convert.external_to_variables(bad, zeros, 'official')
    bad = dict(sd)
    bad['model.stage2.0.branches.0.0.conv1.square_dis'] = np.zeros((7, 7), np.float32)
    with pytest.raises(UserError, match='square_dis'):
      convert.external_to_variables(bad, zeros, 'official')


def test_load_pretrained_official_with_and_without_head(tmp_path):
  src = hrnet.build('w8_tiny', exit_type='rh', tau=0.998, num_classes=5)
  variables = numpy_variables(src)
  path = str(tmp_path / 'adpc.pth')
  convert.save_variables(variables, path, 'official')
  fresh = numpy_variables(src, seed=1)
  loaded = convert.load_pretrained(fresh, path)
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded)):
    assert np.array_equal(a, b)
  # another number of classes: backbone loaded, exits / head / lambdas keep the target's values
  other = numpy_variables(hrnet.build('w8_tiny', exit_type='rh', tau=0.998, num_classes=3), seed=2)
  loaded = convert.load_pretrained(other, path, reinit_head=True)
  np.testing.assert_array_equal(
      loaded['params']['stage4_0']['branch3_0']['conv2']['kernel'],
      variables['params']['stage4_0']['branch3_0']['conv2']['kernel'],
  )
  np.testing.assert_array_equal(
      loaded['params']['last_layer']['conv3']['kernel'], other['params']['last_layer']['conv3']['kernel']
  )
  np.testing.assert_array_equal(
      loaded['params']['stage2_0']['branch0_0']['conv1']['rbf_lambda'],
      other['params']['stage2_0']['branch0_0']['conv1']['rbf_lambda'],
  )
  with pytest.raises(UserError, match=r'^exit1\.21\.bias: expected shape \(3,\) but .*adpc\.pth has \(5,\)$'):
    convert.load_pretrained(other, path)


def test_recipe_options_conv_init_and_bn_momentum():
  """conv_init='he' draws N(0, 2 / fan_in) (the default stays the reference's N(0, 0.001)); bn_momentum reaches
  every BN (a train step moves the running mean by (1 - momentum) x the batch mean); w8_nano's small stem."""
  from anytime_jax.confidence import Conv  # pylint: disable=import-outside-toplevel

  x = jnp.ones((1, 8, 8, 32))
  for init, std in (('normal', 0.001), ('he', np.sqrt(2.0 / (9 * 32)))):
    kernel = Conv(256, 3, conv_init=init).init(jax.random.PRNGKey(0), x)['params']['kernel']
    assert float(jnp.std(kernel)) == pytest.approx(std, rel=0.03), init
  block = hrnet.BasicBlock(4, bn_momentum=0.75)
  y = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 4)) + 3.0
  variables = block.init(jax.random.PRNGKey(0), y)
  _, new = block.apply(variables, y, train=True, mutable=['batch_stats'])
  w = variables['params']['conv1']['kernel']
  first = jax.lax.conv_general_dilated(y, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(new['batch_stats']['bn1']['mean'], 0.25 * first.mean((0, 1, 2)), rtol=1e-4, atol=1e-9)
  with pytest.raises(UserError, match='conv_init must be one of'):
    hrnet.build('w8_tiny', conv_init='kaiming')
  with pytest.raises(UserError, match='bn_momentum must be in'):
    hrnet.build('w8_tiny', bn_momentum=1.0)
  nano = abstract_variables(hrnet.build('w8_nano', num_classes=3))['params']
  assert nano['conv1']['kernel'].shape == (3, 3, 3, 16) and nano['layer1_0']['conv3']['kernel'].shape[-1] == 64


def test_rh_max_depth_caps_the_redesigned_exits_down_steps():
  """RH exit k takes min(4 - k, rh_max_depth) down steps (conv names are the PyTorch Sequential's indices: the
  classifier of d steps is conv{8d - 3}); the default 3 is the paper's 3 / 2 / 1; bad values are one line."""

  def classifier_index(params, k):
    return max(int(n[len('conv') :]) for n in params[f'exit{k}'] if n.startswith('conv'))

  paper = abstract_variables(hrnet.build('w8_tiny', num_classes=3))['params']
  assert [classifier_index(paper, k) for k in (1, 2, 3)] == [21, 13, 5]
  for cap, depths in ((2, (2, 2, 1)), (1, (1, 1, 1))):
    capped = abstract_variables(hrnet.build('w8_tiny', num_classes=3, rh_max_depth=cap))['params']
    assert [classifier_index(capped, k) for k in (1, 2, 3)] == [8 * d - 3 for d in depths], cap
    assert capped['exit3'].keys() == paper['exit3'].keys()
  for bad in (0, 4, 2.0, True):
    with pytest.raises(UserError, match=r'^rh_max_depth must be an integer 1\.\.3 .*got ') as e:
      hrnet.build('w8_tiny', rh_max_depth=bad)
    assert '\n' not in str(e.value)


def _count_conds(jaxpr) -> int:
  """The lax.cond equations of a jaxpr, inside sub-jaxprs (pjit, cond branches) too."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == 'cond'
    for sub in jax.core.jaxprs_in_params(eqn.params):
      count += _count_conds(sub)
  return count


def _barrier_models():
  """w8_tiny (last exit only) with and without compute.fusion_barriers, its random variables and a batch of 2."""
  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel

  def build(barriers):
    return hrnet.build(
        'w8_tiny', exits=(4,), num_classes=3, compute=confidence.for_backend(dict(fusion_barriers=barriers))
    )

  with_barriers, without = build(True), build(False)
  variables = hrnet.random_variables(with_barriers, 32, 32)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  return with_barriers, without, variables, x


def test_fusion_barriers_materialize_block_and_fuse_outputs():
  """compute.fusion_barriers (the anytime line's choice on CPU) computes every BasicBlock's and fuse layer's
  ReLU(sum) into its own buffer (a conditional), at evaluation and in training (traced only: the numbers are
  test_fusion_barriers_change_no_numbers'). w8_tiny: 2 + 3 + 4 blocks and as many fuse outputs in stages 2..4."""
  with_barriers, without, variables, x = _barrier_models()
  evaluate = lambda model: jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x).jaxpr
  train = lambda model: jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x
  ).jaxpr
  assert _count_conds(evaluate(with_barriers)) == 18 and _count_conds(evaluate(without)) == 0
  assert _count_conds(train(with_barriers)) == 18 and _count_conds(train(without)) == 0


@pytest.mark.slow  # four compiled w8_tiny programs: 10 s of CPU cold (tests/anytime: the heaviest not-slow test)
def test_fusion_barriers_change_no_numbers():
  """With compute.fusion_barriers: the same logits as without, and gradients and BN statistics to float rounding
  (XLA fuses the backward differently around the barriers)."""
  with_barriers, without, variables, x = _barrier_models()
  run = lambda model: np.asarray(jax.jit(lambda v, x: model.apply(v, x)['logits'][-1])(variables, x))
  np.testing.assert_array_equal(run(with_barriers), run(without))

  def train_step(model):
    def loss(params):
      out, state = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return jnp.mean(out['logits'][-1] ** 2), state

    return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])

  (grads_b, state_b), (grads, state) = train_step(with_barriers), train_step(without)
  leaves = lambda tree: jax.tree_util.tree_leaves(tree)
  for got, want in zip(leaves((grads_b, state_b)), leaves((grads, state)), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
