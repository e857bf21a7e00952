"""configs/anytime: the paper's recipe in every Cityscapes config, their headers, the digit_scenes job's phases."""

import ast
import os

import pytest

from anytime_jax import hrnet, job, report
from anytime_jax import task as task_lib
from core_jax import cli
from core_jax.data import ops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, 'configs', 'anytime')
CITYSCAPES = {
    # cityscapes.py:ARG: (arch, exits, exit_type, CA, paper mIoU per exit)
    'w48_base': ('w48', (4,), None, False, ('80.7',)),
    'w48_ee': ('w48', (1, 2, 3, 4), 'ee', False, ('34.3', '59.0', '76.9', '80.4')),
    'w48_ee_rh': ('w48', (1, 2, 3, 4), 'rh', False, ('44.6', '60.2', '76.6', '79.9')),
    'w48_adp_c': ('w48', (1, 2, 3, 4), 'rh', True, ('44.3', '60.1', '76.8', '81.3')),
    'w18_small_v2_adp_c': (
        'w18_small_v2',
        (1, 2, 3, 4),
        'rh',
        True,
        ('40.83', '48.19', '68.26', '77.02'),
    ),
}
REFERENCE_CLASS_WEIGHTS = (
    0.8373,
    0.918,
    0.866,
    1.0345,
    1.0166,
    0.9969,
    0.9754,
    1.0489,
    0.8786,
    1.0023,
    0.9539,
    0.9843,
    1.1116,
    0.9037,
    1.0865,
    1.0955,
    1.0865,
    1.1529,
    1.0507,
)


def load(name):
  return cli.load_config_file(os.path.join(CONFIG_DIR, name))


def test_every_config_file_is_listed():
  listed = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith('.py') and not f.startswith('_'))
  assert listed == ['cityscapes.py', 'digit_scenes.py']


@pytest.mark.parametrize('variant', sorted(CITYSCAPES))
def test_cityscapes_recipe(variant):
  arch, exits, exit_type, ca, paper = CITYSCAPES[variant]
  c = load(f'cityscapes.py:{variant}')
  task_lib.validate_config(c)
  job.validate(c)
  assert (c.model.arch, tuple(c.model.exits), c.model.confidence_adaptive) == (arch, exits, ca)
  if exit_type:
    assert c.model.exit_type == exit_type
  assert c.model.tau == 0.998 and tuple(c.model.masked_stages) == (2, 3, 4)
  assert tuple(c.loss.exit_weights) == (1.0,) * len(exits)
  assert tuple(c.loss.class_weights) == REFERENCE_CLASS_WEIGHTS
  o = c.optimizer
  assert (o.name, o.lr, o.momentum, o.nesterov) == ('sgd', 0.01, 0.9, False)
  assert (o.weight_decay, o.wd_exclude_1d) == (5e-4, False)
  assert (o.schedule, o.poly_power, o.warmup_epochs) == ('poly', 0.9, 0.0)
  assert c.batch_size == 12 and c.num_epochs == 484
  assert int(c.num_epochs * (2975 // c.batch_size)) == 119_548  # the reference's iterations
  assert (c.data.name, c.data.train_split, c.data.eval_split) == ('cityscapes', 'train', 'validation')
  assert tuple(c.data.train_transforms) == ('seg_random_scale_crop(size=(512, 1024))', 'seg_flip', 'imagenet_normalize')
  assert tuple(c.data.eval_transforms) == ('imagenet_normalize',)
  for spec in tuple(c.data.train_transforms) + tuple(c.data.eval_transforms):
    ops.build_transforms((spec,))
  assert c.anytime.reference.startswith('cityscapes_')
  # the header: the command, the paper's numbers, the time
  with open(os.path.join(CONFIG_DIR, 'cityscapes.py')) as f:
    doc = ast.get_docstring(ast.parse(f.read()))
  assert 'python -m anytime_jax.main --config=configs/anytime/cityscapes.py:' in doc
  assert 'init_from' in doc and 'Time:' in doc and 'Expected' in doc
  row = [line for line in doc.splitlines() if line.strip().startswith(f'{variant} ') and 'mIoU' in line]
  assert len(row) == 1, row  # the variant's line of the expected results holds the paper's numbers
  for value in paper:
    assert value in row[0]
  # the model it builds
  model = hrnet.build(num_classes=19, **task_lib.model_options(c))
  assert model.exits == exits and (model.tau == 0.998 if ca else model.tau is None)


def test_digit_scenes_job_phases():
  c = load('digit_scenes.py')
  job.validate(c)
  # the demo: one training run (ADP-C), then its weights at a lower threshold (the pixels it saves; tau 1, the dense
  # cost, is in every run's gflops_dense)
  phases = job.job_configs(c)
  assert [n for n, _, _ in phases] == ['adp_c'] + [f'adp_c_tau{t:g}' for t in c.anytime.eval_taus]
  assert c.anytime.eval_taus == (0.99,) and c.model.tau == 0.998
  assert c.model.arch == 'w8_nano' and c.data.name == 'digit_scenes'
  # with a baseline exit type the job trains the EE+RH baseline first
  cli.apply_override(c, 'anytime.baseline_exit_type', 'rh')
  phases = job.job_configs(c)
  names = [n for n, _, _ in phases]
  assert names == ['ee_rh', 'adp_c'] + [f'adp_c_tau{t:g}' for t in c.anytime.eval_taus]
  ee_rh, adp_c = phases[0][1], phases[1][1]
  assert not ee_rh.model.confidence_adaptive and ee_rh.model.exit_type == 'rh'
  assert adp_c.model.confidence_adaptive and adp_c.model.tau == 0.998
  for name, pc, source in phases[2:]:
    assert source == 'adp_c' and pc.eval_only and pc.model.confidence_adaptive
    assert name == f'adp_c_tau{pc.model.tau:g}'
  assert [report.run_label(pc) for _, pc, _ in phases][:2] == ['EE+RH', 'ADP-C (tau 0.998)']


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('anytime.eval_taus', '(0.5, 2.0)', r'tau must be in \(0, 1\], got 2.0'),
        ('anytime.reference', 'imagenet', "anytime.reference 'imagenet' is not one of"),
        ('anytime.baseline_exit_type', 'big', "anytime.baseline_exit_type must be 'ee', 'rh' or ''"),
    ],
)
def test_bad_anytime_options(key, value, message):
  c = load('digit_scenes.py')
  cli.apply_override(c, key, value)
  with pytest.raises(Exception, match=message) as e:
    job.validate(c)
  assert type(e.value).__name__ == 'UserError' and '\n' not in str(e.value)


def test_eval_only_of_the_demo_workdir_evaluates_its_trained_phase(tmp_path, capsys):
  """`--config.eval_only=True --config.model.tau=0.9` on the digit_scenes job's WORKDIR was 'no checkpoint in
  WORKDIR': its checkpoints are the adp_c phase's (WORKDIR/adp_c/checkpoints)."""
  c = load('digit_scenes.py')
  workdir = str(tmp_path)
  assert job.evaluated_workdir(c, workdir) == workdir  # training: the job's own folder
  cli.apply_override(c, 'eval_only', 'True')
  assert job.evaluated_workdir(c, workdir) == workdir  # nothing trained yet: the core's one line says so
  os.makedirs(tmp_path / 'adp_c' / 'checkpoints')
  assert job.evaluated_workdir(c, workdir) == str(tmp_path / 'adp_c')
  assert (
      capsys.readouterr().out
      == f'eval_only: {workdir} holds a comparison job; evaluating its trained phase {tmp_path / "adp_c"}\n'
  )
  cli.apply_override(c, 'init_from', '/weights/adpc.pth')  # a weights file: evaluated into WORKDIR/eval/
  assert job.evaluated_workdir(c, workdir) == workdir
  single = load('digit_scenes.py')
  cli.apply_override(single, 'anytime.eval_taus', '()')
  cli.apply_override(single, 'eval_only', 'True')
  assert job.evaluated_workdir(single, workdir) == workdir  # one run: its checkpoints are WORKDIR's own
