"""Profile a jitted ConvNeXt train step (fwd + bwd + SGD) on the current backend.

    .venv/bin/python benchmarks/profile_convnext_layers.py                 # default candidate grid
    .venv/bin/python benchmarks/profile_convnext_layers.py --depths 1,1,3,1 --dims 32,64,128,256 \
        --patch 2 --impls xla,shifted --batch 64 --res 32
    .venv/bin/python benchmarks/profile_convnext_layers.py --dwconv-only   # isolated depthwise conv fwd+bwd
    .venv/bin/python benchmarks/profile_convnext_layers.py --tiny-stages --batch 16 --impls shifted,native
        # ConvNeXt-T's four stage shapes: depthwise conv and LayerNorm fwd+bwd per implementation

Reports median and min step time (s) over ``--iters`` steps after compile + warm-up (min is the
more robust number on a shared machine).

``--impls`` takes the model's depthwise impls (``convnext_jax.ops.DWCONV_IMPLS``) and, for ``--dwconv-only`` and
``--tiny-stages``, two variants kept only for profiling (``PROFILING_DWCONVS``): ``xla_nchw`` (the grouped conv
on NCHW/OIHW layout) and ``shifted_autodiff`` (the shifted multiply-adds differentiated by JAX instead of the
hand-written backward, and without the fusion barrier).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax
import jax.numpy as jnp
import numpy as np

from convnext_jax import ConvNeXt, for_backend, ops


def _dwconv_xla_nchw(x, kernel, padding):
  c = kernel.shape[-1]
  y = jax.lax.conv_general_dilated(
      jnp.transpose(x, (0, 3, 1, 2)),
      jnp.transpose(kernel, (3, 2, 0, 1)),
      window_strides=(1, 1),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
      feature_group_count=c,
  )
  return jnp.transpose(y, (0, 2, 3, 1))


def _dwconv_shifted_autodiff(x, kernel, padding):
  kh, kw, _, _ = kernel.shape
  _, h, w, _ = x.shape
  xp = ops.pad_hw(x, (padding, padding))
  return ops.shifted_sum(xp, kernel[:, :, 0, :], h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)


# Depthwise conv variants that only the profiles compare (same function as ops.depthwise_conv2d).
PROFILING_DWCONVS = {'xla_nchw': _dwconv_xla_nchw, 'shifted_autodiff': _dwconv_shifted_autodiff}


def depthwise_conv(x, kernel, padding, impl):
  """``ops.depthwise_conv2d`` for the model's impls, else the profiling-only variant named ``impl``."""
  if impl in PROFILING_DWCONVS:
    return PROFILING_DWCONVS[impl](x, kernel, padding)
  return ops.depthwise_conv2d(x, kernel, padding, impl)


def _median_time(fn, iters: int) -> float:
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return float(np.median(ts)), float(np.min(ts))


def train_step_time(depths, dims, patch, impl, batch=64, res=32, iters=10, num_classes=10):
  model = ConvNeXt(
      depths=tuple(depths),
      dims=tuple(dims),
      patch_size=patch,
      num_classes=num_classes,
      compute=for_backend(dict(dwconv=impl)),
      drop_path_rate=0.0,
  )
  x = jnp.asarray(np.random.RandomState(0).randn(batch, res, res, 3).astype(np.float32))
  y = jnp.asarray(np.random.RandomState(1).randint(0, num_classes, batch))
  params = model.init(jax.random.PRNGKey(0), x[:1])['params']

  def loss_fn(p, x, y):
    logits, _ = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

  @jax.jit
  def step(p, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g), loss

  t0 = time.perf_counter()
  params, loss = step(params, x, y)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - t0
  state = {'p': params}

  def run():
    state['p'], loss = step(state['p'], x, y)
    return loss

  run()  # warm-up
  nparams = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
  med, mn = _median_time(run, iters)
  return med, mn, compile_s, nparams


def dwconv_time(n, h, c, impl, iters=20):
  x = jnp.asarray(np.random.RandomState(0).randn(n, h, h, c).astype(np.float32))
  k = jnp.asarray(np.random.RandomState(1).randn(7, 7, 1, c).astype(np.float32))
  f = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(depthwise_conv(x, k, 3, impl) ** 2), argnums=(0, 1)))
  jax.block_until_ready(f(x, k))
  return _median_time(lambda: f(x, k), iters)[1]


def layer_norm_time(n, h, c, native, iters=20):
  x = jnp.asarray(np.random.RandomState(0).randn(n, h, h, c).astype(np.float32))
  s, b = jnp.ones((c,)), jnp.zeros((c,))
  fn = ops.layer_norm_native if native else ops.layer_norm_channels_last
  f = jax.jit(jax.value_and_grad(lambda x, s, b: jnp.sum(fn(x, s, b, 1e-6) ** 2), argnums=(0, 1, 2)))
  jax.block_until_ready(f(x, s, b))
  return _median_time(lambda: f(x, s, b), iters)[1]


def _ints(s):
  return tuple(int(v) for v in s.split(','))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--depths', type=str, default=None)
  ap.add_argument('--dims', type=str, default=None)
  ap.add_argument('--patch', type=int, default=None)
  ap.add_argument('--impls', type=str, default='xla,shifted')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--res', type=int, default=32)
  ap.add_argument('--iters', type=int, default=10)
  ap.add_argument('--dwconv-only', action='store_true')
  ap.add_argument('--tiny-stages', action='store_true')
  args = ap.parse_args()
  impls = args.impls.split(',')
  print(f'backend={jax.default_backend()} devices={jax.devices()}')

  if args.dwconv_only:
    print(f"{'N':>4} {'HxW':>6} {'C':>5} " + ' '.join(f'{i:>13}' for i in impls) + '   (min s, fwd+bwd)')
    for h, c in [(16, 32), (8, 64), (4, 128), (2, 256), (16, 40), (32, 32)]:
      ts = [dwconv_time(args.batch, h, c, i) for i in impls]
      print(f'{args.batch:>4} {h:>3}x{h:<2} {c:>5} ' + ' '.join(f'{t:13.5f}' for t in ts))
    return

  if args.tiny_stages:
    ln_impls = ['xla'] + (['native'] if 'native' in impls else [])
    print(
        f"{'N':>4} {'HxW':>6} {'C':>5} "
        + ' '.join(f"{'dw ' + i:>14}" for i in impls)
        + ' '
        + ' '.join(f"{'ln ' + i:>12}" for i in ln_impls)
        + '   (min ms, fwd+bwd)'
    )
    for h, c in [(56, 96), (28, 192), (14, 384), (7, 768)]:
      dw = [1e3 * dwconv_time(args.batch, h, c, i) for i in impls]
      ln = [1e3 * layer_norm_time(args.batch, h, c, i == 'native') for i in ln_impls]
      print(
          f'{args.batch:>4} {h:>3}x{h:<2} {c:>5} '
          + ' '.join(f'{t:14.1f}' for t in dw)
          + ' '
          + ' '.join(f'{t:12.1f}' for t in ln),
          flush=True,
      )
    return

  if args.depths:
    grid = [(_ints(args.depths), _ints(args.dims), args.patch or 2)]
  else:
    grid = [
        ((1, 1, 3, 1), (32, 64, 128, 256), 2),
        ((2, 2, 2, 2), (32, 64, 128, 256), 2),
        ((1, 1, 3, 1), (40, 80, 160, 320), 2),
        ((2, 2, 6, 2), (40, 80, 160, 320), 2),  # atto widths/depths at patch 2
        ((1, 1, 3, 1), (32, 64, 128, 256), 4),
        ((2, 2, 2, 2), (32, 64, 128, 256), 4),
        ((1, 1, 3, 1), (32, 64, 128, 256), 1),
    ]
  print(
      f"{'depths':>12} {'dims':>20} {'patch':>5} {'params':>9} {'impl':>13} {'median_s':>8} {'min_s':>8} "
      f"{'compile_s':>9}"
  )
  for depths, dims, patch in grid:
    for impl in impls:
      t, m, c, n = train_step_time(depths, dims, patch, impl, args.batch, args.res, args.iters)
      print(f'{str(depths):>12} {str(dims):>20} {patch:>5} {n:>9} {impl:>13} {t:8.4f} {m:8.4f} {c:9.2f}', flush=True)


if __name__ == '__main__':
  main()
