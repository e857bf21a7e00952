"""Metrics (clu `Collection`s) and the metric writer (TensorBoard events + log lines), shared by all lines.

- `to_floats(collection)`: the one conversion of computed metrics to `{name: float}` used downstream (best
  checkpoint, TensorBoard, results.json). A metric may compute to a nested dict and to arrays: keys are joined
  with '/', and an array of size > 1 becomes one key per element, 'key/<i>' ('exit3/miou', 'exit3/iou/7').
- `confusion_matrix_metric(num_classes, ...)`: a clu Metric class accumulating a (K, K) confusion matrix of
  (label, prediction) pixel counts. Each batch is a bincount; batches merge by summing. Counts are kept as two
  uint32 words per cell (hi * 2**32 + lo) and added with a carry, so they stay exact far past 2**24 (float32)
  and 2**31 (int32) pixels per class with jax x64 off, inside or outside jit. `compute()` (on the host) gives
  per-class IoU = tp / (tp + fp + fn) (NaN for a class absent from labels and predictions), their mean over the
  present classes (mIoU) and pixel accuracy.
"""

import itertools
import logging
import os
import socket
import time
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')


@flax.struct.dataclass
class ClassificationEvalMetrics(metrics.Collection):
  """Masked top-1/top-5 accuracy and loss: padded eval examples (mask False) count for nothing."""

  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('top1')
  top5: metrics.Average.from_output('top5')


def classification_eval_outputs(logits, labels, mask):
  """Per-example outputs for `ClassificationEvalMetrics.single_from_model_output(**outputs)`."""
  logits = logits.astype(jnp.float32)
  loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
  top5_idx = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return dict(
      loss=loss,
      top1=(top5_idx[:, 0] == labels).astype(jnp.float32),
      top5=(top5_idx == labels[:, None]).any(-1).astype(jnp.float32),
      mask=mask,
  )


class EventWriter:
  """TensorBoard scalars in `logdir` (an events file, as `tf.summary` writes it) and a log line per write,
  without TensorFlow: clu's writer imports it, about 6 s of CPU time in every job and test that writes, for a
  few records per run. The records are TensorBoard's own (tensorboard.compat.proto, RecordWriter's framing).
  `logdir=None`: the log lines only (processes other than 0)."""

  def __init__(self, logdir: str | None):
    self._records = None
    if logdir is not None:
      os.makedirs(logdir, exist_ok=True)
      name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}'
      self._records = record_writer.RecordWriter(open(os.path.join(logdir, name), 'wb'))
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()  # a few records per run: each on disk at once, also when the run then fails

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in sorted(scalars.items())))
    if self._records is not None:
      values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
      self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    pass  # every record is flushed as it is written

  def close(self) -> None:
    if self._records is not None and not self._records.closed:
      self._records.close()


_EVENT_FILES = itertools.count()  # two writers of one process and second never share a file name


def create_writer(workdir: str) -> EventWriter:
  """TensorBoard events in `workdir` and log lines; only process 0 writes events."""
  return EventWriter(workdir if jax.process_index() == 0 else None)


def _flatten_into(out: dict, prefix: str, value) -> None:
  if isinstance(value, Mapping):
    for k, v in value.items():
      _flatten_into(out, f'{prefix}/{k}' if prefix else str(k), v)
    return
  x = np.asarray(value)
  if x.size == 1:
    out[prefix] = float(x.reshape(()))
  else:
    for i, v in enumerate(x.reshape(-1)):
      out[f'{prefix}/{i}'] = float(v)


def to_floats(collection) -> dict[str, float]:
  """`{name: float}` of a clu Collection (computed here) or of an already computed (nested) dict.

  Nested dicts are flattened with '/', arrays of size > 1 into 'key/<i>' (row-major index), size-1 arrays
  and scalars into plain floats.
  """
  values = collection if isinstance(collection, Mapping) else collection.compute()
  out: dict[str, float] = {}
  _flatten_into(out, '', values)
  return out


def _add_hi_lo(a_hi, a_lo, b_hi, b_lo):
  """(hi, lo) uint32 words of a + b, where x = hi * 2**32 + lo; lo wraps and carries into hi."""
  lo = a_lo + b_lo
  carry = (lo < a_lo).astype(jnp.uint32)
  return a_hi + b_hi + carry, lo


def confusion_matrix_metric(
    num_classes: int, ignore_label: int = 255, predictions_key: str = 'predictions', labels_key: str = 'labels'
) -> type[metrics.Metric]:
  """A clu Metric class: the confusion matrix of int predictions against int labels (any equal shapes).

  `from_model_output(**outputs)` reads `outputs[predictions_key]` and `outputs[labels_key]` and an optional
  `outputs['mask']` of shape (B,) (False for padded examples, which count for nothing). A pixel counts when its
  label is not `ignore_label`, both label and prediction lie in [0, num_classes) and its example is unmasked.
  Row = label, column = prediction. `compute()` -> {'miou', 'pixel_accuracy', 'iou': (K,) array}.
  """
  k = int(num_classes)
  if k <= 0:
    raise ValueError(f'num_classes must be positive, got {num_classes}')

  @flax.struct.dataclass
  class ConfusionMatrix(metrics.Metric):
    hi: jax.Array  # (K, K) uint32: count = hi * 2**32 + lo
    lo: jax.Array

    @classmethod
    def empty(cls):
      zeros = jnp.zeros((k, k), jnp.uint32)
      return cls(hi=zeros, lo=zeros)

    @classmethod
    def from_model_output(cls, **outputs):
      for key in (predictions_key, labels_key):
        if key not in outputs:
          raise KeyError(f'confusion matrix: outputs have no {key!r}; they have {sorted(outputs)}')
      preds = jnp.asarray(outputs[predictions_key]).astype(jnp.int32)
      labels = jnp.asarray(outputs[labels_key]).astype(jnp.int32)
      if preds.shape != labels.shape:
        raise ValueError(f'confusion matrix: predictions {preds.shape} and labels {labels.shape} differ in shape')
      valid = (labels != ignore_label) & (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
      mask = outputs.get('mask')
      if mask is not None:
        mask = jnp.asarray(mask).astype(bool)
        valid &= mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
      # Invalid pixels go to one extra bin that is dropped. int32 bincounts are exact per batch (< 2**31 pixels).
      index = jnp.where(valid, labels * k + preds, k * k)
      counts = jnp.bincount(index.reshape(-1), length=k * k + 1)[: k * k].reshape(k, k)
      return cls(hi=jnp.zeros((k, k), jnp.uint32), lo=counts.astype(jnp.uint32))

    def merge(self, other):
      hi, lo = _add_hi_lo(self.hi, self.lo, other.hi, other.lo)
      return type(self)(hi=hi, lo=lo)

    def counts(self) -> np.ndarray:
      """(K, K) uint64 numpy confusion matrix (host)."""
      return (np.asarray(self.hi).astype(np.uint64) << np.uint64(32)) | np.asarray(self.lo).astype(np.uint64)

    def compute(self):
      return confusion_matrix_scores(self.counts())

  ConfusionMatrix.__name__ = ConfusionMatrix.__qualname__ = f'ConfusionMatrix{k}'
  return ConfusionMatrix


def confusion_matrix_scores(cm) -> dict:
  """{'miou', 'pixel_accuracy', 'iou'} of an integer (K, K) confusion matrix (rows labels, columns predictions).

  Computed in float64 from exact integer counts; a class with tp + fp + fn == 0 has IoU NaN and is left out of
  the mean. NaN mIoU / accuracy when nothing was counted.
  """
  cm = np.asarray(cm)
  tp = np.diag(cm).astype(np.float64)
  union = cm.sum(0).astype(np.float64) + cm.sum(1).astype(np.float64) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    total = float(cm.sum())
    accuracy = float(tp.sum() / total) if total > 0 else float('nan')
  present = ~np.isnan(iou)
  miou = float(iou[present].mean()) if present.any() else float('nan')
  return {'miou': miou, 'pixel_accuracy': accuracy, 'iou': iou}


def background_only_miou(label_maps, num_classes: int, ignore_label: int) -> float:
  """The mIoU (``confusion_matrix_scores``) of predicting class 0, the background, at every pixel of `label_maps`
  (integer label arrays; `ignore_label` left out): what a segmentation model that learned nothing scores."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  for labels in label_maps:
    labels = np.asarray(labels).ravel()
    cm[:, 0] += np.bincount(labels[labels != ignore_label], minlength=num_classes)[:num_classes]
  return confusion_matrix_scores(cm)['miou']
