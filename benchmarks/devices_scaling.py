"""Training-step time on 8 simulated CPU devices vs 1, same global batch: the cost of data parallelism.

  python -m benchmarks.devices_scaling [--model convnext_atto] [--batch 64] [--size 64]

Both runs use the same jitted step as core_jax.train (batch split over the mesh, parameters replicated,
gradients all-reduced by XLA). On one host the 8 "devices" share the same cores, so the ideal ratio is
1.0x; anything above it is the all-reduce and per-device overhead.
"""
import argparse

from benchmarks import common


def worker(args):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from convnext_jax import models  # pylint: disable=import-outside-toplevel
  mesh = Mesh(jax.devices(), ('data',))
  model = models.create_model(args.model, num_classes=10)
  x = jax.device_put(jnp.ones((args.batch, args.size, args.size, 3)), NamedSharding(mesh, P('data')))
  y = jax.device_put(jnp.zeros((args.batch,), jnp.int32), NamedSharding(mesh, P('data')))
  rep = NamedSharding(mesh, P())
  params = jax.device_put(model.init({'params': jax.random.PRNGKey(0)}, x[:1])['params'], rep)
  tx = optax.adamw(1e-4)
  opt = jax.device_put(tx.init(params), rep)

  def step(p, o, x, y):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({'params': p}, x)[0], y).mean())(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  jstep = jax.jit(step, out_shardings=(rep, rep))
  state = [params, opt]

  def fn():
    state[0], state[1] = jstep(state[0], state[1], x, y)
    jax.block_until_ready(state[0])

  stats = common.time_calls(fn, warmup=2, repeats=args.repeats)
  common.emit({'bench': 'devices_scaling', 'devices': jax.device_count(), 'model': args.model,
               'batch': args.batch, 'size': args.size, **stats})


def measure(model='convnext_atto', batch=64, size=64, repeats=5) -> list:
  records = []
  for devices in (1, 8):
    records += common.run_isolated(
        'benchmarks.devices_scaling',
        ['--worker', '--model', model, '--batch', str(batch), '--size', str(size), '--repeats', str(repeats)],
        env={'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'})
  return records


def table(records) -> str:
  by = {r['devices']: r for r in records}
  return ('| devices | median step (s) | vs 1 device |\n|---|---|---|\n' + '\n'.join(
      f"| {d} | {r['median_s']:.3f} | {r['median_s'] / by[1]['median_s']:.2f}x |" for d, r in sorted(by.items())))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--model', default='convnext_atto')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args()
  if args.worker:
    return worker(args)
  records = measure(args.model, args.batch, args.size, args.repeats)
  print(table(records))
  return records


if __name__ == '__main__':
  main()
