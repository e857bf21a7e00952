"""Rethinking the Value of Network Pruning (Liu et al., ICLR 2019) in JAX/Flax.

models (every family from a static cfg), surgery (kept channel indices -> smaller model), graph + structured
(channel groups traced from any Linen model, `prune` of any model), methods (L1-norm filter pruning, Network
Slimming, unstructured magnitude pruning, lottery tickets), budget (Scratch-E / Scratch-B epochs), io (pruned
models in and out).
"""


def load_pruned(path: str, dtype=None):
  """(model, variables) of a pruned model saved as PATH.safetensors + PATH.json (see pruning_jax.io)."""
  from pruning_jax import io  # pylint: disable=import-outside-toplevel

  return io.load_pruned(path, dtype)


def prune(model, variables, example_inputs, ratio=0.5, criterion='l1', **kwargs):
  """Structured pruning of any Linen model along its traced channel groups -> PruneResult (pruning_jax.structured)."""
  from pruning_jax import structured  # pylint: disable=import-outside-toplevel

  return structured.prune(model, variables, example_inputs, ratio, criterion, **kwargs)
