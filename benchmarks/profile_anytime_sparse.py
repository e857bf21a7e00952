"""Where ADP-C's sparse masked convs spend their time: each masked conv of one segment timed alone, sparse
against the dense conv EE+RH computes in its place, with the masks `benchmarks.anytime_cost` uses.

  python -m benchmarks.profile_anytime_sparse [--arch w18_small_v2] [--height 512] [--width 1024] \
      [--setting tau=0.998|fractions] [--segment 4] [--repeats 5]

Builds the benchmark's model (He-scaled random weights, the spatially coherent input, the thresholds of the
setting), takes the segment's mask from the exit before it, lists the segment's masked convs (shapes from
`flax.linen.intercept_methods` under `jax.eval_shape`), and times every distinct conv (input shape, kernel,
stride, output channels) as its own jitted program: `dense` (`confidence.dense_conv`, what EE+RH computes),
`sparse` (`confidence.masked_sparse`, the PixelSet built inside, as the model builds it once per resolution), and
`pixels` (the PixelSet alone). Prints one row per distinct conv (count, computed fraction, the branch taken,
ms each) and the totals per output resolution; the rest of the segment (BN, ReLU, upsampling,
the exit's concat) is the segment's time minus the convs'. Run alone on an idle machine: it reads ratios within
one run, never absolute times across runs.

  python -m benchmarks.profile_anytime_sparse --demo-compile

instead prints the CPU time of tracing and compiling the digit_scenes demo's eval forward (configs/anytime/
digit_scenes.py: batch 50 at 64x128, its XLA options) masked-dense and sparse, twice each.
"""

import argparse
import collections

from benchmarks import anytime_cost, common


def segment_convs(model, variables, x, segment: int) -> list:
  """(name, x shape, kernel size, stride, features, use_bias, fill_read) of every masked conv of `segment`, in call
  order."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel

  found = []

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, confidence.Conv) and context.method_name == '__call__' and mod.exit_index == segment:
      found.append(
          (mod.name, tuple(args[0].shape), mod.kernel_size, mod.strides, mod.features, mod.use_bias, mod.fill_read)
      )
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, last_exit=segment), variables, x)
  return found


BRANCHES = ('scattered', 'filled')  # confidence.sparse_branch's


def _branch(pixels, k: int, stride: int, fill: bool, lam: float) -> str:
  """The branch `masked_sparse` takes, and for the filled one (or without the fill) whether its conv is per pixel."""
  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel

  n, count = pixels.mask.size, int(pixels.count)
  per_pixel = count <= (confidence.PIXEL_MAX if k == 1 and stride == 1 else confidence.PATCH_MAX) * n
  branch = BRANCHES[int(confidence.sparse_branch(pixels, lam**2 >= confidence.SHORT_LAMBDA2))] if fill else 'no fill'
  if branch in ('filled', 'no fill'):
    branch += f", {'per pixel' if per_pixel else 'dense'} ({-(-count // pixels.chunk) if per_pixel else '-'} chunks)"
  return branch


def profile(arch='w18_small_v2', height=512, width=1024, setting='tau=0.998', segment=4, repeats=5) -> list:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel

  model, variables, x, programs = anytime_cost.contender(arch, 'adpc_sparse', 1, height, width)
  policy = model.compute
  v = anytime_cost.thresholds(programs, variables, x, model.num_classes)[setting]
  outputs, _ = programs[segment - 1](v, x)
  taus = v['constants']['tau']
  mask = confidence.confidence_mask(outputs['logits'][-1], float(np.atleast_1d(taus)[segment - 2]))
  masks = confidence.MaskSet(mask)
  seg_times = {}
  for k in (segment - 1, segment):
    fn = lambda k=k: jax.block_until_ready(programs[k](v, x))
    seg_times[k] = common.time_calls(fn, warmup=1, repeats=repeats)['median_s']
  convs = segment_convs(model, v, x, segment)
  groups = collections.Counter(conv[1:] for conv in convs)
  rng = np.random.RandomState(0)
  rows = []
  for (shape, k, s, f, b, fill), count in groups.items():
    h, w = (shape[1] + 2 * (k // 2) - k) // s + 1, (shape[2] + 2 * (k // 2) - k) // s + 1
    m = masks.at(h, w)
    xin = jnp.asarray(rng.randn(*shape).astype(np.float32))
    kernel = jnp.asarray(rng.randn(k, k, shape[-1], f).astype(np.float32) / np.sqrt(k * k * shape[-1]))
    bias = jnp.zeros((f,), jnp.float32) if b else None
    lam = jnp.float32(confidence.LAMBDA_INIT)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    pixels = confidence.PixelSet(m)
    fns = {
        'dense': jax.jit(lambda x, kern, bias: confidence.dense_conv(policy, x, kern, bias, (s, s), pad)),
        'sparse': jax.jit(
            lambda x, kern, bias, m: confidence.masked_sparse(policy, x, kern, bias, m, lam, (s, s), pad, fill=fill)
        ),
        'pixels': jax.jit(lambda m: (lambda p: (p.count, p.order))(confidence.PixelSet(m))),
    }
    args = {'dense': (xin, kernel, bias), 'sparse': (xin, kernel, bias, m), 'pixels': (m,)}
    ms = {}
    for name, fn in fns.items():
      call = lambda fn=fn, a=args[name]: jax.block_until_ready(fn(*a))
      ms[name] = 1e3 * common.time_calls(call, warmup=2, repeats=repeats)['median_s']
    rows.append(
        {
            'x': shape,
            'out': (h, w),
            'k': k,
            'stride': s,
            'cout': f,
            'count': count,
            'computed': float(m.mean()),
            'branch': _branch(pixels, k, s, fill, float(lam)),
            **{f'{name}_ms': t for name, t in ms.items()},
        }
    )
  rows.sort(key=lambda r: -r['count'] * r['sparse_ms'])
  return rows, seg_times


def report(rows, seg_times, segment) -> str:
  lines = [
      '| input | out | k/s | cout | n | computed | branch | dense ms | sparse ms | pixels ms | sparse/dense |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
        f"| {r['x'][1]}x{r['x'][2]}x{r['x'][3]} | {r['out'][0]}x{r['out'][1]} | {r['k']}/{r['stride']} | {r['cout']} | "
        f"{r['count']} | {r['computed']:.3f} | {r['branch']} | {r['dense_ms']:.2f} | {r['sparse_ms']:.2f} | "
        f"{r['pixels_ms']:.2f} | "
        f"{r['sparse_ms'] / r['dense_ms']:.2f} |"
    )
  by_res = collections.defaultdict(lambda: [0.0, 0.0])
  for r in rows:
    by_res[r['out']][0] += r['count'] * r['dense_ms']
    by_res[r['out']][1] += r['count'] * r['sparse_ms']
  lines.append('')
  for res, (d, s) in sorted(by_res.items(), reverse=True):
    lines.append(f'output {res[0]}x{res[1]}: convs dense {d:.1f} ms, sparse {s:.1f} ms')
  total_d = sum(d for d, _ in by_res.values())
  total_s = sum(s for _, s in by_res.values())
  seg = 1e3 * (seg_times[segment] - seg_times[segment - 1])
  lines.append(
      f'segment {segment} (whole model, sparse, cumulative difference): {seg:.1f} ms; its masked convs timed alone: '
      f'dense {total_d:.1f} ms, sparse {total_s:.1f} ms; the rest (the segment minus its convs) {seg - total_s:.1f} ms'
  )
  return '\n'.join(lines)


def demo_compile_seconds(masked_conv: str) -> dict:
  """Tracing and compiling the digit_scenes demo's eval forward (its config, batch eval_batch_size at 64x128, its
  XLA options) with `masked_conv`: {'trace': s, 'compile': s}, CPU time of this process (process_time)."""
  import os  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from anytime_jax import task as task_lib  # pylint: disable=import-outside-toplevel
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = cli.load_config_file(os.path.join(root, 'configs', 'anytime', 'digit_scenes.py'))
  config.compute.masked_conv = masked_conv

  class Info:
    num_classes = 11

  model = task_lib.AnytimeSegTask(config, Info()).build_model()
  v = dict(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 128, 3))))
  v['constants'] = {'tau': jax.ShapeDtypeStruct((), jnp.float32)}
  x = jax.ShapeDtypeStruct((config.eval_batch_size, 64, 128, 3), jnp.float32)
  t0 = time.process_time()
  lowered = jax.jit(lambda v, x: model.apply(v, x)).lower(v, x)
  t1 = time.process_time()
  lowered.compile(dict(config.get('xla_compiler_options', None) or {}))
  return {'trace': t1 - t0, 'compile': time.process_time() - t1}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
      '--demo-compile',
      action='store_true',
      help="instead: the CPU seconds of tracing and compiling the digit_scenes demo's eval forward, dense and sparse",
  )
  p.add_argument('--arch', default='w18_small_v2')
  p.add_argument('--height', type=int, default=512)
  p.add_argument('--width', type=int, default=1024)
  p.add_argument('--setting', default=f'tau={anytime_cost.TAU}', choices=('fractions', f'tau={anytime_cost.TAU}'))
  p.add_argument('--segment', type=int, default=4, choices=(2, 3, 4))
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args()
  if args.demo_compile:
    for kind in ('dense', 'sparse', 'dense', 'sparse'):  # twice each, interleaved: the machine's load drifts
      print(kind, {k: f'{t:.1f} s' for k, t in demo_compile_seconds(kind).items()}, flush=True)
    return
  rows, seg_times = profile(args.arch, args.height, args.width, args.setting, args.segment, args.repeats)
  print(report(rows, seg_times, args.segment))


if __name__ == '__main__':
  main()
