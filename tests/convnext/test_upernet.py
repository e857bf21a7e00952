"""ConvNeXt + UperNet (convnext_jax.upernet): PyTorch's pooling and resizing, the model's structure, the paper's
params and GFLOPs (checked against mmcv's counting rules on the PyTorch reference, run on meta tensors).

Run: .venv/bin/python -m pytest tests/convnext/test_upernet.py -q
"""

import functools
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

import torch_upernet  # noqa: E402

from convnext_jax import models, upernet, zoo  # noqa: E402
from convnext_jax import report as convnext_report  # noqa: E402
from core_jax import weights  # noqa: E402
from core_jax.compute import Compute  # noqa: E402

# Our counts (params with / without the auxiliary head, conv + matmul MACs at the paper's input), each equal to
# the PyTorch reference's (test_counts_match_the_reference_and_the_paper) and, with mmcv's extra terms, rounding
# to the paper's Table 4: T 60M / 939G, S 82M / 1027G, B 122M / 1170G (2048x512), L 235M / 2458G, XL 391M / 3335G
# (2560x640).
EXPECTED = {
    'upernet_convnext_tiny': (60_242_636, 59_318_838, 938_485_481_472),
    'upernet_convnext_small': (81_877_196, 80_953_398, 1_026_845_835_264),
    'upernet_convnext_base': (122_102_956, 120_884_246, 1_169_344_692_224),
    'upernet_convnext_large': (234_994_796, 233_186_262, 2_457_356_697_600),
    'upernet_convnext_xlarge': (391_140_396, 388_742_038, 3_334_252_134_400),
}


def test_adaptive_bins_overlap_as_pytorch():
  assert upernet.adaptive_bins(16, 3) == [(0, 6), (5, 11), (10, 16)]
  assert upernet.adaptive_bins(16, 6) == [(0, 3), (2, 6), (5, 8), (8, 11), (10, 14), (13, 16)]
  assert upernet.adaptive_bins(20, 2) == [(0, 10), (10, 20)]


@pytest.mark.parametrize('h, w, bins', [(16, 16, 3), (20, 13, 6), (1, 2, 6), (7, 9, 2)])
def test_adaptive_avg_pool_matches_pytorch(h, w, bins):
  x = np.random.default_rng(0).normal(size=(2, h, w, 5)).astype(np.float32)
  want = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), bins).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(upernet.adaptive_avg_pool(jnp.asarray(x), bins)), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize('size', [(16, 24), (5, 3), (4, 4)])
def test_resize_bilinear_matches_pytorch_up_and_down(size):
  x = np.random.default_rng(1).normal(size=(1, 8, 12, 3)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode='bilinear', align_corners=False)
  got = upernet.resize_bilinear(jnp.asarray(x), *size)
  np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-5)


def test_structure_strides_and_param_names():
  model = models.create_model('upernet_convnext_tiny', depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), channels=16)
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  (logits, aux), _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats']),
      variables,
      x,
  )
  assert logits.shape == (2, 16, 24, 150) and logits.dtype == jnp.float32
  assert aux['aux_logits'].shape == (2, 4, 6, 150)
  assert [aux[f'stage_{i}'].shape for i in range(4)] == [(2, 16, 24, 8), (2, 8, 12, 16), (2, 4, 6, 24), (2, 2, 3, 32)]
  params = weights.flatten(variables['params'])
  assert params['backbone/norm3/scale'].shape == (32,)
  assert 'backbone/head/kernel' not in params and 'backbone/head_norm/scale' not in params
  assert params['decode_head/psp_modules_3/conv/kernel'].shape == (1, 1, 32, 16)
  assert params['decode_head/bottleneck/conv/kernel'].shape == (3, 3, 32 + 4 * 16, 16)
  assert params['decode_head/fpn_bottleneck/conv/kernel'].shape == (3, 3, 4 * 16, 16)
  assert params['auxiliary_head/convs_0/conv/kernel'].shape == (3, 3, 24, 256)
  assert 'decode_head/lateral_convs_2/conv/bias' not in params  # ConvModule: no conv bias before its BN
  assert set(weights.flatten(variables['batch_stats'])) == {
      k.replace('/scale', '/mean') for k in params if '/bn/scale' in k
  } | {k.replace('/scale', '/var') for k in params if '/bn/scale' in k}
  # Inference does not run the auxiliary head (as mmseg's encode_decode).
  logits, aux = jax.eval_shape(model.apply, variables, x)
  assert 'aux_logits' not in aux
  no_aux = model.clone(aux_head=False)
  assert set(jax.eval_shape(no_aux.init, jax.random.PRNGKey(0), x)['params']) == {'backbone', 'decode_head'}


def test_registry_sizes_and_recipe_fields():
  assert models.list_models('upernet_*') == sorted(upernet.UPERNET_MODELS)
  assert [models.model_config(n)['drop_path_rate'] for n in upernet.UPERNET_MODELS] == [0.4, 0.3, 0.4, 0.4, 0.4]
  m = models.create_model('upernet_convnext_base', compute={'dwconv': 'shifted'})
  assert m.layer_scale_init_value == 1.0 and m.dims == (128, 256, 512, 1024) and m.compute.dwconv == 'shifted'


def _reference_counts(name):
  cfg = upernet.SIZES[name.rsplit('_', 1)[1]]
  with torch.device('meta'):
    ref = torch_upernet.EncoderDecoder(cfg['depths'], cfg['dims'], 150).eval()
  h, w = upernet.PAPER[name]['input']
  flops = torch_upernet.mmcv_flops(
      ref, torch.empty(1, 3, h, w, device='meta'), lambda m, x: m.decode_head(m.backbone(x))
  )
  return flops, sum(p.numel() for p in ref.parameters())


def _check_counts(name):
  h, w = upernet.PAPER[name]['input']
  ours = upernet.count(name, h, w)
  assert (ours['params'], ours['params_no_aux'], ours['macs']) == EXPECTED[name]
  flops, ref_params = _reference_counts(name)
  assert ours['macs'] == flops['macs'] and ours['params'] == ref_params
  paper = upernet.PAPER[name]
  assert round(ours['params'] / 1e6) == paper['params_m']
  # mmcv's G: our MACs plus biases, ReLUs and pooling (its table has no SyncBN; counting BN too rounds the same)
  assert round(flops['mmcv'] / 1e9) == paper['gflops'] == round((flops['mmcv'] + flops['bn']) / 1e9)
  assert abs(ours['macs'] / 1e9 - paper['gflops']) < 1.0


def test_counts_match_the_reference_and_the_paper_tiny():
  _check_counts('upernet_convnext_tiny')


@pytest.mark.slow  # ~20 s: four abstract traces of 27-block models and their PyTorch references on meta tensors
@pytest.mark.parametrize('name', [n for n in upernet.UPERNET_MODELS if n != 'upernet_convnext_tiny'])
def test_counts_match_the_reference_and_the_paper(name):
  _check_counts(name)


def test_zoo_lists_upernet_rows(monkeypatch):
  calls = []

  def fake_count(name, h, w):
    calls.append((name, h, w))
    p, pn, m = EXPECTED[name]
    return dict(params=p, params_no_aux=pn, macs=m * (h * w) // (2048 * 512))

  monkeypatch.setattr(upernet, 'count', fake_count)
  rows = zoo.upernet_table(['upernet_convnext_tiny'])
  assert calls == [('upernet_convnext_tiny', 2048, 512), ('upernet_convnext_tiny', 2560, 640)]
  md = convnext_report.format_upernet_markdown(rows)
  assert '| upernet_convnext_tiny | 60,242,636 | 59,318,838 | 938.49 |' in md and '60M, 939G @2048x512' in md


# --------------------------------------------------------------------------------------------------------------
# Weights: the mmseg layout in and out, parity with the PyTorch reference
# --------------------------------------------------------------------------------------------------------------
SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), channels=16, aux_channels=8, num_classes=5)


def _small_model(**overrides):
  return models.create_model('upernet_convnext_tiny', **{**SMALL, **overrides})


def _abstract_variables(model, size=(128, 96)):
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


@pytest.fixture(scope='module')
def reference():
  """(the PyTorch UperNet with random weights and BN statistics, its state dict as numpy)."""
  torch.manual_seed(0)
  ref = torch_upernet.EncoderDecoder(
      SMALL['depths'], SMALL['dims'], SMALL['num_classes'], SMALL['channels'], SMALL['aux_channels']
  )
  torch_upernet.randomize_(ref)
  return ref, {k: v.numpy().copy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope='module')
def loaded(reference):
  from convnext_jax import upernet_convert  # pylint: disable=import-outside-toplevel

  return upernet_convert.mmseg_to_variables(reference[1], _abstract_variables(_small_model()))


def test_logits_match_the_pytorch_reference(reference, loaded):
  ref, _ = reference
  # 128x96: C4 is 4x3, so the 3- and 6-bin pools overlap and repeat pixels
  x = np.random.default_rng(2).normal(size=(2, 128, 96, 3)).astype(np.float32)
  with torch.no_grad():
    want, want_aux = ref(torch.from_numpy(x).permute(0, 3, 1, 2))
  with jax.default_matmul_precision('highest'):
    got, aux = jax.jit(functools.partial(_small_model().apply, with_aux=True))(loaded, jnp.asarray(x))
  for a, b in ((got, want), (aux['aux_logits'], want_aux)):
    b = b.permute(0, 2, 3, 1).numpy()
    assert a.shape == b.shape
    assert np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)) < 1e-4


def test_mmseg_round_trip_is_bit_exact(reference, loaded, tmp_path):
  from convnext_jax import upernet_convert  # pylint: disable=import-outside-toplevel

  _, sd = reference
  out = upernet_convert.variables_to_mmseg(loaded)
  assert set(out) == set(sd)
  for k, v in sd.items():
    if k.endswith('num_batches_tracked'):
      assert out[k] == 0 and out[k].dtype == np.int64  # not model state (mmseg's BN has momentum 0.1)
    else:
      assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k
  path = str(tmp_path / 'upernet.pth')
  upernet_convert.save_mmseg(loaded, path)
  again = upernet_convert.load_pretrained(_abstract_variables(_small_model()), path)
  for k, v in weights.flatten(again).items():
    assert np.array_equal(v, weights.flatten(loaded)[k]), k


def _mmseg_shapes(size):
  cfg = upernet.SIZES[size]
  with torch.device('meta'):
    ref = torch_upernet.EncoderDecoder(cfg['depths'], cfg['dims'], 150)
  return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_bad_checkpoints_are_one_line_errors(reference):
  from convnext_jax import upernet_convert  # pylint: disable=import-outside-toplevel
  from core_jax.errors import UserError  # pylint: disable=import-outside-toplevel

  _, sd = reference
  with pytest.raises(UserError, match=r'^decode_head\.conv_seg\.bias: checkpoint has 5 classes but the model has 7'):
    upernet_convert.mmseg_to_variables(sd, _abstract_variables(_small_model(num_classes=7)))
  with pytest.raises(UserError, match=r'^checkpoint is a ConvNeXt depths=\(1, 1, 2, 1\) dims=\(8, 16, 24, 32\) '):
    upernet_convert.mmseg_to_variables(sd, _abstract_variables(_small_model(dims=(8, 16, 24, 40))))
  # the paper's sizes by name (shapes only: the T and S state dicts of the reference built on meta tensors)
  tiny, small = _mmseg_shapes('tiny'), _mmseg_shapes('small')
  table = upernet_convert.rule_table()
  small_flax = {table.to_flax_key(k)[0]: v for k, v in small.items() if not k.endswith('num_batches_tracked')}
  with pytest.raises(UserError, match=r'^ckpt is a ConvNeXt-T backbone but the model is a ConvNeXt-S$'):
    upernet_convert._check_arch(tiny, small_flax, 'ckpt')  # pylint: disable=protected-access
  fresh = _abstract_variables(_small_model(num_classes=7))
  fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  got = upernet_convert.mmseg_to_variables(sd, fresh, reinit_head=True)
  assert np.array_equal(got['params']['decode_head']['conv_seg']['bias'], np.zeros(7, np.float32))
  assert np.array_equal(got['params']['backbone']['norm0']['scale'], sd['backbone.norm0.weight'])


def test_imagenet_weights_initialize_the_backbone(loaded):
  from convnext_jax import upernet_convert  # pylint: disable=import-outside-toplevel
  from core_jax.errors import UserError  # pylint: disable=import-outside-toplevel

  classifier = models.create_model(
      'convnext_tiny', depths=SMALL['depths'], dims=SMALL['dims'], num_classes=3, compute=Compute()
  )
  shapes = jax.eval_shape(classifier.init, jax.random.PRNGKey(3), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  rng = np.random.default_rng(3)  # random values in the classifier's shapes (no init compile needed)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes['params'])
  from convnext_jax import convert  # pylint: disable=import-outside-toplevel

  sd = weights.export_tensors(weights.flatten(params), convert.rule_table('official'))  # official .pth layout
  got = upernet_convert.imagenet_to_variables(sd, loaded, source='in1k.pth')
  flat, before = weights.flatten(got['params']), weights.flatten(loaded['params'])
  for k, v in weights.flatten(params).items():
    if not k.startswith('head'):
      assert np.array_equal(flat[f'backbone/{k}'], v), k
  for k in ('backbone/norm2/scale', 'decode_head/conv_seg/kernel', 'auxiliary_head/convs_0/conv/kernel'):
    assert np.array_equal(flat[k], before[k])  # what the classifier does not have keeps its values
  assert got['batch_stats'] is not None and 'backbone/head/kernel' not in flat
  del sd['stages.2.1.dwconv.bias']
  sd = {k: v for k, v in sd.items() if not k.startswith('stages.2.1.')}
  with pytest.raises(UserError, match=r"^in1k.pth is a ConvNeXt depths=\(1, 1, 1, 1\) .* but the model's backbone"):
    upernet_convert.imagenet_to_variables(sd, loaded, source='in1k.pth')


def test_a_classifier_workdir_initializes_the_backbone(loaded, tmp_path):
  """`init_from` = a ConvNeXt classifier's training workdir (as the digit_scenes demo uses the digits demo's):
  its latest step's params go into the backbone, its head does not, the UperNet heads keep their values."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from convnext_jax import upernet_task  # pylint: disable=import-outside-toplevel
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  classifier = models.create_model(
      'convnext_tiny', depths=SMALL['depths'], dims=SMALL['dims'], num_classes=3, compute=Compute()
  )
  shapes = jax.eval_shape(classifier.init, jax.random.PRNGKey(3), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  rng = np.random.default_rng(4)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes['params'])
  saver = ocp.StandardCheckpointer()
  saver.save(str(tmp_path / 'checkpoints' / '5' / 'state'), {'params': params, 'step': 5})
  saver.wait_until_finished()
  config = cli.load_config_file(
      os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'convnext', 'upernet_digit_scenes.py')
  )
  task = upernet_task.UperNetSegTask(config, types.SimpleNamespace(num_classes=11))
  got = task.load_pretrained(jax.tree_util.tree_map(np.asarray, loaded), str(tmp_path), False)  # the loop's call
  flat, before = weights.flatten(got['params']), weights.flatten(loaded['params'])
  for k, v in weights.flatten(params).items():
    if not k.startswith('head'):
      assert np.array_equal(flat[f'backbone/{k}'], v), k
  for k in ('backbone/norm3/scale', 'decode_head/conv_seg/kernel', 'auxiliary_head/conv_seg/bias'):
    assert np.array_equal(flat[k], before[k])
