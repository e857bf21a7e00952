"""Pruning methods, one module each (l1_norm, slimming, magnitude, lottery, thinet, regression, guided; thinet and
regression share reconstruction: sampled activations and least squares), and the result they return.

Every method's `prune(model_name_or_family, cfg, variables, ...)` returns a `PruneResult`; the model may also be
given as a built pruning_jax model (then cfg may be None).
"""

import dataclasses
from typing import Any

import flax.linen as nn

from pruning_jax import models


@dataclasses.dataclass
class PruneResult:
  model: nn.Module  # the pruned model (same family, smaller cfg); in mask mode the large model
  variables: dict  # {'params', 'batch_stats'} host numpy trees shaped for `model`
  report: dict  # JSON-able: method, cfg, kept counts, threshold, ...
  mask: Any = None  # mask mode: {0, 1} tree shaped like params (None leaves: unmasked), for masking.keep_masked

  @property
  def cfg(self) -> list:
    return list(models.cfg_of(self.model))

  @property
  def family(self) -> str:
    return models.family_of(self.model)

  @property
  def selections(self):
    return models.describe(self.model)['selections']

  def describe(self) -> dict:
    return models.describe(self.model)


def resolve_model(
    model_name_or_family, cfg=None, num_classes: int | None = None, selections=None, variables=None
) -> nn.Module:
  """A built model from a model, a named model or a family + cfg (num_classes from the fc when not given)."""
  if isinstance(model_name_or_family, nn.Module):
    return model_name_or_family
  if num_classes is None and variables is not None:
    num_classes = _classes_from_head(variables['params'])
  return models.create(model_name_or_family, cfg, num_classes, selections)


def _classes_from_head(params) -> int | None:
  """The classifier's output width: fc3 (ImageNet VGGs), fc (ResNets, slimming VGG) or fc2 (L1 VGG head)."""
  for head in ('fc3', 'fc', 'fc2'):
    if head in params:
      return int(params[head]['bias'].shape[0])
  return None
