"""anytime_jax.main: bad input is one line and exit 2 (before any data work); the digit_scenes job end to end
(small: 24 steps fitting 8 scenes, its last exit then above background-only on them; its tau-1 phase is an
eval-only run at another threshold; the scene figure), eval-only into its own directory reproducing the training's
evaluation and at a lower threshold, rerun skips phases."""

import json
import os
import subprocess
import sys

import pytest
from cheap_init import CHEAP

from anytime_jax import job, main, report
from core_jax import cli, metrics
from core_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py')


def test_bad_tau_through_main_subprocess(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'anytime_jax.main',
          f'--config={DIGITS}',
          f'--workdir={workdir}',
          '--config.model.tau=1.5',
      ],
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert err == ['error: confidence threshold tau must be in (0, 1], got 1.5']
  assert not workdir.exists()


@pytest.mark.parametrize(
    'override, message',
    [
        ('--config.model.masked_stages=(1, 2, 3)', 'stage 1 cannot be masked'),
        ("--config.model.masked_stages=('stem',)", 'the stem cannot be masked'),
        ('--config.model.exits=(1, 2, 3, 4, 5)', 'exit 5 does not exist'),
        ('--config.model.tau=0.0', r'tau must be in (0, 1], got 0.0'),
        ('--config.anytime.eval_taus=(0.9, 1.01)', r'tau must be in (0, 1], got 1.01'),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, override, message):
  workdir = tmp_path / 'run'
  code = cli.run_main(
      main._run,
      [f'--config={DIGITS}', f'--workdir={workdir}', override],
      prog='anytime_jax.main',
      config_dir=main.CONFIG_DIR,
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and message in err and '\n' not in err, err
  assert not workdir.exists()


def test_help_lists_the_configs(capsys):
  assert cli.run_main(main._run, ['--help'], prog='anytime_jax.main', config_dir=main.CONFIG_DIR) == 0
  out = capsys.readouterr().out
  for name in ('digit_scenes.py', 'cityscapes.py'):
    assert name in out
  assert not any(line.split()[0] == '_base.py' for line in out.splitlines() if line.strip())


# The end-to-end job fits its few training scenes: LEARN_STEPS full-batch steps on 8 scenes, evaluated on the same
# scenes, take its last exit above predicting background everywhere (what a job that does not learn scores)
LEARN_STEPS = 24


def small_job(tfds_dir):
  c = cli.load_config_file(DIGITS)
  c.data.update(dict(data_dir=str(tfds_dir), train_split='train[:8]', eval_split='train[:8]'))
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = LEARN_STEPS
  c.log_every_steps = LEARN_STEPS
  c.optimizer.warmup_epochs = 0.0
  c.checkpoint.update(dict(every_steps=LEARN_STEPS, asynchronous=False))
  c.anytime.eval_taus = (1.0,)  # the dense run; the eval-only run below covers a lower threshold
  # LLVM -O0 instead of the job's -O1 (its steps compile in ~3/4 of the time; 24 short steps do not make up the
  # slower steps), as the other tests' programs compile (tests/xla_test_flags.py)
  c.xla_compiler_options = CHEAP
  return c


def background_only_miou(tfds_dir, split: str) -> float:
  """The mIoU of predicting class 0 (background) at every pixel of `split`, from its labels (255 ignored)."""
  source, info = sources.load_source('digit_scenes', split, str(tfds_dir))
  labels = (source[i]['segmentation'] for i in range(len(source)))
  return metrics.background_only_miou(labels, int(info.num_classes), ignore_label=255)


@pytest.mark.slow
def test_digit_scenes_job_end_to_end(tmp_path, tfds_dir, capsys):
  workdir = str(tmp_path / 'job')
  data = job.run(small_job(tfds_dir), workdir)
  out = capsys.readouterr().out
  name = report.run_label(small_job(tfds_dir)).split(' (')[0]  # ADP-C, or EE+CA with EE exits
  assert [r['label'] for r in data['runs']] == [f'{name} (tau 0.998)', f'{name} (tau 1)']
  with open(os.path.join(workdir, 'anytime.json')) as f:
    assert json.load(f)['runs'] == data['runs']
  assert os.path.getsize(os.path.join(workdir, 'anytime.png')) > 10_000
  assert 'mIoU %' in out and 'skipped %' in out and 'anytime curve:' in out
  adp_c, dense = data['runs']
  # it learns: the last exit beats background-only on the scenes it fitted, and so does the first (13.8 vs 9.2%
  # here; with the paper's RH depths, before the config's rh_max_depth 1, the job's exit 1 predicted background
  # everywhere on the validation scenes)
  background = background_only_miou(tfds_dir, 'train[:8]')
  assert 0.05 < background < 0.2
  assert adp_c['exits'][-1]['miou'] > 100 * background + 5.0, (adp_c['exits'], background)
  assert adp_c['exits'][0]['miou'] > 100 * background + 2.0, (adp_c['exits'], background)
  assert os.path.getsize(os.path.join(workdir, 'scene.png')) > 10_000
  for run in data['runs']:
    assert [e['exit'] for e in run['exits']] == [1, 2, 3, 4]
    gf = [e['gflops'] for e in run['exits']]
    assert gf == sorted(gf) and gf[0] > 0
  # tau 1 computes every pixel: the dense count (the EE+RH network's cost); CA never costs more than dense (the
  # RBF term is at most 1/4 x 49 x C_out x H x W per conv, far below the convs' dense cost here)
  assert all(e['fraction'] == 1.0 for e in dense['exits'])
  assert [e['gflops'] for e in dense['exits']] == pytest.approx(list(dense['gflops_dense'].values()), rel=1e-6)

  # eval-only in the trained phase dir: into the core's PHASE/eval/step<LEARN_STEPS>-tau0.998, the training results
  # untouched. At the training's own threshold it reproduces the training phase's evaluation exactly (the same
  # checkpoint and program)
  phase = os.path.join(workdir, 'adp_c')
  with open(os.path.join(phase, 'results.json')) as f:
    before = f.read()
  c = small_job(tfds_dir)  # the job's config: eval_only runs the one evaluation
  c.eval_only = True
  single = job.run(c, phase)
  with open(os.path.join(phase, 'results.json')) as f:
    assert f.read() == before
  assert os.path.isfile(os.path.join(phase, 'eval', f'step{LEARN_STEPS}-tau0.998', 'anytime.json'))
  assert single['runs'][0]['label'] == f'{name} (tau 0.998)'
  assert single['runs'][0]['weights'] == os.path.join(phase, 'checkpoints', str(LEARN_STEPS))
  assert single['runs'][0]['exits'] == adp_c['exits']
  # a lower threshold computes no more pixels and costs no more: tau 0.998 against tau 1
  for low, high in zip(adp_c['exits'], dense['exits']):
    assert low['fraction'] <= high['fraction'] and low['gflops'] <= high['gflops'] + 1e-9
  # and `--config.model.tau` evaluates another threshold into its own sub-dir (the same compiled eval program:
  # the threshold is the step's argument), again no more pixels than at 0.998
  c.model.tau = 0.9
  low = job.run(c, phase)['runs'][0]
  assert os.path.isfile(os.path.join(phase, 'eval', f'step{LEARN_STEPS}-tau0.9', 'anytime.json'))
  assert low['label'] == f'{name} (tau 0.9)'
  assert low['exits'][3]['fraction'] <= adp_c['exits'][3]['fraction']
  assert low['exits'][3]['gflops'] <= adp_c['exits'][3]['gflops'] + 1e-9

  # a rerun skips every finished phase and reports the same numbers
  again = job.run(small_job(tfds_dir), workdir)
  assert [r['exits'] for r in again['runs']] == [r['exits'] for r in data['runs']]
