"""AnytimeSegTask: the loss against PyTorch, per-exit metrics, FLOPs/fractions under CA, weights, bad configs."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from anytime_jax import hrnet
from anytime_jax import task as task_lib
from core_jax import cli, counting, train
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Info:
  num_classes = 11


def digit_config(**model):
  c = cli.load_config_file(os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py'))
  c.model.update(model)
  return c


@pytest.fixture(scope='module')
def tiny_ca():
  """A CA task, its model and host variables drawn as the model's init (without compiling init)."""
  task = task_lib.AnytimeSegTask(digit_config(confidence_adaptive=True, tau=0.5), Info())
  model = task.build_model()
  x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 64, 3).astype(np.float32))
  return task, model, hrnet.random_variables(model, 32, 64), x


def test_weighted_cross_entropy_equals_torch():
  torch = pytest.importorskip('torch')
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 4, 8, 5).astype(np.float32) * 3
  labels = rng.randint(0, 5, (2, 16, 32)).astype(np.int32)
  labels[0, :5] = 255
  weights = (0.5, 1.0, 2.0, 0.8, 1.3)
  got = float(task_lib.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), weights))
  t = torch.nn.functional.interpolate(
      torch.from_numpy(logits).permute(0, 3, 1, 2), size=(16, 32), mode='bilinear', align_corners=False
  )
  want = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=255)(t, torch.from_numpy(labels).long())
  np.testing.assert_allclose(got, float(want), rtol=1e-5)
  unweighted = torch.nn.CrossEntropyLoss(ignore_index=255)(t, torch.from_numpy(labels).long())
  np.testing.assert_allclose(
      float(task_lib.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))), float(unweighted), rtol=1e-5
  )


@pytest.mark.slow  # compiles the 4-exit HRNet's loss and gradient: ~30 s on 2 cores
def test_train_loss_sums_exits_with_weights(tiny_ca):
  task, model, variables, x = tiny_ca
  labels = jnp.asarray(np.random.RandomState(1).randint(0, 11, (4, 32, 64)).astype(np.uint8))
  batch = {'image': x, 'segmentation': labels}
  loss, (m, new_vars) = task.train_loss(model, variables, batch, None)
  assert set(m) == {'loss', 'accuracy', 'exit1_loss', 'exit2_loss', 'exit3_loss', 'exit4_loss'}
  np.testing.assert_allclose(float(loss), sum(float(m[f'exit{k}_loss']) for k in (1, 2, 3, 4)), rtol=1e-6)
  assert 'batch_stats' in new_vars
  task.exit_weights = (0.0, 0.0, 0.0, 2.0)
  loss2, (m2, _) = task.train_loss(model, variables, batch, None)
  np.testing.assert_allclose(float(loss2), 2 * float(m2['exit4_loss']), rtol=1e-6)
  task.exit_weights = (1.0,) * 4


def _eval(task, model, variables, x, labels, mask):
  outputs = task.eval_outputs(model, variables, {'image': x, 'segmentation': labels, 'mask': mask})
  return outputs, task.eval_metrics.single_from_model_output(**outputs)


@pytest.mark.slow  # compiles the CA HRNet's eval at several thresholds: ~32 s on 2 cores
def test_eval_metrics_per_exit_and_mean(tiny_ca):
  task, model, variables, x = tiny_ca
  labels = jnp.asarray(np.random.RandomState(2).randint(0, 11, (4, 32, 64)).astype(np.uint8))
  mask = jnp.asarray([True, True, True, False])
  outputs, coll = _eval(task, model, variables, x, labels, mask)
  from core_jax import metrics  # pylint: disable=import-outside-toplevel

  values = metrics.to_floats(coll)
  for k in (1, 2, 3, 4):
    for key in ('miou', 'pixel_accuracy', 'fraction', 'gflops', 'iou/0'):
      assert f'exit{k}/{key}' in values
    # the fraction and GFLOPs averages leave out the padded example
    want = np.asarray(outputs[f'fraction_exit{k}'])[:3].mean()
    np.testing.assert_allclose(values[f'exit{k}/fraction'], want, rtol=1e-6)
  for key in ('miou', 'gflops', 'fraction'):
    np.testing.assert_allclose(values[f'mean/{key}'], np.mean([values[f'exit{k}/{key}'] for k in (1, 2, 3, 4)]))
  assert task.primary_metric == 'exit4/miou' and 'exit4/miou' in values
  # merging two batches sums the confusion matrices: the same as one batch of both
  part = lambda sl: {k: v[sl] for k, v in outputs.items()}  # noqa: E731
  merged = metrics.to_floats(
      task.eval_metrics.single_from_model_output(**part(slice(0, 2))).merge(
          task.eval_metrics.single_from_model_output(**part(slice(2, 4)))
      )
  )
  for k in (1, 4):
    assert merged[f'exit{k}/miou'] == pytest.approx(values[f'exit{k}/miou'], abs=1e-12)
    assert merged[f'exit{k}/gflops'] == pytest.approx(values[f'exit{k}/gflops'], rel=1e-6)
  # the confusion matrix against numpy on the unpadded examples
  pred = np.asarray(outputs['predictions_exit4'])[:3].reshape(-1)
  lab = np.asarray(labels)[:3].reshape(-1)
  cm = np.zeros((11, 11), np.int64)
  np.add.at(cm, (lab, pred), 1)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  assert values['exit4/miou'] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]))


@pytest.mark.slow  # the HRNet's eval at two thresholds and a swept one, op by op: ~40 s on 2 cores
def test_gflops_dense_when_everything_computed_and_exit1_only_when_nothing():
  """tau = 1: every pixel computed, so the CA cost is the dense cost; tau tiny: every pixel exits at exit 1, so
  the masked convs cost nothing and exits 2-4 cost exit 1's GFLOPs; exited logits never change."""
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 64, 3).astype(np.float32))
  labels = jnp.zeros((2, 32, 64), jnp.uint8)
  mask = jnp.ones((2,), bool)
  dense_task = task_lib.AnytimeSegTask(digit_config(confidence_adaptive=False), Info())
  dense_model = dense_task.build_model()
  marks = counting.count_macs_by_mark(dense_model, jax.ShapeDtypeStruct((1, 32, 64, 3), jnp.float32), train=False)
  batch = {'image': x, 'segmentation': labels, 'mask': mask}
  by_tau = {}
  for tau, expect in ((1.0, 'dense'), (1e-6, 'exit1')):
    task = task_lib.AnytimeSegTask(digit_config(confidence_adaptive=True, tau=tau), Info())
    assert task.eval_constants() == {'tau': np.float32(tau)}
    model = task.build_model()
    variables = hrnet.random_variables(model, 32, 64)
    outputs = by_tau[tau] = task.eval_outputs(model, variables, batch)
    for k in (1, 2, 3, 4):
      gf = np.asarray(outputs[f'gflops_exit{k}'])
      want = marks[f'exit{k}'] if expect == 'dense' or k == 1 else marks['exit1']
      np.testing.assert_allclose(gf, want / task_lib.GIGA, rtol=1e-6)
      frac = np.asarray(outputs[f'fraction_exit{k}'])
      np.testing.assert_array_equal(frac, 1.0 if expect == 'dense' or k == 1 else 0.0)
    if expect == 'exit1':
      for k in (2, 3, 4):
        np.testing.assert_array_equal(outputs[f'predictions_exit{k}'], outputs['predictions_exit1'])
  # the threshold as the eval step's argument (variables['constants'], Task.eval_constants): the tau-1e-6 model
  # given tau 1 computes what the tau-1 model computes, and the eval step lowers to one program for both taus
  swept = task.eval_outputs(model, {**variables, 'constants': {'tau': np.float32(1.0)}}, batch)
  assert set(swept) == set(by_tau[1.0])
  for key, value in swept.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(by_tau[1.0][key]), err_msg=key)
  step = jax.jit(functools.partial(train.eval_step, task, model))
  texts = [
      step.lower(variables['params'], variables['batch_stats'], batch, {'tau': jnp.float32(t)}).as_text()
      for t in (1.0, 0.5)
  ]
  assert texts[0] == texts[1]


def test_dense_marks_match_the_model_without_ca():
  task = task_lib.AnytimeSegTask(digit_config(confidence_adaptive=False), Info())
  marks = task.dense_marks(64, 128)
  assert list(k for k in marks if k.startswith('exit')) == ['exit1', 'exit2', 'exit3', 'exit4']
  assert marks['exit1'] < marks['exit2'] < marks['exit3'] < marks['exit4'] == marks['total']


def test_fit_variables_lambda_head_and_errors(tiny_ca):
  _, _, variables, _ = tiny_ca
  fresh = jax.tree.map(np.asarray, {'params': variables['params'], 'batch_stats': variables['batch_stats']})
  loaded = jax.tree.map(lambda v: v + 1.0, fresh)
  out = task_lib.fit_variables(fresh, loaded, 'ckpt')
  np.testing.assert_array_equal(out['params']['conv1']['kernel'], loaded['params']['conv1']['kernel'])
  # a checkpoint without rbf_lambda (trained without CA): the CA model keeps its fresh lambdas
  no_lambda = jax.tree_util.tree_map_with_path(lambda p, v: v, loaded)
  no_lambda['params'] = {
      k: {kk: vv for kk, vv in v.items() if kk != 'rbf_lambda'} if 'rbf_lambda' in v else v
      for k, v in no_lambda['params'].items()
  }
  from core_jax import weights  # pylint: disable=import-outside-toplevel

  flat = weights.flatten(no_lambda)
  flat = {k: v for k, v in flat.items() if not k.endswith('rbf_lambda')}
  out = weights.flatten(task_lib.fit_variables(fresh, weights.unflatten(flat), 'ckpt'))
  fresh_flat = weights.flatten(fresh)
  lambdas = [k for k in fresh_flat if k.endswith('/rbf_lambda')]
  assert lambdas and all(out[k] == fresh_flat[k] for k in lambdas)
  # keep_head: exits and head stay fresh
  out = task_lib.fit_variables(fresh, loaded, 'ckpt', keep_head=True)
  np.testing.assert_array_equal(
      out['params']['last_layer']['conv3']['kernel'], fresh['params']['last_layer']['conv3']['kernel']
  )
  np.testing.assert_array_equal(out['params']['conv1']['kernel'], loaded['params']['conv1']['kernel'])
  bad = weights.flatten(loaded)
  bad['params/conv1/kernel'] = np.zeros((1, 1, 3, 64), np.float32)
  with pytest.raises(
      UserError, match=r'^params/conv1/kernel: the model has shape \(3, 3, 3, \d+\) but ckpt has \(1, 1, 3, 64\)$'
  ):
    task_lib.fit_variables(fresh, weights.unflatten(bad), 'ckpt')
  missing = {k: v for k, v in weights.flatten(loaded).items() if k != 'params/conv2/kernel'}
  with pytest.raises(UserError, match='has no params/conv2/kernel'):
    task_lib.fit_variables(fresh, weights.unflatten(missing), 'ckpt')


@pytest.mark.parametrize(
    'model, message',
    [
        (dict(masked_stages=(1, 2, 3)), 'stage 1 cannot be masked'),
        (dict(masked_stages=('stem', 2)), 'the stem cannot be masked'),
        (dict(masked_stages=(0,)), 'cannot mask stage 0'),
        (dict(exits=(1, 2, 3, 4, 5)), 'exit 5 does not exist'),
        (dict(exits=(1, 2, 3)), 'exits must include 4'),
        (dict(tau=0.0), r'tau must be in \(0, 1\]'),
        (dict(tau=1.5), r'tau must be in \(0, 1\]'),
        (dict(tau=-0.2, confidence_adaptive=False), r'tau must be in \(0, 1\]'),
        (dict(arch='w99'), 'unknown HRNet arch'),
        (dict(name='resnet50'), r"model.name 'resnet50': the anytime line's model is 'hrnet'"),
        (dict(exit_type='fancy'), 'exit_type must be one of'),
        (dict(masked_stages=(3,), exits=(1, 4)), 'masking stage 3 needs exit 2'),
        (dict(rh_max_depth=0), r'model.rh_max_depth must be an integer 1\.\.3 '),
        (dict(rh_max_depth=4), r'model.rh_max_depth must be an integer 1\.\.3 '),
    ],
)
def test_bad_model_configs_are_one_line_errors(model, message):
  c = digit_config(**model)
  with pytest.raises(UserError, match=message) as e:
    task_lib.validate_config(c)
  assert '\n' not in str(e.value)


def test_bad_loss_weights():
  c = digit_config()
  c.loss.exit_weights = (1.0, 1.0)
  with pytest.raises(UserError, match='loss.exit_weights has 2 entries; the model has 4 exits'):
    task_lib.validate_config(c)
  c = digit_config()
  c.loss.class_weights = (1.0,) * 19
  with pytest.raises(UserError, match='loss.class_weights has 19 entries; the dataset has 11 classes'):
    task_lib.AnytimeSegTask(c, Info())
  c.loss.class_weights = (0.0,) * 11  # every pixel weighted 0: the loss would be 0 everywhere
  with pytest.raises(UserError, match=r'^loss.class_weights must be >= 0 with one > 0'):
    task_lib.AnytimeSegTask(c, Info())
  c = digit_config()
  c.loss.exit_weights = (1.0, -1.0, 1.0, 1.0)
  with pytest.raises(UserError, match='^loss.exit_weights must be >= 0$'):
    task_lib.AnytimeSegTask(c, Info())


def test_base_model_has_one_exit_and_its_primary_metric():
  c = digit_config(exits=(4,), confidence_adaptive=False)
  c.loss.exit_weights = (1.0,)
  task = task_lib.AnytimeSegTask(c, Info())
  assert task.exits == (4,) and task.primary_metric == 'exit4/miou'
  assert list(task.eval_metrics.__annotations__) == ['exit4']
  assert isinstance(c, ml_collections.ConfigDict)
