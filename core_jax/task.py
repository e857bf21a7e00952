"""The contract between the shared training loop and a research line.

A line subclasses `Task` (or `ClassificationTask`) to say which model to build, its loss and its eval
metrics; `core_jax.train.run` does everything else. Methods that take `variables` run inside `jax.jit`.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core_jax import metrics as metrics_lib
from core_jax.errors import UserError


class Task:
  """Base class: override `build_model`, `train_loss` and `eval_outputs`."""

  train_metrics = metrics_lib.TrainMetrics
  eval_metrics = metrics_lib.ClassificationEvalMetrics
  primary_metric = 'accuracy'  # used to keep the best checkpoint and reported in results.json
  metric_mode = 'max'
  input_key = 'image'

  def __init__(self, config, dataset_info):
    self.config = config
    self.dataset_info = dataset_info

  def build_model(self) -> nn.Module:
    raise NotImplementedError

  def init_inputs(self, example_batch: dict) -> tuple:
    """Positional inputs for `model.init`, from a host batch of the right shapes."""
    return (jnp.asarray(example_batch[self.input_key][:1]),)

  def train_loss(self, model: nn.Module, variables: dict, batch: dict, rng: jax.Array):
    """Returns (loss, (train_metric_outputs, new_mutable_variables))."""
    raise NotImplementedError

  def eval_outputs(self, model: nn.Module, variables: dict, batch: dict) -> dict:
    """Per-example outputs for `eval_metrics.single_from_model_output`, honouring batch['mask']."""
    raise NotImplementedError

  def lr_scale_fn(self) -> Callable[[tuple, Any], float] | None:
    """Per-parameter learning-rate scale (layer-wise decay); None for none."""
    return None

  def load_pretrained(self, params, path: str, reinit_head: bool):
    """`config.init_from`: returns `params` (host arrays, same tree) with the weights in `path` loaded.

    `reinit_head` keeps the freshly initialized classifier of `params` (e.g. 22K -> 1K classes)."""
    raise UserError(f'{type(self).__name__} cannot load pretrained weights (config.init_from={path!r})')


def apply_model(model: nn.Module, variables: dict, inputs, *, train: bool, rng=None):
  """Runs the model, threading BatchNorm statistics when the model has them.

  Returns (outputs, new_mutable_variables); the latter is {} for models without batch_stats.
  """
  rngs = {'dropout': rng} if rng is not None else None
  if train and 'batch_stats' in variables and variables['batch_stats']:
    outputs, new_vars = model.apply(variables, inputs, train=True, rngs=rngs, mutable=['batch_stats'])
    return outputs, dict(new_vars)
  return model.apply(variables, inputs, train=train, rngs=rngs), {}


class ClassificationTask(Task):
  """Softmax classification with optional label smoothing; the model returns (logits, features).

  Integer labels (B,) get `config.label_smoothing`; 2-D labels are soft targets (the train loop's
  Mixup/CutMix, which folds its own `config.mixup.label_smoothing` in) and are used as they are."""

  def train_loss(self, model, variables, batch, rng):
    (logits, _), new_vars = apply_model(model, variables, batch['image'], train=True, rng=rng)
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    labels = batch['label']
    if labels.ndim == 1:
      targets = jax.nn.one_hot(labels, num_classes)
      smoothing = self.config.get('label_smoothing', 0.0)
      if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    else:  # already soft targets (mixup/cutmix), label smoothing included: not smoothed again
      targets = labels
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    accuracy = (jnp.argmax(logits, -1) == hard).astype(jnp.float32).mean()
    return loss, ({'loss': loss, 'accuracy': accuracy}, new_vars)

  def eval_outputs(self, model, variables, batch):
    logits, _ = model.apply(variables, batch['image'], train=False)
    return metrics_lib.classification_eval_outputs(logits, batch['label'], batch['mask'])
