"""Importable entry for the ConvNeXt line: `run(config, workdir)` (what `main` calls; usable from a notebook)."""

from convnext_jax.task import ConvNeXtTask
from core_jax import train as core_train


def run(config, workdir: str) -> dict:
  return core_train.run(config, workdir, ConvNeXtTask)
