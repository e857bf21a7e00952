"""The experiment runner: the results table from phase results, bad input (one line, exit 2, nothing saved lost),
and tiny end-to-end experiments on the CIFAR-layout builder through the real cifar configs: an uninterrupted run,
the same run SIGKILLed inside the prune phase's export and then mid-phase, rerun each time (same final results,
the same export), the mask implementation keeping its zeros."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cifar_like
import numpy as np
import pytest
import safetensors.numpy
from pruning_helpers import recipes

from core_jax import pause_points
from pruning_jax import job, report
from pruning_jax import main as pruning_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs', 'pruning')
TINY_VGG = (8, 'M', 8, 'M', 16, 'M', 16, 'M', 16)


def _write_config(path, base: str, lines: list[str]) -> str:
  """A config file that loads configs/pruning/BASE and applies `lines` (python statements on `c`)."""
  file, _, arg = base.partition(':')
  body = '\n'.join(f'  {line}' for line in lines)
  path.write_text(f"""import importlib.util
spec = importlib.util.spec_from_file_location('_base_config', {os.path.join(CONFIGS, file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)


def get_config():
  c = module.get_config({arg!r}) if {arg!r} else module.get_config()
{body}
  return c
""")
  return str(path)


def _tiny(data_dir: str, extra: list[str] = ()) -> list[str]:
  """Seconds-long phases: a tiny model, 2 steps an epoch (128 examples, batch 64), 1 seed."""
  return [
      f'c.data.data_dir = {data_dir!r}',
      'c.eval_batch_size = 32',
      'c.num_epochs = 3',
      'c.finetune.num_epochs = 1',
      'c.experiment.seeds = (0,)',
      'c.eval_every_epochs = 100.0',
      'c.checkpoint.every_steps = 1',
      'c.checkpoint.asynchronous = False',
      'c.log_every_steps = 100',
      *extra,
  ]


def _l1_lines(data_dir):
  return _tiny(
      data_dir,
      [
          f'c.model.update(dict(name="vgg_slimming", cfg={TINY_VGG!r}))',
          'c.prune.scheme = None',
          'c.prune.scheme = dict(cfg=(4, "M", 8, "M", 8, "M", 16, "M", 8))',
      ],
  )


def _main(argv, capsys):
  code = pruning_main.main(argv)
  err = capsys.readouterr().err
  return code, [line for line in err.splitlines() if line.strip()]


def _fails_in_one_line_keeping_saved_work(tmp_path, capsys, config: str, message: str) -> None:
  """Runs `config` on a workdir holding earlier work: exit 2, one line naming the problem, the work untouched."""
  workdir = tmp_path / 'run'
  (workdir / 'seed0').mkdir(parents=True)
  (workdir / 'seed0' / 'kept.txt').write_text('earlier work')
  code, err = _main([f'--config={config}', f'--workdir={workdir}'], capsys)
  assert code == 2 and len(err) == 1 and message in err[0], err
  assert sorted(p.name for p in workdir.rglob('*')) == ['kept.txt', 'seed0']


def _comparable(summary: dict) -> dict:
  keep = ('seed', 'accuracy', 'params', 'macs', 'nonzero_params', 'epochs', 'cfg')
  return {p: [{k: s[k] for k in keep} for s in e['per_seed']] for p, e in summary['phases'].items()}


# ------------------------------------------------------------------------------------------------ the table
def _fake_done():
  done = {}
  for seed, accs in ((0, (0.93, 0.10, 0.92, 0.925, 0.935)), (1, (0.95, 0.20, 0.94, 0.935, 0.945))):
    large, prune, ft, se, sb = accs
    cfg = [4, 8]
    done[f'seed{seed}/large'] = {
        'accuracy': large,
        'params': 1000,
        'macs': 10_000_000,
        'nonzero_params': 1000,
        'model': {'cfg': [8, 16]},
        'workdir': f'/w/seed{seed}/large',
    }
    done[f'seed{seed}/prune'] = {
        'accuracy': prune,
        'params': 400 + seed,
        'macs': 4_000_000,
        'macs_large': 10_000_000,
        'pruned_model': {'cfg': cfg},
        'workdir': f'/w/seed{seed}/prune',
    }
    for name, acc in (('finetune', ft), ('scratch_e', se), ('scratch_b', sb)):
      done[f'seed{seed}/{name}'] = {
          'accuracy': acc,
          'params': 400 + seed,
          'macs': 4_000_000,
          'nonzero_params': 400,
          'model': {'cfg': cfg},
          'workdir': f'/w/seed{seed}/{name}',
      }
  return done


def test_summary_and_markdown_table():
  c = recipes.cifar_recipe(recipes.experiment_config())
  c.model.name = 'vgg16'
  c.prune.scheme = 'vgg16_a'
  c.experiment.update(dict(title='T', seeds=(0, 1), paper=dict(large=93.63, scratch_b='93.78 ± 0.15')))
  summary = report.summarize(c, _fake_done())
  ph = summary['phases']
  assert ph['large']['accuracy']['mean'] == pytest.approx(94.0)
  assert ph['large']['accuracy']['std'] == pytest.approx(np.std([93.0, 95.0], ddof=1))
  assert [s['epochs'] for s in ph['scratch_b']['per_seed']] == [400, 400]  # int(160 * 10M / 4M)
  assert ph['finetune']['epochs']['mean'] == 40 and ph['prune']['epochs']['mean'] == 0
  assert ph['finetune']['macs_pruned_percent'] == pytest.approx(60.0)
  text = report.markdown(summary)
  lines = text.splitlines()
  assert lines[0] == '### T' and 'L1-norm vgg16_a, 2 seeds' in lines[2]
  assert lines[4] == '| | unpruned | pruned | Fine-tuned | Scratch-E | Scratch-B |'
  assert '| accuracy (%) | 94.00 ± 1.41 | 15.00 ± 7.07 | 93.00 ± 1.41 | 93.00 ± 0.71 | 94.00 ± 0.71 |' in lines
  assert '| paper (%) | 93.63 | - | - | - | 93.78 ± 0.15 |' in lines
  assert '| epochs | 160 | 0 | 40 | 160 | 400 |' in lines
  assert any(line.startswith('| MACs | 10.00M | 4.00M (-60.0%) |') for line in lines)
  assert any(line.startswith('| params | 1.0K | 400 (400-401) (-59.9%) |') for line in lines)
  assert lines[-1] == 'pruned cfg: [4, 8]'
  # the claim the table shows: Scratch-B 94.00 ± 0.71 vs Fine-tuned 93.00 ± 1.41
  assert summary['claim'] == {
      'scratch_b_minus_finetuned': pytest.approx(1.0),
      'spread': pytest.approx(2.12, abs=0.01),
      'holds': True,
  }
  assert lines[-3] == (
      "the paper's claim, Scratch-B >= Fine-tuned within the seeds' spread: holds "
      '(Scratch-B - Fine-tuned = +1.00 points, spread 2.12)'
  )


@pytest.mark.parametrize(
    'finetune,scratch_b,holds',
    [
        ((90.0, 92.0), (85.0, 86.0), False),  # 5.5 points below, spread 2.1: fails
        ((90.0, 92.0), (89.0, 90.0), True),  # 1.5 below, within the spread 2.1
        ((90.0,), (89.9,), False),  # one seed: no spread, any shortfall fails
        ((90.0,), (90.0,), True),
    ],
)
def test_scratch_b_claim_within_the_seeds_spread(finetune, scratch_b, holds):
  def entry(values):
    return {'accuracy': report._stats(values)}

  claim = report.scratch_b_claim({'finetune': entry(finetune), 'scratch_b': entry(scratch_b)})
  assert claim['holds'] is holds
  assert claim['scratch_b_minus_finetuned'] == pytest.approx(np.mean(scratch_b) - np.mean(finetune))
  assert report.scratch_b_claim({'finetune': entry(finetune)}) is None


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    'lines,message',
    [
        (['c.prune.method = "random"'], "unknown pruning method 'random'"),
        (['c.model.name = "resnet57"'], "unknown model 'resnet57'"),
        (['c.prune.scheme = "resnet57_z"'], "unknown L1-norm scheme 'resnet57_z'"),
        (
            ['c.prune.scheme = None', 'c.prune.scheme = dict(skip=(16, 21), ratios=(0.1, 0.1, 0.1))'],
            'skip list names layer id 21',
        ),
        (
            ['c.prune.scheme = None', 'c.prune.scheme = dict(skip=(), ratios=(0.1, 0.99, 0.1))'],
            'leaves no filter in block',
        ),
        (['c.prune.mode = "mask"'], 'prune.mode=mask is implemented for slimming only'),
        (['c.experiment.phases = ("large", "finetune")'], 'need the prune phase'),
        (['c.finetune.lr = -0.01'], 'the fine-tune phase (finetune.lr=-0.01, finetune.num_epochs=40): optimizer.lr'),
    ],
)
def test_bad_experiment_configs_fail_before_training(tmp_path, capsys, lines, message):
  config = _write_config(tmp_path / 'bad.py', 'l1_cifar10.py:resnet56_a', lines)
  workdir = tmp_path / 'run'
  code, err = _main([f'--config={config}', f'--workdir={workdir}'], capsys)
  assert code == 2 and len(err) == 1 and err[0].startswith('error: ') and message in err[0], err
  assert not workdir.exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds_cifar_like'))
  cifar_like.prepare(d, 'cifar10', num_train=128, num_test=64)
  cifar_like.prepare(d, 'cifar100', num_train=128, num_test=64)
  return d


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, cifar_dir):
  """The tiny L1 experiment through configs/pruning/l1_cifar10.py, run once uninterrupted."""
  root = tmp_path_factory.mktemp('pipeline')
  config = _write_config(root / 'tiny_l1.py', 'l1_cifar10.py:vgg16_a', _l1_lines(cifar_dir))
  workdir = root / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  return config, workdir


@pytest.mark.slow
def test_tiny_experiment_writes_the_table(finished_run, capsys):
  config, workdir = finished_run
  summary = json.loads((workdir / 'results.json').read_text())
  ph = summary['phases']
  assert list(ph) == list(job.PHASES) and summary['dataset'] == 'cifar10' and summary['seeds'] == [0]
  large, prune = ph['large']['per_seed'][0], ph['prune']['per_seed'][0]
  assert large['cfg'] == list(TINY_VGG) and prune['cfg'] == [4, 'M', 8, 'M', 8, 'M', 16, 'M', 8]
  ratio = large['macs'] / prune['macs']
  assert ratio > 1.5
  epochs = {p: ph[p]['per_seed'][0]['epochs'] for p in ph}
  assert epochs == {'large': 3, 'prune': 0, 'finetune': 1, 'scratch_e': 3, 'scratch_b': int(3 * ratio)}
  for p in ('finetune', 'scratch_e', 'scratch_b'):
    r = json.loads((workdir / 'seed0' / p / 'results.json').read_text())
    assert r['step'] == 2 * epochs[p] and r['model']['cfg'] == prune['cfg']
    assert r['params'] == prune['params'] and r['macs'] == prune['macs']
  for p in job.PHASES:
    assert 0.0 <= ph[p]['accuracy']['mean'] <= 100.0
  ft = json.loads((workdir / 'seed0' / 'finetune' / 'results.json').read_text())
  assert ft['history_this_run'] or ft['eval']
  md = (workdir / 'results.md').read_text()
  assert md == report.markdown(summary) and '| epochs | 3 | 0 | 1 | 3 |' in md
  # a rerun skips every phase and prints the same table
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  out = capsys.readouterr().out
  assert out.count('finished earlier') == 5 and md in out


@pytest.mark.slow
def test_sigkilled_experiment_in_the_export_and_mid_phase_resumes_to_the_same_results(finished_run, tmp_path, capsys):
  config, reference = finished_run
  workdir = tmp_path / 'killed'
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.path.dirname(__file__))
  # First a kill inside the prune phase's export, paused (core_jax.pause_points) with the pruned weights written
  # and their sidecar not yet: the rerun runs the phase again and overwrites the export.
  point = 'save_pruned:weights_written'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'pruning_jax.main', f'--config={config}', f'--workdir={workdir}'],
      cwd=REPO,
      env={**env, pause_points.ENV: point},
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
  )
  try:
    seen = []
    for line in proc.stderr:
      seen.append(line)
      if line.strip() == f'paused at {point}':
        break
    assert proc.poll() is None, f'the run ended before pausing at {point}:\n{"".join(seen)[-3000:]}'
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  prune_dir = workdir / 'seed0' / 'prune'
  assert (workdir / 'seed0' / 'large' / 'results.json').exists() and (prune_dir / job.EXPORT).exists()
  assert not (prune_dir / 'pruned.json').exists() and not (prune_dir / 'results.json').exists()
  # Then the same command, slowed down, killed inside the last training phase.
  proc = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'pruning_jax.main',
          f'--config={config}',
          f'--workdir={workdir}',
          '--config.debug.step_delay_s=0.4',
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      start_new_session=True,
  )
  ckpts = workdir / 'seed0' / 'scratch_b' / 'checkpoints'
  deadline = time.time() + 600
  try:
    while time.time() < deadline and proc.poll() is None:
      if ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts)):
        break
      time.sleep(0.05)
    assert proc.poll() is None, 'the run ended before it could be killed mid-phase'
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert not (workdir / 'seed0' / 'scratch_b' / 'results.json').exists()
  assert (workdir / 'seed0' / 'scratch_e' / 'results.json').exists() and not (workdir / 'results.json').exists()
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  out = capsys.readouterr().out
  assert out.count('finished earlier') == 4 and 'resumed from step' in out
  got = json.loads((workdir / 'results.json').read_text())
  want = json.loads((reference / 'results.json').read_text())
  assert _comparable(got) == _comparable(want)
  exports = [d / 'seed0' / 'prune' / job.EXPORT for d in (workdir, reference)]
  got_tensors, want_tensors = (safetensors.numpy.load_file(str(path)) for path in exports)
  assert got_tensors.keys() == want_tensors.keys()
  for k, v in want_tensors.items():
    np.testing.assert_array_equal(got_tensors[k], v, err_msg=k)
  got_meta, want_meta = (json.loads(path.with_suffix('.json').read_text()) for path in exports)
  assert got_meta == want_meta | {'source': got_meta['source']}


@pytest.mark.slow
def test_corrupt_checkpoint_and_emptying_threshold_are_one_line_and_keep_saved_work(
    finished_run, cifar_dir, tmp_path, capsys
):
  config, reference = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(reference / 'seed0' / 'large', workdir / 'seed0' / 'large')
  # slimming at 99% of the channels of the finished large model: every set would be emptied
  slim = _write_config(
      tmp_path / 'slim.py',
      'slimming_cifar.py:vgg19_c10_70',
      _tiny(
          cifar_dir,
          [
              f'c.model.update(dict(name="vgg_slimming", cfg={TINY_VGG!r}))',
              'c.prune.percent = 0.99',
              'c.prune.on_empty_layer = "error"',
          ],
      ),
  )
  code, err = _main([f'--config={slim}', f'--workdir={workdir}'], capsys)
  assert code == 2 and len(err) == 1 and 'would remove every channel of' in err[0], err
  assert (workdir / 'seed0' / 'large' / 'results.json').exists()
  # a corrupt large-phase checkpoint: the prune phase stops with one line; every file stays
  step_dir = max((workdir / 'seed0' / 'large' / 'checkpoints').iterdir(), key=lambda p: int(p.name))
  for f in (step_dir / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'\0' * max(f.stat().st_size, 1))
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*'))
  code, err = _main([f'--config={config}', f'--workdir={workdir}'], capsys)
  assert code == 2 and len(err) == 1 and err[0].startswith('error: '), err
  after = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*'))
  assert set(before) <= set(after)
  # given large weights of another cfg (the pruned export): one line naming both cfgs
  export = reference / 'seed0' / 'prune' / job.EXPORT
  code, err = _main([f'--config={config}', f'--workdir={tmp_path / "given"}', f'--config.init_from={export}'], capsys)
  assert code == 2 and len(err) == 1 and 'but config.model builds vgg_slimming cfg' in err[0], err


@pytest.mark.slow
def test_mask_implementation_fine_tunes_with_the_pruned_channels_held_at_zero(cifar_dir, tmp_path):
  config = _write_config(
      tmp_path / 'mask.py',
      'slimming_cifar.py:vgg19_c100_50',
      _tiny(
          cifar_dir,
          [
              f'c.model.update(dict(name="vgg_slimming", cfg={TINY_VGG!r}))',
              'c.prune.mode = "mask"',
              'c.experiment.phases = ("large", "prune", "finetune")',
              'c.sparsity.s = 1e-3',
          ],
      ),
  )
  workdir = tmp_path / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  prune = json.loads((workdir / 'seed0' / 'prune' / 'results.json').read_text())
  ft = json.loads((workdir / 'seed0' / 'finetune' / 'results.json').read_text())
  assert ft['model']['cfg'] == list(TINY_VGG) and ft['model']['num_classes'] == 100
  from pruning_jax import io  # pylint: disable=import-outside-toplevel
  from pruning_jax.task import count_nonzero  # pylint: disable=import-outside-toplevel

  _, masked = io.load_pruned(prune['masked_export'])
  assert ft['nonzero_params'] == count_nonzero(masked['params']) < ft['params']
  summary = json.loads((workdir / 'results.json').read_text())
  assert list(summary['phases']) == ['large', 'prune', 'finetune']
  assert 'mask implementation' in (workdir / 'results.md').read_text()
