"""Where a jitted ConvNeXt step spends its time, per layer kind, from the XLA profiler (any backend).

  python -m benchmarks.profile_xla_ops [--mode infer|train] [--model convnext_tiny] [--batch 16] \
      [--size 224] [--top 25] [--set fusion_barriers=False --set patch_conv=conv ...]

Runs one step under `jax.profiler.trace`, reads the XPlane it writes, maps every executed XLA op
(fusion, dot, conditional, loop) to the model layer in its op_name metadata, and prints the time per
(layer kind, XLA op kind), largest first. This is how the CPU speed work found its targets: e.g. the
depthwise conv's 49-tap sum recomputed inside each LayerNorm pass, and the YNNPACK reduce fusion
materializing every shifted slice (see `core_jax.compute.materialized`). The profiler adds
overhead, so read shares, not absolute times.
"""

import argparse
import ast
import collections
import glob
import os
import re
import tempfile
import time

from core_jax import host_memory

host_memory.retain_freed_memory()  # as our trainers run (before JAX starts its thread pools)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

_LAYER = re.compile(r'(dwconv|norm|pwconv1|pwconv2|erf|downsample_\d/conv|stem_conv|head|drop_path|gamma)')


def _step(args):
  import optax  # pylint: disable=import-outside-toplevel

  from convnext_jax import create_model  # pylint: disable=import-outside-toplevel

  compute = {
      k: ast.literal_eval(v) if v[:1] not in 'abcdefghijklmnopqrstuvwxyz' else v
      for k, v in (s.split('=', 1) for s in args.set)
  }
  model = create_model(args.model, compute=compute)
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  if args.mode == 'infer':
    fn = jax.jit(lambda v, x: model.apply(v, x)[0])
    operands = (variables, x)
  else:
    tx = optax.adamw(1e-3)
    y = jnp.zeros((args.batch,), jnp.int32)

    def step(p, o, x, y):
      def loss(p):
        logits, _ = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

      value, grads = jax.value_and_grad(loss)(p)
      updates, o = tx.update(grads, o, p)
      return optax.apply_updates(p, updates), o, value

    fn = jax.jit(step)
    operands = (variables['params'], tx.init(variables['params']), x, y)
  return fn, operands


def _op_names(compiled_text: str) -> dict:
  """HLO instruction name -> op_name metadata, for the ops that do work themselves: conditionals and
  loops are left out, since the ops inside them are reported on their own (no double counting)."""
  names = {}
  for line in compiled_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', line)
    if m and not re.search(r' (conditional|while|call)\(', line):
      names[m.group(1)] = m.group(2)
  return names


def profile(args) -> list:
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel

  fn, operands = _step(args)
  for _ in range(2):  # compile, then one warm call
    jax.block_until_ready(fn(*operands))
  op_names = _op_names(fn.lower(*operands).compile().as_text())
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    with jax.profiler.trace(tmp):
      jax.block_until_ready(fn(*operands))
    wall = time.perf_counter() - t0
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(tmp, '**', '*.xplane.pb'), recursive=True)[0], 'rb') as f:
      space.ParseFromString(f.read())
  per_kind = collections.Counter()
  for plane in space.planes:
    meta = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if line.name == 'python':
        continue
      for ev in line.events:
        name = meta.get(ev.metadata_id, '')
        if name not in op_names:  # executor bookkeeping, waits, python frames
          continue
        layer = _LAYER.search(op_names[name])
        kind = (layer.group(1) if layer else op_names[name].split('/')[-1][:24], name.split('.')[0][:28])
        per_kind[kind] += ev.duration_ps / 1e9
  total = sum(per_kind.values())
  print(
      f'{args.model} {args.mode} batch {args.batch} at {args.size}: wall under profiler {wall * 1e3:.0f} ms, '
      f'XLA ops {total:.0f} ms, backend {jax.default_backend()}'
  )
  rows = per_kind.most_common(args.top)
  for (layer, op), ms in rows:
    print(f'{ms:9.1f} ms {100 * ms / total:5.1f}%  {layer:22s} {op}')
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--mode', choices=('infer', 'train'), default='infer')
  p.add_argument('--model', default='convnext_tiny')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--top', type=int, default=25)
  p.add_argument(
      '--set', action='append', default=[], help='compute policy field (core_jax.compute), e.g. fusion_barriers=False'
  )
  profile(p.parse_args())


if __name__ == '__main__':
  main()
