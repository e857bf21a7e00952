"""ConvNeXt images/s, ours (jax.jit) vs timm (PyTorch eager, and torch.compile when it works), same machine.

  python -m benchmarks.convnext_throughput [--model convnext_tiny] [--batch 32] [--size 224] [--repeats 5]

Measures inference (eval forward) and a training step (forward + backward + AdamW update, drop path 0.1)
for each contender in its own subprocess, the subprocesses taking turns step by step (`common.interleaved`,
so the VM's drift hits every contender alike); prints medians, the ratio ours/timm (median of the per-round
ratios), peak RSS, and BENCH json lines. fp32 on CPU; on a GPU, bf16 compute for ours and AMP bf16 + channels_last for
timm.

Ours runs as our trainers do, with `core_jax.host_memory.retain_freed_memory()` (glibc keeps freed
memory mapped, so a step's temporaries are not page-faulted in again every step).  `timm_retain` is timm
with the same allocator setting, so the ratio against it isolates the model code from that setting.
"""

import argparse
import os
import sys

from benchmarks import common

CONTENDERS = ('ours', 'timm', 'timm_retain', 'timm_compile')


def _ours(args):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from convnext_jax import models  # pylint: disable=import-outside-toplevel

  gpu = jax.default_backend() != 'cpu'
  dtype = jnp.bfloat16 if gpu else jnp.float32
  model = models.create_model(args.model, drop_path_rate=0.1, dtype=dtype, compute=dict(dwconv=args.dwconv_impl))
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3), jnp.float32)
  y = jnp.zeros((args.batch,), jnp.int32)
  params = jax.jit(lambda: model.init({'params': jax.random.PRNGKey(1)}, x[:1])['params'])()
  if args.mode == 'infer':
    fwd = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False)[0])
    fn = lambda: fwd(params, x).block_until_ready()
  else:
    tx = optax.adamw(1e-4, weight_decay=0.05)
    state = {'p': params, 'o': tx.init(params)}

    def step(p, o, x, y, key):
      def loss(p):
        logits, _ = model.apply({'params': p}, x, train=True, rngs={'dropout': key})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

      g = jax.grad(loss)(p)
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o

    jstep = jax.jit(step, donate_argnums=(0, 1))
    key = jax.random.PRNGKey(2)

    def fn():
      state['p'], state['o'] = jstep(state['p'], state['o'], x, y, key)
      jax.block_until_ready(state['p'])

  return fn


def _timm(args, compiled: bool):
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  gpu = torch.cuda.is_available()
  device = 'cuda' if gpu else 'cpu'
  model = timm.create_model(args.model, drop_path_rate=0.1).to(device)
  x = torch.randn(args.batch, 3, args.size, args.size, device=device)
  y = torch.zeros(args.batch, dtype=torch.long, device=device)
  if gpu:
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
  amp = torch.autocast('cuda', dtype=torch.bfloat16) if gpu else torch.autocast('cpu', enabled=False)
  sync = torch.cuda.synchronize if gpu else (lambda: None)
  if args.mode == 'infer':
    model.eval()
    run = torch.compile(model) if compiled else model

    def fn():
      with torch.no_grad(), amp:
        run(x)
      sync()

  else:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    run = torch.compile(model) if compiled else model
    loss_fn = torch.nn.CrossEntropyLoss()

    def fn():
      opt.zero_grad(set_to_none=True)
      with amp:
        loss = loss_fn(run(x), y)
      loss.backward()
      opt.step()
      sync()

  return fn


def worker(args):
  if args.contender in ('ours', 'timm_retain'):
    from core_jax import host_memory  # pylint: disable=import-outside-toplevel

    host_memory.retain_freed_memory()  # before torch/jax start their thread pools
  fn = _ours(args) if args.contender == 'ours' else _timm(args, args.contender == 'timm_compile')
  record = {
      'bench': 'convnext_throughput',
      'contender': args.contender,
      'mode': args.mode,
      'model': args.model,
      'batch': args.batch,
      'size': args.size,
  }
  if args.serve:
    return common.serve(fn, args.warmup, record)
  stats = common.time_calls(fn, warmup=args.warmup, repeats=args.repeats)
  common.emit({**record, 'images_per_s': args.batch / stats['median_s'], 'peak_rss_mb': common.peak_rss_mb(), **stats})


def _groups(mode: str, contenders) -> list:
  """Who is alive at once. Inference: everyone (about 1.5 GB each). Training: ours with one reference
  at a time, because ours (5.6 GB at batch 32; more when glibc's kept heap fragments, 12 GB seen with the
  pure-XLA path) and two timm processes (5 GB each) would not fit in this machine's 23 GB together."""
  refs = [c for c in contenders if c != 'ours']
  if 'ours' not in contenders:
    return [list(contenders)]
  if mode == 'infer' or len(refs) <= 1:
    return [['ours'] + refs]
  return [['ours', r] for r in refs]


def measure(
    model='convnext_tiny',
    batch=32,
    size=224,
    repeats=5,
    warmup=2,
    contenders=CONTENDERS,
    modes=('infer', 'train'),
    dwconv_impl='auto',
) -> list:
  """Interleaved rounds (see `common.interleaved`): each record is one contender in one group, with
  `ours_per_this` = ours' speed over this contender's, the median of the per-round ratios."""
  records = []
  for mode in modes:
    for group in _groups(mode, contenders):
      args = ['--mode', mode, '--model', model, '--batch', str(batch), '--size', str(size)]
      args += ['--warmup', str(warmup), '--dwconv-impl', dwconv_impl]
      try:
        by = common.interleaved(
            'benchmarks.convnext_throughput', {c: ['--worker', '--contender', c, *args] for c in group}, rounds=repeats
        )
      except RuntimeError as e:  # torch.compile needs a C++ toolchain and may fail; say so, go on
        print(f'{"/".join(group)} {mode}: failed ({str(e).strip().splitlines()[-1][:200]})', file=sys.stderr)
        continue
      for c, r in by.items():
        r['images_per_s'] = batch / r['median_s']
        if c == 'ours':  # training runs ours once per reference: its row is the first group's
          if not any(x['contender'] == 'ours' and x['mode'] == mode for x in records):
            records.append(r)
          continue
        if 'ours' in by:
          r['ours_per_this'] = common.paired_ratio(by['ours']['times_s'], r['times_s'])
          r['ours_images_per_s'] = by['ours']['images_per_s']
        records.append(r)
  return records


def table(records) -> str:
  """One row per (mode, contender). For a reference, `ours / this` is the median of the per-round
  ratios against ours measured in the same rounds (ours' own speed in those rounds alongside)."""
  lines = [
      '| mode | contender | images/s | median step (s) | first call (s) | peak RSS (MB) '
      '| ours in the same rounds (images/s) | ours / this |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for r in sorted(records, key=lambda r: (r['mode'], r['contender'] != 'ours', r['contender'])):
    ours = f"{r['ours_images_per_s']:.1f}" if 'ours_per_this' in r else '-'
    ratio = f"{r['ours_per_this']:.2f}x" if 'ours_per_this' in r else ('1.00x' if r['contender'] == 'ours' else '-')
    lines.append(
        f"| {r['mode']} | {r['contender']} | {r['images_per_s']:.1f} | {r['median_s']:.3f} | "
        f"{r['first_call_s']:.1f} | {r['peak_rss_mb']:.0f} | {ours} | {ratio} |"
    )
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--contender', choices=CONTENDERS, default='ours')
  p.add_argument('--contenders', default=','.join(CONTENDERS))
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--mode', choices=('infer', 'train'), default='infer', help='for --worker')
  p.add_argument('--modes', default='infer,train')
  p.add_argument('--model', default='convnext_tiny')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--dwconv-impl', default='auto')
  args = p.parse_args()
  if args.worker:
    return worker(args)
  records = measure(
      args.model,
      args.batch,
      args.size,
      args.repeats,
      args.warmup,
      tuple(args.contenders.split(',')),
      tuple(args.modes.split(',')),
      dwconv_impl=args.dwconv_impl,
  )
  print(table(records))
  return records


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  main()
