"""Guided pruning (pruning_jax.methods.guided, the paper's section 5): the guided model has the rounded averages of
the runs' widths, uniform pruning matches its params within one channel per layer, patterns transfer stage by
stage as documented; the runner's phases and table; bad input (one line, exit 2, nothing saved lost)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pruning_pipeline import _fails_in_one_line_keeping_saved_work, _write_config, cifar_dir  # noqa: F401

from core_jax import cli
from core_jax.errors import UserError
from core_jax.weights import flatten
from pruning_jax import job, models, report
from pruning_jax.methods import guided

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = (8, 'M', 16, 16, 'M', 8, 'M', 8, 'M', 8)  # 5 stages (one feature-map size each), 32x32 -> 1x1
RUNS = [  # two pruning runs of TINY, kept widths per conv
    guided.Run('vgg_slimming', TINY, (4, 'M', 10, 12, 'M', 4, 'M', 2, 'M', 6)),
    guided.Run('vgg_slimming', TINY, (6, 'M', 8, 10, 'M', 6, 'M', 3, 'M', 8)),
]
COUNT = guided.Counter(10, (1, 32, 32, 3))


def _conv_widths(model) -> list[int]:
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  kernels = {p: s.shape[-1] for p, s in flatten(v['params']).items() if p.endswith('kernel') and len(s.shape) == 4}
  return [kernels[f'conv{i}/kernel'] for i in range(len(kernels))]


def test_guided_model_has_the_rounded_average_widths():
  per_stage = guided.apply(guided.average(RUNS), 'vgg_slimming', TINY)
  # stage ratios: (4+6)/2/8, ((10+12)+(8+10))/2/32, 5/8, 2.5/8, 7/8 -> widths 5, 10 10, 5, 3 (2.5 rounds up), 7
  assert per_stage == (5, 'M', 10, 10, 'M', 5, 'M', 3, 'M', 7)
  per_layer = guided.apply(guided.average(RUNS, 'layer'), 'vgg_slimming', TINY)
  means = np.mean([[v for v in r.pruned_cfg if v != 'M'] for r in RUNS], axis=0)  # 5, 9, 11, 5, 2.5, 7
  assert [v for v in per_layer if v != 'M'] == [int(np.floor(m + 0.5)) for m in means] == [5, 9, 11, 5, 3, 7]
  assert _conv_widths(models.build('vgg_slimming', per_layer, 10)) == [5, 9, 11, 5, 3, 7]  # the built model's
  one = guided.average(RUNS[:1], 'layer')  # a single run, layer by layer: its own architecture back
  assert guided.apply(one, 'vgg_slimming', TINY) == RUNS[0].pruned_cfg


def test_uniform_at_the_same_params_within_one_channel_per_layer():
  target_cfg = guided.apply(guided.average(RUNS), 'vgg_slimming', TINY)
  target = COUNT.params('vgg_slimming', target_cfg)
  cfg, ratio = guided.uniform_at_params('vgg_slimming', TINY, target, COUNT.params)
  assert 0 < ratio < 1 and cfg == guided.uniform('vgg_slimming', TINY, ratio)
  assert [v for v in cfg if v != 'M'] == [guided.width(ratio, w) for w in TINY if w != 'M']  # one ratio everywhere
  got = COUNT.params('vgg_slimming', cfg)
  wider = tuple(v if v == 'M' else v + 1 for v in cfg)
  one_channel_per_layer = COUNT.params('vgg_slimming', wider) - got
  assert abs(got - target) <= one_channel_per_layer
  assert cfg != target_cfg  # the same params, not the same architecture


def test_transfer_maps_stage_k_to_stage_k():
  vgg16, vgg19 = models.NAMED['vgg16_slimming'].cfg, models.NAMED['vgg19'].cfg
  run = guided.Run(
      'vgg_slimming', vgg16, (40, 60, 'M', 128, 120, 'M', 250, 240, 230, 'M', 100, 50, 30, 'M') + (30,) * 3
  )
  pattern = guided.average([run])
  assert guided.stage_map(pattern, 'vgg_l1', vgg19) == {f'stage{k}': f'stage{k}' for k in range(1, 6)}
  transferred = guided.apply(pattern, 'vgg_slimming', vgg19)
  want = [50] * 2 + [124] * 2 + [240] * 4 + [60] * 4 + [30] * 4  # each stage's ratio on every conv, extra ones too
  assert [v for v in transferred if v != 'M'] == want
  assert [i for i, v in enumerate(transferred) if v == 'M'] == [i for i, v in enumerate(vgg19) if v == 'M']
  r56 = models.NAMED['resnet56'].cfg  # CIFAR ResNets: stage k of 9 blocks -> stage k of 18
  pattern = guided.average([guided.Run('resnet_cifar', r56, (8,) * 9 + (16,) * 9 + (16,) * 9)])
  assert guided.apply(pattern, 'resnet_cifar', models.NAMED['resnet110'].cfg) == (8,) * 18 + (16,) * 18 + (16,) * 18


@pytest.mark.parametrize(
    'call,message',
    [
        (lambda: guided.average([]), 'averages at least 1 pruning run, got none'),
        (
            lambda: guided.average([RUNS[0], guided.Run('resnet_cifar', (16, 32, 64), (8, 16, 32))]),
            "runs of one family, got 'vgg_slimming' and 'resnet_cifar'",
        ),
        (
            lambda: guided.average([RUNS[0], guided.Run('vgg_slimming', (8, 'M', 16, 'M', 8, 'M', 8, 'M', 8), TINY)]),
            'runs of one unpruned network',
        ),
        (
            lambda: guided.apply(guided.average(RUNS), 'resnet_cifar', (16, 32, 64)),
            'no stage mapping from vgg_slimming to resnet_cifar',
        ),
        (
            lambda: guided.apply(guided.average(RUNS), 'vgg_bn_imagenet', models.NAMED['vgg11_bn_imagenet'].cfg),
            "no stage mapping for vgg_bn_imagenet stage 'fc'",
        ),
        (
            lambda: guided.apply(guided.average(RUNS, 'layer'), 'vgg_slimming', models.NAMED['vgg19'].cfg),
            'a per-layer pattern applies to its own layer layout only',
        ),
        (lambda: guided.stages('densenet', (12,) * 39), "no layer stages for family 'densenet'"),
    ],
)
def test_bad_patterns_are_one_line_user_errors(call, message):
  with pytest.raises(UserError, match='^[^\n]*$') as e:
    call()
  assert message in str(e.value)


# ------------------------------------------------------------------------------------------------ the runner
def _pattern_file(tmp_path, family='vgg_slimming', cfg=(16, 'M', 32, 'M', 64, 'M', 64, 'M', 128)) -> str:
  pruned = tuple(v if v == 'M' else max(1, v // 2) for v in cfg)
  path = tmp_path / 'pattern.json'
  path.write_text(json.dumps(guided.average([guided.Run(family, cfg, pruned)]).to_json()))
  return str(path)


def _sparse_pattern_file(tmp_path, cfg=(16, 'M', 32, 'M', 64, 'M', 64, 'M', 128)) -> str:
  """An unstructured pattern of the digits VGG (5 stages), as a guided sparsification experiment writes it."""
  model = models.build('vgg_slimming', cfg, 10)
  zeros = _zeros(model)
  layout = guided.conv_stages(model, zeros, (1, 32, 32, 3))
  flat = flatten(zeros['params'])
  shapes = {p: flat[p].shape for _, paths in layout for p in paths}
  masks = [guided.sparse_mask(shapes, {p: 0.5 for p in shapes}, seed) for seed in (0, 1)]
  path = tmp_path / 'sparse_pattern.json'
  path.write_text(json.dumps(guided.average_density(masks, layout, family='vgg_slimming', cfg=cfg).to_json()))
  return str(path)


def _resnet_runs(tmp_path) -> str:
  d = tmp_path / 'resnet_runs'
  (d / 'seed0' / 'prune').mkdir(parents=True)
  r = {'large_model': {'family': 'resnet_cifar', 'cfg': [16, 32, 64]}, 'pruned_model': {'cfg': [8, 16, 32]}}
  (d / 'seed0' / 'prune' / 'results.json').write_text(json.dumps(r))
  return str(d)


@pytest.mark.parametrize(
    'lines,message',
    [
        (
            ['c.experiment.phases = ("scratch_e",)'],
            'guided pruning needs at least 1 source run: experiment.phases has no prune phase',
        ),
        (
            ['c.model.update(dict(name="resnet_cifar", cfg=(16, 32, 64)))', 'c.guided.pattern_from = {pattern!r}'],
            'no stage mapping from vgg_slimming to resnet_cifar',
        ),
        (['c.guided.runs_from = ({resnet_runs!r},)'], "runs of one family, got 'vgg_slimming' and 'resnet_cifar'"),
        (['c.guided.pattern_from = "/nonexistent/guided"'], 'guided.pattern_from: no pattern at /nonexistent/guided'),
        (['c.guided.granularity = "block"'], "guided.granularity must be one of stage, layer, got 'block'"),
        (['c.guided.structure = "blocks"'], "guided.structure must be one of structured, unstructured, got 'blocks'"),
        (
            ['c.guided.structure = "unstructured"', 'c.guided.pattern_from = {pattern!r}'],
            'holds a structured pattern (channel widths); guided.structure=unstructured transfers the pattern of a',
        ),
        (
            ['c.guided.structure = "unstructured"', 'c.guided.runs_from = ({resnet_runs!r},)'],
            'guided.runs_from is for the structured variant',
        ),
        (
            ['c.guided.pattern_from = {sparse_pattern!r}'],
            'an unstructured pattern (conv weight densities) does not rewidth a network: guided.structure=structured',
        ),
    ],
)
def test_bad_guided_configs_are_one_line_and_keep_saved_work(tmp_path, capsys, lines, message):
  fill = dict(
      pattern=_pattern_file(tmp_path), resnet_runs=_resnet_runs(tmp_path), sparse_pattern=_sparse_pattern_file(tmp_path)
  )
  config = _write_config(tmp_path / 'bad.py', 'digits_guided.py', [line.format(**fill) for line in lines])
  _fails_in_one_line_keeping_saved_work(tmp_path, capsys, config, message)


@pytest.mark.parametrize(
    'spec,own,archs',
    [
        ('digits_guided.py', True, ('guided', 'uniform')),
        ('digits_guided.py:transfer', False, ('transferred', 'uniform')),
        ('digits_guided.py:unstructured', True, ('guided', 'uniform')),
        ('digits_guided.py:unstructured_densities', True, ('guided', 'uniform')),
        ('digits_guided.py:unstructured_transfer', False, ('transferred', 'uniform')),
        ('guided_cifar.py:vgg16_c10_80_unstructured', True, ('guided', 'uniform')),
        ('guided_cifar.py:vgg19_c100_80_unstructured_transferred', True, ('guided', 'transferred', 'uniform')),
        ('guided_cifar.py:vgg16_c10_60', True, ('guided', 'uniform')),
        ('guided_cifar.py:vgg19_c100_50_transferred', True, ('guided', 'transferred', 'uniform')),
    ],
)
def test_guided_configs_resolve_their_phases(tmp_path, spec, own, archs):
  c = cli.load_config_file(os.path.join(REPO, 'configs', 'pruning', spec))
  if c.guided.pattern_from:  # the source experiment's pattern, here a stand-in file
    unstructured = c.guided.structure == 'unstructured'
    c.guided.pattern_from = _sparse_pattern_file(tmp_path) if unstructured else _pattern_file(tmp_path)
  job.check_config(c)
  assert job.guided_architectures(c) == archs
  seeds = [int(s) for s in c.experiment.seeds]
  names = [p.name for p in job.phases_for(c)]
  source = [f'seed{s}/{p}' for s in seeds for p in ('large', 'prune', 'scratch_e', 'scratch_b')] if own else []
  trained = [f'seed{s}/{a}/{k}' for s in seeds for a in archs for k in ('scratch_e', 'scratch_b')]
  assert names == source + ['guided'] + trained


def _fake_done():
  arch = lambda cfg, params, macs: {  # noqa: E731
      'pruned_model': {'family': 'vgg_slimming', 'cfg': cfg, 'num_classes': 10, 'selections': None},
      'params': params,
      'macs': macs,
      'params_large': 1000,
      'macs_large': 10_000_000,
  }
  done = {
      'guided': {
          'architectures': {
              'guided': {**arch([4, 8], 400, 5_000_000), 'pattern': guided.average(RUNS).to_json()},
              'uniform': {**arch([3, 9], 401, 4_000_000), 'ratio': 0.5, 'matched': 'guided'},
          },
          'params_large': 1000,
          'macs_large': 10_000_000,
          'pattern_file': '/w/guided/pattern.json',
      }
  }
  for seed, (large, e, b, ue, ub) in ((0, (0.9, 0.8, 0.85, 0.7, 0.75)), (1, (0.92, 0.82, 0.87, 0.72, 0.79))):
    done[f'seed{seed}/large'] = {'accuracy': large}
    done[f'seed{seed}/prune'] = {**arch([5, 7], 410 + seed, 5_000_000), 'accuracy': 0.1}
    for name, acc in (('scratch_e', e), ('scratch_b', b), ('guided/scratch_e', e), ('guided/scratch_b', b)):
      done[f'seed{seed}/{name}'] = {'accuracy': acc}
    done[f'seed{seed}/uniform/scratch_e'], done[f'seed{seed}/uniform/scratch_b'] = {'accuracy': ue}, {'accuracy': ub}
  return done


def test_guided_table_rows_and_claim():
  c = cli.load_config_file(os.path.join(REPO, 'configs', 'pruning', 'digits_guided.py'))
  c.experiment.title = 'T'
  summary = report.summarize_guided(c, _fake_done())
  rows = summary['rows']
  assert list(rows) == ['unpruned', 'pruned', 'guided', 'uniform']
  assert rows['guided']['scratch_e']['accuracy']['mean'] == pytest.approx(81.0)
  assert rows['guided']['epochs'] == {'scratch_e': 5, 'scratch_b': [10]}  # 5 x 2 (capped), MACs ratio 2
  assert rows['uniform']['epochs']['scratch_b'] == [10]  # ratio 2.5, capped at 2
  assert rows['pruned']['params']['min'] == 410 and rows['pruned']['params']['max'] == 411
  claim = summary['claim']['guided']
  assert claim['scratch_e']['lead'] == pytest.approx(10.0) and claim['scratch_e']['holds']
  text = report.markdown_guided(summary).splitlines()
  assert text[4] == '| architecture | params | MACs | Scratch-E (%) | Scratch-B (%) | epochs E / B |'
  assert '| guided (averaged ratios) | 400 | 5.00M | 81.00 ± 1.41 | 86.00 ± 1.41 | 5 / 10 |' in text
  assert "| uniform (x0.500, at guided's params) | 401 | 4.00M | 71.00 ± 1.41 | 77.00 ± 2.83 | 5 / 10 |" in text
  assert '| unpruned | 1.0K | 10.00M | 91.00 ± 1.41 | - | 5 / - |' in text
  assert any(line.startswith('guided ratios (vgg_slimming stages): stage1 0.625, stage2 0.625') for line in text)
  assert text[-1].startswith("the paper's claim, guided >= uniform at the same params within the seeds' spread: holds")


def test_guided_sparsification_table_prints_the_kernel_maps(tmp_path):
  c = cli.load_config_file(os.path.join(REPO, 'configs', 'pruning', 'digits_guided.py:unstructured'))
  layout = [('stage1', ('a/kernel',))]
  runs = [
      {'a/kernel': _positions_mask([2, 4, 2, 4, 8, 4, 2, 4, 2], (2, 4))},
      {'a/kernel': _positions_mask([4, 4, 4, 4, 8, 4, 4, 4, 4], (2, 4))},
  ]
  pattern = guided.average_density(runs, layout, source='magnitude pruning 80%, 2 runs (digits)')
  done = _fake_done()
  entry = done['guided']['architectures']['guided']
  entry['pattern'], entry['stage_map'] = pattern.to_json(), {'stage1': 'stage1'}
  entry['drawn_kernel_maps'] = [m.to_json() for m in guided.average_kernel_maps(runs[:1], layout)]
  summary = report.summarize_guided(c, done)
  assert summary['rows']['guided']['pattern']['kernel_maps'][0]['std'][0][0] == pytest.approx(
      np.std([0.25, 0.5], ddof=1)
  )
  text = report.markdown_guided(summary).splitlines()
  assert '| guided sparsification (averaged densities and kernel maps) | 400 | 5.00M | 81.00 ± 1.41 |' in '\n'.join(
      text
  )
  assert (
      '| stage1 | 3x3 | 0.500 | 0.38 0.50 0.38 / 0.50 1.00 0.50 / 0.38 0.50 0.38 | 0.177 | '
      '0.25 0.50 0.25 / 0.50 1.00 0.50 / 0.25 0.50 0.25 |'
  ) in text
  assert text[
      text.index(
          '| stage | kernel | density | keep probability (rows top to bottom) | max std over runs | drawn mask |'
      )
      - 2
  ].startswith(
      'guided: average keep probability per kernel position, per stage (magnitude pruning 80%, 2 runs (digits); the '
      'std is over the 2 runs)'
  )
  png = report.plot_kernel_maps(summary['rows']['guided'], str(tmp_path / report.KERNEL_MAPS_PNG))
  assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------------------------------- guided sparsification
def _zeros(model, input_shape=(1, 32, 32, 3)):
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape)))
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), dict(v))


def test_guided_sparsification_builds_the_averaged_densities_and_uniform_at_the_same_nonzeros():
  model = models.build('vgg_slimming', TINY, 10)
  zeros = _zeros(model)
  layout = guided.conv_stages(model, zeros, (1, 32, 32, 3))
  # one stage per feature-map size, largest first: conv0 at 32x32, conv1-2 at 16x16, then 8, 4, 2
  assert layout == [
      ('stage1', ('conv0/kernel',)),
      ('stage2', ('conv1/kernel', 'conv2/kernel')),
      ('stage3', ('conv3/kernel',)),
      ('stage4', ('conv4/kernel',)),
      ('stage5', ('conv5/kernel',)),
  ]
  flat = flatten(zeros['params'])
  shapes = {p: flat[p].shape for _, paths in layout for p in paths}
  runs = [  # two magnitude runs, given as masks with known kept fractions per conv
      guided.sparse_mask(shapes, {p: d for p, d in zip(shapes, (0.5, 0.25, 0.75, 0.5, 0.125, 0.5))}, 1),
      guided.sparse_mask(shapes, {p: d for p, d in zip(shapes, (0.25, 0.25, 0.25, 0.5, 0.375, 1.0))}, 2),
  ]
  pattern = guided.average_density(runs, layout)
  sizes = {p: int(np.prod(s)) for p, s in shapes.items()}
  conv12 = ('conv1/kernel', 'conv2/kernel')  # stage 2: the kept weights of both convs over their sizes
  stage2 = [sum(float(r[p].sum()) for p in conv12) / sum(sizes[p] for p in conv12) for r in runs]
  assert pattern.names == ('stage1', 'stage2', 'stage3', 'stage4', 'stage5') and pattern.structure == 'unstructured'
  np.testing.assert_allclose(pattern.ratios, [0.375, np.mean(stage2), 0.5, 0.25, 0.75], atol=1 / 216)
  built = guided.sparse_mask(shapes, guided.conv_densities(pattern, layout), 0)
  for name, paths in layout:  # every conv of a stage at the stage's averaged density (rounded per conv)
    for p in paths:
      assert abs(built[p].sum() - dict(zip(pattern.names, pattern.ratios))[name] * sizes[p]) <= 0.5
      assert set(np.unique(built[p])) <= {0.0, 1.0}
  per_layer = guided.average_density(runs, layout, 'layer')
  assert per_layer.names == tuple(shapes) and guided.conv_densities(per_layer, layout)['conv2/kernel'] == 0.5
  # uniform at the guided mask's non-zero count: one density in every conv, the same total within 1 per conv
  kept = sum(m.sum() for m in built.values())
  uniform = guided.sparse_mask(shapes, {p: kept / sum(sizes.values()) for p in shapes}, 0)
  assert abs(sum(m.sum() for m in uniform.values()) - kept) <= len(shapes)
  assert guided.Pattern.from_json(pattern.to_json()) == pattern
  with pytest.raises(UserError, match='does not rewidth a network'):
    guided.apply(pattern, 'vgg_slimming', TINY)
  with pytest.raises(UserError, match='no mask for the conv conv5/kernel'):
    guided.average_density([{p: m for p, m in runs[0].items() if p != 'conv5/kernel'}], layout)


def _positions_mask(kept_at, pairs_shape) -> np.ndarray:
  """A (3, 3, in, out) 0/1 mask whose position k keeps its first kept_at[k] (in, out) channel pairs."""
  pairs = int(np.prod(pairs_shape))
  by_position = np.zeros((9, pairs), np.float32)
  for k, n in enumerate(kept_at):
    by_position[k, :n] = 1.0
  return by_position.reshape((3, 3, *pairs_shape))


def test_kernel_maps_of_hand_built_masks_are_the_kept_fractions_per_position():
  layout = [('stage1', ('a/kernel',)), ('stage2', ('b/kernel', 'c/kernel', 'd/kernel'))]
  # stage 2 pools b (4 x 8 = 32 channel pairs a position) and c (4 x 4 = 16); d is 1 x 1: no map of its own
  runs = [
      {
          'a/kernel': _positions_mask([2, 4, 2, 4, 8, 4, 2, 4, 2], (2, 4)),
          'b/kernel': _positions_mask([0, 8, 0, 8, 32, 8, 0, 8, 0], (4, 8)),
          'c/kernel': _positions_mask([0, 4, 0, 4, 16, 4, 0, 4, 0], (4, 4)),
          'd/kernel': np.ones((1, 1, 16, 4), np.float32),
      },
      {
          'a/kernel': _positions_mask([4, 4, 4, 4, 8, 4, 4, 4, 4], (2, 4)),
          'b/kernel': _positions_mask([8, 8, 8, 8, 32, 8, 8, 8, 8], (4, 8)),
          'c/kernel': _positions_mask([0, 4, 0, 4, 16, 4, 0, 4, 0], (4, 4)),
          'd/kernel': np.zeros((1, 1, 16, 4), np.float32),
      },
  ]
  maps = guided.average_kernel_maps(runs, layout)
  assert [(m.stage, m.kernel) for m in maps] == [('stage1', (3, 3)), ('stage2', (3, 3))]
  np.testing.assert_allclose(
      maps[0].runs, [[0.25, 0.5, 0.25, 0.5, 1, 0.5, 0.25, 0.5, 0.25], [0.5] * 4 + [1] + [0.5] * 4]
  )
  np.testing.assert_allclose(maps[0].mean, [[0.375, 0.5, 0.375], [0.5, 1, 0.5], [0.375, 0.5, 0.375]])
  np.testing.assert_allclose(maps[0].std, np.std([0.25, 0.5], ddof=1) * np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]]))
  # stage 2, position 0: run 1 keeps 0 of 48 pairs, run 2 8 of 48 (b) -> 1/12 on average; centre: all
  np.testing.assert_allclose(maps[1].mean[0, 0], (0 + 8 / 48) / 2)
  np.testing.assert_allclose(maps[1].mean[0, 1], 12 / 48)
  np.testing.assert_allclose(maps[1].mean[1, 1], 1.0)
  pattern = guided.average_density(runs, layout)
  assert pattern.kernel_maps == maps and guided.Pattern.from_json(json.loads(json.dumps(pattern.to_json()))) == pattern
  assert pattern.to_json()['kernel_maps'][0]['mean'][1] == [0.5, 1.0, 0.5]


def test_drawn_masks_hit_the_stage_densities_and_position_probabilities():
  shapes = {'a/kernel': (3, 3, 64, 64), 'b/kernel': (3, 3, 64, 32), 'c/kernel': (1, 1, 64, 32)}
  layout = [('stage1', ('a/kernel',)), ('stage2', ('b/kernel', 'c/kernel'))]
  corners = np.array([[0.1, 0.3, 0.1], [0.3, 0.9, 0.3], [0.1, 0.3, 0.1]])  # a stage's map, mean 2.5 / 9
  maps = (
      guided.KernelMap('stage1', (3, 3), (tuple(corners.reshape(-1)),)),
      guided.KernelMap('stage2', (3, 3), (tuple(np.full(9, 0.5)), tuple(np.r_[np.zeros(8), 0.9]))),
  )
  pattern = guided.Pattern(
      'vgg_slimming', (), 'stage', ('stage1', 'stage2'), (2.5 / 9, 0.15), (), '', 'unstructured', maps
  )
  weights = guided.conv_position_weights(pattern, layout, shapes)
  assert set(weights) == {'a/kernel', 'b/kernel'}  # the 1 x 1 conv: positions uniform (its map is its density)
  densities = guided.conv_densities(pattern, layout)
  drawn = guided.sparse_mask(shapes, densities, 3, weights)
  for path, density in densities.items():  # every conv at its stage's density (rounded)
    assert abs(drawn[path].sum() - density * drawn[path].size) <= 0.5
  by_position = drawn['a/kernel'].reshape(9, -1).mean(axis=1)  # the stage's map scaled to the density: itself here
  np.testing.assert_allclose(by_position, corners.reshape(-1), atol=1 / 4096 + 1e-7)
  # stage 2's map (0.25 off the centre, 0.7 in it, mean 0.3) scaled to 0.15 per position of b
  stage2 = maps[1].mean.reshape(-1)
  np.testing.assert_allclose(drawn['b/kernel'].reshape(9, -1).mean(axis=1), stage2 * 0.15 / stage2.mean(), atol=1e-3)
  again = guided.sparse_mask(shapes, densities, 3, weights)
  assert all(np.array_equal(drawn[p], again[p]) for p in shapes)  # one seed, one mask
  other = guided.sparse_mask(shapes, densities, 4, weights)
  assert not np.array_equal(drawn['a/kernel'], other['a/kernel'])
  np.testing.assert_array_equal(other['a/kernel'].reshape(9, -1).sum(1), drawn['a/kernel'].reshape(9, -1).sum(1))
  # a density the map cannot hold (0.9 x 0.5 / (2.5 / 9) > 1): the centre full, its excess shared in proportion
  full = guided.sparse_mask(shapes, {'a/kernel': 0.5}, 0, weights)['a/kernel'].reshape(9, -1).mean(axis=1)
  assert full.sum() * 4096 == round(0.5 * 9 * 4096) and full[4] == 1.0 and full.max() <= 1.0
  np.testing.assert_allclose(full[[0, 1]] / full[[1, 0]], [1 / 3, 3], rtol=1e-2)  # corners : edges stays 1 : 3
  assert list(guided.split_over_positions([1, 2, 3, 0, 0, 0, 0, 0, 9], 100, 20)) == [20, 20, 20, 4, 4, 4, 4, 4, 20]


def test_unstructured_patterns_transfer_stage_by_stage_across_depths():
  source_model = models.build('vgg_slimming', TINY, 10)
  deeper = (8, 8, 'M', 16, 16, 16, 'M', 8, 'M', 8, 8, 'M', 8)  # the same 5 feature-map sizes, 9 convs
  target_model = models.build('vgg_slimming', deeper, 10)
  layouts, shapes = {}, {}
  for name, model in (('source', source_model), ('target', target_model)):
    zeros = _zeros(model)
    layouts[name] = guided.conv_stages(model, zeros, (1, 32, 32, 3))
    flat = flatten(zeros['params'])
    shapes[name] = {p: flat[p].shape for _, paths in layouts[name] for p in paths}
  stage_of = {p: i for i, (_, paths) in enumerate(layouts['source']) for p in paths}
  runs = [
      guided.sparse_mask(shapes['source'], {p: (0.8, 0.6, 0.4, 0.3, 0.2)[stage_of[p]] for p in shapes['source']}, s)
      for s in (0, 1)
  ]
  pattern = guided.average_density(runs, layouts['source'], family='vgg_slimming', cfg=TINY)
  mapping = guided.sparse_stage_map(pattern, layouts['target'], 'vgg_slimming')
  assert mapping == {f'stage{k}': f'stage{k}' for k in range(1, 6)}
  densities = guided.conv_densities(pattern, layouts['target'], mapping)
  weights = guided.conv_position_weights(pattern, layouts['target'], shapes['target'], mapping)
  drawn = guided.sparse_mask(shapes['target'], densities, 0, weights)
  ratio_of = dict(zip(pattern.names, pattern.ratios))
  for name, paths in layouts['target']:  # every conv of target stage k (2, 3, 1, 2, 1 of them) at stage k's density
    for p in paths:
      assert abs(drawn[p].sum() - ratio_of[name] * drawn[p].size) <= 0.5
  assert len(layouts['target'][1][1]) == 3 and set(weights) == set(shapes['target'])
  four_stages = models.build('vgg_slimming', (8, 'M', 16, 'M', 8, 'M', 8), 10)  # on 16 x 16 images: 16, 8, 4, 2
  layout = guided.conv_stages(four_stages, _zeros(four_stages, (1, 16, 16, 3)), (1, 16, 16, 3))
  with pytest.raises(UserError, match='^[^\n]*$') as e:
    guided.sparse_stage_map(pattern, layout, 'VGG-4')
  assert f'no stage mapping from vgg_slimming {list(TINY)} (5 feature-map sizes) to VGG-4 (4 feature-map sizes)' in str(
      e.value
  )
  per_conv = guided.average_density(runs, layouts['source'], 'layer', 'vgg_slimming', TINY)
  with pytest.raises(UserError, match='a per-conv pattern applies to its own convs only'):
    guided.sparse_stage_map(per_conv, layouts['target'])
  assert guided.sparse_stage_map(per_conv, layouts['source']) == {f'stage{k}': f'stage{k}' for k in range(1, 6)}
  with pytest.raises(UserError, match='a structured pattern .channel widths. does not sparsify a network'):
    guided.sparse_stage_map(guided.average(RUNS), layouts['target'])


@pytest.mark.slow  # a tiny end-to-end experiment: a magnitude run, the guided phase, 3 scratch runs
def test_guided_sparsification_runs_through_the_runner(tmp_path, cifar_dir):  # noqa: F811
  from test_pruning_pipeline import _tiny  # pylint: disable=import-outside-toplevel

  from pruning_jax import main as pruning_main  # pylint: disable=import-outside-toplevel
  from pruning_jax.task import load_mask  # pylint: disable=import-outside-toplevel

  lines = _tiny(
      cifar_dir,
      [
          f'c.model.update(dict(name="vgg_slimming", cfg={TINY!r}))',
          'c.guided.structure = "unstructured"',
          'c.prune.percent = 0.6',
          'c.sparsity.s = 0.0',
          'c.data.name = "cifar10"',
          "c.data.train_transforms = (\"keep(keys=('image', 'label'))\", *c.data.train_transforms)",
          "c.data.eval_transforms = (\"keep(keys=('image', 'label'))\", *c.data.eval_transforms)",
          'c.num_epochs = 1',
          'c.experiment.phases = ("large", "prune", "scratch_e")',
      ],
  )
  config = _write_config(tmp_path / 'tiny_guided_u.py', 'digits_guided.py:unstructured', lines)
  workdir = tmp_path / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  summary = json.loads((workdir / 'results.json').read_text())
  rows = summary['rows']
  assert list(rows) == ['unpruned', 'pruned', 'guided', 'uniform']
  pattern = json.loads((workdir / 'guided' / 'pattern.json').read_text())
  assert pattern['structure'] == 'unstructured' and len(pattern['runs']) == 1
  model = models.build('vgg_slimming', TINY, 10)
  zeros = _zeros(model)
  convs = [p for p in flatten(zeros['params']) if p.endswith('kernel') and np.ndim(flatten(zeros['params'])[p]) == 4]
  run_masks = [
      flatten(load_mask(str(workdir / f'seed{s}' / 'prune' / 'mask.safetensors'), zeros['params'])) for s in (0,)
  ]
  assert np.isclose(
      np.mean([sum(m[p].sum() for p in convs) for m in run_masks])
      / sum(m.size for m in [run_masks[0][p] for p in convs]),
      0.4,
      atol=0.01,
  )  # the runs kept 40% of the conv weights
  guided_mask = flatten(load_mask(str(workdir / 'guided' / 'guided' / 'mask.safetensors'), zeros['params']))
  ratio_of = pattern['ratios']
  for name, paths in guided.conv_stages(model, zeros, (1, 32, 32, 3)):
    want = np.mean([sum(m[p].sum() for p in paths) / sum(m[p].size for p in paths) for m in run_masks])
    assert np.isclose(ratio_of[name], want)
    by_stage = {m['stage']: np.reshape(m['mean'], -1) for m in pattern['kernel_maps']}
    for p in paths:
      assert abs(guided_mask[p].sum() - want * guided_mask[p].size) <= 0.5
      # the stage's keep-probability map split the conv's kept weights over the 9 kernel positions
      kept_at = guided_mask[p].reshape(9, -1).sum(axis=1)
      pairs = guided_mask[p].size // 9
      assert list(kept_at) == list(guided.split_over_positions(by_stage[name], int(guided_mask[p].sum()), pairs))
  assert os.path.isfile(summary['kernel_maps_png'])
  # each architecture trained from scratch under its mask: its zeros stayed zeros, its params count the non-zeros
  for name in ('guided', 'uniform'):
    for seed in (0,):
      r = json.loads((workdir / f'seed{seed}' / name / 'scratch_e' / 'results.json').read_text())
      mask = flatten(load_mask(str(workdir / 'guided' / name / 'mask.safetensors'), zeros['params']))
      trained = flatten(job.read_weights(str(workdir / f'seed{seed}' / name / 'scratch_e'))[1]['params'])
      assert all(np.all(trained[p][mask[p] == 0] == 0) for p in convs)
      assert r['nonzero_params'] == rows[name]['params']['mean']
  assert abs(rows['guided']['params']['mean'] - rows['uniform']['params']['mean']) <= len(convs)
  assert 'guided sparsification' in (workdir / 'results.md').read_text()
