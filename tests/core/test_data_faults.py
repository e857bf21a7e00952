"""A corrupt or truncated dataset record, in real processes on the toy task (tests/core/toy_task.py).

A clean run's results.json counts the examples it evaluated (`eval_examples`, the eval split's size). Then one
record of the eval split's ArrayRecord shard is damaged in a copy of the prepared `digits` (its bytes replaced by
garbage, its PNG made undecodable, the shard file cut in half) and an eval-only run of the same workdir must end
with exit 2 and one line naming the split, the shard file and the record, never evaluating the split without it.
A label map of another size than its image is refused by the source (in process).
"""

import json
import os
import shutil

import numpy as np
import pytest
import toy_runs
from array_record.python import array_record_module

from core_jax.data import sources
from core_jax.errors import UserError

EVAL_SPLIT = 'test[:80]'  # the toy config's
DAMAGED = 17  # a record in the middle of the split (not record 0, which building the eval pipeline reads first)


def _rewrite_record(path: str, index: int, damage) -> None:
  """Rewrites one ArrayRecord shard with record `index` replaced by `damage(bytes)`, the writer options kept."""
  reader = array_record_module.ArrayRecordReader(path)
  options = reader.writer_options_string()
  records = reader.read_all()
  reader.close()
  records[index] = damage(records[index])
  writer = array_record_module.ArrayRecordWriter(path + '.tmp', options)
  for record in records:
    writer.write(record)
  writer.close()
  os.replace(path + '.tmp', path)


def _garbage(record: bytes) -> bytes:
  return bytes(np.random.default_rng(0).integers(0, 256, len(record), dtype=np.uint8))


def _undecodable_png(record: bytes) -> bytes:
  assert record.count(b'\x89PNG') == 1, 'the digits image is no longer stored as one PNG'
  return record.replace(b'\x89PNG', b'\x89BAD')  # the proto still parses; the image does not decode


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tfds_dir):
  workdir = str(tmp_path_factory.mktemp('trained'))
  toy_runs.run(workdir, tfds_dir, '--config.num_train_steps=4')
  return workdir


def _damaged_copy(tmp_path, tfds_dir, damage) -> tuple[str, sources.Shard]:
  """A copy of the prepared data dir with the eval split's record DAMAGED damaged; (data dir, its shard)."""
  data_dir = str(tmp_path / 'tfds')
  shutil.copytree(tfds_dir, data_dir, ignore=shutil.ignore_patterns('*.lock'))
  source, _ = sources.load_source('digits', EVAL_SPLIT, data_dir)
  (shard,) = [s for s in source.shards if s.start <= DAMAGED < s.start + s.count]
  assert shard.filename.startswith(data_dir)
  if damage == 'truncate':
    with open(shard.filename, 'r+b') as f:
      f.truncate(os.path.getsize(shard.filename) // 2)
  else:
    _rewrite_record(shard.filename, shard.skip + DAMAGED - shard.start, damage)
  return data_dir, shard


@pytest.mark.slow
def test_eval_counts_every_example_of_the_split(trained, tfds_dir):
  with open(os.path.join(trained, 'results.json')) as f:
    results = json.load(f)
  source, info = sources.load_source('digits', EVAL_SPLIT, tfds_dir)
  assert results['eval_examples'] == len(source) == 80
  assert info.splits['test'] > 80  # the toy evaluates a slice: the count is the slice's, not the whole split's


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['garbage', 'undecodable_png', 'truncate'])
def test_a_damaged_eval_record_ends_the_run_with_one_line(trained, tfds_dir, tmp_path, damage):
  fn = {'garbage': _garbage, 'undecodable_png': _undecodable_png, 'truncate': 'truncate'}[damage]
  data_dir, shard = _damaged_copy(tmp_path, tfds_dir, fn)
  proc = toy_runs.run(trained, data_dir, '--config.eval_only=True', f'--config.data.data_dir={data_dir}', check=False)
  # A truncated shard has no readable index: its first record read (record 0, as the eval pipeline is built) fails.
  record = 0 if damage == 'truncate' else DAMAGED
  line = toy_runs.one_line_error(
      proc,
      f"split '{EVAL_SPLIT}'",
      f'record {record} (record {shard.skip + record - shard.start} of shard {shard.filename})',
      'cannot be read',
  )
  assert len(line) < 600, line
  assert not os.path.exists(os.path.join(trained, 'eval', 'step4', 'results.json'))


class _Records:
  """An in-memory source: one record whose label map is not of its image's size."""

  def __len__(self):
    return 3

  def __getitem__(self, index):
    label_shape = (8, 6) if index == 1 else (8, 8)
    return {'image': np.zeros((8, 8, 3), np.uint8), 'segmentation': np.zeros(label_shape, np.uint8)}


def test_a_label_map_of_another_size_is_refused_naming_the_record():
  source = sources.CheckedSource(_Records(), 'scenes', 'validation', (sources.Shard('/d/scenes-0', 0, 5, 3),))
  assert source[0]['segmentation'].shape == (8, 8)
  with pytest.raises(UserError) as e:
    source[1]
  message = str(e.value)
  assert "dataset 'scenes' split 'validation': record 1 (record 6 of shard /d/scenes-0)" in message
  assert '(8, 6)' in message and '(8, 8, 3)' in message
  with pytest.raises(IndexError):
    source[3]
