"""Values no run can use stop before any work with one line naming the key: batch sizes, a training length of no
steps, a workdir that is a file, a drop-path rate of 1 or more (each was a traceback or a silent run before)."""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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


def _saved(c):
  return json.loads(c.to_json_best_effort())


def test_resuming_with_another_seed_batch_data_or_model_stops_naming_the_change(tmp_path):
  then = config_lib.base_config()
  then.model = ml_collections.ConfigDict(dict(name='convnext_digits', drop_path_rate=0.1))
  saved = _saved(then)
  assert train.resume_config_changes(then, saved, 'W', 12) == ''
  for key, value in [('seed', 1), ('batch_size', 64), ('model.drop_path_rate', 0.2), ('data.name', 'digits')]:
    now = config_lib.base_config()
    now.model = ml_collections.ConfigDict(dict(name='convnext_digits', drop_path_rate=0.1))
    group, _, leaf = key.rpartition('.')
    (now[group] if group else now)[leaf] = value
    with pytest.raises(UserError, match=rf'^W holds step 12 of another run: {key} .* -> {value!r} since its'):
      train.resume_config_changes(now, saved, 'W', 12)
    now.checkpoint.allow_config_change = True
    assert train.resume_config_changes(now, saved, 'W', 12).startswith(f'changed options: {key} ')


def test_resuming_with_a_lower_lr_or_more_epochs_names_them_and_ignores_debug_options():
  then = config_lib.base_config()
  now = config_lib.base_config()
  now.optimizer.lr, now.num_epochs = 0.01, 3.0
  now.debug.step_delay_s, now.checkpoint.restore_step, now.mesh.fsdp = 0.5, 4, 2
  assert train.resume_config_changes(now, _saved(then), 'W', 4) == (
      'changed options: num_epochs 1.0 -> 3.0, optimizer.lr 0.1 -> 0.01'
  )
  assert train.resume_config_changes(now, None, 'W', 4) == ''  # a checkpoint without the config in its meta


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('seed', -1, r'^seed must be an integer >= 0 \(a non-negative integer\), got -1$'),
        ('log_every_steps', 0, r'^log_every_steps must be an integer >= 1 \(steps\), got 0$'),
        ('checkpoint.every_steps', 0, r'^checkpoint.every_steps must be an integer >= 1 \(steps\), got 0$'),
        ('checkpoint.keep', 0, r'^checkpoint.keep must be an integer >= 1 \(checkpoints \(0 would keep none'),
        ('mesh.fsdp', 0, r'^mesh.fsdp must be an integer >= 1 \(devices per parameter shard\), got 0$'),
        ('eval_every_epochs', 0.0, r'^eval_every_epochs must be > 0, got 0.0$'),
        # these two ran as if unset (num_epochs; the latest step), without a word
        (
            'num_train_steps',
            0,
            r'^num_train_steps must be a number of steps >= 1, or -1 for num_epochs to decide, got 0$',
        ),
        ('num_train_steps', -5, r'^num_train_steps must be a number of steps >= 1, or -1 for num_epochs to decide'),
        (
            'checkpoint.restore_step',
            -7,
            r'^checkpoint.restore_step must be a kept step >= 0, or -1 for the latest, got -7$',
        ),
    ],
)
def test_loop_options_no_run_can_use_are_one_line(key, value, message):
  """Each was a traceback deep in the loop (a modulo by zero, grain's seed check) or, keep=0, a run keeping nothing."""
  c = config_lib.base_config()
  group, _, leaf = key.rpartition('.')
  (c[group] if group else c)[leaf] = value
  with pytest.raises(UserError, match=message):
    config_lib.check_run_options(c)
  config_lib.check_run_options(config_lib.base_config())  # the defaults pass


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path):
  from core_jax.data import sources  # pylint: disable=import-outside-toplevel

  f = tmp_path / 'tfds'
  f.write_text('not a folder')
  with pytest.raises(
      UserError, match=r'^data dir .*tfds is a file, not a directory \(data.data_dir, or TFDS_DATA_DIR\)$'
  ):
    sources.load_source('digits', 'train', str(f))


@pytest.mark.parametrize('name, kind', [('checkpoints', 'file'), ('tensorboard', 'file'), ('results.json', 'folder')])
def test_a_workdir_entry_of_the_wrong_kind_is_one_line_and_kept(tmp_path, name, kind):
  """A file named checkpoints was an 81-line orbax traceback after the model had compiled; a folder named
  results.json a traceback at the end of the training."""
  entry = tmp_path / name
  if kind == 'file':
    entry.write_text('kept')
  else:
    entry.mkdir()
  where = 'a file where the run keeps a folder' if kind == 'file' else 'a folder where the run writes a file'
  with pytest.raises(UserError, match=f'^{entry} is {where}: move it out of the workdir$'):
    train._check_workdir(str(tmp_path))  # pylint: disable=protected-access
  assert entry.exists() and (kind == 'folder' or entry.read_text() == 'kept')
  train._check_workdir(str(tmp_path / 'fresh'))  # pylint: disable=protected-access


@pytest.mark.parametrize('key', ['batch_size', 'eval_batch_size'])
def test_a_global_batch_the_devices_do_not_divide_names_its_key(key):
  """Both were 'global batch size 7 is not divisible by the 2 devices', which did not say which of the two."""
  two_devices = types.SimpleNamespace(devices=np.empty((2, 1), object))
  with pytest.raises(UserError, match=rf'^{key} 7 \(a global batch\) is not divisible by the 2 devices$'):
    parallel.check_batch_size(7, two_devices, key)
  parallel.check_batch_size(8, two_devices, key)


@pytest.mark.parametrize('name', ['', 'a b', 'x/y:z/'])
def test_a_dataset_name_tfds_cannot_parse_is_one_line(tmp_path, name):
  """'' was a 61-line traceback of TFDS' name parser ('Parsing builder name string  failed')."""
  from core_jax.data import sources  # pylint: disable=import-outside-toplevel

  with pytest.raises(UserError, match=rf'^unknown dataset {name!r}: not an embedded dataset \(digit_scenes, digits\)'):
    sources.load_source(name, 'train', str(tmp_path))
  assert os.listdir(tmp_path) == []  # nothing prepared or written


@pytest.mark.parametrize('name', ['digits/x', 'digit_scenes:2.0.0'])
def test_an_embedded_dataset_with_a_config_or_version_is_one_line(tmp_path, name):
  """'digits/x' trained on digits, the '/x' dropped without a word."""
  from core_jax.data import sources  # pylint: disable=import-outside-toplevel

  base = name.split('/')[0].split(':')[0]
  with pytest.raises(UserError, match=rf'^dataset {name!r}: the embedded dataset {base!r} has no configs or versions'):
    sources.load_source(name, 'train', str(tmp_path))
  assert os.listdir(tmp_path) == []
