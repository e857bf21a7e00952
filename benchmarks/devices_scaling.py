"""Training-step time on 8 simulated CPU devices vs 1, same global batch: the cost of data parallelism.

  python -m benchmarks.devices_scaling [--model convnext_atto] [--batch 64] [--size 64]

Both runs use the same jitted step as core_jax.train (batch split over the mesh, parameters replicated,
gradients all-reduced by XLA). On one host the 8 "devices" share the same cores, so the ideal ratio is
1.0x; anything above it is the all-reduce and per-device overhead.

To split the two, 8 devices also run the step as a `shard_map` over the batch, once with the gradient
all-reduce written out (`pmean`) and once without it (each device updates from its own gradients: wrong
as training, same work otherwise). pmean minus local is what the all-reduce costs; local minus 1 device is
what running 8 simulated devices on these cores costs.
"""

import argparse

from benchmarks import common


def worker(args):
  from core_jax import host_memory  # pylint: disable=import-outside-toplevel

  host_memory.retain_freed_memory()  # as our trainers run
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P

  from convnext_jax import models  # pylint: disable=import-outside-toplevel

  mesh = Mesh(jax.devices(), ('data',))
  # The XLA depthwise path on 1 device too: 'auto' picks the C++ kernels only where one device is
  # visible (XLA cannot partition a custom call), so this compares device counts, not code paths.
  model = models.create_model(args.model, num_classes=10, compute=dict(dwconv='shifted'))
  x = jax.device_put(jnp.ones((args.batch, args.size, args.size, 3)), NamedSharding(mesh, P('data')))
  y = jax.device_put(jnp.zeros((args.batch,), jnp.int32), NamedSharding(mesh, P('data')))
  rep = NamedSharding(mesh, P())
  params = jax.device_put(model.init({'params': jax.random.PRNGKey(0)}, x[:1])['params'], rep)
  tx = optax.adamw(1e-4)
  opt = jax.device_put(tx.init(params), rep)

  def step(p, o, x, y):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x)[0], y).mean())(
        p
    )
    if args.variant == 'shard_map_pmean':  # inside shard_map: the gradient all-reduce, written out
      g = jax.lax.pmean(g, 'data')
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  if args.variant == 'jit':
    jstep = jax.jit(step, out_shardings=(rep, rep))
  else:  # explicit per-device step, with or without the gradient all-reduce
    jstep = jax.jit(
        jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P('data'), P('data')), out_specs=(P(), P()), check_vma=False)
    )
  state = [params, opt]

  def fn():
    state[0], state[1] = jstep(state[0], state[1], x, y)
    jax.block_until_ready(state[0])

  stats = common.time_calls(fn, warmup=2, repeats=args.repeats)
  common.emit(
      {
          'bench': 'devices_scaling',
          'devices': jax.device_count(),
          'variant': args.variant,
          'model': args.model,
          'batch': args.batch,
          'size': args.size,
          **stats,
      }
  )


def measure(model='convnext_atto', batch=64, size=64, repeats=5) -> list:
  records = []
  for devices, variant in ((1, 'jit'), (8, 'jit'), (8, 'shard_map_pmean'), (8, 'shard_map_local')):
    records += common.run_isolated(
        'benchmarks.devices_scaling',
        [
            '--worker',
            '--model',
            model,
            '--batch',
            str(batch),
            '--size',
            str(size),
            '--repeats',
            str(repeats),
            '--variant',
            variant,
        ],
        env={'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'},
    )
  return records


_VARIANT_TEXT = {
    'jit': "jit over the mesh (the trainer's step)",
    'shard_map_pmean': 'shard_map, pmean of gradients',
    'shard_map_local': 'shard_map, no all-reduce',
}


def table(records) -> str:
  by = {(r['devices'], r.get('variant', 'jit')): r['median_s'] for r in records}
  one = by[(1, 'jit')]
  lines = ['| devices | step | median step (s) | vs 1 device |', '|---|---|---|---|']
  lines += [f'| {d} | {_VARIANT_TEXT[v]} | {t:.3f} | {t / one:.2f}x |' for (d, v), t in by.items()]
  if (8, 'shard_map_pmean') in by and (8, 'shard_map_local') in by:
    reduce_s = by[(8, 'shard_map_pmean')] - by[(8, 'shard_map_local')]
    reduce_text = (
        f'costs {reduce_s:.3f} s' if reduce_s > 0 else f'costs nothing measurable (pmean minus local: {reduce_s:.3f} s)'
    )
    lines.append(
        f'\nOf the 8-device step: the gradient all-reduce {reduce_text}; running 8 simulated '
        f"devices on these cores costs {by[(8, 'shard_map_local')] - one:.3f} s over 1 device."
    )
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--model', default='convnext_atto')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--variant', choices=tuple(_VARIANT_TEXT), default='jit')
  args = p.parse_args()
  if args.worker:
    return worker(args)
  records = measure(args.model, args.batch, args.size, args.repeats)
  print(table(records))
  return records


if __name__ == '__main__':
  main()
