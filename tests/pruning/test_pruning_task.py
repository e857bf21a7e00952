"""PruningTask's hooks without the loop: the model from config.model, the slimming `pre` and mask `post` transforms,
load_pretrained from each weights kind (and its one-line errors), the counts in extra_results."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from pruning_helpers import recipes

from core_jax.data.sources import DatasetInfo
from core_jax.errors import UserError
from core_jax.train import TrainState
from pruning_jax import io, models, surgery, zoo
from pruning_jax.task import PruningTask, load_mask, save_mask

INFO = DatasetInfo(name='cifar10', num_classes=10, splits={'train': 128, 'test': 64}, features=('image', 'label'))
VGG_CFG = (8, 'M', 8, 'M', 16, 'M', 16, 'M', 16)


def _task(name='vgg_slimming', cfg=VGG_CFG, **overrides):
  c = recipes.experiment_config()
  c.model.update(dict(name=name, cfg=cfg))
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  task = PruningTask(c, INFO)
  task.init_inputs({'image': np.zeros((2, 32, 32, 3), np.float32)})
  return task


def _variables(model, seed=0):
  v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)  # non-trivial BN stats, so a load that skipped them would show
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) + rng.normal(0, 0.1, np.shape(x)).astype(np.float32), {k: dict(v[k]) for k in v}
  )


def _equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb, strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y)), p


def test_build_model_named_family_and_errors():
  assert models.cfg_of(_task('resnet56', None).build_model()) == models.NAMED['resnet56'].cfg
  model = _task().build_model()
  assert models.describe(model)['cfg'] == list(VGG_CFG) and model.num_classes == 10
  with pytest.raises(UserError, match="unknown model 'resnet57'") as e:
    _task('resnet57', None).build_model()
  assert '\n' not in str(e.value)


@pytest.mark.slow  # compiles a train step: ~14 s on 2 cores
def test_sparsity_pre_transform_adds_s_sign_gamma_to_bn_scales_only():
  task = _task(**{'sparsity.s': 1e-2})
  pre, post = task.optimizer_transforms()
  assert len(pre) == 1 and post == []
  params = _variables(task.build_model())['params']
  params['bn1']['scale'][:3] *= -1  # both signs
  grads = jax.tree_util.tree_map(np.zeros_like, params)
  state = pre[0].init(params)
  updates, _ = pre[0].update(grads, state, params)
  np.testing.assert_allclose(updates['bn1']['scale'], 1e-2 * np.sign(params['bn1']['scale']))
  assert not np.any(updates['bn1']['bias']) and not np.any(updates['conv1']['kernel'])
  assert _task().optimizer_transforms() == ([], [])
  with pytest.raises(UserError, match='sparsity.s'):
    _task(**{'sparsity.s': -1.0}).optimizer_transforms()


@pytest.mark.slow  # 6-16 s on 2 cores: out of make test-fast (5-minute budget), still in make test
def test_mask_post_transform_keeps_masked_weights_exactly_zero(tmp_path):
  model = _task().build_model()
  params = _variables(model)['params']
  mask = surgery.channel_mask(model, {'params': params}, {next(iter(surgery.channel_sets(model))).name: [0, 2, 5]})
  path = str(tmp_path / 'mask.safetensors')
  save_mask(path, mask)
  loaded = load_mask(path, params)
  assert jax.tree_util.tree_structure(loaded, is_leaf=lambda x: x is None) == jax.tree_util.tree_structure(
      mask, is_leaf=lambda x: x is None
  )
  task = _task(**{'mask.path': path})
  pre, post = task.optimizer_transforms()
  assert pre == [] and len(post) == 1
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9), *post)
  p = surgery.apply_mask(params, mask)
  state = tx.init(p)
  for i in range(3):
    grads = jax.tree_util.tree_map(lambda x, i=i: np.full(np.shape(x), 0.5 + i, np.float32), p)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
  flat_p, flat_m = jax.tree_util.tree_leaves_with_path(p), jax.tree_util.tree_leaves_with_path(
      mask, is_leaf=lambda x: x is None
  )
  masked = 0
  for (path_, x), (_, m) in zip(flat_p, flat_m, strict=True):
    if m is not None:
      assert np.all(np.asarray(x)[m == 0] == 0), path_
      masked += int(np.sum(m == 0))
  assert masked > 0
  with pytest.raises(UserError, match='cannot read the mask'):
    load_mask(str(tmp_path / 'none.safetensors'), params)


def test_load_pretrained_from_export_step_dir_and_mismatches(tmp_path):
  task = _task()
  model = task.build_model()
  fresh = _variables(model, seed=1)
  trained = _variables(model, seed=2)
  export = io.save_pruned(str(tmp_path / 'm.safetensors'), model, trained)
  _equal(task.load_pretrained(fresh, export, False), trained)

  step_dir = str(tmp_path / 'run' / 'checkpoints' / '7')
  saver = ocp.StandardCheckpointer()
  saver.save(
      os.path.join(step_dir, 'state'),
      {'params': trained['params'], 'batch_stats': trained['batch_stats'], 'step': np.int32(7)},
  )
  saver.wait_until_finished()
  _equal(task.load_pretrained(fresh, step_dir, False), trained)

  head = task.load_pretrained(fresh, export, True)  # the classifier stays freshly initialized
  _equal(head['params']['fc'], fresh['params']['fc'])
  _equal(head['params']['conv1'], trained['params']['conv1'])

  other = models.build('vgg_slimming', (8, 'M', 8, 'M', 16, 'M', 16, 'M', 12), 10)
  wrong = io.save_pruned(str(tmp_path / 'w.safetensors'), other, _variables(other))
  with pytest.raises(UserError, match=r'holds vgg_slimming cfg .*12\], but config.model builds') as e:
    task.load_pretrained(fresh, wrong, False)
  assert '\n' not in str(e.value)
  wrong_dir = str(tmp_path / 'other' / 'checkpoints' / '3')
  saver.save(os.path.join(wrong_dir, 'state'), {'params': _variables(other)['params'], 'step': np.int32(3)})
  saver.wait_until_finished()
  with pytest.raises(
      UserError,
      match=r'params/bn4/bias: the model has shape \(16,\) but ' r'.* has \(12,\): the cfg does not match',
  ) as e:
    task.load_pretrained(fresh, wrong_dir, False)
  assert '\n' not in str(e.value)
  with pytest.raises(UserError, match='weights not found'):
    task.load_pretrained(fresh, str(tmp_path / 'missing.bin'), False)


@pytest.mark.slow  # counts MACs of a full-size model: ~12 s on 2 cores
def test_extra_results_counts_params_nonzero_and_macs():
  task = _task('resnet_cifar', (8, 16, 32))
  model = task.build_model()
  params = dict(_variables(model)['params'])
  params['conv1'] = dict(params['conv1'], kernel=np.zeros_like(params['conv1']['kernel']))
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats={},
      opt_state=(),
      ema_params=None,
      rng=jax.random.PRNGKey(0),
  )
  extra = task.extra_results(state)
  want_params, want_macs = zoo.params_and_macs(models.build('resnet_cifar', (8, 16, 32), 10), 'cifar')
  assert extra['params'] == want_params and extra['macs'] == want_macs
  assert extra['nonzero_params'] == want_params - params['conv1']['kernel'].size
  assert want_macs > 1e6 and extra['model']['cfg'] == [8, 16, 32] and extra['input_shape'] == [1, 32, 32, 3]
