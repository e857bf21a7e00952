"""The ADP-C FLOP convention on top of `core_jax.counting`.

- "GFLOPs" = multiply-adds of conv / linear layers only, divided by 1024^3 (BN, ReLU, pooling, interpolation,
  softmax and bias adds are free), per image.
- Cumulative per exit: exit k's cost is the backbone up to stage k plus exits 1..k. The HRNet forward calls
  `counting.mark('exit{k}')` after each exit, so one abstract trace (`counting.count_macs_by_mark` under
  `jax.eval_shape`: no compute, cheap at 1024x2048) gives the dense numbers (`dense_macs`).
- Confidence adaptivity: a masked conv costs dense * p + (1 - p) * p * C_out * 49 * H * W (p = the fraction of
  its output positions computed; the second term is the RBF interpolation as the released counter adds it),
  per image. Masked convs sow their per-example actual and dense MACs under 'actual_exit{k}' / 'dense_exit{k}'
  (k = the exit whose segment they belong to), so `ca_macs(dense, macs)` = dense cumulative cost of exit k
  + sum over segments j <= k of (actual - dense). Averaging over an eval set is done by the caller (metrics).
"""
import jax
import jax.numpy as jnp

from core_jax import counting

GIGA = 1024 ** 3


def exit_names(marks: dict) -> list[str]:
  return [k for k in marks if k.startswith('exit')]


def dense_macs(model, height: int, width: int, **kwargs) -> dict[str, int]:
  """{'exit1': cumulative MACs, ..., 'total'} for one image of height x width, from shapes only."""
  x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  return counting.count_macs_by_mark(model, x, train=False, **kwargs)


def dense_gflops(model, height: int, width: int) -> dict[str, float]:
  return {k: v / GIGA for k, v in dense_macs(model, height, width).items()}


def _segment_delta(macs_collection, k: int):
  return (counting.sum_macs(macs_collection, name=f'actual_exit{k}')
          - counting.sum_macs(macs_collection, name=f'dense_exit{k}'))


def ca_macs(dense: dict[str, int], macs_collection, batch: int) -> dict[str, jax.Array]:
  """Per-example cumulative MACs per exit ({'exit1': (batch,), ...}) from the per-image dense marks and the
  sown 'macs' collection of one apply (empty or absent: the dense numbers)."""
  out, delta = {}, jnp.zeros((batch,), jnp.float32)
  for name in exit_names(dense):
    k = int(name[len('exit'):])
    delta = delta + _segment_delta(macs_collection or {}, k)
    out[name] = jnp.float32(dense[name]) + delta
  return out


def apply_with_macs(model, variables, x, **kwargs):
  """model.apply returning (outputs, per-example cumulative MACs per exit)."""
  variables = {k: v for k, v in variables.items() if k != counting.MACS_COLLECTION}   # sown values would add up
  outputs, state = model.apply(variables, x, train=False, mutable=[counting.MACS_COLLECTION], **kwargs)
  dense = dense_macs(model, x.shape[1], x.shape[2])
  return outputs, ca_macs(dense, state.get(counting.MACS_COLLECTION, {}), x.shape[0])
