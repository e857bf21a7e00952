"""Where the sparse masked conv's per-pixel 3x3 conv beats the dense one: the data behind
`confidence.PATCH_MAX_BY_CHANNELS`.

  python -m benchmarks.sparse_patch_crossover [--archs w48,w18_small_v2] [--height 512] [--width 1024] \
      [--fractions 0.125,0.25,0.38,0.63] [--rounds 7]

For each HRNet branch of the arch at the input size (1/4 .. 1/32, its channels), a 3x3 conv of stride 1 (C -> C,
batch 1) with a spatially coherent mask (low-resolution noise upsampled, kept where below its quantile): `dense`,
the dense conv times the mask (what `masked_sparse` computes above `Compute.patch_max` kept), against `kept`, the
conv at the kept pixels only (`confidence._kept_conv`, each pixel's window gathered, one matmul; what it computes
below). Both feed the same fill, so the fill is left out. Checked equal (1e-4) before timing; then `--rounds`
rounds, the order reversed every other round; ms wall (CPU) medians and dense / kept as the median of per-round
ratios (above 1 the per-pixel conv is faster). Not part of `make bench`; seconds per arch.
"""

import statistics
import time

from benchmarks import common
from core_jax import cli


def measure(arch: str, height: int, width: int, fractions, rounds: int) -> list:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence, hrnet  # pylint: disable=import-outside-toplevel

  policy = confidence.for_backend(dict(masked_conv='sparse'))
  pad = ((1, 1), (1, 1))
  dense = jax.jit(lambda x, k, m: confidence.dense_conv(policy, x, k, None, (1, 1), pad) * m[..., None])
  kept = jax.jit(
      lambda x, k, m: confidence._kept_conv(  # pylint: disable=protected-access
          policy, x, k, None, confidence.PixelSet(m), 1, pad
      )
  )
  rng = np.random.RandomState(0)
  low = rng.randn(1, max(1, height // 64), max(1, width // 64)).astype(np.float32)
  records = []
  for level, channels in enumerate(hrnet.ARCHS[arch].channels(4)):
    h, w = height // 4 >> level, width // 4 >> level
    x = jnp.asarray(rng.randn(1, h, w, channels).astype(np.float32))
    kernel = jnp.asarray(rng.randn(3, 3, channels, channels).astype(np.float32) / np.sqrt(9 * channels))
    conf = np.asarray(jax.image.resize(low, (1, h, w), 'bilinear'))
    for fraction in fractions:
      m = jnp.asarray((conf <= np.quantile(conf, fraction)).astype(np.float32))
      np.testing.assert_allclose(np.asarray(kept(x, kernel, m)), np.asarray(dense(x, kernel, m)), atol=1e-4)
      times = {'dense': [], 'kept': []}
      for r in range(rounds):
        order = (('dense', dense), ('kept', kept))
        for name, fn in order if r % 2 == 0 else order[::-1]:
          wall, cpu = time.perf_counter(), time.process_time()
          jax.block_until_ready(fn(x, kernel, m))
          times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
      column = lambda name, i: [t[i] for t in times[name]]
      records.append(
          {
              'bench': 'sparse_patch_crossover',
              'arch': arch,
              'size': f'{h}x{w}',
              'channels': channels,
              'fraction': float(np.mean(np.asarray(m))),
              **{f'{name}_ms': 1e3 * statistics.median(column(name, 0)) for name in times},
              **{f'{name}_cpu_ms': 1e3 * statistics.median(column(name, 1)) for name in times},
              'dense_over_kept': common.paired_ratio(column('kept', 0), column('dense', 0)),
              'dense_over_kept_cpu': common.paired_ratio(column('kept', 1), column('dense', 1)),
          }
      )
  return records


def table(records) -> str:
  lines = [
      '| arch | branch | channels | kept | dense ms (CPU) | per-pixel ms (CPU) | dense / per-pixel (CPU) |',
      '|---|---|---|---|---|---|---|',
  ]
  for r in records:
    lines.append(
        f"| {r['arch']} | {r['size']} | {r['channels']} | {r['fraction']:.3f} | {r['dense_ms']:.2f} "
        f"({r['dense_cpu_ms']:.2f}) | {r['kept_ms']:.2f} ({r['kept_cpu_ms']:.2f}) | {r['dense_over_kept']:.2f}x "
        f"({r['dense_over_kept_cpu']:.2f}x) |"
    )
  return '\n'.join(lines)


def check_args(p, args) -> tuple[tuple[str, ...], tuple[float, ...]]:
  """(archs, fractions) of the command line, or `p.error` (one line, exit 2) naming the bad argument."""
  from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

  archs = tuple(args.archs.split(','))
  unknown = [a for a in archs if a not in hrnet.ARCHS]
  if unknown:
    p.error(f'--archs: unknown {", ".join(map(repr, unknown))}; known: {", ".join(sorted(hrnet.ARCHS))}')
  common.check_positive(p, args, ('height', 'width', 'rounds'))
  try:
    fractions = tuple(float(f) for f in args.fractions.split(','))
  except ValueError:
    fractions = ()
  if not fractions or not all(0 < f < 1 for f in fractions):
    p.error(f'--fractions must be comma-separated kept fractions in (0, 1), got {args.fractions!r}')
  return archs, fractions


def main():
  p = cli.ArgumentParser(prog='python -m benchmarks.sparse_patch_crossover', description=__doc__.splitlines()[0])
  p.add_argument('--archs', default='w48,w18_small_v2')
  p.add_argument('--height', type=int, default=512)
  p.add_argument('--width', type=int, default=1024)
  p.add_argument('--fractions', default='0.125,0.25,0.38,0.63')
  p.add_argument('--rounds', type=int, default=7)
  args = p.parse_args()
  archs, fractions = check_args(p, args)
  records = []
  for arch in archs:
    records += measure(arch, args.height, args.width, fractions, args.rounds)
  print(table(records))
  return records


if __name__ == '__main__':
  main()
