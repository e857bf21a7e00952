"""Pruned models in and out: safetensors + sidecar, the official repo's {'cfg', 'state_dict'} checkpoints (written
here by torch from the reference PyTorch definitions), bit-exact round trips and one-line errors."""

import argparse
import json
import os

import jax
import numpy as np
import pruning_torch_reference as tr
import pytest
import torch

import pruning_jax
from core_jax.errors import UserError
from pruning_jax import io, models, surgery


def _random_vars(model, hw=16, seed=0):
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(seed), np.zeros((1, hw, hw, 3), np.float32)))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda x: rng.randn(*x.shape).astype(np.float32), v)


def _equal(a, b):
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (p, x), (_, y) in zip(fa, fb):
    assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y)), p


def test_save_and_load_pruned_round_trip(tmp_path):
  model = models.build('preresnet', (16, 16, 16, 64, 32, 32, 128, 64, 64, 256), 7)
  variables = _random_vars(model)
  small, sv = surgery.prune(model, variables, {'layer2_0/select': list(range(0, 64, 3)), 'layer3_0/conv1': [0, 5]})
  path = io.save_pruned(str(tmp_path / 'p.safetensors'), small, sv, extra={'method': 'test'})
  meta = json.load(open(tmp_path / 'p.json'))
  assert meta['family'] == 'preresnet' and meta['num_classes'] == 7 and meta['method'] == 'test'
  loaded, lv = pruning_jax.load_pruned(path)
  assert loaded == small
  _equal(lv, sv)


def test_load_pruned_errors(tmp_path):
  model = models.build('resnet_cifar', (4, 5, 6), 3)
  path = io.save_pruned(str(tmp_path / 'm.safetensors'), model, _random_vars(model))
  side = json.load(open(tmp_path / 'm.json'))
  side['cfg'] = [4, 9, 6]
  json.dump(side, open(tmp_path / 'm.json', 'w'))
  with pytest.raises(
      UserError,
      match=r'params/layer2_0/bn1/bias: the model has shape \(9,\) .* has \(5,\) \(the model built from its sidecar',
  ) as e:
    pruning_jax.load_pruned(path)
  assert '\n' not in str(e.value)
  os.remove(tmp_path / 'm.json')
  with pytest.raises(UserError, match='sidecar'):
    pruning_jax.load_pruned(path)
  (tmp_path / 'bad.safetensors').write_bytes(b'not a safetensors file')
  json.dump({'family': 'resnet_cifar', 'cfg': [4, 5, 6], 'num_classes': 3}, open(tmp_path / 'bad.json', 'w'))
  with pytest.raises(UserError, match='cannot read'):
    pruning_jax.load_pruned(str(tmp_path / 'bad.safetensors'))


TORCH_CASES = {
    'vgg_l1': (
        lambda: tr.VGG([8, 'M', 6, 'M', 16, 'M', 24, 'M', 32], 10, 'l1'),
        [8, 'M', 6, 'M', 16, 'M', 24, 'M', 32],
    ),
    'vgg_slimming': (
        lambda: tr.VGG([5, 'M', 6, 'M', 7, 'M', 8, 'M', 9], 10, 'slimming'),
        [5, 'M', 6, 'M', 7, 'M', 8, 'M', 9],
    ),
    'resnet_cifar': (lambda: tr.CifarResNet([3, 16, 9, 32, 50, 64], 100), [3, 16, 9, 32, 50, 64]),
    'preresnet': (lambda: tr.PreResNet([16, 16, 16, 40, 32, 32, 128, 20, 64, 200], 10), None),
    'densenet': (lambda: tr.DenseNet([20, 36, 30, 48, 40, 50], 10), None),
}


def _official_checkpoint(family, path):
  make, cfg = TORCH_CASES[family]
  torch.manual_seed(0)
  tm = make()
  sd = tm.state_dict()
  for k, v in sd.items():  # random values everywhere, so nothing round-trips by accident
    if v.dtype.is_floating_point:
      sd[k] = torch.randn_like(v)
  if family in ('preresnet', 'densenet'):  # selection vectors as the prune scripts leave them
    g = torch.Generator().manual_seed(1)
    for k in [k for k in sd if k.endswith('select.indexes')]:
      width = {
          'layer2.0.select.indexes': 40,
          'select.indexes': 200 if family == 'preresnet' else 50,
          'dense1.0.select.indexes': 20,
          'dense2.0.select.indexes': 30,
          'dense3.0.select.indexes': 40,
      }.get(k, sd[k].numel())
      vec = torch.zeros(sd[k].numel())
      vec[torch.randperm(sd[k].numel(), generator=g)[:width]] = 1
      sd[k] = vec
  torch.save({'cfg': cfg, 'state_dict': sd} if cfg is not None else {'state_dict': sd, 'epoch': 3}, path)
  return sd


@pytest.mark.parametrize('family', sorted(TORCH_CASES))
def test_official_checkpoint_import_and_bit_exact_round_trip(family, tmp_path):
  path = str(tmp_path / 'pruned.pth.tar')
  sd = _official_checkpoint(family, path)
  model, variables = io.import_torch_checkpoint(path)
  assert models.family_of(model) == family
  back = io.to_torch_state_dict(model, variables)
  expected = {k: v.numpy() for k, v in sd.items() if not k.endswith('num_batches_tracked')}
  assert sorted(back) == sorted(expected)
  for k in expected:
    assert back[k].dtype == expected[k].dtype and np.array_equal(back[k], expected[k]), k
  io.save_torch_checkpoint(str(tmp_path / 'again.pth.tar'), model, variables)
  model2, variables2 = io.import_torch_checkpoint(str(tmp_path / 'again.pth.tar'))
  assert model2 == model
  _equal(variables2, variables)


def test_official_checkpoint_errors(tmp_path):
  path = str(tmp_path / 'p.pth.tar')
  sd = _official_checkpoint('resnet_cifar', path)
  torch.save({'cfg': [3, 16, 9, 32, 50, 63], 'state_dict': sd}, path)
  with pytest.raises(UserError, match='does not match its tensors'):
    io.import_torch_checkpoint(path)
  sd2 = dict(sd)
  sd2['layer1.0.bn1.weight'] = torch.zeros(4)
  torch.save({'state_dict': sd2}, path)
  with pytest.raises(UserError, match=r'layer1\.0\.bn1\.weight: expected shape \(3,\) but .* has \(4,\)') as e:
    io.import_torch_checkpoint(path)
  assert '\n' not in str(e.value)
  sd3 = dict(sd, extra_thing=torch.zeros(2))
  torch.save({'state_dict': sd3}, path)
  with pytest.raises(UserError, match='unexpected key extra_thing'):
    io.import_torch_checkpoint(path)
  torch.save({'state_dict': sd, 'args': argparse.Namespace(lr=0.1)}, path)  # needs pickled code: refused
  with pytest.raises(UserError, match='weights_only'):
    io.import_torch_checkpoint(path)
  with pytest.raises(UserError, match='not found'):
    io.import_torch_checkpoint(str(tmp_path / 'nope.pth'))


def test_torchvision_resnet34_layout(tmp_path):
  """The ImageNet ResNet-34 family reads torchvision's own state_dict (the L1 ImageNet baseline) bit for bit."""
  import torchvision  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  tv = torchvision.models.resnet34()
  path = str(tmp_path / 'r34.pth')
  torch.save(tv.state_dict(), path)
  model, variables = io.import_torch_checkpoint(path)
  assert models.family_of(model) == 'resnet34' and models.cfg_of(model) == models.NAMED['resnet34'].cfg
  back = io.to_torch_state_dict(model, variables)
  expected = {k: v.numpy() for k, v in tv.state_dict().items() if not k.endswith('num_batches_tracked')}
  assert sorted(back) == sorted(expected) and all(np.array_equal(back[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_torchvision_resnet34_logits(highest_precision):
  import torchvision  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  tv = torchvision.models.resnet34().eval()
  model, variables = io.from_torch_state_dict(tv.state_dict())
  x = np.random.RandomState(0).randn(1, 64, 64, 3).astype(np.float32)
  with torch.no_grad():
    ref = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = jax.jit(lambda v: model.apply(v, x, train=False)[0])(variables)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.slow
def test_torchvision_vgg16_layout(tmp_path):
  """ImageNet VGG-16 (ThiNet / regression baseline) reads torchvision's vgg16 state_dict; cfg recovered with pools."""
  import torchvision  # pylint: disable=import-outside-toplevel

  sd = torchvision.models.vgg16().state_dict()
  model, variables = io.from_torch_state_dict(sd)
  assert models.family_of(model) == 'vgg_imagenet' and models.cfg_of(model) == models.NAMED['vgg16_imagenet'].cfg
  back = io.to_torch_state_dict(model, variables)
  assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
