"""Rethinking the Value of Network Pruning (Liu et al., ICLR 2019) in JAX/Flax.

models (every family from a static cfg), surgery (kept channel indices -> smaller model), methods (L1-norm
filter pruning, Network Slimming, unstructured magnitude pruning, lottery tickets), budget (Scratch-E / Scratch-B
epochs), io (pruned models in and out).
"""


def load_pruned(path: str, dtype=None):
  """(model, variables) of a pruned model saved as PATH.safetensors + PATH.json (see pruning_jax.io)."""
  from pruning_jax import io  # pylint: disable=import-outside-toplevel

  return io.load_pruned(path, dtype)
