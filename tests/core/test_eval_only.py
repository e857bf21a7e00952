"""Eval-only runs owned by the core (core_jax.train.evaluate_only): results in WORKDIR/eval/<tag>/, the training
run's results.json and checkpoints byte-identical afterwards, the tags, the one-line errors.

In process, on the toy task (tests/core/toy_task.py): a 12-step run with EMA and checkpoints at 4, 8, 12."""

import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
import toy_task

from core_jax import cli, train
from core_jax.errors import UserError
from core_jax.task import Task


def _config(tfds_dir, **changes):
  c = toy_task.get_config()
  c.data.data_dir = str(tfds_dir)
  c.optimizer.ema_decay = 0.9  # so a checkpoint's EMA copy is evaluated too
  c.checkpoint.asynchronous = False
  for key, value in changes.items():
    target = c
    *groups, name = key.split('.')
    for g in groups:
      target = target[g]
    target[name] = value
  return c


def _files(root) -> dict[str, str]:
  """{relative path: sha1 of the bytes} of every file under `root`."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tfds_dir):
  workdir = str(tmp_path_factory.mktemp('trained'))
  results = train.run(_config(tfds_dir), workdir, toy_task.ToyTask)
  return workdir, results


def test_eval_only_writes_under_eval_and_touches_nothing_of_the_training(trained, tfds_dir, capsys):
  workdir, results = trained
  before = _files(workdir)
  assert 'results.json' in before and any(k.startswith('checkpoints/12/') for k in before)
  capsys.readouterr()

  latest = train.run(_config(tfds_dir, eval_only=True), workdir, toy_task.ToyTask)
  out = capsys.readouterr().out
  assert f'evaluating step 12 of {os.path.abspath(workdir)}' in out and 'fresh start' not in out
  eval_dir = os.path.join(os.path.abspath(workdir), 'eval', 'step12')
  assert latest['eval_dir'] == eval_dir and latest['step'] == 12 and latest['eval_only']
  assert latest['weights'] == os.path.join(os.path.abspath(workdir), 'checkpoints', '12')
  with open(os.path.join(eval_dir, 'results.json')) as f:
    assert json.load(f)['eval'] == latest['eval']
  assert os.listdir(os.path.join(eval_dir, 'tensorboard'))
  # the checkpoint's own weights and EMA copy: the training's final evaluation, to the last digit
  assert set(latest['eval']) == set(results['eval']) and any(k.startswith('ema_') for k in latest['eval'])
  for k, v in results['eval'].items():
    assert latest['eval'][k] == pytest.approx(v, abs=1e-6), k

  chosen = train.run(_config(tfds_dir, eval_only=True, **{'checkpoint.restore_step': 8}), workdir, toy_task.ToyTask)
  assert chosen['step'] == 8 and chosen['eval_dir'] == os.path.join(os.path.abspath(workdir), 'eval', 'step8')

  after = _files(workdir)
  assert {k: v for k, v in after.items() if not k.startswith('eval/')} == before  # byte-identical, none added
  assert not any(os.path.exists(os.path.join(workdir, d)) for d in ('checkpoints_corrupt', 'checkpoints_superseded'))


@pytest.mark.slow  # a real eval-only process: ~11 s on 2 cores
def test_eval_only_of_a_weights_file(trained, tfds_dir, tmp_path, capsys):
  workdir, _ = trained
  b = train.build(_config(tfds_dir), str(tmp_path), toy_task.ToyTask)
  fresh = jax.tree.map(np.asarray, b.init_fn())
  path = str(tmp_path / 'my weights.npz')
  toy_task.save_variables(path, {'params': fresh.params, 'batch_stats': fresh.batch_stats})
  before = {k: v for k, v in _files(workdir).items() if not k.startswith('eval/')}
  capsys.readouterr()
  results = train.run(_config(tfds_dir, eval_only=True, init_from=path), workdir, toy_task.ToyTask)
  assert f'evaluating weights {path}' in capsys.readouterr().out
  assert results['eval_dir'] == os.path.join(os.path.abspath(workdir), 'eval', 'weights-my_weights')
  assert results['weights'] == path and not any(k.startswith('ema_') for k in results['eval'])
  assert {k: v for k, v in _files(workdir).items() if not k.startswith('eval/')} == before


def test_eval_tag_names_what_and_how():
  class Plain(Task):
    pass

  class Threshold(Task):

    def eval_tag(self):
      return 'tau0.99'

  plain, tau = Plain(None, None), Threshold(None, None)
  assert train.eval_tag(plain, '/w/checkpoints/496', None) == 'step496'
  assert train.eval_tag(tau, '/w/checkpoints/496', None) == 'step496-tau0.99'
  assert train.eval_tag(tau, None, '/x/hrnet_w48.pth') == 'weights-hrnet_w48-tau0.99'
  assert train.eval_tag(plain, None, '/runs/large/checkpoints/20') == 'weights-large-step20'
  assert train.eval_tag(plain, None, '/runs/pruned.safetensors') == 'weights-pruned'
  # another compute dtype gives other numbers: its own folder, not the float32 evaluation's
  bf16, fp32 = (Threshold(ml_collections.ConfigDict({'compute_dtype': d}), None) for d in ('bfloat16', 'float32'))
  assert train.eval_tag(bf16, '/w/checkpoints/496', None) == 'step496-tau0.99-bfloat16'
  assert train.eval_tag(fp32, '/w/checkpoints/496', None) == 'step496-tau0.99'
  # a step evaluated in the dtype it was trained in (ImageNet's bfloat16 recipe) keeps the plain name; float32
  # after bfloat16 training gives other numbers too
  assert train.eval_tag(bf16, '/w/checkpoints/496', None, 'bfloat16') == 'step496-tau0.99'
  assert train.eval_tag(fp32, '/w/checkpoints/496', None, 'bfloat16') == 'step496-tau0.99-float32'


def test_eval_only_without_checkpoint_or_weights_is_one_line(tfds_dir, tmp_path, capsys):
  workdir = tmp_path / 'empty'
  with pytest.raises(UserError, match=r'^eval_only: no checkpoint in .* and no init_from weights to evaluate$'):
    train.run(_config(tfds_dir, eval_only=True), str(workdir), toy_task.ToyTask)
  assert not workdir.exists()  # nothing created
  # through the command line: exit 2, one line
  code = cli.run_main(
      toy_task.run, [f'--config={toy_task.__file__}', f'--workdir={workdir}', '--config.eval_only=True']
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and 'no init_from weights to evaluate' in err[0]
  assert not workdir.exists()


def test_eval_only_of_a_step_that_is_not_kept(trained, tfds_dir):
  workdir, _ = trained
  with pytest.raises(UserError, match=r'checkpoint.restore_step=5: no such step .*\(kept steps: 4, 8, 12\)'):
    train.run(_config(tfds_dir, eval_only=True, **{'checkpoint.restore_step': 5}), workdir, toy_task.ToyTask)


@pytest.mark.slow  # 6-16 s on 2 cores: out of make test-fast (5-minute budget), still in make test
def test_an_eval_only_phase_of_an_experiment_is_finished_by_its_results(tfds_dir, tmp_path, capsys):
  """A train_phase whose config evaluates (pruning's large phase given weights): the core writes
  PHASE/eval/<tag>/results.json, the experiment PHASE/results.json, so a rerun skips the phase."""
  from core_jax import experiment  # pylint: disable=import-outside-toplevel

  b = train.build(_config(tfds_dir), str(tmp_path), toy_task.ToyTask)
  fresh = jax.tree.map(np.asarray, b.init_fn())
  path = str(tmp_path / 'given.npz')
  toy_task.save_variables(path, {'params': fresh.params, 'batch_stats': fresh.batch_stats})
  phases = [
      experiment.train_phase('large', lambda done: _config(tfds_dir, eval_only=True, init_from=path), toy_task.ToyTask)
  ]
  done = experiment.run_experiment(phases, str(tmp_path / 'exp'))
  phase_dir = tmp_path / 'exp' / 'large'
  with open(phase_dir / 'results.json') as f:
    recorded = json.load(f)
  assert recorded['eval_only'] and recorded['eval'] == done['large']['eval']
  assert (phase_dir / 'eval' / 'weights-given' / 'results.json').is_file()
  capsys.readouterr()
  again = experiment.run_experiment(phases, str(tmp_path / 'exp'))
  assert 'finished earlier' in capsys.readouterr().out and again['large']['eval'] == done['large']['eval']
