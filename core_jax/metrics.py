"""Metrics (clu `Collection`s) and metric writers (TensorBoard + console), shared by all lines."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers, metrics


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
  return dict(loss=loss, top1=(top5_idx[:, 0] == labels).astype(jnp.float32),
              top5=(top5_idx == labels[:, None]).any(-1).astype(jnp.float32), mask=mask)


def create_writer(workdir: str):
  """TensorBoard events in `workdir` and console lines; only process 0 writes."""
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)


def to_floats(collection) -> dict:
  return {k: float(np.asarray(v)) for k, v in collection.compute().items()}
