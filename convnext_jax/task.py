"""ConvNeXt image classification as a `core_jax` Task: the model comes from the registry by name."""
import jax.numpy as jnp

from core_jax.task import ClassificationTask
from convnext_jax import models


class ConvNeXtTask(ClassificationTask):

  def build_model(self):
    mcfg = self.config.model
    return models.create_model(
        mcfg.name, num_classes=self.dataset_info.num_classes, drop_path_rate=mcfg.drop_path_rate,
        dtype=jnp.dtype(self.config.compute_dtype), **mcfg.get('overrides', {}))
