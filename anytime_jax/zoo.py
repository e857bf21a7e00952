"""Params and cumulative GFLOPs per exit of the anytime HRNets at 1024x2048, beside the reference values.

    python -m anytime_jax.zoo           # a Markdown table
    python -m anytime_jax.zoo --json    # the same rows as JSON

Measured columns come from the models (`jax.eval_shape`: no weights materialised, nothing computed): params
with `core_jax.counting.count_params`, GFLOPs with `anytime_jax.flops.dense_gflops` (conv/linear MACs / 1024^3,
cumulative per exit, no confidence adaptivity: ADP-C's savings depend on the data and are measured by eval).
REFERENCE values (not computed here), from ../shared/reference/anytime.md:
  - HRNet-W48 base 696.2 GF, 65.86M params; W18-Small-v2 base 71.6 GF, 3.94M params (ADP-C code's counter);
  - W48 + RH exits 41.9 / 105.6 / 368.0 / 701.3 (the ADP-C README's EE+RH row);
  - W48 + EE exits 48.4 / 113.5 / 388.9 / 722.2 (the analytic count of the released EE model; the README's EE
    row 521.6 / 717.9 / 914.2 / 1110.5 rises by a constant 196.3 per exit and is an artifact).
W18 (full) and the W18-Small-v2 exit rows have no published FLOPs.
"""

import json
import sys

import jax
import jax.numpy as jnp

from anytime_jax import flops, hrnet
from core_jax import cli, counting

HEIGHT, WIDTH = 1024, 2048
ARCH_LABELS = {'w48': 'HRNet-W48', 'w18_small_v2': 'HRNet-W18-Small-v2', 'w18': 'HRNet-W18'}
# (arch, exits) -> (params in M or None, per-exit GFLOPs or None)
REFERENCE = {
    ('w48', 'base'): (65.86, (696.2,)),
    ('w18_small_v2', 'base'): (3.94, (71.6,)),
    ('w48', 'rh'): (None, (41.9, 105.6, 368.0, 701.3)),
    ('w48', 'ee'): (None, (48.4, 113.5, 388.9, 722.2)),
}
# the papers' archs (those timm also has), in hrnet.ARCHS order; the CPU-sized ones are not in the zoo
ROWS = [(a, e) for a, _, _ in hrnet.MODELS.entries() if hrnet.ARCHS[a].timm_name for e in ('base', 'ee', 'rh')]


def build(arch: str, exits: str, num_classes: int = 19):
  if exits == 'base':
    return hrnet.base(arch, num_classes)
  return hrnet.build(arch, num_classes=num_classes, exit_type=exits)


def row(arch: str, exits: str, height: int = HEIGHT, width: int = WIDTH) -> dict:
  model = build(arch, exits)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  params = counting.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params'])
  g = flops.dense_gflops(model, height, width)
  per_exit = [g[k] for k in flops.exit_names(g)]
  ref_params, ref_gflops = REFERENCE.get((arch, exits), (None, None))
  return {
      'arch': arch,
      'exits': exits,
      'params': params,
      'gflops': per_exit,
      'mean_gflops': sum(per_exit) / len(per_exit),
      'ref_params_m': ref_params,
      'ref_gflops': ref_gflops,
  }


def table(height: int = HEIGHT, width: int = WIDTH) -> list[dict]:
  return [row(a, e, height, width) for a, e in ROWS]


def _fmt(v) -> str:
  return '-' if v is None else f'{v:.1f}'


def markdown(rows: list[dict], height: int = HEIGHT, width: int = WIDTH) -> str:
  lines = [
      f'GFLOPs (conv/linear MACs / 1024^3) cumulative per exit at {height}x{width}, no confidence adaptivity; '
      'ref = reference value',
      '',
      '| model | exits | params (M) | ref | exit1 | exit2 | exit3 | exit4 | mean | ref per exit |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    g = r['gflops']
    cells = ['-'] * (4 - len(g)) + [_fmt(v) for v in g]
    ref = ' / '.join(_fmt(v) for v in r['ref_gflops']) if r['ref_gflops'] else '-'
    lines.append(
        f"| {ARCH_LABELS[r['arch']]} | {r['exits']} | {r['params'] / 1e6:.2f} | "
        f"{'-' if r['ref_params_m'] is None else r['ref_params_m']} | "
        + ' | '.join(cells)
        + f" | {_fmt(r['mean_gflops']) if len(g) > 1 else '-'} | {ref} |"
    )
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m anytime_jax.zoo', description=__doc__.split('\n')[0])
  p.add_argument('--json', action='store_true', help='print the rows as JSON')
  args = p.parse_args(argv)
  rows = table()
  print(json.dumps(rows, indent=1) if args.json else markdown(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
