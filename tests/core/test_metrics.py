"""Metrics: to_floats flattening, the confusion-matrix metric against NumPy, exact counts past 2**24, 2 processes."""

import json
import os
import socket
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metrics as clu_metrics

from core_jax import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reference_cm(preds, labels, k, ignore=255, mask=None):
  preds, labels = np.asarray(preds).reshape(len(preds), -1), np.asarray(labels).reshape(len(labels), -1)
  cm = np.zeros((k, k), np.int64)
  for b in range(len(labels)):
    if mask is not None and not mask[b]:
      continue
    for y, p in zip(labels[b], preds[b]):
      if y != ignore:
        cm[y, p] += 1
  return cm


def _reference_scores(cm):
  tp = np.diag(cm).astype(np.float64)
  union = cm.sum(0) + cm.sum(1) - tp
  iou = np.array([t / u if u else np.nan for t, u in zip(tp, union)])
  return iou, np.nanmean(iou), tp.sum() / cm.sum()


# ------------------------------------------------------------------------------------------- to_floats


def test_to_floats_flattens_nested_dicts_and_arrays():
  got = metrics.to_floats(
      {
          'exit3': {'miou': np.float32(0.5), 'iou': np.array([0.25, np.nan, 1.0])},
          'loss': jnp.asarray(2.0),
          'one': np.array([7.0]),
          'grid': np.arange(4).reshape(2, 2),
      }
  )
  assert set(got) == {
      'exit3/miou',
      'exit3/iou/0',
      'exit3/iou/1',
      'exit3/iou/2',
      'loss',
      'one',
      'grid/0',
      'grid/1',
      'grid/2',
      'grid/3',
  }
  assert got['exit3/miou'] == 0.5 and got['exit3/iou/2'] == 1.0 and np.isnan(got['exit3/iou/1'])
  assert got['loss'] == 2.0 and got['one'] == 7.0 and got['grid/3'] == 3.0
  assert all(type(v) is float for v in got.values())


def test_to_floats_of_a_collection_with_dict_metrics():
  seg = metrics.confusion_matrix_metric(3)

  @flax.struct.dataclass
  class Metrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output('loss')
    exit1: seg

  m = Metrics.single_from_model_output(
      loss=jnp.array([1.0, 3.0]), predictions=jnp.array([[0, 1], [2, 2]]), labels=jnp.array([[0, 1], [2, 1]])
  )
  got = metrics.to_floats(m)
  assert set(got) == {'loss', 'exit1/miou', 'exit1/pixel_accuracy', 'exit1/iou/0', 'exit1/iou/1', 'exit1/iou/2'}
  assert got['loss'] == 2.0 and got['exit1/pixel_accuracy'] == 0.75
  np.testing.assert_allclose([got[f'exit1/iou/{i}'] for i in range(3)], [1.0, 0.5, 0.5])
  np.testing.assert_allclose(got['exit1/miou'], 2 / 3)


# ------------------------------------------------------------------------------------------ confusion matrix


def test_confusion_matrix_matches_numpy_with_ignore_mask_and_absent_classes():
  k, rng = 6, np.random.default_rng(0)
  cm_metric = metrics.confusion_matrix_metric(k)
  total, ref = None, np.zeros((k, k), np.int64)
  for step in range(3):
    labels = rng.integers(0, k - 1, (4, 5, 7))  # class k-1 never labelled ...
    labels[rng.random(labels.shape) < 0.2] = 255
    preds = rng.integers(0, k - 2, (4, 5, 7))  # ... nor predicted: its IoU is NaN and left out of the mean
    mask = np.array([True, True, step != 1, False])
    m = jax.jit(lambda p, y, w: cm_metric.from_model_output(predictions=p, labels=y, mask=w))(preds, labels, mask)
    total = m if total is None else total.merge(m)
    ref += _reference_cm(preds, labels, k, mask=mask)
  np.testing.assert_array_equal(total.counts(), ref)
  out = total.compute()
  iou, miou, acc = _reference_scores(ref)
  assert np.isnan(out['iou'][k - 1]) and np.isnan(iou[k - 1])
  np.testing.assert_allclose(out['iou'], iou, rtol=1e-12)
  np.testing.assert_allclose([out['miou'], out['pixel_accuracy']], [miou, acc], rtol=1e-12)
  # Keys other than the defaults, and a label or prediction outside [0, K) counts for nothing.
  other = metrics.confusion_matrix_metric(2, ignore_label=9, predictions_key='exit2_pred', labels_key='seg')
  m = other.from_model_output(exit2_pred=jnp.array([0, 1, 1, 5, 0]), seg=jnp.array([0, 1, 9, 1, 3]))
  np.testing.assert_array_equal(m.counts(), [[1, 0], [0, 1]])
  empty = other.empty().compute()
  assert np.isnan(empty['miou']) and np.isnan(empty['pixel_accuracy'])


def test_confusion_matrix_counts_exact_past_2_to_24_and_2_to_32():
  """Counts are two uint32 words with carry: exact where float32 (2**24) and int32 (2**31) are not."""
  cm_metric = metrics.confusion_matrix_metric(2)
  big = cm_metric.from_model_output(
      predictions=jnp.zeros((1, 2048, 2048), jnp.int32), labels=jnp.zeros((1, 2048, 2048), jnp.int32)
  )  # 2**22 pixels of class 0
  one = cm_metric.from_model_output(predictions=jnp.ones((1, 1)), labels=jnp.zeros((1, 1)))
  merge = jax.jit(lambda a, b: a.merge(b))
  total = one
  for _ in range(5):
    total = merge(total, big)
  counts = total.counts()
  assert counts[0, 0] == 5 * 2**22 and counts[0, 1] == 1
  assert int(np.float32(5 * 2**22 + 1)) != 5 * 2**22 + 1  # what a float32 accumulator would have lost
  np.testing.assert_allclose(total.compute()['pixel_accuracy'], 5 * 2**22 / (5 * 2**22 + 1), rtol=1e-15)
  # The carry from the low into the high word, inside and outside jit.
  lo = jnp.array([[2**32 - 1, 5], [0, 2**31]], jnp.uint32)
  a = cm_metric(hi=jnp.array([[0, 0], [0, 3]], jnp.uint32), lo=lo)
  b = cm_metric(hi=jnp.zeros((2, 2), jnp.uint32), lo=jnp.array([[2, 7], [0, 2**31 + 1]], jnp.uint32))
  want = np.array([[2**32 + 1, 12], [0, 4 * 2**32 + 1]], np.uint64)
  np.testing.assert_array_equal(a.merge(b).counts(), want)
  np.testing.assert_array_equal(merge(a, b).counts(), want)
  np.testing.assert_array_equal(merge(b, a).counts(), want)


_TWO_PROCESS_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=pid)
from core_jax import metrics
from core_jax.data import pipeline
sys.path.insert(0, sys.argv[4])
from test_metrics import K, split
mesh = Mesh(np.asarray(jax.devices()), ('data',))
sharding = NamedSharding(mesh, P('data'))
cm_metric = metrics.confusion_matrix_metric(K)

@jax.jit
def step(batch):
  preds = (batch['image'][..., 0].astype(jnp.int32) * 7 + 3) % K  # a deterministic 'model'
  masked = cm_metric.from_model_output(predictions=preds, labels=batch['segmentation'], mask=batch['mask'])
  # Without the mask the padded slot still counts for nothing: its label map is all 255.
  return masked, cm_metric.from_model_output(predictions=preds, labels=batch['segmentation'])

batches = pipeline.make_eval_batches(split(), transforms=None, global_batch_size=4, process_index=pid,
                                     process_count=2)
total = unmasked = None
for local in batches:
  m, u = step(pipeline.to_global(local, sharding))
  total = m if total is None else total.merge(m)
  unmasked = u if unmasked is None else unmasked.merge(u)
json.dump({'counts': total.counts().tolist(), 'unmasked': unmasked.counts().tolist(), 'batches': len(batches),
           'devices': jax.device_count(),
           'scores': metrics.to_floats(total.compute())}, open(out, 'w'))
"""

K = 5


def split():
  """11 examples: with a global batch of 4 over 2 processes the last batch is padded."""
  rng = np.random.default_rng(3)
  out = []
  for _ in range(11):
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    seg = rng.integers(0, K, (6, 8)).astype(np.uint8)
    seg[rng.random(seg.shape) < 0.1] = 255
    out.append({'image': image, 'segmentation': seg})
  return out


@pytest.mark.slow  # two processes importing jax and grain on shared cores
def test_two_processes_match_numpy_with_a_padded_last_batch(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  import xla_test_flags  # pylint: disable=import-outside-toplevel  (tests/: not on this file's path as a script)

  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHONPATH=REPO,
      TF_CPP_MIN_LOG_LEVEL='3',
      XLA_FLAGS=xla_test_flags.with_devices(2),
  )
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              '-c',
              _TWO_PROCESS_SCRIPT,
              str(port),
              str(pid),
              str(tmp_path / f'{pid}.json'),
              os.path.dirname(__file__),
          ],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for pid in range(2)
  ]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  results = [json.load(open(tmp_path / f'{pid}.json')) for pid in range(2)]
  data = split()
  preds = [(ex['image'][..., 0].astype(np.int64) * 7 + 3) % K for ex in data]
  ref = _reference_cm(np.stack(preds), np.stack([ex['segmentation'] for ex in data]), K)
  iou, miou, acc = _reference_scores(ref)
  for r in results:
    assert r['devices'] == 4 and r['batches'] == 3  # 3 global batches of 4 hold 11 examples: 1 padded slot
    np.testing.assert_array_equal(r['counts'], ref)
    np.testing.assert_array_equal(r['unmasked'], ref)
    np.testing.assert_allclose([r['scores'][f'iou/{i}'] for i in range(K)], iou, rtol=1e-12)
    np.testing.assert_allclose([r['scores']['miou'], r['scores']['pixel_accuracy']], [miou, acc], rtol=1e-12)


def test_writer_events_read_back_in_tensorboard_without_importing_tensorflow(tmp_path):
  """The loop's writer leaves an events file TensorBoard reads (each scalar at its step, one file per writer),
  and writing it imports no TensorFlow (clu's writer did: ~6 s of CPU time per job)."""
  logdir = str(tmp_path / 'tensorboard')
  script = (
      'import sys, numpy as np\n'
      'from core_jax import metrics\n'
      'for step in (5, 10):\n'
      '  w = metrics.create_writer(sys.argv[1])\n'
      "  w.write_scalars(step, {'train/loss': 1.5 / step, 'eval/accuracy': np.float32(0.25)})\n"
      '  w.flush(); w.close(); w.close()\n'
      "print('tensorflow' in sys.modules)\n"
  )
  out = subprocess.run([sys.executable, '-c', script, logdir], capture_output=True, text=True, cwd=REPO, check=True)
  assert out.stdout.strip().splitlines()[-1] == 'False'
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

  files = sorted(os.listdir(logdir))
  assert len(files) == 2 and all(f.startswith('events.out.tfevents.') for f in files)
  got = {}
  for name in files:
    acc = event_accumulator.EventAccumulator(os.path.join(logdir, name))
    acc.Reload()
    for tag in acc.Tags()['scalars']:
      got.setdefault(tag, []).extend((e.step, round(e.value, 6)) for e in acc.Scalars(tag))
  assert got == {'train/loss': [(5, 0.3), (10, 0.15)], 'eval/accuracy': [(5, 0.25), (10, 0.25)]}


def test_background_only_miou_by_hand():
  """Class 0 predicted everywhere: 4 background pixels, 2 of class 1, 1 ignored, class 2 absent (left out of the
  mean). IoU background 4 / 6, class 1 0 / 2: mIoU 1 / 3."""
  maps = [np.array([[0, 0, 1], [255, 0, 0]]), np.array([1])]
  assert metrics.background_only_miou(maps, 3, ignore_label=255) == pytest.approx(1 / 3)
