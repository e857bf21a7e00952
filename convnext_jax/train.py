"""Importable entry for the ConvNeXt line: `run(config, workdir)` (what `main` calls; usable from a notebook).

`model.name` picks the Task: an UperNet segmentor (``upernet_*``) trains as semantic segmentation
(``convnext_jax.upernet_task``), every other model as image classification (``convnext_jax.task``)."""

from convnext_jax.task import ConvNeXtTask
from core_jax import train as core_train


def task_for(config) -> type:
  if str(config.model.name).startswith('upernet_'):
    from convnext_jax.upernet_task import UperNetSegTask  # pylint: disable=import-outside-toplevel

    return UperNetSegTask
  return ConvNeXtTask


def run(config, workdir: str) -> dict:
  return core_train.run(config, workdir, task_for(config))
