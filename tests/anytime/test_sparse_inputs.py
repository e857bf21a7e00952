"""The sparse masked conv (compute.masked_conv='sparse') on the inputs users give it: sizes that are no multiple of
32 (HRNet's 1/32 branch) nor of the per-pixel loop's chunk, tiny, very wide, batch 1; and bf16 activations
(`compute_dtype='bfloat16'`). fp32: every exit's logits within 1e-4 of masked-dense's, the same argmax except at
near-ties, the same computed fractions, at thresholds keeping about 10 / 50 / 90 % of exit 1's pixels and at 1.
bf16: within the bf16 tolerance below of masked-dense in bf16 (where their masks agree: a pixel whose confidence
lies within bf16 rounding of tau may be kept by one and skipped by the other, as between any two bf16 programs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sparse_conv import assert_exits_equal, tiny_hrnets

from anytime_jax import confidence
from core_jax.errors import UserError

# bf16 keeps 8 bits of mantissa: one rounding is up to 2^-8 of a value, and the two programs round at other
# places (XLA fuses the plain and the masked-dense convs differently). Measured on the tiny HRNet: at most 0.0094,
# 0.0137, 0.0065 of the exit's largest logit at exits 2-4 with every pixel kept; 2^-5 leaves room for a few more
# roundings and stays far below what a wrong pixel gives (a logit off by its scale)
BF16_TOLERANCE = 2.0**-5


def _programs(x):
  dense, sparse, variables = tiny_hrnets(x, np.random.RandomState(0))
  run = jax.jit(lambda model, v, x: model.apply(v, x), static_argnums=0)
  with_tau = lambda tau: {**variables, 'constants': {'tau': jnp.float32(tau)}}
  return dense, sparse, run, with_tau


def _taus(run, dense, with_tau, x):
  conf1 = jax.nn.softmax(run(dense, with_tau(1.0), x)['logits'][0].astype(jnp.float32)).max(-1)
  return [float(jnp.quantile(conf1, q)) for q in (0.1, 0.5, 0.9, 0.995)] + [1.0]  # 0.995: plain, a few skipped


@pytest.mark.slow  # two tiny-HRNet compiles per size: ~16 s each idle
@pytest.mark.parametrize(
    'shape',
    [
        (2, 33, 47, 3),  # odd, no multiple of 32 (1/32: 2 x 2), logits 9 x 12
        (1, 32, 32, 3),  # batch 1
        (1, 32, 256, 3),  # very wide (1 x 8 at 1/32)
        (1, 8, 8, 3),  # tiny: logits 2 x 2, every lower branch 1 x 1
    ],
)
def test_sparse_equals_masked_dense_on_user_sizes(shape):
  x = jnp.asarray(np.random.RandomState(sum(shape)).randn(*shape).astype(np.float32))
  dense, sparse, run, with_tau = _programs(x)
  mixed = []
  for tau in _taus(run, dense, with_tau, x):
    want, got = run(dense, with_tau(tau), x), run(sparse, with_tau(tau), x)
    assert [a.shape for a in got['logits']] == [a.shape for a in want['logits']]
    assert_exits_equal(want['logits'], got['logits'], f'{tau} at {shape}')
    fractions = np.asarray(want['fractions'])
    np.testing.assert_array_equal(np.asarray(got['fractions']), fractions)
    mixed.append(bool(0 < fractions[1].mean() < 1))
  assert mixed == [True, True, True, True, False]  # the quantile thresholds skip some of exit 1's pixels, tau 1 none


@pytest.mark.slow  # two tiny-HRNet compiles in bf16: ~20 s idle
def test_sparse_in_bf16_within_bf16_rounding_of_masked_dense():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32))
  dense, sparse, run, with_tau = _programs(x)
  dense, sparse = dense.clone(dtype=jnp.bfloat16), sparse.clone(dtype=jnp.bfloat16)
  for tau in _taus(run, dense, with_tau, x):
    want, got = run(dense, with_tau(tau), x), run(sparse, with_tau(tau), x)
    # per example, whether both computed the same fraction at every exit (the same masks, but for swaps)
    same_masks = (np.asarray(got['fractions']) == np.asarray(want['fractions'])).all(0)
    for k, (a, b) in enumerate(zip(want['logits'], got['logits'])):
      a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
      close = (np.abs(b - a) <= BF16_TOLERANCE * np.abs(a).max()).reshape(a.shape[0], -1)
      for i in range(a.shape[0]):
        # every pixel where the masks agree; else a pixel kept by one and skipped by the other changes its
        # neighbourhood's logits, a tenth of the pixels at most here
        assert close[i].all() if same_masks[i] else close[i].mean() >= 0.9, (tau, k, i, np.abs(b - a)[i].max())


def test_per_exit_thresholds_of_the_wrong_shape_are_one_line():
  """The eval step's threshold (variables['constants']['tau']) is one value or one per exit 1..3: a (2,) array was
  indexed past its end for exit 3, which a traced index clamps (exit 3 took exit 2's threshold, silently)."""
  x = jnp.zeros((1, 32, 32, 3))
  _, sparse, variables = tiny_hrnets(x, np.random.RandomState(0))
  trace = lambda shape: jax.eval_shape(
      lambda v, x: sparse.apply(v, x), {**variables, 'constants': {'tau': jnp.full(shape, 0.9, jnp.float32)}}, x
  )
  for shape in ((2,), (4,), (3, 1), (1, 3)):
    with pytest.raises(UserError, match=r"constants\['tau'\] must be one threshold or one per exit 1..3"):
      trace(shape)
  for shape in ((), (3,)):
    assert len(trace(shape)['logits']) == 4


@pytest.mark.slow  # three tiny-HRNet compiles: ~25 s idle
@pytest.mark.parametrize('above', [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_sparse_equals_masked_dense_at_the_crossover_table_edges(above):
  """`compute.masked_dense_above` at its edges: 1.0, every segment sparse whenever a pixel is skipped (also at 95 %
  kept, the per-pixel paths' dense fallbacks); 0.0, masked-dense whenever a pixel is kept."""
  x = jnp.asarray(np.random.RandomState(1).randn(2, 33, 47, 3).astype(np.float32))
  dense, sparse, run, with_tau = _programs(x)
  sparse = sparse.clone(compute=confidence.for_backend(dict(masked_conv='sparse', masked_dense_above=above)))
  for tau in _taus(run, dense, with_tau, x):
    want, got = run(dense, with_tau(tau), x), run(sparse, with_tau(tau), x)
    assert_exits_equal(want['logits'], got['logits'], f'{tau}, masked_dense_above={above}')
    np.testing.assert_array_equal(np.asarray(got['fractions']), np.asarray(want['fractions']))
