"""Classification on the shared loop: `ClassificationTask` and its defaults (label smoothing, Mixup/CutMix).

Kept apart from `core_jax.task`, the contract every line implements, so that the contract imports nothing from
`core_jax.data`: only a classification task needs the batch-level mixing of `core_jax.data.mixing`.
"""

import numbers

import jax
import jax.numpy as jnp
import optax

from core_jax import metrics as metrics_lib
from core_jax.data import mixing
from core_jax.errors import UserError
from core_jax.task import Task, apply_model

MIXUP_SALT = 0x6D6978  # 'mix': Mixup/CutMix draws from its own stream, so the dropout rng is the same without it


def _check_smoothing(key: str, value) -> None:
  """Label smoothing moves `value` of each target's mass to the uniform: 1 or more (or below 0) is no target at
  all, and trained silently before."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
    raise UserError(f'{key} must be in [0, 1) (the share of each target spread over all classes), got {value!r}')


class ClassificationTask(Task):
  """Softmax classification with optional label smoothing and Mixup/CutMix; the model returns (logits, features).

  Config fields: label_smoothing (integer labels), mixup (optional ConfigDict: mixup_alpha, cutmix_alpha, prob,
  switch_prob, label_smoothing (default: config.label_smoothing), enabled (default True); None: off).
  Mixup/CutMix (core_jax.data.mixing, timm batch mode) runs in `prepare_train_batch`, keyed by (state.rng,
  step), so runs are deterministic and resume bitwise. Its soft targets carry the label smoothing; 2-D labels
  are used as they are (not smoothed again)."""

  def __init__(self, config, dataset_info):
    super().__init__(config, dataset_info)
    mix = config.get('mixup') or None
    self._mixup = mix if mix is not None and mix.get('enabled', True) else None
    if self._mixup is not None and dataset_info is not None and not dataset_info.num_classes:
      raise UserError(f'mixup needs a dataset with a class count; {config.data.name} has none')
    _check_smoothing('label_smoothing', config.get('label_smoothing', 0.0))
    if self._mixup is not None and 'label_smoothing' in self._mixup:
      _check_smoothing('mixup.label_smoothing', self._mixup.label_smoothing)

  def prepare_train_batch(self, batch, rng, step):
    if self._mixup is None:
      return batch
    mix = self._mixup
    key = jax.random.fold_in(jax.random.fold_in(rng, MIXUP_SALT), step)
    return mixing.mixup_cutmix_jax(
        batch,
        key,
        mixup_alpha=mix.mixup_alpha,
        cutmix_alpha=mix.cutmix_alpha,
        prob=mix.get('prob', 1.0),
        switch_prob=mix.get('switch_prob', 0.5),
        label_smoothing=mix.get('label_smoothing', self.config.get('label_smoothing', 0.0)),
        num_classes=self.dataset_info.num_classes,
        input_key=self.input_key,
    )

  def train_loss(self, model, variables, batch, rng):
    (logits, _), new_vars = apply_model(model, variables, batch[self.input_key], train=True, rng=rng)
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
    logits, _ = model.apply(variables, batch[self.input_key], train=False)
    return metrics_lib.classification_eval_outputs(logits, batch['label'], batch['mask'])
