"""The base install has no TensorFlow (setup.cfg: the `tf` extra). One subprocess with TensorFlow unimportable
(tests/without_tensorflow.py) imports the demo path's modules, prepares `digits` and reads a train batch of it, and
asks for TFDS datasets whose preparation needs TensorFlow; its `digits` must be the records a build with TensorFlow
installed (this test env's) stores, so the demo's tables do not depend on the extra."""

import glob
import json
import os
import subprocess
import sys

import pytest

from core_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The modules `make demo`'s jobs import (the three lines' entry points, their jobs and tasks, the loop, the data).
DEMO_MODULES = (
    'core_jax.train',
    'core_jax.data.pipeline',
    'core_jax.data.embedded.digits',
    'core_jax.data.embedded.digit_scenes',
    'convnext_jax.main',
    'convnext_jax.train',
    'convnext_jax.task',
    'pruning_jax.main',
    'pruning_jax.job',
    'pruning_jax.task',
    'anytime_jax.main',
    'anytime_jax.job',
    'anytime_jax.task',
)

# (dataset, files put in its manual dir, load_source's download): TFDS builders that need TensorFlow to prepare.
# cifar10 without download: the `tfds build` hint, which must say that the build needs TensorFlow too (with download
# the check is the same one as imagenet2012's, and without it the test would download the real dataset).
NEEDS_TENSORFLOW = (
    ('cifar10', (), False),
    ('imagenet2012', ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'), False),
    ('cityscapes/semantic_segmentation', ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip'), False),
)

_SCRIPT = """
import importlib, json, os, sys
import numpy as np
from core_jax.data import pipeline, sources
from core_jax.errors import UserError

root, modules, needs_tf = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
for module in modules:
  importlib.import_module(module)
train, info = sources.load_source('digits', 'train', os.path.join(root, 'digits_data'))
batch = next(pipeline.make_train_iterator(
    train, transforms=['random_crop(size=32, padding=2)'], global_batch_size=4, seed=0, process_index=0,
    process_count=1))
refused = {}
for name, manual_files, download in needs_tf:
  data_dir = os.path.join(root, name.split('/')[0])
  os.makedirs(os.path.join(data_dir, 'downloads', 'manual'))
  for f in manual_files:
    open(os.path.join(data_dir, 'downloads', 'manual', f), 'wb').close()
  before = sorted(os.path.relpath(os.path.join(d, f), data_dir) for d, _, fs in os.walk(data_dir) for f in fs + _)
  try:
    sources.load_source(name, 'train', data_dir, download=download)
    refused[name] = None
  except UserError as e:
    after = sorted(os.path.relpath(os.path.join(d, f), data_dir) for d, _, fs in os.walk(data_dir) for f in fs + _)
    refused[name] = {'message': str(e), 'data_dir': data_dir, 'unchanged': before == after}
print(json.dumps({
    'splits': info.splits, 'num_classes': info.num_classes,
    'batch': {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()},
    'refused': refused, 'tensorflow_imported': any(m.split('.')[0] == 'tensorflow' for m in sys.modules),
}))
"""


@pytest.fixture(scope='module')
def without_tf(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('without_tf'))
  args = [json.dumps(DEMO_MODULES), json.dumps(NEEDS_TENSORFLOW)]
  blocked = [sys.executable, os.path.join(REPO, 'tests', 'without_tensorflow.py')]
  out = subprocess.run([*blocked, '-c', _SCRIPT, root, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return root, json.loads(out.stdout.strip().splitlines()[-1])


def test_demo_modules_import_and_digits_read_without_tensorflow(without_tf):
  _, got = without_tf
  assert not got['tensorflow_imported']
  assert got['splits'] == {'train': 1437, 'test': 360} and got['num_classes'] == 10
  assert got['batch'] == {'image': [[4, 32, 32, 3], 'uint8'], 'label': [[4], 'int32']}


def test_preparing_tfds_datasets_without_tensorflow_names_the_pip_command(without_tf):
  """Where TFDS' builder needs TensorFlow: one line naming the dataset and the install command, before anything is
  written in the data dir (no lock file, no half-prepared version folder)."""
  _, got = without_tf
  for name, _, _ in NEEDS_TENSORFLOW:
    refused = got['refused'][name]
    assert refused is not None, f'{name} prepared without TensorFlow'
    msg = refused['message']
    assert '\n' not in msg and repr(name) in msg and refused['data_dir'] in msg, msg
    assert f"{sys.executable} -m pip install -c constraints.txt -e '.[tf]'` in {REPO}" in msg, msg
    assert refused['unchanged'], f'{name}: the data dir changed'


def _records(data_dir: str, split: str) -> list[list[tuple[str, bytes]]]:
  """Each stored record of digits' `split`, in file order, as its (feature, serialized value) pairs: a record's
  feature map is serialized in no fixed order (a build twice with the same install differs there), its values are."""
  from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel

  (shard,) = glob.glob(os.path.join(data_dir, 'digits', '1.0.0', f'digits-{split}.array_record-*'))
  reader = ArrayRecordReader(shard)
  try:
    records = reader.read_all()
  finally:
    reader.close()
  out = []
  for record in records:
    features = tf_example_pb2.Example.FromString(record).features.feature
    out.append(sorted((k, v.SerializeToString()) for k, v in features.items()))
  return out


def test_digits_prepared_without_tensorflow_are_those_prepared_with_it(without_tf, tfds_dir):
  root, _ = without_tf
  assert sources.tensorflow_installed(), 'the test extra installs tensorflow-cpu: this compares against a TF build'
  sources.load_source('digits', 'train', tfds_dir)  # the session's build (with TensorFlow installed), or made now
  without = os.path.join(root, 'digits_data')
  for split, count in (('train', 1437), ('test', 360)):
    want = _records(tfds_dir, split)
    assert len(want) == count and _records(without, split) == want
  for name in ('dataset_info.json', 'features.json'):
    with (
        open(os.path.join(tfds_dir, 'digits', '1.0.0', name)) as a,
        open(os.path.join(without, 'digits', '1.0.0', name)) as b,
    ):
      assert json.load(a) == json.load(b), name
