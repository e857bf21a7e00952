"""The core's own test task: a tiny BatchNorm CNN classifying the embedded `digits`, using every Task hook.

Hooks (each off unless its `config.toy` field says otherwise, so a test turns on what it checks):
  grad_scale, grad_offset  pre transform: raw gradient * grad_scale + grad_offset (before weight decay)
  prune_threshold          >= 0: post transform keeping kernels with |w| > threshold of the weights the run
                           trains from (init_from ones when given) and holding the others exactly at 0
  epoch_head_scale         on_epoch_end multiplies the head kernel by it; the hook also writes the number of
                           completed epochs into batch_stats['epochs'] (always)
Eval metrics compute to a nested dict ({'loss', 'cls': {'accuracy', 'error'}}), so the primary metric is a
flattened key ('cls/accuracy', or config.toy.primary_metric). extra_results: non-zero parameters and epochs.
load_pretrained reads an .npz of flattened 'params/...' and 'batch_stats/...' keys (`save_variables`).

Also a config file (`get_config`) and a command line:
  python tests/core/toy_task.py --config=tests/core/toy_task.py --workdir=DIR [--config.k=v ...]
"""

import os
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics

from core_jax import cli, train
from core_jax.classification import ClassificationTask
from core_jax.config import base_config
from core_jax.errors import UserError
from core_jax.task import apply_model

NORMALIZE = 'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))'


# The toy's eval metric computes to a dict, as per-exit and per-class metrics do: metrics.to_floats flattens it to
# 'cls/accuracy' and 'cls/error', and the hook tests select those names (a regression there fails them).
PRIMARY = 'cls/accuracy'
ERROR = 'cls/error'


def get_config():
  c = base_config()
  c.data.update(
      dict(
          name='digits',
          data_dir=os.environ.get('TEST_TFDS_DIR', ''),
          train_split='train[:160]',
          eval_split='test[:80]',
          train_transforms=(NORMALIZE,),
          eval_transforms=(NORMALIZE,),
      )
  )
  c.model.name = 'toy_cnn'
  c.batch_size = 16  # 10 steps per epoch
  c.eval_batch_size = 40
  c.num_train_steps = 12
  c.log_every_steps = 4
  c.eval_every_epochs = 1000.0  # eval only at the end
  c.checkpoint.update(dict(every_steps=4, keep=3))
  c.optimizer.update(
      dict(name='sgd', lr=0.05, momentum=0.9, weight_decay=5e-4, wd_exclude_1d=False, schedule='constant')
  )
  c.toy = ml_collections.ConfigDict(
      dict(
          grad_scale=1.0,
          grad_offset=0.0,
          prune_threshold=-1.0,
          epoch_head_scale=1.0,
          primary_metric=PRIMARY,
          metric_mode='max',
      )
  )
  return c


class ToyCNN(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.variable('batch_stats', 'epochs', lambda: jnp.zeros((), jnp.int32))  # written by on_epoch_end only
    x = nn.Conv(8, (3, 3), strides=2, padding=1, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn1')(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2, padding=1, name='conv2')(x))
    features = x.mean((1, 2))
    return nn.Dense(self.num_classes, name='head')(features), features


@flax.struct.dataclass
class ClassAccuracy(metrics.Metric):
  """Masked accuracy that computes to a dict (as per-exit / per-class metrics do)."""

  correct: jax.Array
  count: jax.Array

  @classmethod
  def from_model_output(cls, *, top1, mask, **_):
    m = mask.astype(jnp.float32)
    return cls(correct=(top1 * m).sum(), count=m.sum())

  def merge(self, other):
    return type(self)(self.correct + other.correct, self.count + other.count)

  def compute(self):
    accuracy = self.correct / self.count
    return {'accuracy': accuracy, 'error': 1.0 - accuracy}


@flax.struct.dataclass
class NestedEvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  cls: ClassAccuracy


def offset_gradients(scale: float, offset: float) -> optax.GradientTransformation:
  def update(grads, state, params=None):
    del params
    return jax.tree.map(lambda g: g * scale + offset, grads), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def keep_mask(threshold: float) -> optax.GradientTransformation:
  """Kernels (ndim >= 2): entries with |w| <= threshold at init are set to 0 and kept there; others untouched."""

  def init(params):
    return {'mask': jax.tree.map(lambda p: jnp.abs(p) > threshold if p.ndim >= 2 else jnp.ones(p.shape, bool), params)}

  def update(updates, state, params):
    # Masked entries get the update that lands exactly on 0 (p + (-p)), whatever momentum and decay proposed.
    return jax.tree.map(lambda u, m, p: jnp.where(m, u, -p), updates, state['mask'], params), state

  return optax.GradientTransformation(init, update)


class ToyTask(ClassificationTask):
  eval_metrics = NestedEvalMetrics
  progress_metrics = ('loss',)

  def __init__(self, config, dataset_info):
    super().__init__(config, dataset_info)
    self.primary_metric = config.toy.primary_metric
    self.metric_mode = config.toy.metric_mode

  def build_model(self):
    return ToyCNN(num_classes=self.dataset_info.num_classes)

  def train_loss(self, model, variables, batch, rng):
    (logits, _), new_vars = apply_model(model, variables, batch['image'], train=True, rng=rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    accuracy = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32).mean()
    return loss, ({'loss': loss, 'accuracy': accuracy}, new_vars)

  def eval_outputs(self, model, variables, batch):
    outputs = super().eval_outputs(model, variables, batch)
    return dict(outputs, top1_error=1.0 - outputs['top1'])

  def optimizer_transforms(self):
    toy = self.config.toy
    pre = [offset_gradients(toy.grad_scale, toy.grad_offset)] if (toy.grad_scale, toy.grad_offset) != (1, 0) else []
    post = [keep_mask(toy.prune_threshold)] if toy.prune_threshold >= 0 else []
    return pre, post

  def on_epoch_end(self, state, epoch):
    params = dict(state.params)
    params['head'] = dict(params['head'], kernel=params['head']['kernel'] * self.config.toy.epoch_head_scale)
    batch_stats = dict(state.batch_stats, epochs=epoch.astype(jnp.int32))
    return state.replace(params=params, batch_stats=batch_stats)

  def load_pretrained(self, variables, path, reinit_head):
    if not os.path.isfile(path):
      raise UserError(f'init_from: no such file {path}')
    flat = dict(np.load(path))
    out = {}
    for group, tree in variables.items():
      paths = jax.tree_util.tree_flatten_with_path(tree)[0]
      leaves = [
          flat.get(f'{group}/{_key(p)}', np.asarray(v))
          if not (reinit_head and _key(p).startswith('head/'))
          else np.asarray(v)
          for p, v in paths
      ]
      out[group] = jax.tree.unflatten(jax.tree.structure(tree), leaves)
    return out

  def extra_results(self, state):
    nonzero = jax.jit(lambda p: sum(jnp.count_nonzero(x) for x in jax.tree.leaves(p)))(state.params)
    return {'nonzero_params': int(nonzero), 'epochs_seen': int(np.asarray(state.batch_stats['epochs']))}


def _key(path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def save_variables(path: str, variables: dict) -> None:
  """The `init_from` format of ToyTask: {'params/conv1/kernel': array, 'batch_stats/bn1/mean': ...}."""
  flat = {
      f'{group}/{_key(p)}': np.asarray(v)
      for group, tree in variables.items()
      for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  np.savez(path, **flat)


def run(config, workdir):
  return train.run(config, workdir, ToyTask)


if __name__ == '__main__':
  sys.exit(cli.run_main(run))
