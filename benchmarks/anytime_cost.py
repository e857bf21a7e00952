"""ADP-C measured cost: wall-clock per exit next to GFLOPs, batch 1 latency and batch 8 throughput, and our HRNet
backbone against timm's.

  python -m benchmarks.anytime_cost [--arch w18_small_v2] [--height 512] [--width 1024] [--batches 1,8] [--rounds 3] \
      [--no-backbone] [--variants rh,adpc,adpc_sparse] [--json records.json]

W48 on CPU (not in `make bench`: about 10 min at 512x1024 on 2 cores, the sparse program's compile most of it):
  python -m benchmarks.anytime_cost --arch w48 --height 512 --width 1024 --batches 1 --no-backbone \
      --variants adpc,adpc_sparse

Contenders, fp32, random weights drawn as the model's init with He-scaled convs (so that features, and the exits'
confidences, follow the input from pixel to pixel), on one spatially coherent input (low-resolution noise
upsampled: confidence maps in blobs, not salt-and-pepper):
- `hrnet`: the plain HRNetV2 (no exits), to its head;
- `rh`: EE+RH (the four exits, redesigned heads, every pixel computed);
- `adpc`: ADP-C masked-dense (`compute.masked_conv='dense'`: every output computed, then filled, as the released
  code: FLOPs saved on paper only);
- `adpc_sparse`: ADP-C sparse (`compute.masked_conv='sparse'`: the conv only at the kept pixels where they are
  few, the fill only next to them where they are few, the original exit (exit 4's head) and its input only at kept
  pixels; the same outputs, tests/anytime/test_sparse_conv.py).
Each ADP-C contender runs at two thresholds, one compiled program each (the threshold is a traced argument):
`fractions`, one threshold per exit chosen so that 82 / 63 / 38 % of the pixels are computed after exits 1 / 2 / 3
(the paper's W48 fractions at tau=0.998 on Cityscapes; an exit whose random-weight confidences saturate at 1.0, as
W48's exits 2 and 3 do, has its class conv scaled down first in this setting, `tempered`: the same work), and
`tau=0.998` itself with the weights as drawn: what random weights make of the paper's threshold, not the paper's
fractions (W18-Small-v2 at 512x1024 computes 100 / 99.8 / 5.4 % after exits 1 / 2 / 3; W48 100 / 0 / 0 %, its
exit-2 confidences all above 0.998), so a row of it reads the sparse path where (nearly) nothing or everything is
skipped. Time to exit k is the model stopped
after exit k (the ADP-C counter's stop_k), so it is cumulative; a segment's time is the difference.
Every contender is its own process, timed in interleaved rounds (`common.interleaved`), each round calling every
exit's program; speed-ups are medians of per-round ratios. GFLOPs follow the paper (anytime_jax.flops: conv/linear
MACs / 1024^3 per image, masked convs at dense x computed fraction + the interpolation term); the FLOP-predicted
speed-up of a row is EE+RH's GFLOPs over its own.

Backbone: our HRNet stem..stage4 (`features_only`, jax.jit; nearest upsampling in the fuse layers, as timm's
classification HRNet, so both run the same network) against timm's `create_model(arch, head='')`
`forward_features` (PyTorch eager, no_grad), same size, each in its own process, taking turns
(`common.interleaved`). On a GPU (when one is present) the same runs use W48 at 1024x2048.
"""

import argparse
import json
import statistics
import time

from benchmarks import common
from core_jax import cli

VARIANTS = ('hrnet', 'rh', 'adpc', 'adpc_sparse')
TAU = 0.998
PAPER_FRACTIONS = (0.82, 0.63, 0.38)  # computed after exits 1 / 2 / 3 (anytime.md section 2.3)
NAMES = {
    'hrnet': 'HRNet (no exits)',
    'rh': 'EE+RH',
    'adpc': 'ADP-C masked-dense',
    'adpc_sparse': 'ADP-C sparse',
}


def _setup(args):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

  x = np.random.RandomState(0).randn(1, args.height, args.width, 3).astype(np.float32)
  return jax, np, hrnet, jax.device_put(x)


def _coherent_input(batch: int, height: int, width: int):
  """Noise at 1/32 resolution upsampled bilinearly, plus a little pixel noise: exits' confidences vary in blobs."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.RandomState(0)
  low = rng.randn(batch, max(1, height // 32), max(1, width // 32), 3).astype(np.float32)
  x = jax.image.resize(low, (batch, height, width, 3), 'bilinear')
  return jax.device_put(x + 0.1 * rng.randn(batch, height, width, 3).astype(np.float32))


def _he_weights(variables):
  """Conv weights rescaled from N(0, 0.001) to He's N(0, 2 / fan_in), so that features (and the exits'
  confidences) follow the input from pixel to pixel; at 0.001 they vanish and every pixel gets the same logits."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel

  def rescale(path, x):
    if path[-1].key != 'kernel':
      return x
    return (x * (np.sqrt(2.0 / np.prod(x.shape[:-1])) / confidence.CONV_INIT_STD)).astype(x.dtype)

  return {**variables, 'params': jax.tree_util.tree_map_with_path(rescale, variables['params'])}


def tempered(variables, logits_max: dict, num_classes: int, target: float = 10.0):
  """The variables with exit k's class convs (kernel and bias, output width `num_classes`) scaled so that its
  largest logit is about `target` (`logits_max`: exit -> its largest |logit| now): the He-scaled random weights can
  give an exit logits in the thousands (W18-Small-v2's exit 3, W48's exits 2 and 3), whose max-softmax is 1.0 at
  most pixels, so that no threshold keeps a given fraction of them. The work of every program is the same whatever
  the values."""
  import jax  # pylint: disable=import-outside-toplevel

  def scale(path, leaf):
    top = getattr(path[0], 'key', '')
    if top.startswith('exit') and int(top[4:]) in logits_max and leaf.shape[-1:] == (num_classes,):
      return leaf * (target / logits_max[int(top[4:])])
    return leaf

  return {**variables, 'params': jax.tree_util.tree_map_with_path(scale, variables['params'])}


FRACTION_TOLERANCE = 0.01  # a threshold that misses its fraction by more: the exit's confidences saturate


def thresholds(programs, variables, x, num_classes: int) -> dict:
  """setting -> the variables with its thresholds: 'fractions' (exit k's threshold the quantile of its confidences,
  under the thresholds of exits < k, that computes PAPER_FRACTIONS[k - 1] after it; an exit whose confidences
  saturate, so that its quantile misses the fraction by more than FRACTION_TOLERANCE, has its class conv
  `tempered` first, in this setting only) and 'tau=0.998' (the weights as drawn). `programs`: exit k -> jitted
  `flops.apply_with_macs` stopped after exit k."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  with_tau = lambda v, taus: {**v, 'constants': {'tau': jnp.asarray(taus, jnp.float32)}}
  taus, at_fractions = [1.0, 1.0, 1.0], variables
  for k in (1, 2, 3):
    for attempt in range(2):
      logits = np.asarray(programs[k](with_tau(at_fractions, taus), x)[0]['logits'][-1])
      conf = np.asarray(jax.nn.softmax(logits, -1).max(-1))
      taus[k - 1] = float(np.quantile(conf, PAPER_FRACTIONS[k - 1]))
      if attempt or abs(np.mean(conf <= taus[k - 1]) - PAPER_FRACTIONS[k - 1]) <= FRACTION_TOLERANCE:
        break
      at_fractions = tempered(at_fractions, {k: float(np.abs(logits).max())}, num_classes)
  return {'fractions': with_tau(at_fractions, taus), f'tau={TAU}': with_tau(variables, [TAU] * 3)}


def contender(arch: str, variant: str, batch: int, height: int, width: int):
  """(model, variables, input, programs: exit -> the jitted `flops.apply_with_macs` stopped after it) of one
  contender (VARIANTS), as its worker measures it."""
  import jax  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence, flops, hrnet  # pylint: disable=import-outside-toplevel

  ca = variant.startswith('adpc')
  policy = confidence.for_backend(dict(masked_conv='sparse' if variant == 'adpc_sparse' else 'dense'))
  exits = (4,) if variant == 'hrnet' else (1, 2, 3, 4)
  model = hrnet.build(arch, exits=exits, tau=TAU if ca else None, compute=policy)
  variables = jax.device_put(_he_weights(hrnet.random_variables(model)))
  x = _coherent_input(batch, height, width)
  programs = {k: jax.jit(lambda v, x, k=k: flops.apply_with_macs(model, v, x, last_exit=k)) for k in exits}
  return model, variables, x, programs


def worker_exits(args):
  """Serves one contender (`common.serve`): every step calls the program stopped after each exit, at each
  threshold setting; the BENCH record carries each call's GFLOPs and computed fraction."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import flops  # pylint: disable=import-outside-toplevel

  model, variables, x, programs = contender(args.arch, args.variant, args.batch, args.height, args.width)
  exits = tuple(programs)
  start = time.perf_counter()  # the thresholds' search compiles (and calls) the programs to exits 1-3
  settings = (
      thresholds(programs, variables, x, model.num_classes) if args.variant.startswith('adpc') else {'dense': variables}
  )
  thresholds_s = time.perf_counter() - start
  calls, rows = {}, {}
  for setting, v in settings.items():
    for k in exits:

      def call(k=k, v=v, key=f'{setting}/exit{k}'):
        start = time.process_time()
        outputs, macs = jax.block_until_ready(programs[k](v, x))
        cpu_s = time.process_time() - start
        rows[key] = {
            'gflops': float(np.mean(macs[f'exit{k}'])) / flops.GIGA,
            'fraction_computed': float(np.mean(outputs['fractions'][-1])),
            'taus': None if setting == 'dense' else [float(t) for t in np.atleast_1d(v['constants']['tau'])],
            'cpu_s': rows.get(key, {}).get('cpu_s', []) + [cpu_s],  # every call's, the first (compile) included
        }

      calls[f'{setting}/exit{k}'] = call
  common.serve(
      calls,
      1,
      {
          'bench': 'anytime_exits',
          'arch': args.arch,
          'variant': args.variant,
          'batch': args.batch,
          'height': args.height,
          'width': args.width,
          'masked_conv': model.compute.masked_conv,
          'thresholds_s': thresholds_s,
          'rows': rows,
      },
  )


def worker_backbone(args):
  if args.contender == 'ours':
    jax, np, hrnet, x = _setup(args)
    # the network timm's HRNet is (its fuse layers upsample nearest; the segmentation model's bilinear fuse
    # costs more on CPU: benchmarks/ANALYSIS.md)
    model = hrnet.build(args.arch, exits=(4,), fuse_upsample='nearest')
    variables = jax.device_put(hrnet.random_variables(model))
    fwd = jax.jit(lambda v, x: model.apply(v, x, features_only=True))
    fn = lambda: jax.block_until_ready(fwd(variables, x))
  else:
    import numpy as np  # pylint: disable=import-outside-toplevel
    import timm  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel

    from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    tm = timm.create_model(hrnet.ARCHS[args.arch].timm_name, pretrained=False, head='').eval().to(dev)
    x = torch.from_numpy(np.random.RandomState(0).randn(1, 3, args.height, args.width).astype(np.float32)).to(dev)

    def fn():
      with torch.no_grad():
        out = tm.forward_features(x)
      if dev == 'cuda':
        torch.cuda.synchronize()
      return out

  common.serve(
      fn,
      2,
      {
          'bench': 'anytime_backbone',
          'contender': args.contender,
          'arch': args.arch,
          'height': args.height,
          'width': args.width,
      },
  )


def _base_args(arch, height, width):
  return ['--arch', arch, '--height', str(height), '--width', str(width)]


def exit_rows(runs: dict, batch: int) -> list:
  """One record per (contender, threshold setting, exit) from `interleaved`'s records: time to the exit
  (cumulative) and of its segment, GFLOPs, the speed-up over EE+RH (paired per round) and the FLOP-predicted one,
  and for the sparse path the speed-up over masked-dense at the same setting."""
  rh = runs['rh']
  out = []
  for variant, run in runs.items():
    for key, times in run['times_s'].items():
      setting, exit_name = key.split('/')
      k = int(exit_name[len('exit') :])
      prev = f'{setting}/exit{k - 1}'
      segment = [t - p for t, p in zip(times, run['times_s'][prev])] if prev in run['times_s'] else times
      info = dict(run['rows'][key])
      cpu = info.pop('cpu_s')[-len(times) :]  # the timed rounds' (the first calls warmed up)
      rh_key = f'dense/exit{k}'
      rh_cpu = rh['rows'][rh_key]['cpu_s'][-len(times) :]
      record = {
          'bench': 'anytime_exits',
          'arch': run['arch'],
          'height': run['height'],
          'width': run['width'],
          'batch': batch,
          'variant': variant,
          'setting': setting,
          'exit': k,
          **info,
          'median_s': statistics.median(times),
          'segment_median_s': statistics.median(segment),
          'images_per_s': batch / statistics.median(times),
          'times_s': times,
          'cpu_median_s': statistics.median(cpu),
          'cpu_s': cpu,
          'first_call_s': run['first_call_s'],
          'thresholds_s': run['thresholds_s'],
          'speedup_vs_rh': common.paired_ratio(times, rh['times_s'][rh_key]),
          'cpu_speedup_vs_rh': common.paired_ratio(cpu, rh_cpu),
          'flop_speedup_vs_rh': rh['rows'][rh_key]['gflops'] / info['gflops'],
      }
      if variant == 'adpc_sparse' and 'adpc' in runs:
        record['speedup_vs_masked_dense'] = common.paired_ratio(times, runs['adpc']['times_s'][key])
        md_cpu = runs['adpc']['rows'][key]['cpu_s'][-len(times) :]
        record['cpu_speedup_vs_masked_dense'] = common.paired_ratio(cpu, md_cpu)
      out.append(record)
  return out


def measure(
    arch='w18_small_v2', height=512, width=1024, batches=(1, 8), rounds=3, backbone=True, variants=VARIANTS
) -> list:
  base = _base_args(arch, height, width)
  records = []
  for batch in batches:
    runs = common.interleaved(
        'benchmarks.anytime_cost',
        {v: ['--worker', 'exits', '--variant', v, '--batch', str(batch), *base] for v in variants},
        rounds,
    )
    records += exit_rows(runs, batch)
  if backbone:
    runs = common.interleaved(
        'benchmarks.anytime_cost',
        {c: ['--worker', 'backbone', '--contender', c, *base] for c in ('ours', 'timm')},
        rounds,
    )
    ratio = common.paired_ratio(runs['ours']['times_s'], runs['timm']['times_s'])
    for name, r in runs.items():
      records.append({**r, 'ours_over_timm': ratio if name == 'timm' else 1.0})
  return records


def measure_all(rounds=3) -> list:
  """CPU: W18-Small-v2 at 512x1024; with a GPU also W48 at 1024x2048."""
  records = measure('w18_small_v2', 512, 1024, rounds=rounds)
  try:
    import jax  # pylint: disable=import-outside-toplevel

    if jax.default_backend() == 'gpu':
      records += measure('w48', 1024, 2048, rounds=rounds)
  except Exception:  # pylint: disable=broad-except
    pass
  return records


def table(records) -> str:
  lines = [
      '| model | size | batch | contender | thresholds | exit | GFLOPs / image | fraction computed | ms to exit | '
      'ms segment | images / s | speed-up vs EE+RH | FLOP-predicted | ratio | vs masked-dense |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in records:
    if r.get('bench') == 'anytime_exits':
      setting = '-' if r['setting'] == 'dense' else r['setting']
      vs_dense = f"{r['speedup_vs_masked_dense']:.2f}x" if 'speedup_vs_masked_dense' in r else '-'
      lines.append(
          f"| {r['arch']} | {r['height']}x{r['width']} | {r['batch']} | {NAMES[r['variant']]} | {setting} | "
          f"{r['exit']} | {r['gflops']:.2f} | {r['fraction_computed']:.3f} | {1e3 * r['median_s']:.0f} | "
          f"{1e3 * r['segment_median_s']:.0f} | {r['images_per_s']:.2f} | {r['speedup_vs_rh']:.2f}x | "
          f"{r['flop_speedup_vs_rh']:.2f}x | {r['speedup_vs_rh'] / r['flop_speedup_vs_rh']:.2f} | {vs_dense} |"
      )
  lines += [
      '',
      '| backbone | size | contender | ms / image (median) | first call (s) | ours faster by |',
      '|---|---|---|---|---|---|',
  ]
  for r in records:
    if r.get('bench') == 'anytime_backbone':
      lines.append(
          f"| {r['arch']} | {r['height']}x{r['width']} | {r['contender']} | {1e3 * r['median_s']:.1f} | "
          f"{r['first_call_s']:.1f} | {r['ours_over_timm']:.2f}x |"
      )
  return '\n'.join(lines)


def _positive_ints(text: str) -> tuple[int, ...]:
  """'1,8' -> (1, 8); ValueError unless every entry is a whole number above 0."""
  values = tuple(int(v) for v in text.split(','))
  if any(v <= 0 for v in values):
    raise ValueError(text)
  return values


def check_sizes(p, args) -> tuple[int, ...]:
  """The batches of the command line (`--batches`), after checking `--arch`, the sizes, `--batch` and `--rounds`;
  else `p.error` (one line, exit 2) naming the bad argument: a bad size or batch was a traceback after minutes of
  work. Shared with benchmarks.anytime_crossover."""
  from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

  if args.arch not in hrnet.ARCHS:
    p.error(f'--arch {args.arch!r} is not an HRNet arch ({", ".join(sorted(hrnet.ARCHS))})')
  common.check_positive(p, args, ('height', 'width', 'batch', 'rounds'))
  try:
    return _positive_ints(args.batches)
  except ValueError:
    p.error(f'--batches must be comma-separated whole numbers above 0, got {args.batches!r}')


def check_args(p, args) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """(batches, variants) of the command line (`check_sizes`), or `p.error` naming the bad argument (an unknown
  variant was silently left out)."""
  batches = check_sizes(p, args)
  unknown = [v for v in args.variants.split(',') if v not in VARIANTS]
  if unknown:
    p.error(f'--variants: unknown {", ".join(map(repr, unknown))}; known: {", ".join(VARIANTS)}')
  return batches, tuple(v for v in VARIANTS if v == 'rh' or v in args.variants.split(','))


def main():
  p = cli.ArgumentParser(prog='python -m benchmarks.anytime_cost', description=__doc__.splitlines()[0])
  p.add_argument('--worker', choices=('exits', 'backbone'), help=argparse.SUPPRESS)
  p.add_argument('--variant', choices=VARIANTS, default='rh', help=argparse.SUPPRESS)
  p.add_argument('--contender', choices=('ours', 'timm'), default='ours', help=argparse.SUPPRESS)
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--arch', default='w18_small_v2')
  p.add_argument('--height', type=int, default=512)
  p.add_argument('--width', type=int, default=1024)
  p.add_argument('--batch', type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument('--batches', default='1,8', help='comma-separated batch sizes')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--no-backbone', action='store_true', help='skip the backbone vs timm comparison')
  p.add_argument('--json', help='also write every record (CPU times and first calls included) to this JSON file')
  p.add_argument(
      '--variants',
      default=','.join(VARIANTS),
      help='comma-separated contenders (rh, the baseline, always runs): a quicker look at a few',
  )
  args = p.parse_args()
  batches, variants = check_args(p, args)
  if args.worker == 'exits':
    return worker_exits(args)
  if args.worker == 'backbone':
    return worker_backbone(args)
  records = measure(
      args.arch, args.height, args.width, batches, args.rounds, backbone=not args.no_backbone, variants=variants
  )
  print(table(records))
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(records, f, indent=1)
  return records


if __name__ == '__main__':
  main()
