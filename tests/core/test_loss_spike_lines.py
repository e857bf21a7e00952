"""The loss-spike guard on every line's task (issue 23, item 4): ConvNeXt (tiny digits config), pruning (the
ResNet of configs/pruning/digits_l1.py through PruningTask) and ADP-C (configs/anytime/digit_scenes.py's HRNet
through AnytimeSegTask), each through core_jax.train.run: 3 sane steps, then the same workdir resumed at lr 1e8
stops with one line before an exploded state is saved; the step it offers holds the sane run's weights, and a
rerun from it with the sane lr finishes."""

import json
import math
import os

import numpy as np
import pytest
import toy_runs

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
  c.optimizer.warmup_epochs = 0.0
  return c, AnytimeSegTask


@pytest.mark.slow
@pytest.mark.parametrize('line', [_convnext, _pruning, _anytime], ids=['convnext', 'pruning', 'anytime'])
def test_every_line_stops_on_a_spike_and_resumes_from_the_offered_step(line, tfds_dir, tmp_path):
  config, task_cls = line(str(tfds_dir))
  sane_lr = config.optimizer.lr
  config.unlock()
  config.update(dict(num_train_steps=3, log_every_steps=1, eval_every_epochs=1000.0))
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
  results = train.run(config, workdir, task_cls)
  assert results['step'] == 8 and all(math.isfinite(v) for v in results['eval'].values())
  assert json.load(open(os.path.join(workdir, 'results.json')))['step'] == 8
