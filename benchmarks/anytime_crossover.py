"""Where ADP-C's sparse segment starts to beat masked-dense: per segment (2, 3, 4) and kept fraction, the segment's
time with masked-dense convs against sparse ones, at batch 1 and 8 (the data behind `Compute.masked_dense_above`).

  python -m benchmarks.anytime_crossover [--arch w18_small_v2] [--height 512] [--width 1024] [--batches 1,8] \
      [--fractions 0.3,0.4,0.5,0.6,0.7,0.8,0.9] [--segments 2,3,4] [--rounds 3]

The model, weights and input are `benchmarks.anytime_cost`'s (He-scaled random weights, the spatially coherent
input: masks in blobs). For segment s and fraction f every exit before s - 1 keeps every pixel (tau 1) and exit
s - 1's threshold is the quantile of its confidences that leaves f of the pixels to compute; the segment's time
is the program stopped after exit s minus the one stopped after exit s - 1 (the thresholds are traced: one
compiled program per exit serves every fraction). Two contenders, each its own process timed in interleaved
rounds (`common.interleaved`): `dense` (compute.masked_conv='dense') and `sparse` (masked_conv='sparse' with
masked_dense_above=1.0 for every segment, so the segment computes sparse at every fraction below 1). Rows: ms of
the segment (median over rounds, wall, and the worker's CPU time), and masked-dense over sparse (median of the
per-round ratios, wall and CPU: above 1, sparse is faster). Exits 1-3's class convs are scaled down first
(`anytime_cost.tempered`) so that their confidences do not saturate at 1.0. Not part of `make bench` (two sparse
compiles and many calls: about 10 min at batch 1, more at batch 8, on 2 cores).
"""

import argparse
import statistics
import time

from benchmarks import anytime_cost, common
from core_jax import cli

CONTENDERS = ('dense', 'sparse')
FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _policy(contender: str):
  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel

  if contender == 'dense':
    return confidence.for_backend(dict(masked_conv='dense'))
  return confidence.for_backend(dict(masked_conv='sparse', masked_dense_above=(1.0, 1.0, 1.0)))


def worker(args):
  """Serves one contender (`common.serve`): every step calls, per segment, the program to the exit before it
  (every pixel kept) and the program to its exit at each fraction; the BENCH record carries each call's computed
  fraction and CPU seconds."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import flops, hrnet  # pylint: disable=import-outside-toplevel

  model = hrnet.build(args.arch, exits=(1, 2, 3, 4), tau=anytime_cost.TAU, compute=_policy(args.contender))
  variables = jax.device_put(anytime_cost._he_weights(hrnet.random_variables(model)))  # pylint: disable=protected-access
  x = anytime_cost._coherent_input(args.batch, args.height, args.width)  # pylint: disable=protected-access
  segments = tuple(int(s) for s in args.segments.split(','))
  fractions = tuple(float(f) for f in args.fractions.split(','))
  exits = sorted({s for s in segments} | {s - 1 for s in segments})
  programs = {k: jax.jit(lambda v, x, k=k: flops.apply_with_macs(model, v, x, last_exit=k)) for k in exits}
  with_tau = lambda taus: {**variables, 'constants': {'tau': jnp.asarray(taus, jnp.float32)}}
  calls, rows = {}, {}

  def add(key, k, v):
    rows[key] = {'cpu_s': []}

    def call():
      start = time.process_time()
      outputs, _ = jax.block_until_ready(programs[k](v, x))
      rows[key]['cpu_s'].append(time.process_time() - start)
      rows[key]['fraction_computed'] = float(np.mean(outputs['fractions'][-1]))

    calls[key] = call

  logits_max = {}
  for s in segments:
    logits = programs[s - 1](with_tau([1.0] * 3), x)[0]['logits'][-1]
    logits_max[s - 1] = float(np.abs(np.asarray(logits)).max())
  variables = anytime_cost.tempered(variables, logits_max, model.num_classes)
  for s in segments:
    at_one = with_tau([1.0] * 3)
    add(f'seg{s}/base', s - 1, at_one)
    logits = programs[s - 1](at_one, x)[0]['logits'][-1]
    conf = np.asarray(jax.nn.softmax(logits, -1).max(-1))
    for f in fractions:
      taus = [1.0] * 3
      taus[s - 2] = float(np.quantile(conf, f))
      add(f'seg{s}/{f}', s, with_tau(taus))
  common.serve(calls, 1, {'bench': 'anytime_crossover', 'contender': args.contender, 'batch': args.batch, 'rows': rows})


def segment_rows(runs: dict, batch: int, args) -> list:
  """One record per (segment, fraction): ms of the segment per contender (wall and CPU medians) and masked-dense
  over sparse (median of per-round ratios of the segment's wall times)."""
  out = []
  for key in runs['dense']['times_s']:
    s, f = key.split('/')
    if f == 'base':
      continue
    record = {'bench': 'anytime_crossover', 'arch': args.arch, 'height': args.height, 'width': args.width}
    record.update(batch=batch, segment=int(s[3:]), fraction=float(f))
    seg, seg_cpu = {}, {}
    for c in CONTENDERS:
      run = runs[c]
      walls = [a - b for a, b in zip(run['times_s'][key], run['times_s'][f'{s}/base'])]
      # the warm-up call recorded a CPU time too: the timed rounds are the last ones
      cpu_rows, cpu_base = run['rows'][key]['cpu_s'], run['rows'][f'{s}/base']['cpu_s']
      cpus = [a - b for a, b in zip(cpu_rows[-len(walls) :], cpu_base[-len(walls) :])]
      seg[c], seg_cpu[c] = walls, cpus
      record[f'{c}_ms'] = 1e3 * statistics.median(walls)
      record[f'{c}_cpu_ms'] = 1e3 * statistics.median(cpus)
      record[f'{c}_fraction'] = run['rows'][key]['fraction_computed']
    record['dense_over_sparse'] = common.paired_ratio(seg['sparse'], seg['dense'])
    record['dense_over_sparse_cpu'] = common.paired_ratio(seg_cpu['sparse'], seg_cpu['dense'])
    out.append(record)
  return out


def table(records) -> str:
  lines = [
      '| size | batch | segment | kept | masked-dense ms (CPU) | sparse ms (CPU) | masked-dense / sparse (CPU) |',
      '|---|---|---|---|---|---|---|',
  ]
  for r in records:
    lines.append(
        f"| {r['height']}x{r['width']} | {r['batch']} | {r['segment']} | {r['sparse_fraction']:.3f} | "
        f"{r['dense_ms']:.0f} ({r['dense_cpu_ms']:.0f}) | {r['sparse_ms']:.0f} ({r['sparse_cpu_ms']:.0f}) | "
        f"{r['dense_over_sparse']:.2f}x ({r['dense_over_sparse_cpu']:.2f}x) |"
    )
  return '\n'.join(lines)


def main():
  p = cli.ArgumentParser(prog='python -m benchmarks.anytime_crossover', description=__doc__.splitlines()[0])
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--contender', choices=CONTENDERS, default='dense', help=argparse.SUPPRESS)
  p.add_argument('--batch', type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument('--arch', default='w18_small_v2')
  p.add_argument('--height', type=int, default=512)
  p.add_argument('--width', type=int, default=1024)
  p.add_argument('--batches', default='1,8', help='comma-separated batch sizes')
  p.add_argument('--fractions', default=','.join(map(str, FRACTIONS)), help='kept fractions, comma-separated')
  p.add_argument('--segments', default='2,3,4', help='segments (2, 3, 4), comma-separated')
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args()
  batches = anytime_cost.check_sizes(p, args)
  for f in args.fractions.split(','):
    try:
      inside = 0.0 < float(f) < 1.0
    except ValueError:
      inside = False
    if not inside:
      p.error(f'--fractions: each must be a number in (0, 1), got {f!r}')
  if not set(args.segments.split(',')) <= {'2', '3', '4'}:
    p.error(f'--segments: each must be 2, 3 or 4, got {args.segments}')
  if args.worker:
    return worker(args)
  records = []
  for batch in batches:
    base = ['--arch', args.arch, '--height', str(args.height), '--width', str(args.width), '--batch', str(batch)]
    base += ['--fractions', args.fractions, '--segments', args.segments]
    runs = common.interleaved(
        'benchmarks.anytime_crossover', {c: ['--worker', '--contender', c, *base] for c in CONTENDERS}, args.rounds
    )
    batch_records = segment_rows(runs, batch, args)
    print(table(batch_records), flush=True)
    records += batch_records
  return records


if __name__ == '__main__':
  main()
