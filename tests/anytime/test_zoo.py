"""The FLOP counter against every reference number (issue 13 section 3) at 1024x2048, from shapes only."""
import pytest

from anytime_jax import zoo


@pytest.mark.parametrize('arch,exits', sorted(zoo.REFERENCE))
def test_reference_gflops_and_params(arch, exits):
  r = zoo.row(arch, exits)
  ref_params, ref_gflops = zoo.REFERENCE[(arch, exits)]
  assert [round(g, 1) for g in r['gflops']] == list(ref_gflops)
  if ref_params is not None:
    assert round(r['params'] / 1e6, 2) == ref_params
  if exits != 'base':   # the mean over exits as the paper prints it
    assert round(r['mean_gflops'], 1) == {'rh': 304.2, 'ee': 318.2}[exits]


def test_markdown_lists_every_row():
  rows = [{'arch': 'w48', 'exits': 'rh', 'params': 66_060_000, 'gflops': [41.94, 105.6, 368.0, 701.3],
           'mean_gflops': 304.2, 'ref_params_m': None, 'ref_gflops': (41.9, 105.6, 368.0, 701.3)}]
  md = zoo.markdown(rows)
  assert '| HRNet-W48 | rh | 66.06 | - | 41.9 | 105.6 | 368.0 | 701.3 | 304.2 | 41.9 / 105.6 / 368.0 / 701.3 |' in md
