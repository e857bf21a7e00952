"""Config loading and `--config.x=y` overrides: typed, and unknown keys fail in one line."""
import os

import pytest

from core_jax import cli
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, 'configs', 'convnext', 'digits.py')


def test_overrides_are_typed():
  config, workdir = cli.parse_args([f'--config={DIGITS}', '--workdir=/tmp/x', '--config.num_epochs=2',
                                    '--config.optimizer.lr=1', '--config.checkpoint.asynchronous=false',
                                    "--config.data.train_transforms=('flip_lr',)", '--config.data.data_dir=/d'])
  assert workdir == '/tmp/x'
  assert config.num_epochs == 2 and config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
  assert config.checkpoint.asynchronous is False
  assert config.data.train_transforms == ('flip_lr',)
  assert config.data.data_dir == '/d'


@pytest.mark.parametrize('args,message', [
    (['--config.nope=1'], "unknown config key 'nope'"),
    (['--config.optimizer.lrr=1'], "unknown config key 'optimizer.lrr'"),
    (['--config.nothere.lr=1'], "unknown config key 'nothere'"),
    (['--config.batch_size=big'], "bad value for config key 'batch_size'"),
    (['--config.optimizer=1'], "is a group"),
    (['--frobnicate=1'], 'unknown flag --frobnicate'),
])
def test_bad_overrides_name_the_problem(args, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(')):
    cli.parse_args([f'--config={DIGITS}', '--workdir=/tmp/x', *args])


def test_missing_config_file_and_flags():
  with pytest.raises(UserError, match='config file not found'):
    cli.parse_args(['--config=/nonexistent.py', '--workdir=/tmp/x'])
  with pytest.raises(UserError, match='required'):
    cli.parse_args([f'--config={DIGITS}'])


def test_run_main_prints_one_line_and_exits_2(capsys):
  assert cli.run_main(lambda c, w: None, [f'--config={DIGITS}', '--workdir=/tmp/x', '--config.zzz=1']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: unknown config key 'zzz'"]
