"""Lottery tickets (pruning_jax.methods.lottery): the structured mask zeroes the pruned filters with their BN (the
masked large model computes what the physically pruned one does), the ticket is the saved init x mask, bad input;
and (slow) a tiny two-round experiment on the CIFAR-layout builder: every run reuses the saved init bit for
bit, the rounds compound, the table has its cells."""

import json
import os

import cifar_like
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pruning_helpers import random_variables
from test_pruning_magnitude import _conv_kernels_exactly_masked
from test_pruning_pipeline import _fails_in_one_line_keeping_saved_work, _tiny, _write_config

from core_jax import cli
from core_jax.weights import flatten
from pruning_jax import io, job, models, surgery
from pruning_jax import main as pruning_main
from pruning_jax.methods import l1_norm, lottery
from pruning_jax.task import load_mask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
X = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
TINY_RESNET = (4, 8, 8)
SCHEME = {'skip': (), 'ratios': (0.5, 0.5, 0.5)}


@pytest.fixture(scope='module')
def tiny():
  model = models.create('resnet_cifar', cfg=TINY_RESNET, num_classes=10)
  return model, random_variables(model, jnp.asarray(X[:1]))


def test_structured_mask_zeroes_filters_and_their_bn_like_physical_pruning(tiny):
  model, variables = tiny
  mask, report = lottery.next_mask('l1', model, variables, SCHEME)
  keep = l1_norm.plan(model, variables, SCHEME)
  assert report['kept'] == {k: len(v) for k, v in keep.items()} and report['kept']['layer1_0/conv1'] == 2
  flat = flatten(mask)
  for name, kept in keep.items():
    block = name.split('/')[0]
    drop = sorted(set(range(flat[f'{block}/conv1/kernel'].shape[-1])) - set(kept))
    assert drop  # the pruned filters themselves, not filters 0 and 1 (the original's float-index zeroing)
    assert not np.any(flat[f'{block}/conv1/kernel'][..., drop]) and np.all(flat[f'{block}/conv1/kernel'][..., kept])
    for leaf in ('scale', 'bias'):  # the BN after the filter too (the original left beta: ReLU(beta) leaked)
      assert not np.any(flat[f'{block}/bn1/{leaf}'][drop]) and np.all(flat[f'{block}/bn1/{leaf}'][kept])
    assert not np.any(flat[f'{block}/conv2/kernel'][:, :, drop, :])
  masked = lottery.winning_ticket(variables, mask)
  small, small_vars = surgery.prune(model, variables, keep)
  got = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])(masked, X)
  want = jax.jit(lambda v, x: small.apply(v, x, train=False)[0])(small_vars, X)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_ticket_is_the_saved_init_times_the_mask_and_random_init_is_another_draw(tiny):
  model, variables = tiny
  mask, _ = lottery.next_mask('unstructured', model, variables, 0.5)
  ticket = lottery.winning_ticket(variables, mask)
  random = lottery.random_init(variables, mask, seed=0)
  for path, w in flatten(variables['params']).items():
    m = flatten(mask)[path]
    t, r = flatten(ticket['params'])[path], flatten(random['params'])[path]
    if m is None:
      assert np.array_equal(t, w)
      continue
    assert np.array_equal(t, w * m)  # bit for bit
    assert not np.any(r[m == 0]) and not np.any(r[m != 0] == w[m != 0])
  assert ticket['batch_stats'] is variables['batch_stats']


@pytest.mark.parametrize(
    'lines,message',
    [
        (['c.lottery.rounds = 0'], 'lottery.rounds must be a whole number of pruning rounds >= 1, got 0'),
        (['c.prune.percent = 1.0'], 'prune.percent must be in [0, 1) (a keep ratio in (0, 1])'),
        (['c.lottery.structure = "l1"', 'c.lottery.rounds = 2'], 'the structured (l1) lottery prunes once'),
    ],
)
def test_bad_lottery_configs_are_one_line_and_keep_saved_work(tmp_path, capsys, lines, message):
  config = _write_config(tmp_path / 'bad.py', 'digits_lottery.py', lines)
  _fails_in_one_line_keeping_saved_work(tmp_path, capsys, config, message)


@pytest.mark.parametrize(
    'spec', ['lottery_cifar.py:vgg16_unstructured', 'lottery_cifar.py:resnet110_b', 'digits_lottery.py:l1']
)
def test_lottery_configs_resolve_their_phases(spec):
  c = cli.load_config_file(os.path.join(REPO, 'configs', 'pruning', spec))
  job.check_config(c)
  names = [p.name for p in job.phases_for(c)]
  rounds = int(c.lottery.rounds)
  per_lr = ['large'] + [x for r in range(1, rounds) for x in (f'prune{r}', f'round{r}')]
  per_lr += [f'prune{rounds}', 'ticket', 'random']
  seeds = [int(s) for s in c.experiment.seeds]
  want = [x for s in seeds for x in [f'seed{s}/init'] + [f'seed{s}/lr{lr:g}/{p}' for lr in (0.1, 0.01) for p in per_lr]]
  assert names == want


@pytest.mark.slow
def test_lottery_runs_reuse_the_saved_init_bit_for_bit(tmp_path, tfds_dir, capsys):
  data_dir = cifar_like.prepare(str(tfds_dir), 'cifar10', num_train=128, num_test=64)
  lines = _tiny(
      data_dir,
      [
          f'c.model.update(dict(name="resnet_cifar", cfg={TINY_RESNET!r}))',
          'c.num_epochs = 1',
          'c.prune.percent = 0.5',
          'c.lottery.rounds = 2',
          'c.lottery.lrs = (0.1,)',  # the other lr runs the same phases from the same file
      ],
  )
  config = _write_config(tmp_path / 'tiny_lottery.py', 'lottery_cifar.py:resnet56_unstructured', lines)
  workdir = tmp_path / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  init_file = workdir / 'seed0' / 'init' / job.LOTTERY_INIT
  _, init = io.load_pruned(str(init_file))
  for lr in ('lr0.1',):
    large = json.loads((workdir / 'seed0' / lr / 'large' / 'results.json').read_text())
    assert large['step'] == 2
    kept, rounds = [], {}
    for r in (1, 2):
      prune = rounds[r] = json.loads((workdir / 'seed0' / lr / f'prune{r}' / 'results.json').read_text())
      _, ticket = io.load_pruned(prune['ticket'])
      mask = flatten(load_mask(prune['mask'], init['params']))
      for path, w in flatten(init['params']).items():  # the saved init, bit for bit, under this round's mask
        want = w if mask[path] is None else w * mask[path]
        assert np.array_equal(flatten(ticket['params'])[path], want), path
      for path, b in flatten(init['batch_stats']).items():
        assert np.array_equal(flatten(ticket['batch_stats'])[path], b)
      kept.append(prune['report']['kept_conv_weights'])
      assert prune['source'].startswith(str(workdir / 'seed0' / lr / ('large' if r == 1 else 'round1')))
    assert kept[1] == kept[0] - int(kept[0] * 0.5) - 1  # round 2 removes half of what round 1 kept
    for run, r in (('round1', 1), ('ticket', 2), ('random', 2)):  # trained under that round's mask
      got = json.loads((workdir / 'seed0' / lr / run / 'results.json').read_text())
      # (<=: a dead ReLU channel's BN bias can stay exactly 0; the masked weights are exactly 0, checked below)
      assert got['step'] == 2 and got['nonzero_params'] <= rounds[r]['params'] < got['params']
      masked_out = _conv_kernels_exactly_masked(
          str(workdir / 'seed0' / lr / run / 'checkpoints' / '2'), rounds[r]['mask']
      )
      assert masked_out == rounds[r]['params_large'] - rounds[r]['params']
  summary = json.loads((workdir / 'results.json').read_text())
  assert list(summary['lrs']) == ['lr0.1']
  assert all(set(e) == {'large', 'ticket', 'random', 'pruned'} for e in summary['lrs'].values())
  table = (workdir / 'results.md').read_text()
  assert '| lr | unpruned | winning ticket | random init | params (non-zero) | MACs (non-zero) |' in table
  assert 'unstructured, 2 rounds of 50% (75.0% of the conv weights)' in table
  assert 'winning ticket - random init (points): lr 0.1: ' in table
