"""Every experiment config of configs/pruning builds, passes the job's checks and resolves its phases (without
training): the paper's recipe, the fine-tune / Scratch-E / Scratch-B budgets (Scratch-B epochs against the reference
sheet), and the CIFAR data path on the tiny CIFAR-layout builder."""

import functools
import glob
import os
import subprocess
import sys

import cifar_like
import numpy as np
import pytest

from core_jax import cli
from core_jax.data import ops
from core_jax.errors import UserError
from pruning_jax import job, models, zoo
from pruning_jax.methods import l1_norm
from pruning_jax.task import build_from_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs', 'pruning')
L1_CIFAR = {'vgg16_a': 243, 'resnet56_a': 178, 'resnet56_b': 220, 'resnet110_a': 190, 'resnet110_b': 260}
L1_IMAGENET = {'resnet34_a': 106, 'resnet34_b': 118}  # the reference sheet's "about 106 / 118"
SLIMMING_CIFAR = [
    'vgg19_c10_70',
    'vgg19_c100_50',
    'preresnet164_c10_40',
    'preresnet164_c10_60',
    'preresnet164_c100_40',
    'preresnet164_c100_60',
    'densenet40_c10_40',
    'densenet40_c10_60',
    'densenet40_c100_40',
    'densenet40_c100_60',
]
ALL = (
    [f'l1_cifar10.py:{a}' for a in L1_CIFAR]
    + [f'l1_imagenet.py:{a}' for a in L1_IMAGENET]
    + [f'slimming_cifar.py:{a}' for a in SLIMMING_CIFAR]
    + ['slimming_imagenet.py', 'digits_l1.py', 'digits_slimming.py']
)


def _load(spec):
  return cli.load_config_file(os.path.join(CONFIGS, spec))


@functools.cache
def _counts(family, cfg, dataset):
  return zoo.params_and_macs(models.build(family, cfg, 10 if dataset == 'cifar' else 1000), dataset)


def _fake_prune_results(config, pruned_cfg):
  """What the prune phase hands on, with the counts of the large and the pruned architecture."""
  large = build_from_config(config.model, None)
  family = models.family_of(large)
  dataset = 'imagenet' if config.data.name == 'imagenet2012' else 'cifar'
  params_large, macs_large = _counts(family, models.cfg_of(large), dataset)
  params, macs = _counts(family, tuple(pruned_cfg), dataset)
  return {
      'export': '/x/pruned.safetensors',
      'masked_export': '/x/masked.safetensors',
      'mask': '/x/mask.safetensors',
      'pruned_model': {'family': family, 'cfg': list(pruned_cfg), 'selections': None, 'num_classes': 10},
      'params_large': params_large,
      'macs_large': macs_large,
      'params': params,
      'macs': macs,
  }


# Configs of the part-2 methods: each method's own test file resolves them (test_pruning_magnitude.py, ...).
OTHER_METHODS = [
    'magnitude_cifar.py',
    'magnitude_imagenet.py',
    'digits_magnitude.py',
    'lottery_cifar.py',
    'digits_lottery.py',
    'guided_cifar.py',  # test_pruning_guided.py
    'digits_guided.py',
    'sss_imagenet.py',  # and digits_sss.py: test_pruning_sss.py
    'digits_sss.py',
    'sfp_cifar.py',  # test_pruning_sfp.py
    'digits_sfp.py',
    'thinet_imagenet.py',  # ThiNet and regression: test_pruning_reconstruction.py
    'regression_imagenet.py',
    'digits_thinet.py',
    'digits_regression.py',
]


def test_every_config_file_is_listed_here():
  files = {
      os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, '*.py')) if not os.path.basename(p).startswith('_')
  }
  # the ConvNeXt configs (the traced surgery and magnitude pruning with AdamW): tests/pruning/test_pruning_graph.py
  # resolves their phases
  convnext = {'digits_convnext.py', 'digits_convnext_magnitude.py', 'convnext_tiny_imagenet.py'}
  assert files == {spec.split(':')[0] for spec in ALL + OTHER_METHODS} | convnext


@pytest.mark.parametrize('spec', ALL)
def test_config_builds_checks_and_resolves_its_phases(spec):
  c = _load(spec)
  job.check_config(c)
  seeds = [int(s) for s in c.experiment.seeds]
  names = [p.name for p in job.phases_for(c)]
  assert names == [f'seed{s}/{p}' for s in seeds for p in job.PHASES]
  assert c.experiment.title and set(c.experiment.paper) <= set(job.PHASES)
  imagenet = c.data.name == 'imagenet2012'
  opt = c.optimizer
  assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay, opt.wd_exclude_1d, opt.schedule) == (
      'sgd',
      0.9,
      False,
      1e-4,
      False,
      'step',
  )
  if not spec.startswith('digits'):
    assert c.batch_size == (256 if imagenet else 64) and c.num_epochs == (90 if imagenet else 160)
    assert tuple(opt.decay_fractions) == ((1 / 3, 2 / 3) if imagenet else (0.5, 0.75))
    assert len(seeds) == (1 if imagenet else 5)
  for spec_t in (c.data.train_transforms, c.data.eval_transforms):
    ops.build_transforms(spec_t)

  large = job.large_config(c, seeds[0])
  assert large.sparsity.s == c.sparsity.s and not large.init_from and large.num_epochs == c.num_epochs
  if c.prune.method == 'l1_norm':
    pruned_cfg = l1_norm.target_cfg(build_from_config(c.model, None), job._scheme(c))  # pylint: disable=protected-access
  else:  # slimming's cfg comes from trained scales: any cfg of the family resolves the same way (selection
    # families would also need kept indices, so they keep their cfg here)
    assert c.sparsity.s in (1e-4, 1e-5, 0.02)
    large_model = build_from_config(c.model, None)
    pruned_cfg = models.cfg_of(large_model)
    if models.family_of(large_model) not in models.SELECTION_FAMILIES:
      pruned_cfg = tuple(v if v == 'M' else max(1, v // 2) for v in pruned_cfg)
  prune = _fake_prune_results(c, pruned_cfg)
  ft = job.finetune_config(c, seeds[0], prune)
  assert (ft.optimizer.schedule, ft.sparsity.s, ft.num_epochs) == ('constant', 0.0, c.finetune.num_epochs)
  ft_epochs = {'l1_imagenet.py': 20, 'slimming_imagenet.py': 5, 'digits_l1.py': 2, 'digits_slimming.py': 1}
  assert ft.optimizer.lr == 0.001 and ft.num_epochs == ft_epochs.get(spec.split(':')[0], 40)
  if c.prune.mode == 'mask':  # fine-tuned in the large shape with the mask holding the pruned channels at 0
    assert ft.model.name == c.model.name and ft.mask.path == prune['mask'] and ft.init_from == prune['masked_export']
  else:
    assert list(ft.model.cfg) == list(pruned_cfg) and ft.init_from == prune['export'] and not ft.mask.path
  se = job.scratch_config(c, seeds[0], prune, 'scratch_e')
  assert (se.num_epochs, se.init_from, list(se.model.cfg), se.sparsity.s) == (c.num_epochs, '', list(pruned_cfg), 0.0)
  assert tuple(se.optimizer.decay_fractions) == tuple(opt.decay_fractions)
  sb = job.scratch_config(c, seeds[0], prune, 'scratch_b')
  epochs = int(sb.num_epochs)
  ratio = prune['macs_large'] / prune['macs']
  cap = c.scratch.budget_cap or None
  assert epochs == (int(c.num_epochs * cap) if cap and ratio >= cap else int(c.num_epochs * ratio))
  fractions = (1 / 3, 2 / 3) if imagenet else (0.5, 0.75)
  assert tuple(sb.optimizer.decay_epochs) == tuple(int(f * epochs + 1e-9) for f in fractions)
  assert tuple(sb.optimizer.decay_fractions) == ()
  for phase_config in (large, ft, se, sb):
    build_from_config(phase_config.model, 10)
  arg = spec.partition(':')[2]
  if arg in L1_CIFAR:
    assert epochs == L1_CIFAR[arg] and tuple(sb.optimizer.decay_epochs) == (epochs // 2, int(0.75 * epochs))
  if arg in L1_IMAGENET:
    assert epochs == L1_IMAGENET[arg], ratio
  if arg == 'vgg16_a':
    assert round(100 * (1 - prune['params'] / prune['params_large']), 1) == 64.0
    assert round(100 * (1 - prune['macs'] / prune['macs_large']), 1) == 34.2


def test_config_arguments_and_help():
  with pytest.raises(UserError, match=r"get_config\('resnet57_a'\).*expected one of vgg16_a"):
    _load('l1_cifar10.py:resnet57_a')
  with pytest.raises(UserError, match='expected one of vgg19_c10_70'):
    _load('slimming_cifar.py:vgg19_c10_50')
  out = subprocess.run(
      [sys.executable, '-m', 'pruning_jax.main', '--help'],
      cwd=REPO,
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=REPO),
      timeout=120,
  )
  assert out.returncode == 0, out.stderr
  for name in ('l1_cifar10.py', 'slimming_cifar.py', 'l1_imagenet.py', 'slimming_imagenet.py', 'digits_l1.py'):
    assert name in out.stdout
  assert 'pruning_jax.main' in out.stdout


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
def test_cifar_data_path_on_the_tiny_builder(tmp_path, dataset):
  from core_jax import train  # pylint: disable=import-outside-toplevel

  c = _load('l1_cifar10.py:resnet56_a' if dataset == 'cifar10' else 'slimming_cifar.py:vgg19_c100_50')
  c.data.data_dir = cifar_like.prepare(str(tmp_path), dataset, num_train=128, num_test=64)
  c.eval_batch_size = 32
  data = train.build_data(c)
  assert data.info.num_classes == (10 if dataset == 'cifar10' else 100) and data.steps_per_epoch == 2
  batch = next(data.train_iter)
  assert sorted(batch) == ['image', 'label'] and batch['image'].shape == (64, 32, 32, 3)
  assert batch['image'].dtype == np.float32 and abs(float(batch['image'].mean())) < 3
  eval_batch = next(iter(data.eval_batches))
  assert eval_batch['image'].shape == (32, 32, 32, 3)


def test_report_columns_follow_the_job_phases():
  from pruning_jax import report  # pylint: disable=import-outside-toplevel

  assert tuple(report.COLUMNS) == job.PHASES


@pytest.mark.parametrize('spec', ['digits_l1.py', 'digits_slimming.py'])
def test_a_bad_prune_ratio_stops_every_method_not_only_graph(spec):
  c = _load(spec)
  c.prune.ratio = 1.5
  with pytest.raises(UserError, match=r'^prune.ratio must be in \[0, 1\) for graph, got 1.5; only prune.method='):
    job.check_config(c)


def test_eval_only_on_an_experiment_is_one_line_not_a_silent_training_run():
  c = _load('digits_l1.py')
  c.eval_only = True
  with pytest.raises(UserError, match=r'^eval_only: a pruning experiment evaluates each phase as it ends'):
    job.check_config(c)
