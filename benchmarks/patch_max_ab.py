"""A/B of `Compute.patch_max_by_channels`: the sparse ADP-C program to the final exit under main's single bound (1/8
kept for every k x k conv, ((0, 0.125),)) against the line's 'auto' table (`confidence.PATCH_MAX_BY_CHANNELS`).

  python -m benchmarks.patch_max_ab [--arch w18_small_v2] [--height 512] [--width 1024] [--rounds 3] \
      [--settings fractions,tau=0.998]

One process, the same weights and input (`anytime_cost.contender`), the thresholds searched once on the
masked-dense programs (`anytime_cost.thresholds`; the exits' outputs do not depend on the conv formulation), then per
setting `--rounds` rounds of both programs to exit 4, the order reversed every other round; ms wall (CPU) medians
and main / table as the median of per-round ratios (above 1 the table is faster). Both programs' logits are checked
equal first (1e-4 of their scale). Not part of `make bench`.
"""

import statistics
import time

from benchmarks import anytime_cost, common
from core_jax import cli

MAIN_BOUND = ((0, 0.125),)


def measure(arch: str, height: int, width: int, rounds: int, settings) -> list:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence, flops  # pylint: disable=import-outside-toplevel

  # the thresholds from the masked-dense contender's programs (the same exits' outputs to float rounding, a quarter
  # of the sparse programs' compile time)
  model, variables, x, dense_programs = anytime_cost.contender(arch, 'adpc', 1, height, width)
  found = anytime_cost.thresholds(dense_programs, variables, x, model.num_classes)
  del dense_programs
  to_exit4 = lambda policy: jax.jit(
      lambda v, x, m=model.clone(compute=policy): flops.apply_with_macs(m, v, x, last_exit=4)
  )
  table = confidence.for_backend(dict(masked_conv='sparse'))
  assert table.patch_max_by_channels == confidence.PATCH_MAX_BY_CHANNELS
  main_bound = confidence.for_backend(dict(masked_conv='sparse', patch_max_by_channels=MAIN_BOUND))
  contenders = {'main bound': to_exit4(main_bound), 'table': to_exit4(table)}
  records = []
  for setting in settings:
    v = found[setting]
    outs = {name: jax.block_until_ready(fn(v, x)) for name, fn in contenders.items()}  # compiles
    got = [np.asarray(o[0]['logits'][-1]) for o in outs.values()]
    # the He-scaled random weights' logits reach ~1e3: 1e-4 of their scale (float32 rounding of different sums)
    scale = float(np.abs(got[0]).max())
    np.testing.assert_allclose(got[1], got[0], atol=1e-4 * max(scale, 1.0), rtol=0, err_msg=f'{arch} {setting}')
    times = {name: [] for name in contenders}
    for r in range(rounds):
      order = list(contenders.items())
      for name, fn in order if r % 2 == 0 else order[::-1]:
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(v, x))
        times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    column = lambda name, i: [t[i] for t in times[name]]
    records.append(
        {
            'arch': arch,
            'setting': setting,
            'fractions': [float(f) for f in np.asarray(outs['table'][0]['fractions']).reshape(-1)],
            **{f'{n}_ms': 1e3 * statistics.median(column(n, 0)) for n in contenders},
            **{f'{n}_cpu_ms': 1e3 * statistics.median(column(n, 1)) for n in contenders},
            'speedup': common.paired_ratio(column('table', 0), column('main bound', 0)),
            'speedup_cpu': common.paired_ratio(column('table', 1), column('main bound', 1)),
            'rounds_ms': {n: [round(1e3 * t[0]) for t in times[n]] for n in contenders},
        }
    )
    print(records[-1], flush=True)
  return records


def check_args(p, args) -> None:
  """`p.error` (one line, exit 2) naming a bad argument."""
  from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

  if args.arch not in hrnet.ARCHS:
    p.error(f'--arch: unknown {args.arch!r}; known: {", ".join(sorted(hrnet.ARCHS))}')
  common.check_positive(p, args, ('height', 'width', 'rounds'))
  known = ('fractions', f'tau={anytime_cost.TAU}')
  bad = [s for s in args.settings.split(',') if s not in known]
  if bad:
    p.error(f'--settings: unknown {", ".join(map(repr, bad))}; known: {", ".join(known)}')


def main():
  p = cli.ArgumentParser(prog='python -m benchmarks.patch_max_ab', description=__doc__.splitlines()[0])
  p.add_argument('--arch', default='w18_small_v2')
  p.add_argument('--height', type=int, default=512)
  p.add_argument('--width', type=int, default=1024)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--settings', default=f'fractions,tau={anytime_cost.TAU}')
  args = p.parse_args()
  check_args(p, args)
  records = measure(args.arch, args.height, args.width, args.rounds, args.settings.split(','))
  print('| arch | thresholds | main bound ms (CPU) | table ms (CPU) | main / table, wall (CPU) |')
  print('|---|---|---|---|---|')
  for r in records:
    print(
        f"| {r['arch']} | {r['setting']} | {r['main bound_ms']:,.0f} ({r['main bound_cpu_ms']:,.0f}) | "
        f"{r['table_ms']:,.0f} ({r['table_cpu_ms']:,.0f}) | {r['speedup']:.2f}x ({r['speedup_cpu']:.2f}x) |"
    )


if __name__ == '__main__':
  main()
