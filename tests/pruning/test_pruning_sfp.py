"""Soft filter pruning (pruning_jax.methods.sfp): the epoch hook zeroes the right filters, the hard prune computes
the soft model, the schedule and Scratch-B budget of the configs, and the bad keep rates."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pruning_helpers import random_variables
from test_pruning_pipeline import _main, _write_config

from core_jax import cli, optim
from core_jax.errors import UserError
from core_jax.train import TrainState
from core_jax.weights import flatten
from pruning_jax import job, models
from pruning_jax.methods import sfp
from pruning_jax.task import SoftFilterTask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs', 'pruning')
X = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 16, 3))


@pytest.fixture(scope='module')
def tiny():
  model = models.create('resnet_cifar', cfg=(10, 10, 10, 10, 10, 10), num_classes=10)  # ResNet-14
  return model, random_variables(model, X)


def _hook(task, variables, epoch):
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=(),
      ema_params=None,
      rng=jax.random.PRNGKey(0),
  )
  state = jax.jit(task.on_epoch_end)(state, jnp.int32(epoch))
  return {'params': jax.device_get(state.params), 'batch_stats': jax.device_get(state.batch_stats)}


def _weakest(kernel, n):
  norms = np.sqrt((np.asarray(kernel, np.float64) ** 2).sum(axis=(0, 1, 2)))
  return sorted(np.argsort(norms, kind='stable')[:n].tolist())


def test_each_epoch_zeroes_every_convs_weakest_filters_with_their_bn_bias_and_mean(tiny):
  model, v = tiny
  c = cli.load_config_file(os.path.join(CONFIGS, 'digits_sfp.py'))
  task = SoftFilterTask(c, None)
  soft = _hook(task, v, 1)
  convs = [p for p, k in flatten(v['params']).items() if p.endswith('kernel') and np.ndim(k) == 4]
  assert len(convs) == 1 + 2 * 6  # the stem and both convs of each block: every conv
  for path in convs:
    kernel = flatten(v['params'])[path]
    width = kernel.shape[-1]
    want = _weakest(kernel, int(width * 0.3))  # the original's int(C (1 - rate)): 10 -> 3, 16 -> 4, 64 -> 19
    assert sfp.zeroed_filters(soft['params'])[path] == want, path
    kept = [i for i in range(width) if i not in want]
    np.testing.assert_array_equal(flatten(soft['params'])[path][..., kept], kernel[..., kept])
    module = path[: -len('/kernel')]
    parent, _, name = module.rpartition('/')
    bn = f'{parent}/{name.replace("conv", "bn")}' if parent else name.replace('conv', 'bn')
    for collection, leaf in (('params', 'bias'), ('batch_stats', 'mean')):
      got, was = flatten(soft[collection])[f'{bn}/{leaf}'], flatten(v[collection])[f'{bn}/{leaf}']
      assert np.all(got[want] == 0) and np.array_equal(got[kept], was[kept]), (bn, leaf)
    assert np.array_equal(flatten(soft['params'])[f'{bn}/scale'], flatten(v['params'])[f'{bn}/scale'])
  # the zeroed filters keep learning: one grows back above the others, the next epoch zeroes another set
  regrown = jax.tree_util.tree_map(np.array, soft)
  stem = regrown['params']['conv1']['kernel']
  back = sfp.zeroed_filters(soft['params'])['conv1/kernel'][0]
  stem[..., back] = 10.0
  again = _hook(task, regrown, 2)
  assert back not in sfp.zeroed_filters(again['params'])['conv1/kernel']
  assert sfp.zeroed_filters(again['params'])['conv1/kernel'] == _weakest(stem, 4)


@pytest.mark.slow  # 6-16 s on 2 cores: out of make test-fast (5-minute budget), still in make test
def test_the_hard_prune_computes_the_soft_model(tiny, highest_precision):
  model, v = tiny
  params, stats = jax.jit(sfp.soft_prune, static_argnums=2)(v['params'], v['batch_stats'], 0.7)
  soft = {'params': jax.device_get(params), 'batch_stats': jax.device_get(stats)}
  result = sfp.hard_prune(model, soft)
  assert result.cfg == [7] * 6  # every block's inner width: 10 - int(10 x 0.3)
  # kept: the stem's int(16 x 0.3) and each block's last conv's (widths 16, 16, 32, 32, 64, 64)
  assert result.report['filters_removed'] == 6 * 3 and result.report['zero_filters_kept'] == 4 + (
      4 + 4 + 9 + 9 + 19 + 19
  )
  assert result.report['zero_filters_kept'] == sum(
      len(z) for z in sfp.zeroed_filters(result.variables['params']).values()
  )

  @jax.jit
  def both(soft_vars, small_vars):  # eval (running statistics) and train mode (batch statistics)
    out = []
    for train in (False, True):
      kw = dict(train=True, mutable=['batch_stats']) if train else {}
      a, b = model.apply(soft_vars, X, **kw), result.model.apply(small_vars, X, **kw)
      out.append((a[0][0], b[0][0]) if train else (a[0], b[0]))
    return out

  for want, got in both(soft, result.variables):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sfp_cifar_configs_schedule_and_scratch_b_budget():
  for depth in ('resnet20', 'resnet32', 'resnet56', 'resnet110'):
    c = cli.load_config_file(os.path.join(CONFIGS, f'sfp_cifar.py:{depth}'))
    job.check_config(c)
    assert [p.name for p in job.phases_for(c)] == [f'seed{s}/{p}' for s in range(5) for p in c.experiment.phases]
    assert (c.batch_size, c.num_epochs, c.optimizer.nesterov, c.optimizer.weight_decay) == (128, 200, True, 5e-4)
  lr = optim.make_schedule(c.optimizer, steps_per_epoch=10, total_steps=2000)
  assert [float(lr(e * 10)) for e in (0, 1, 59, 60, 120, 160, 199)] == pytest.approx(
      [0.01, 0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008], rel=1e-6
  )
  prune = {'pruned_model': {'family': 'resnet_cifar', 'cfg': [11] * 54, 'selections': None}}
  prune.update(macs_large=125, macs=100, export='/x/pruned.safetensors')
  sb = job.scratch_config(c, 0, prune, 'scratch_b')
  assert sb.num_epochs == int(400 * 1.25)  # SFP's base: 400
  assert tuple(sb.optimizer.decay_epochs) == (2, 150, 300, 400) and tuple(sb.optimizer.decay_factors)[0] == 10.0
  assert job.scratch_config(c, 0, prune, 'scratch_e').num_epochs == 200
  d = cli.load_config_file(os.path.join(CONFIGS, 'digits_sfp.py'))
  job.check_config(d)
  assert job.large_config(d, 0).prune.method == 'sfp'
  phases = job.phases_for(d)
  assert [p.name for p in phases] == [f'seed{s}/{p}' for s in (0, 1) for p in job.PHASES]


def test_decay_factors_must_match_the_milestones():
  opt = dict(optim.DEFAULTS, schedule='step', lr=0.1, decay_epochs=(1, 2), decay_factors=(10.0,))
  with pytest.raises(UserError, match=r'decay_factors \(10.0,\) must be 2 positive factors'):
    optim.make_schedule(opt, steps_per_epoch=1, total_steps=5)


@pytest.mark.parametrize('rate', [0.0, 1.5, -0.3])
def test_a_keep_rate_outside_0_1_is_one_line_and_nothing_is_made(tmp_path, capsys, rate):
  config = _write_config(tmp_path / 'bad.py', 'digits_sfp.py', [f'c.sfp.keep_rate = {rate}', 'c.data.data_dir = "/x"'])
  workdir = tmp_path / 'run'
  code, err = _main([f'--config={config}', f'--workdir={workdir}'], capsys)
  assert (
      code == 2
      and len(err) == 1
      and f'sfp.keep_rate must be in (0, 1] (the fraction of filters kept), got {rate}' in err[0]
  )
  assert not workdir.exists()
