"""Shared layer of the three research lines: data, parallelism, checkpoints, optimizers, the training loop."""
