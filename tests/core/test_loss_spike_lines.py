"""The loss-spike guard on every line's task (issue 23, item 4): ConvNeXt (tiny digits config), pruning (the
ResNet of configs/pruning/digits_l1.py through PruningTask) and ADP-C (configs/anytime/digit_scenes.py's HRNet
with two of its exits, through AnytimeSegTask), each through core_jax.train.run: 3 sane steps, then the same
workdir resumed at lr 1e8 stops with one line before an exploded state is saved; the step it offers holds the
sane run's weights, and a rerun from it with the sane lr finishes."""

import json
import math
import os

import numpy as np
import pytest
import toy_runs
from cheap_init import CHEAP

from core_jax import guard, train
from core_jax.cli import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _convnext(tfds_dir):
  from convnext_jax.task import ConvNeXtTask  # pylint: disable=import-outside-toplevel

  c = load_config_file(os.path.join(REPO, 'tests', 'core', 'tiny_config.py'))
  c.data.data_dir = tfds_dir
  return c, ConvNeXtTask


def _pruning(tfds_dir):
  from pruning_jax.task import PruningTask  # pylint: disable=import-outside-toplevel

  c = load_config_file(os.path.join(REPO, 'configs', 'pruning', 'digits_l1.py'))
  c.data.update(dict(data_dir=tfds_dir, train_split='train[:256]', eval_split='test[:120]'))
  return c, PruningTask


def _anytime(tfds_dir):
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel

  c = load_config_file(os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py'))
  c.data.update(dict(data_dir=tfds_dir, train_split='train[:128]', eval_split='validation[:50]'))
  # two exits, stage 4 masked by exit 3's confidence (CA on: masked convs, RBF fill, the summed exit losses):
  # the task's loss and masks as in the job, at a fraction of the four-exit step's compile (the test's time)
  c.model.update(dict(exits=(3, 4), exit_type='ee', masked_stages=(4,)))
  c.loss.exit_weights = (1.0, 1.0)
  # LLVM -O0 (the job's -O1 compiles its step in ~1.3x the time, for faster steps than 11 short ones need)
  c.xla_compiler_options = CHEAP
  return c, AnytimeSegTask


@pytest.mark.slow
@pytest.mark.parametrize('line', [_convnext, _pruning, _anytime], ids=['convnext', 'pruning', 'anytime'])
def test_every_line_stops_on_a_spike_and_resumes_from_the_offered_step(line, tfds_dir, tmp_path):
  config, task_cls = line(str(tfds_dir))
  sane_lr = config.optimizer.lr
  config.unlock()
  config.update(dict(num_train_steps=3, log_every_steps=1, eval_every_epochs=1000.0))
  # a constant lr: the sane runs of 3 and of 8 steps then share one compiled train step (a schedule over the
  # run's length bakes each length into its own program); the guard reads the loss, not the schedule
  config.optimizer.update(dict(schedule='constant', warmup_epochs=0.0))
  config.checkpoint.update(dict(every_steps=1, keep=5, keep_best=False, asynchronous=False))
  workdir = str(tmp_path)
  train.run(config, workdir, task_cls)
  config.num_train_steps = 8
  config.optimizer.lr = 1e8
  with pytest.raises(guard.LossSpike) as info:
    train.run(config, workdir, task_cls)
  line_text = str(info.value)
  assert '\n' not in line_text and 'not saved' in line_text, line_text
  kept = toy_runs.steps(workdir)
  assert kept and max(kept) <= 3 and f'--config.checkpoint.restore_step={kept[-1]}' in line_text, (kept, line_text)
  offered = toy_runs.read_state(workdir, kept[-1])
  largest = max(float(np.abs(v).max()) for k, v in offered.items() if k.startswith('params/'))
  assert largest < 1e3, largest  # the sane run's weights, not the exploded ones
  config.optimizer.lr = sane_lr
  config.checkpoint.restore_step = kept[-1]
  config.checkpoint.every_steps = 8  # the rerun's last step only: what is checked of it (its five saves were ~5 s)
  results = train.run(config, workdir, task_cls)
  assert results['step'] == 8 and all(math.isfinite(v) for v in results['eval'].values())
  assert json.load(open(os.path.join(workdir, 'results.json')))['step'] == 8
