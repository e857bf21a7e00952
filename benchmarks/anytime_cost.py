"""ADP-C measured cost: wall-clock per image next to GFLOPs per exit, and our HRNet backbone against timm's.

  python -m benchmarks.anytime_cost [--arch w18_small_v2] [--height 512] [--width 1024] [--repeats 3]

Per exit k (the model stopped after exit k, as the ADP-C counter's stop_k), batch 1, fp32, random weights
drawn as the model's init: EE+RH exits, and ADP-C (the same + confidence adaptivity) at tau=0.998 and at
tau = the median of exit 1's confidence on the benchmark image ("tau_median": random weights are never
confident, so at 0.998 nothing exits; the median makes half the pixels exit at exit 1, to show the effect;
conv weights are He-scaled so that confidences differ between pixels).
GFLOPs follow the paper (anytime_jax.flops: conv/linear MACs / 1024^3, masked convs at dense x computed
fraction + the interpolation term). The ADP-C variants run masked-dense (`compute.masked_conv='dense'`: every
output computed, then filled, so ADP-C saves FLOPs on paper only and its wall-clock is the dense one plus the RBF
fill), and again as `*_sparse` (`compute.masked_conv='sparse'`: the conv only on the tiles that keep a pixel,
the fill only where it is non-zero; the same outputs, tests/anytime/test_sparse_conv.py).

Backbone: our HRNet stem..stage4 (`features_only`, jax.jit; nearest upsampling in the fuse layers, as timm's
classification HRNet, so both run the same network) against timm's `create_model(arch, head='')`
`forward_features` (PyTorch eager, no_grad), same size, each in its own process, taking turns
(`common.interleaved`). On a GPU (when one is present) the same runs use W48 at 1024x2048.
"""

import argparse

from benchmarks import common

VARIANTS = ('rh', 'adpc', 'adpc_tau_median', 'adpc_sparse', 'adpc_tau_median_sparse')
TAU = 0.998


def _setup(args):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import hrnet  # pylint: disable=import-outside-toplevel

  x = np.random.RandomState(0).randn(1, args.height, args.width, 3).astype(np.float32)
  return jax, np, hrnet, jax.device_put(x)


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


def worker_exits(args):
  """Times the model stopped after each exit; one BENCH record per exit."""
  jax, np, hrnet, x = _setup(args)
  from anytime_jax import confidence, flops  # pylint: disable=import-outside-toplevel

  variant = args.variant.removesuffix('_sparse')
  policy = confidence.for_backend(dict(masked_conv='sparse' if args.variant.endswith('_sparse') else 'dense'))
  tau = None if variant == 'rh' else TAU
  model = hrnet.build(args.arch, exit_type='rh', tau=tau, compute=policy)
  variables = jax.device_put(_he_weights(hrnet.random_variables(model)))
  if variant == 'adpc_tau_median':
    probe = jax.jit(lambda v, x: model.apply(v, x, last_exit=1)['logits'][0])(variables, x)
    conf = np.unique(np.asarray(jax.nn.softmax(probe, -1).max(-1)).astype(np.float64))
    # midway between the two middle distinct confidences: a strict split even where they nearly tie
    tau = float((conf[len(conf) // 2 - 1] + conf[len(conf) // 2]) / 2) if len(conf) > 1 else float(conf[0])
    model = hrnet.build(args.arch, exit_type='rh', tau=tau, compute=policy)
  for k in (1, 2, 3, 4):
    fwd = jax.jit(lambda v, x, k=k: flops.apply_with_macs(model, v, x, last_exit=k))
    out = [None]

    def fn():
      out[0] = jax.block_until_ready(fwd(variables, x))

    stats = common.time_calls(fn, warmup=1, repeats=args.repeats)
    outputs, macs = out[0]
    common.emit(
        {
            'bench': 'anytime_exits',
            'arch': args.arch,
            'variant': args.variant,
            'tau': tau,
            'exit': k,
            'height': args.height,
            'width': args.width,
            'gflops': float(macs[f'exit{k}'][0]) / flops.GIGA,
            'fraction_computed': float(outputs['fractions'][-1][0]),
            'masked_conv': policy.masked_conv,
            **stats,
        }
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


def _base_args(arch, height, width, repeats):
  return ['--arch', arch, '--height', str(height), '--width', str(width), '--repeats', str(repeats)]


def measure(arch='w18_small_v2', height=512, width=1024, repeats=3, rounds=5) -> list:
  base = _base_args(arch, height, width, repeats)
  records = []
  for variant in VARIANTS:
    records += common.run_isolated('benchmarks.anytime_cost', ['--worker', 'exits', '--variant', variant, *base])
  runs = common.interleaved(
      'benchmarks.anytime_cost',
      {c: ['--worker', 'backbone', '--contender', c, *base] for c in ('ours', 'timm')},
      rounds,
  )
  ratio = common.paired_ratio(runs['ours']['times_s'], runs['timm']['times_s'])
  for name, r in runs.items():
    records.append({**r, 'ours_over_timm': ratio if name == 'timm' else 1.0})
  return records


def measure_all(repeats=3, rounds=5) -> list:
  """CPU: W18-Small-v2 at 512x1024; with a GPU also W48 at 1024x2048."""
  records = measure('w18_small_v2', 512, 1024, repeats, rounds)
  try:
    import jax  # pylint: disable=import-outside-toplevel

    if jax.default_backend() == 'gpu':
      records += measure('w48', 1024, 2048, repeats, rounds)
  except Exception:  # pylint: disable=broad-except
    pass
  return records


def table(records) -> str:
  lines = [
      '| model | size | variant | tau | exit | GFLOPs | fraction computed | ms / image (median) |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for r in records:
    if r.get('bench') == 'anytime_exits':
      tau = '-' if r['tau'] is None else f"{r['tau']:.4g}"
      lines.append(
          f"| {r['arch']} | {r['height']}x{r['width']} | {r['variant']} | {tau} | {r['exit']} | "
          f"{r['gflops']:.1f} | {r['fraction_computed']:.3f} | {1e3 * r['median_s']:.1f} |"
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


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', choices=('exits', 'backbone'), help=argparse.SUPPRESS)
  p.add_argument('--variant', choices=VARIANTS, default='rh', help=argparse.SUPPRESS)
  p.add_argument('--contender', choices=('ours', 'timm'), default='ours', help=argparse.SUPPRESS)
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--arch', default='w18_small_v2')
  p.add_argument('--height', type=int, default=512)
  p.add_argument('--width', type=int, default=1024)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--rounds', type=int, default=5)
  args = p.parse_args()
  if args.worker == 'exits':
    return worker_exits(args)
  if args.worker == 'backbone':
    return worker_backbone(args)
  records = measure(args.arch, args.height, args.width, args.repeats, args.rounds)
  print(table(records))
  return records


if __name__ == '__main__':
  main()
