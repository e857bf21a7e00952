"""Values no run can use stop before any work with one line naming the key: batch sizes, a training length of no
steps, a workdir that is a file, a drop-path rate of 1 or more (each was a traceback or a silent run before)."""

import types

import jax
import jax.numpy as jnp
import pytest

from convnext_jax.models import create_model
from core_jax import config as config_lib
from core_jax import parallel, train
from core_jax.errors import UserError


@pytest.mark.parametrize('key', ['batch_size', 'eval_batch_size'])
@pytest.mark.parametrize('value', [0, -8])
def test_a_batch_size_of_no_examples_is_one_line(key, value):
  c = config_lib.base_config()
  c[key] = value
  with pytest.raises(UserError, match=f'^{key} must be a positive number of examples, got {value}$'):
    train.build_mesh(c)


def test_a_training_length_of_no_steps_names_num_epochs():
  c = config_lib.base_config()
  c.num_epochs = 0.01
  data = types.SimpleNamespace(steps_per_epoch=22, total_steps=int(c.num_epochs * 22))
  with pytest.raises(UserError, match=r'^num_epochs 0.01 at 22 steps per epoch is 0 training steps'):
    train.build_optimizer(c, task=None, data=data)


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  f = tmp_path / 'results.txt'
  f.write_text('kept')
  with pytest.raises(UserError, match='is not writable: it is a file, not a directory$'):
    train._check_workdir(str(f))  # pylint: disable=protected-access
  assert f.read_text() == 'kept'


@pytest.mark.parametrize('rate', [1.0, 1.5, -0.1])
def test_a_drop_path_rate_outside_0_1_is_one_line(rate):
  model = create_model('convnext_digits', drop_path_rate=rate, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
  with pytest.raises(UserError, match=r"^drop_path_rate: a block's drop-path rate must be in \[0, 1\)"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_mesh_checks_still_pass_a_good_batch():
  parallel.check_batch_size(8, train.build_mesh(config_lib.base_config()))
