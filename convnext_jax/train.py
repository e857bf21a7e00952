"""Importable entry for the ConvNeXt line: `run(config, workdir)` (what `main` calls; usable from a notebook)."""
from core_jax import train as core_train
from convnext_jax.task import ConvNeXtTask


def run(config, workdir: str) -> dict:
  return core_train.run(config, workdir, ConvNeXtTask)
