"""Every line config extends core_jax.config.base_config: the loop's generic options work on each of them."""

import glob
import os

import pytest

from core_jax import cli
from core_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Files starting with '_' are shared pieces that configs import (configs/anytime/_base.py), not configs.
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, 'configs', '*', '*.py')) if not os.path.basename(p).startswith('_')
)
GENERIC = [
    ('init_from', '/weights/x.safetensors'),
    ('init_reinit_head', 'True'),
    ('eval_only', 'True'),
    ('checkpoint.restore_step', '4'),
    ('checkpoint.allow_fresh_start', 'True'),
    ('debug.step_delay_s', '0.5'),
    ('debug.write_batch_digests', 'True'),
    ('num_epochs', '2.5'),
    ('mesh.fsdp', '2'),
    ('seed', '3'),
]


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_config_takes_the_generic_options(path):
  c = cli.load_config_file(path)
  base = config_lib.base_config()
  for group in ('checkpoint', 'mesh', 'distributed', 'debug', 'data', 'optimizer', 'model'):
    assert set(base[group].keys()) <= set(c[group].keys()), (group, set(base[group].keys()) - set(c[group].keys()))
  for key, value in GENERIC:
    cli.apply_override(c, key, value)
  assert c.init_from == '/weights/x.safetensors' and c.eval_only and c.checkpoint.restore_step == 4
  assert c.num_epochs == 2.5 and c.debug.step_delay_s == 0.5


def test_debug_knobs_are_off_by_default():
  c = config_lib.base_config()
  assert c.debug.step_delay_s == 0.0 and not c.debug.write_batch_digests
  assert c.checkpoint.restore_step == -1 and not c.checkpoint.allow_fresh_start
  assert 'test_step_delay_s' not in c and 'write_batch_digests' not in c


def test_load_sibling_imports_the_file_beside_the_config(tmp_path):
  (tmp_path / '_recipe.py').write_text('LR = 0.25\n')
  (tmp_path / 'mine.py').write_text(
      'from core_jax.config import base_config, load_sibling\n'
      "recipe = load_sibling(__file__, '_recipe.py')\n"
      'def get_config():\n'
      '  c = base_config()\n'
      '  c.optimizer.lr = recipe.LR\n'
      '  return c\n'
  )
  assert cli.load_config_file(str(tmp_path / 'mine.py')).optimizer.lr == 0.25
  (tmp_path / 'broken.py').write_text(
      "from core_jax.config import load_sibling\nrecipe = load_sibling(__file__, 'absent.py')\n"
  )
  with pytest.raises(cli.UserError, match=r'broken\.py.*absent\.py'):
    cli.load_config_file(str(tmp_path / 'broken.py'))
