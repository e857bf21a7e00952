"""The contract between the shared training loop and a research line.

A line subclasses `Task` (or `core_jax.classification.ClassificationTask`) to say which model to build, its loss
and its eval metrics; `core_jax.train.run` does everything else. Methods that take `variables` or `state` run inside
`jax.jit`. Required: `build_model`, `train_loss`, `eval_outputs`. Optional hooks, each with a default that
changes nothing:

  optimizer_transforms()     (pre, post) optax transformations around the optimizer's own chain
  own_optimizer(schedule)    (selects, transformation): parameters trained by the task's own update instead
  prepare_train_batch(...)   a jittable batch transform inside the train step (classification: Mixup/CutMix)
  on_epoch_end(state, epoch) a jittable state update at each epoch boundary, before eval and checkpoint
  load_pretrained(...)       `config.init_from`: weights into the freshly built variables
  extra_results(state)       entries merged into results.json
  eval_tag()                 how an eval-only run evaluates (e.g. ADP-C's 'tau0.99'), in its folder's name
  lr_scale_fn()              per-parameter learning-rate scale (layer-wise decay)
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core_jax import metrics as metrics_lib
from core_jax.errors import UserError


class Task:
  """Base class: override `build_model`, `train_loss` and `eval_outputs`."""

  train_metrics = metrics_lib.TrainMetrics  # clu Collections; compute() may return nested dicts
  eval_metrics = metrics_lib.ClassificationEvalMetrics
  primary_metric = 'accuracy'  # a key of metrics.to_floats(eval), e.g. 'exit4/miou': best checkpoint, results
  metric_mode = 'max'
  progress_metrics: tuple[str, ...] | None = None  # train-metric keys on the progress line (None: all)
  input_key = 'image'  # the batch entry the model reads; the loop reads the input through it too

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

  def eval_constants(self) -> dict:
    """Arrays the eval step takes as arguments instead of compile-time constants, so that runs differing only
    in these values share one compiled program (and its persistent-cache entry): e.g. ADP-C's confidence
    threshold, evaluated at several values without recompiling. They reach `eval_outputs` (and the model) as
    the variable collection variables['constants'] (a Flax module reads one with
    `self.get_variable('constants', name, default)`). Default: none."""
    return {}

  def lr_scale_fn(self) -> Callable[[tuple, Any], float] | None:
    """Per-parameter learning-rate scale (layer-wise decay); None for none."""
    return None

  def optimizer_transforms(self) -> tuple[list[optax.GradientTransformation], list[optax.GradientTransformation]]:
    """(pre, post), default ([], []).

    pre: applied to the raw gradients before the optimizer's own chain (before weight decay), e.g. Network
    Slimming's s * sign(gamma). post: applied to the optimizer's final updates before apply_updates, e.g. a
    mask so pruned weights stay exactly 0. Both get `params` in update(). Their init(params) runs on the
    params the run trains from (after init_from weights are loaded), so masks derive from loaded weights.
    Their state lives in opt_state (checkpointed, sharded, restored on another device count)."""
    return [], []

  def own_optimizer(self, schedule) -> tuple[Callable[[tuple[str, ...]], bool], optax.GradientTransformation] | None:
    """Parameters the task updates with a transformation of its own instead of the configured optimizer, e.g.
    Sparse Structure Selection's block factors by a proximal gradient step: (selects, tx). selects(names) -> bool
    picks a leaf by its path (('layer1_0', 'block_scale')); tx gets only those leaves (with their params) and
    returns their final updates; the configured chain (its weight decay, momentum, lr scales) never sees them.
    `schedule(step)` is the run's learning rate. The task's pre / post transforms still wrap both. Default: None
    (the optimizer state keeps the plain chain's layout)."""
    del schedule
    return None

  def prepare_train_batch(self, batch: dict, rng: jax.Array, step: jax.Array) -> dict:
    """The global train batch as the loss sees it (jittable); `rng` is the run's key (state.rng, the same
    every step), `step` the traced step number: derive per-step keys from both, so a resumed run repeats
    the same draws. Default: the batch unchanged."""
    del rng, step
    return batch

  def on_epoch_end(self, state, epoch: jax.Array):
    """Jittable; `epoch` = number of completed epochs (1-based, traced int32 scalar). Returns the state.

    Runs at each epoch boundary before eval and checkpoint, so a resumed run behaves exactly like an
    uninterrupted one. Default: identity (and the loop then skips it)."""
    del epoch
    return state

  def load_pretrained(self, variables: dict, path: str, reinit_head: bool) -> dict:
    """`config.init_from`: `variables` = {'params': ..., 'batch_stats': ...} (host numpy trees of the freshly
    built model); returns the same structure and shapes with the weights in `path` loaded (a line may slice
    a larger checkpoint). `reinit_head` keeps the freshly initialized classifier (e.g. 22K -> 1K classes)."""
    del variables, reinit_head
    raise UserError(f'{type(self).__name__} cannot load pretrained weights (config.init_from={path!r})')

  def eval_tag(self) -> str:
    """What in this task's config changes how one set of weights evaluates, as a folder-name part: an eval-only
    run writes WORKDIR/eval/<what it evaluates>[-<eval_tag>]/ (core_jax.train.eval_tag), so evaluating the
    same weights another way (ADP-C at another threshold: 'tau0.99') does not overwrite the first. Default: ''
    (the weights evaluate one way)."""
    return ''

  def extra_results(self, state) -> dict:
    """JSON-able entries merged into results.json (e.g. non-zero parameters, MACs). Default: none."""
    del state
    return {}


def apply_model(model: nn.Module, variables: dict, inputs, *, train: bool, rng=None):
  """Runs the model, threading BatchNorm statistics when the model has them.

  Returns (outputs, new_mutable_variables); the latter is {} for models without batch_stats.
  """
  rngs = {'dropout': rng} if rng is not None else None
  if train and 'batch_stats' in variables and variables['batch_stats']:
    outputs, new_vars = model.apply(variables, inputs, train=True, rngs=rngs, mutable=['batch_stats'])
    return outputs, dict(new_vars)
  return model.apply(variables, inputs, train=train, rngs=rngs), {}
