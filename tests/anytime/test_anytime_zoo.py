"""The FLOP counter against every reference number (issue 13 section 3) at 1024x2048, from shapes only."""

import pytest

from anytime_jax import zoo


@pytest.mark.parametrize('arch,exits', sorted(zoo.REFERENCE))
@pytest.mark.slow
def test_reference_gflops_and_params(arch, exits):
  r = zoo.row(arch, exits)
  ref_params, ref_gflops = zoo.REFERENCE[(arch, exits)]
  assert [round(g, 1) for g in r['gflops']] == list(ref_gflops)
  if ref_params is not None:
    assert round(r['params'] / 1e6, 2) == ref_params
  if exits != 'base':  # the mean over exits as the paper prints it
    assert round(r['mean_gflops'], 1) == {'rh': 304.2, 'ee': 318.2}[exits]


def test_markdown_lists_every_row():
  rows = [
      {
          'arch': 'w48',
          'exits': 'rh',
          'params': 66_060_000,
          'gflops': [41.94, 105.6, 368.0, 701.3],
          'mean_gflops': 304.2,
          'ref_params_m': None,
          'ref_gflops': (41.9, 105.6, 368.0, 701.3),
      }
  ]
  md = zoo.markdown(rows)
  assert '| HRNet-W48 | rh | 66.06 | - | 41.9 | 105.6 | 368.0 | 701.3 | 304.2 | 41.9 / 105.6 / 368.0 / 701.3 |' in md


@pytest.mark.slow
def test_stopping_after_exit_k_costs_the_cumulative_count():
  """The ADP-C counter runs the model with stop_k; our marks in one full trace give the same numbers."""
  import jax
  import jax.numpy as jnp

  from anytime_jax import confidence, flops, hrnet
  from core_jax import counting

  model = hrnet.build('w8_tiny', exit_type='ee', tau=0.998, num_classes=3)  # on CPU its masked convs are sparse
  x = jax.ShapeDtypeStruct((1, 128, 256, 3), jnp.float32)
  full = flops.dense_macs(model, 128, 256)
  # the stopped traces with the masked-dense convs: the same counts (so each stop also checks the sparse trace's
  # count against the masked-dense one), and each trace ~6x faster than the sparse loop's (12.8 -> 2.2 s of CPU for
  # the five traces)
  dense = hrnet.build(
      'w8_tiny', exit_type='ee', tau=0.998, num_classes=3, compute=confidence.for_backend(dict(masked_conv='dense'))
  )
  for k in (1, 2, 3, 4):
    assert counting.count_macs_by_mark(dense, x, last_exit=k)['total'] == full[f'exit{k}']
  assert full['exit1'] < full['exit2'] < full['exit3'] < full['exit4'] == full['total']
