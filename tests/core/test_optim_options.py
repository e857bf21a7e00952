"""Optimizer options are checked once, before anything is built or written (issue 23, item 1): each rule of
`optim.check_options` is a one-line UserError naming the key; every shipped config passes; a real
`anytime_jax.main` process given a negative learning rate exits 2 with one line and creates no workdir."""

import glob
import os
import subprocess
import sys

import ml_collections
import pytest

from core_jax import cli, optim
from core_jax.config import base_config
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_config(**optimizer):
  c = base_config()
  c.num_epochs = 10.0
  c.optimizer.update(optimizer)
  return c


@pytest.mark.parametrize(
    'options, message',
    [
        (dict(lr=-1.0), 'optimizer.lr must be > 0, got -1'),
        (dict(lr=0.0), 'optimizer.lr must be > 0, got 0'),
        (dict(lr=float('nan')), 'optimizer.lr must be a finite number'),
        (dict(weight_decay=-1e-4), 'optimizer.weight_decay must be >= 0'),
        (dict(grad_clip_norm=-1.0), 'optimizer.grad_clip_norm must be >= 0'),
        (dict(momentum=1.0), r'optimizer.momentum must lie in [0, 1), got 1'),
        (dict(momentum=-0.1), r'optimizer.momentum must lie in [0, 1)'),
        (dict(name='adamw', b1=1.0), r'optimizer.b1 must lie in [0, 1)'),
        (dict(name='adamw', b2=1.5), r'optimizer.b2 must lie in [0, 1)'),
        (dict(ema_decay=1.0), r'optimizer.ema_decay must lie in [0, 1)'),
        (dict(ema_decay=-0.5), r'optimizer.ema_decay must lie in [0, 1)'),
        (dict(name='adamw', eps=0.0), 'optimizer.eps must be > 0'),
        (dict(warmup_epochs=-1.0), 'optimizer.warmup_epochs must be >= 0'),
        (dict(warmup_epochs=11.0), 'optimizer.warmup_epochs (11) exceeds num_epochs (10)'),
        (dict(schedule='linear'), "unknown lr schedule 'linear'"),
        (dict(name='lamb'), "unknown optimizer 'lamb'"),
        (dict(min_lr=0.5), 'optimizer.min_lr (0.5) must not exceed optimizer.lr (0.1)'),
        (dict(warmup_init_lr=-0.1), 'optimizer.warmup_init_lr must be >= 0'),
        (dict(accumulate_steps=0), 'optimizer.accumulate_steps must be an integer >= 1'),
        (dict(decay_factor=0.0), 'optimizer.decay_factor must be > 0'),
        (dict(decay_epochs=(-1,)), 'optimizer.decay_epochs must be >= 0'),
        (dict(momentum=0.0, nesterov=True), 'nesterov=True needs momentum > 0'),
    ],
)
def test_each_rule_is_one_line_naming_the_key(options, message):
  with pytest.raises(UserError) as info:
    optim.check_config(run_config(**options))
  assert message in str(info.value) and '\n' not in str(info.value), str(info.value)


def test_run_length_rules():
  c = run_config()
  c.num_epochs = -1.0
  with pytest.raises(UserError, match='num_epochs must be >= 0'):
    optim.check_config(c)
  c.num_epochs = 0.0  # an evaluation-only phase (pruning's large phase given weights): no warmup conflict
  c.optimizer.warmup_epochs = 5.0
  optim.check_config(c)
  c.num_epochs, c.num_train_steps = 1.0, 100  # a length in steps: warmup is checked once steps are known
  optim.check_config(c)


def test_sane_options_and_defaults_pass():
  optim.check_config(run_config())
  optim.check_config(run_config(name='adamw', lr=4e-3, weight_decay=0.05, ema_decay=0.9999, warmup_epochs=2.0))
  optim.check_options(ml_collections.ConfigDict(dict(name='sgd', lr=0.1)))  # DEFAULTS fill the rest


@pytest.mark.parametrize(
    'path', sorted(p for p in glob.glob(os.path.join(REPO, 'configs', '*', '*.py')) if '/_' not in p)
)
def test_every_shipped_config_passes(path):
  optim.check_config(cli.load_config_file(path))


def test_negative_lr_through_a_real_main_process_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'anytime_jax.main',
          f'--config={os.path.join(REPO, "configs", "anytime", "digit_scenes.py")}',
          f'--workdir={workdir}',
          '--config.optimizer.lr=-1.0',
      ],
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == ['error: optimizer.lr must be > 0, got -1'], proc.stderr[-2000:]
  assert not workdir.exists()
