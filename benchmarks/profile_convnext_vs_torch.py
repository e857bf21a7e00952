"""ConvNeXt-T's layer kinds one by one, ours (XLA:CPU under ConvNeXt's compute policy) against timm's PyTorch op
at the same shape, in one process, interleaved round by round, wall and CPU time per call.

  python -m benchmarks.profile_convnext_vs_torch [--batch 32] [--rounds 5] [--modes infer,train] [--threads 2] \
      [--set dense_grad=autodiff ...]

Each stage of ConvNeXt-T at 224 (56x56x96, 28x28x192, 14x14x384, 7x7x768) and each layer kind of its blocks:
the 7x7 depthwise conv with bias (ours NHWC by the policy's depthwise path; timm's ``Conv2d(groups=C)`` on an
NCHW view of channels-last memory, which is how timm's blocks hand it its input on CPU: the stem's and each
block's permutes leave the activations channels-last), LayerNorm (ours NHWC; timm's on the NHWC permute of the
conv's channels-last output, which is contiguous), the two pointwise matmuls with bias (``nn.Dense`` /
``F.linear``), exact GELU, and the downsampling into the stage (LayerNorm then the 2x2 stride-2 conv; ours a
patch matmul, timm ``LayerNorm2d`` + ``Conv2d``).
``train`` times forward + backward to every input and parameter. Rows are per call; the ``x depth`` column
scales the block rows by the stage's block count (3, 3, 9, 3), so the totals compare with a whole step.
Read the CPU-time columns on a shared machine: wall time there measures the other jobs as much as the op.
Timm's block also permutes back to NCHW and adds the residual; ours adds it in a fused elementwise pass: not
timed here. See benchmarks/ANALYSIS.md for what it found.
"""

import argparse
import os
import statistics
import sys
import time

from core_jax import host_memory

host_memory.retain_freed_memory()  # as our trainers and the timm_retain benchmark run

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

STAGES = ((56, 96, 3), (28, 192, 3), (14, 384, 9), (7, 768, 3))  # (H = W, C, blocks) of ConvNeXt-T at 224


def _ours_ops(n, h, c, mode, overrides):
  """name -> a no-argument callable running our op once (jitted; train: value and gradient)."""
  from convnext_jax import for_backend, ops  # pylint: disable=import-outside-toplevel
  from convnext_jax.layers import gelu_exact  # pylint: disable=import-outside-toplevel

  compute = for_backend(overrides)
  rng = np.random.RandomState(0)
  arr = lambda *shape: jnp.asarray(rng.randn(*shape).astype(np.float32) * 0.1)
  x, x4 = arr(n, h, h, c), arr(n, h, h, 4 * c)
  dw_k, vec, vec4 = arr(7, 7, 1, c), arr(c), arr(4 * c)
  w1, w2 = arr(c, 4 * c), arr(4 * c, c)
  prev = arr(n, 2 * h, 2 * h, c // 2)
  ds_k = arr(2, 2, c // 2, c)
  dot_general = compute.dot_general or jax.lax.dot_general  # as nn.Dense(dot_general=...) in the model
  dense = lambda x, w, b: dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))) + b
  fns = {
      'dwconv 7x7 + bias': (lambda x, k, b: ops.depthwise_conv(compute, x, k, 3) + b, (x, dw_k, vec)),
      'LayerNorm': (lambda x, s, b: ops.layer_norm(compute, x, s, b, 1e-6), (x, vec, vec)),
      'pwconv1 + bias': (dense, (x, w1, vec4)),
      'GELU (erf)': (gelu_exact, (x4,)),
      'pwconv2 + bias': (dense, (x4, w2, vec)),
  }
  if h != 56:
    fns['downsample (LN + 2x2/2 conv)'] = (
        lambda x, s, b, k, kb: compute.conv(ops.layer_norm(compute, x, s, b, 1e-6), k, (2, 2)) + kb,
        (prev, prev[0, 0, 0] * 0 + 1, prev[0, 0, 0] * 0, ds_k, vec),
    )
  out = {}
  for name, (f, args) in fns.items():
    if mode == 'train':
      g = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=tuple(range(len(args)))))
    else:
      g = jax.jit(f)
    out[name] = lambda g=g, args=args: jax.block_until_ready(g(*args))
  return out


def _torch_ops(n, h, c, mode):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  grad = mode == 'train'
  t = lambda *shape: (torch.randn(*shape) * 0.1).requires_grad_(grad)
  x_nhwc, x4 = t(n, h, h, c), t(n, h, h, 4 * c)
  x_nchw = x_nhwc.permute(0, 3, 1, 2)  # channels-last memory, as in timm's blocks (the gradient reaches x_nhwc)
  dw_w, vec, vec4 = t(c, 1, 7, 7), t(c), t(4 * c)
  w1, w2 = t(4 * c, c), t(c, 4 * c)
  prev = t(n, 2 * h, 2 * h, c // 2).permute(0, 3, 1, 2)
  pvec, ds_w = t(c // 2), t(c, c // 2, 2, 2)

  def layer_norm_2d(x, s, b):  # timm's LayerNorm2d: permute, layer_norm, permute back
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), s, b, 1e-6).permute(0, 3, 1, 2)

  fns = {
      'dwconv 7x7 + bias': (lambda x, w, b: F.conv2d(x, w, b, padding=3, groups=c), (x_nchw, dw_w, vec)),
      'LayerNorm': (lambda x, s, b: F.layer_norm(x, (c,), s, b, 1e-6), (x_nhwc, vec, vec)),
      'pwconv1 + bias': (F.linear, (x_nhwc, w1, vec4)),
      'GELU (erf)': (F.gelu, (x4,)),
      'pwconv2 + bias': (F.linear, (x4, w2, vec)),
  }
  if h != 56:
    fns['downsample (LN + 2x2/2 conv)'] = (
        lambda x, s, b, w, wb: F.conv2d(layer_norm_2d(x, s, b), w, wb, stride=2),
        (prev, pvec, pvec, ds_w, vec),
    )
  out = {}
  for name, (f, args) in fns.items():
    if grad:

      def run(f=f, args=args):
        for a in args:
          if a.is_leaf:
            a.grad = None
        y = f(*args)
        (y * y).sum().backward()

    else:

      def run(f=f, args=args):
        with torch.no_grad():
          f(*args)

    out[name] = run
  return out


def _timed(fn):
  t, c = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t, time.process_time() - c


def measure(batch=32, rounds=5, modes=('infer', 'train'), threads=2, overrides=None) -> list:
  """One row per (mode, stage, layer kind): median wall / CPU seconds per call of ours and torch's, and the
  median of the per-round CPU-time ratios torch / ours (above 1: ours cheaper). ``overrides``: compute policy
  fields for ours (``convnext_jax.for_backend``), e.g. {'dense_grad': 'autodiff'}."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  rows = []
  for mode in modes:
    for h, c, blocks in STAGES:
      contenders = {'ours': _ours_ops(batch, h, c, mode, overrides), 'torch': _torch_ops(batch, h, c, mode)}
      for fns in contenders.values():
        for f in fns.values():
          f()
          f()  # compile, warm up
      for name in contenders['ours']:
        times = {who: [] for who in contenders}
        for r in range(rounds):
          order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
          for who in order:
            times[who].append(_timed(contenders[who][name]))
        med = {who: [statistics.median(t[i] for t in ts) for i in (0, 1)] for who, ts in times.items()}
        cpu_ratio = statistics.median(t[1] / max(o[1], 1e-9) for o, t in zip(times['ours'], times['torch']))
        rows.append(
            dict(
                mode=mode,
                stage=f'{h}x{h}x{c}',
                op=name,
                depth=1 if name.startswith('downsample') else blocks,
                ours_wall=med['ours'][0],
                ours_cpu=med['ours'][1],
                torch_wall=med['torch'][0],
                torch_cpu=med['torch'][1],
                torch_per_ours_cpu=cpu_ratio,
            )
        )
        print(_row(rows[-1]), flush=True)
  return rows


def _row(r) -> str:
  return (
      f"| {r['mode']} | {r['stage']} | {r['op']} | {r['ours_wall'] * 1e3:.1f} / {r['ours_cpu'] * 1e3:.1f} | "
      f"{r['torch_wall'] * 1e3:.1f} / {r['torch_cpu'] * 1e3:.1f} | {r['torch_per_ours_cpu']:.2f}x | {r['depth']} |"
  )


def summary(rows) -> str:
  """Per mode and layer kind, CPU seconds summed over the stages, each row times its block count."""
  lines = [
      '| mode | layer kind | ours CPU s (x depth) | torch CPU s (x depth) | torch / ours |',
      '|---|---|---|---|---|',
  ]
  for mode in dict.fromkeys(r['mode'] for r in rows):
    total = [0.0, 0.0]
    for op in dict.fromkeys(r['op'] for r in rows):
      sel = [r for r in rows if r['mode'] == mode and r['op'] == op]
      o = sum(r['ours_cpu'] * r['depth'] for r in sel)
      t = sum(r['torch_cpu'] * r['depth'] for r in sel)
      total = [total[0] + o, total[1] + t]
      lines.append(f'| {mode} | {op} | {o:.3f} | {t:.3f} | {t / o:.2f}x |')
    lines.append(f'| {mode} | all of the above | {total[0]:.3f} | {total[1]:.3f} | {total[1] / total[0]:.2f}x |')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--modes', default='infer,train')
  p.add_argument('--threads', type=int, default=os.cpu_count(), help="torch's intra-op threads (XLA uses every core)")
  p.add_argument('--set', action='append', default=[], help='a compute policy field for ours, e.g. dense_grad=autodiff')
  args = p.parse_args()
  modes = tuple(args.modes.split(','))
  if not set(modes) <= {'infer', 'train'} or args.batch < 1 or args.rounds < 1:
    sys.exit('error: --modes takes infer and/or train; --batch and --rounds must be >= 1')
  print(f'jax {jax.__version__} backend {jax.default_backend()}, batch {args.batch}, {args.rounds} rounds')
  print('| mode | stage | layer | ours wall / CPU ms | torch wall / CPU ms | torch / ours CPU | blocks |')
  print('|---|---|---|---|---|---|---|')
  overrides = dict(kv.split('=', 1) for kv in args.set)
  rows = measure(args.batch, args.rounds, modes, args.threads, overrides)
  print()
  print(summary(rows))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  main()
