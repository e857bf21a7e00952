"""Sparse Structure Selection (pruning_jax.methods.sss): the proximal step, the block surgery, the paper's ResNet-50
variants, the configs and the bad-input lines."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from pruning_helpers import random_variables
from test_pruning_pipeline import _main, _write_config

from core_jax import cli, counting
from core_jax import train as core_train
from core_jax.errors import UserError
from core_jax.weights import flatten
from pruning_jax import budget, job, models, zoo
from pruning_jax.methods import sss
from pruning_jax.task import PruningTask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs', 'pruning')
X = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))
CFG = (4, 4, 8, 8, 8, 8)  # ResNet-14 with narrow inner widths


def _apg_reference(w, g, v, lr, gamma, mu):
  """The authors' APGNAG update of one factor, written out in numpy."""
  v = mu * v
  z = w - lr * g
  z = np.sign(z) * np.maximum(np.abs(z) - lr * gamma, 0.0)
  v = z - w + v
  return np.maximum(z + mu * v, 0.0), v


def test_the_proximal_step_soft_thresholds_exactly_and_matches_the_authors_update():
  w = {'a': jnp.asarray(0.05, jnp.float32), 'b': jnp.asarray(0.9, jnp.float32), 'c': jnp.asarray(-0.2, jnp.float32)}
  g = {'a': jnp.asarray(0.1, jnp.float32), 'b': jnp.asarray(-1.0, jnp.float32), 'c': jnp.asarray(0.0, jnp.float32)}
  lr, gamma = 0.1, 0.5
  tx = sss.proximal_gradient(lr, gamma, momentum=0.0)
  updates, _ = tx.update(g, tx.init(w), w)
  new = optax.apply_updates(w, updates)
  # no momentum: lambda <- max(0, S(lambda - lr g, lr gamma)); 0.05 - 0.01 = 0.04 <= 0.05 = lr gamma: exactly 0
  assert float(new['a']) == 0.0 and float(new['c']) == 0.0
  assert float(new['b']) == pytest.approx(0.9 + 0.1 - 0.05, abs=1e-7)
  tx = sss.proximal_gradient(lambda count: 0.1 / (1 + count), gamma=0.3, momentum=0.9)  # a schedule of the count
  state, params, v = tx.init(w), dict(w), {k: 0.0 for k in w}
  rng = np.random.default_rng(0)
  for step in range(4):
    grads = {k: jnp.asarray(rng.normal(), jnp.float32) for k in w}
    updates, state = tx.update(grads, state, params)
    for k in w:
      want, v[k] = _apg_reference(float(params[k]), float(grads[k]), v[k], 0.1 / (1 + step), 0.3, 0.9)
      assert float(params[k] + updates[k]) == pytest.approx(want, abs=1e-6)
    params = optax.apply_updates(params, updates)
  assert int(state.count) == 4


def _task_config(gamma=0.2):
  c = cli.load_config_file(os.path.join(CONFIGS, 'digits_sss.py'))
  c.model.cfg, c.model.block_scale, c.sss.gamma = CFG, True, gamma
  return c


class _Data:  # what core_jax.train.build_optimizer reads of the data
  steps_per_epoch, total_steps = 10, 50


def test_the_factors_take_the_proximal_step_and_the_rest_the_configured_optimizer():
  c = _task_config()
  task = PruningTask(c, None)
  task._model = models.create('resnet_cifar', cfg=CFG, num_classes=10, block_scale=True)  # pylint: disable=protected-access
  tx, schedule = core_train.build_optimizer(c, task, _Data())
  params = random_variables(task._model, X)['params']  # pylint: disable=protected-access
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
  lr = float(schedule(0))
  lam = float(params['layer2_0']['block_scale'])
  z = lam - lr * 0.5
  assert float(updates['layer2_0']['block_scale']) == pytest.approx(max(0.0, z - lr * 0.2) - lam, abs=1e-6)
  kernel = params['layer2_0']['conv1']['kernel']  # SGD with weight decay 1e-4, first step: -lr (g + wd w)
  np.testing.assert_allclose(updates['layer2_0']['conv1']['kernel'], -lr * (0.5 + 1e-4 * kernel), rtol=1e-5)


def _factor_model_and_variables():
  model = models.create('resnet_cifar', cfg=CFG, num_classes=10, block_scale=True)
  v = random_variables(model, X)
  for name, value in zip(sorted(sss.factors(v['params'])), (0.0, 1.7, 0.0, 0.4, 0.9, 0.0)):
    v['params'][name]['block_scale'] = np.float32(value)
  return model, v


def _logits(model, variables, train=False):
  if train:
    return model.apply(variables, X, train=True, mutable=['batch_stats'])[0][0]
  return model.apply(variables, X)[0]


def test_sss_removes_the_blocks_at_zero_and_the_smaller_model_computes_the_factor_model(highest_precision):
  model, v = _factor_model_and_variables()
  result = sss.prune(model, None, v)
  assert result.cfg == [0, 4, 0, 8, 8, 0]
  assert result.report['removed_blocks'] == ['layer1_0', 'layer2_0', 'layer3_1'] and not result.report['emptied']
  assert result.report['depth'] == 2 + 2 * 3
  assert 'block_scale' not in models.describe(result.model)
  assert not any('block_scale' in k for k in flatten(result.variables['params']))
  assert counting.count_params(result.variables['params']) < counting.count_params(v['params'])

  @jax.jit
  def both(v, small_vars):  # one program: eval (running statistics) and train mode (batch statistics), both models
    return [(_logits(model, v, t), _logits(result.model, small_vars, t)) for t in (False, True)]

  for want, got in both(v, result.variables):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_stage_with_every_factor_at_zero_keeps_its_strongest_block_or_is_one_line(highest_precision):
  model, v = _factor_model_and_variables()
  v['params']['layer3_0']['block_scale'] = np.float32(0.0)  # stage 3: both factors at 0
  v['params']['layer3_1']['bn2']['scale'] = v['params']['layer3_1']['bn2']['scale'] * 10  # the stronger branch
  with pytest.raises(UserError, match='every block of stage 3 .*has its factor at 0') as e:
    sss.plan(model, v, 'error')
  assert '\n' not in str(e.value)
  result = sss.prune(model, None, v)  # default: keep_strongest, as slimming keeps a layer's strongest channel
  assert result.report['emptied'] == ['layer3_1'] and result.cfg == [0, 4, 0, 8, 0, 8]
  got, want = jax.jit(_logits, static_argnums=0)(result.model, result.variables), jax.jit(_logits, static_argnums=0)(
      model, v
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_paper_resnet50_variants_depths_scratch_b_epochs_and_lr_steps():
  rows = {r['name']: r for r in zoo.zoo_rows(['resnet50', 'resnet41_sss', 'resnet32_sss', 'resnet26_sss'])}
  readme = {'resnet41': (117, (35, 70, 105)), 'resnet32': (145, (43, 86, 129)), 'resnet26': (179, (53, 106, 159))}
  for name, (epochs, steps) in readme.items():
    cfg = models.cfg_of(models.create(f'{name}_sss'))
    kept = sum(1 for k in range(16) if cfg[3 * k + 1])
    assert 2 + 3 * kept == int(name[6:])
    assert budget.scratch_b_epochs(100, rows['resnet50']['macs'], rows[f'{name}_sss']['macs']) == epochs
    c = cli.load_config_file(os.path.join(CONFIGS, f'sss_imagenet.py:{name}'))
    job.check_config(c)
    prune = {'pruned_model': models.describe(models.create(f'{name}_sss')), 'macs_large': rows['resnet50']['macs']}
    prune['macs'] = rows[f'{name}_sss']['macs']
    se = job.scratch_config(c, 0, prune, 'scratch_e')
    assert se.num_epochs == 100 and tuple(int(f * 100 + 1e-9) for f in se.optimizer.decay_fractions) == (30, 60, 90)
    sb = job.scratch_config(c, 0, prune, 'scratch_b')
    assert (sb.num_epochs, tuple(sb.optimizer.decay_epochs)) == (epochs, steps)
    assert not job.large_config(c, 0).model.block_scale  # the architecture is fixed: plain ResNet-50 training
  # params / MACs of the three (python -m pruning_jax.zoo): ResNet-50's less the removed branches
  assert [rows[f'{n}_sss']['params'] for n in readme] == [25_361_960, 14_272_808, 14_923_304]
  assert [rows[f'{n}_sss']['macs'] for n in readme] == [3_472_621_568, 2_817_523_712, 2_278_031_360]


def test_cutting_a_fixed_architecture_keeps_the_kept_blocks_weights():
  large = models.create('resnet50', num_classes=10)
  x = jnp.zeros((1, 32, 32, 3))
  v = random_variables(large, x)
  small, small_vars = sss.fixed(large, v, 'resnet26')
  assert models.cfg_of(small) == models.cfg_of(models.create('resnet26_sss'))
  assert 'layer1_0' in small_vars['params'] and set(small_vars['params']['layer1_0']) == {
      'downsample_conv',
      'downsample_bn',
  }
  assert 'layer1_1' not in small_vars['params']
  np.testing.assert_array_equal(
      small_vars['params']['layer3_1']['conv2']['kernel'], v['params']['layer3_1']['conv2']['kernel']
  )
  shapes = jax.eval_shape(lambda: small.init(jax.random.PRNGKey(0), x))
  assert jax.tree_util.tree_structure(dict(shapes['params'])) == jax.tree_util.tree_structure(small_vars['params'])


def test_digits_sss_config_resolves_its_phases():
  c = cli.load_config_file(os.path.join(CONFIGS, 'digits_sss.py'))
  job.check_config(c)
  assert [p.name for p in job.phases_for(c)] == [f'seed{s}/{p}' for s in (0, 1) for p in job.PHASES]
  large = job.large_config(c, 0)
  assert large.model.block_scale and c.sss.gamma > 0
  prune = {'pruned_model': {'family': 'resnet_cifar', 'cfg': [0, 8, 16, 16, 32, 0], 'selections': None}}
  prune.update(macs_large=2, macs=1, export='/x/pruned.safetensors')
  for cfg in (job.finetune_config(c, 0, prune), job.scratch_config(c, 0, prune, 'scratch_b')):
    assert not cfg.model.block_scale and list(cfg.model.cfg) == [0, 8, 16, 16, 32, 0]


@pytest.mark.parametrize(
    'lines, message',
    [
        (['c.sss.gamma = -0.1'], 'sss.gamma must be >= 0, got -0.1'),
        (['c.sss.momentum = 1.0'], 'sss.momentum must be in [0, 1), got 1.0'),
        (
            ['c.model.name = "vgg16"', 'c.model.cfg = None'],
            'Sparse Structure Selection needs a resnet_cifar or resnet50',
        ),
        (['c.sss.architecture = "resnet18"'], 'sss.architecture must be empty or one of resnet41, resnet32, resnet26'),
        (['c.sss.architecture = "resnet41"'], 'Sparse Structure Selection resnet41 needs a resnet50 model'),
    ],
)
def test_bad_sss_settings_are_one_line_and_nothing_is_made(tmp_path, capsys, lines, message):
  config = _write_config(tmp_path / 'bad.py', 'digits_sss.py', [*lines, 'c.data.data_dir = "/nonexistent"'])
  workdir = tmp_path / 'run'
  code, err = _main([f'--config={config}', f'--workdir={workdir}'], capsys)
  assert code == 2 and len(err) == 1 and message in err[0], err
  assert not workdir.exists()
