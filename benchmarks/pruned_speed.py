"""Speed of pruned models: measured speed-up over the unpruned model next to the MACs ratio, ours (jax.jit) and the
same models in PyTorch eager, in the same run: the paper's pruned CIFAR models, and ConvNeXt pruned by the traced
surgery (pruning_jax.prune).

  python -m benchmarks.pruned_speed [--pairs vgg16:vgg16_a,resnet56:resnet56_a,...] [--batch 64] [--repeats 5] \
      [--channel-multiples 8,1] [--size 32]
  python -m benchmarks.pruned_speed --pairs convnext_tiny:convnext_tiny@0.5 --batch 8 --size 112 --modes infer

A model name NAME@R (a ConvNeXt family of pruning_jax.models: convnext_tiny, convnext) is NAME with ratio R of
every traced channel group removed by `pruning_jax.prune` (group L1 of a random init: the widths depend on R only,
not on the weights); its PyTorch side is timm's ConvNeXt at the pruned per-stage `dims` (at a uniform ratio every
block keeps 4 x its stage width as its MLP hidden width, which timm builds). ConvNeXt pairs time inference only
(no BatchNorm state for the train step below) at --size x --size inputs.

For each (unpruned, pruned) pair and mode (inference = eval forward; train = forward + backward + the paper's
SGD step, momentum 0.9, weight decay 1e-4, BN in train mode), four worker processes (ours / torch x large /
pruned) take turns step by step (`common.interleaved`), so the VM's drift hits all alike. Printed per pair:
MACs ratio large/pruned, our speed-up and PyTorch's (each the median over rounds of t_large / t_pruned), our
speed-up as a fraction of the MACs ratio, and ours / torch absolute speed for both models (above 1.0x = ours
faster). The PyTorch definitions are the parity-tested ones of tests/pruning/pruning_torch_reference.py.

Ours runs at each of --channel-multiples (the compute policy's channel_multiple, core_jax.compute: pruned counts
computed zero-padded to a multiple of m; 1 = unpadded) and each of --computes (config.compute overrides, e.g.
'dwconv=xla'; 'auto' = the policy the line resolves for the model's family), one row per combination, all in the
same interleaved rounds.
Both sides use one thread per CPU core: PyTorch's intra-op pool is set to os.cpu_count() threads, XLA:CPU's
Eigen pool has one thread per core; each worker reports its count (`threads`).
"""

import argparse
import os
import statistics
import sys

from benchmarks import common

_CHANNEL_MULTIPLE = [8]  # a worker's --channel-multiple
_COMPUTE = ['auto']  # a worker's --compute: config.compute overrides ('auto': none)
DEFAULT_PAIRS = (
    ('vgg16', 'vgg16_a'),
    ('resnet56', 'resnet56_a'),
    ('resnet56', 'resnet56_b'),
    ('resnet110', 'resnet110_a'),
    ('resnet110', 'resnet110_b'),
)


def _split(name: str) -> tuple[str, float | None]:
  """'convnext_tiny@0.5' -> ('convnext_tiny', 0.5); a plain name -> (name, None)."""
  base, _, ratio = name.partition('@')
  return base, (float(ratio) if ratio else None)


def _build(name: str, compute, size: int):
  """(model, variables) of `name` (NAME@R: pruned by the traced surgery, see the module docstring); `compute`: a
  policy or config.compute options, as `pruning_jax.models.create` takes (options: resolved for the family, as
  the runner does)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from pruning_jax import models, structured  # pylint: disable=import-outside-toplevel

  base, ratio = _split(name)
  model = models.create(base, compute=compute)
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(1), x, train=False))()
  if ratio is None:
    return model, variables
  result = structured.prune(model, variables, x, ratio)  # traced with the plain policy, run with the model's
  return result.model, result.variables


def _compute_options(channel_multiple: int, overrides: str) -> dict:
  """config.compute options: `channel_multiple` and the `overrides` ('auto': none; else 'field=value,...')."""
  options = {'channel_multiple': channel_multiple}
  for item in [] if overrides == 'auto' else overrides.split(','):
    field, _, value = item.partition('=')
    value = value.strip()
    options[field.strip()] = {'true': True, 'false': False}.get(value.lower(), int(value) if value.isdigit() else value)
  return options


def _ours(name, mode, batch, size=32):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  compute = _compute_options(_CHANNEL_MULTIPLE[0], _COMPUTE[0])
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3), jnp.float32)
  y = jnp.zeros((batch,), jnp.int32)
  model, variables = _build(name, compute, size)
  if mode == 'infer':
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    return lambda: fwd(variables, x).block_until_ready()
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = {'p': variables['params'], 'b': variables['batch_stats'], 'o': tx.init(variables['params'])}

  def step(p, b, o, x, y):
    def loss(p):
      (logits, _), new = model.apply({'params': p, 'batch_stats': b}, x, train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new['batch_stats']

    g, b = jax.grad(loss, has_aux=True)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), b, o

  jstep = jax.jit(step, donate_argnums=(0, 1, 2))

  def fn():
    state['p'], state['b'], state['o'] = jstep(state['p'], state['b'], state['o'], x, y)
    jax.block_until_ready(state['p'])

  return fn


def _torch_model(name):
  base, ratio = _split(name)
  if base in _convnext_families():
    return _timm_convnext(base, ratio)
  sys.path.insert(0, os.path.join(common.REPO, 'tests', 'pruning'))
  import pruning_torch_reference as tr  # pylint: disable=import-outside-toplevel,import-error

  from pruning_jax import models  # pylint: disable=import-outside-toplevel

  spec = models.NAMED[name]
  cfg = list(spec.cfg)
  if spec.family == 'vgg_l1':
    return tr.VGG(cfg, 10, 'l1')
  if spec.family == 'vgg_slimming':
    return tr.VGG(cfg, 10, 'slimming')
  if spec.family == 'resnet_cifar':
    return tr.CifarResNet(cfg, 10)
  raise ValueError(f'no PyTorch definition for {name}')


def _convnext_families():
  from pruning_jax import models  # pylint: disable=import-outside-toplevel

  return models.CONVNEXT_FAMILIES


def _timm_convnext(base: str, ratio: float | None):
  """timm's ConvNeXt at the widths `pruning_jax.prune` gives `base` at `ratio` (export.timm_recipe's arguments)."""
  from convnext_jax import export  # pylint: disable=import-outside-toplevel
  from pruning_jax import models  # pylint: disable=import-outside-toplevel

  arch, dims, _ = models.CONVNEXT_FAMILIES[base]
  if ratio is not None:  # floor(C * (1 - ratio)) of every stage width, as structured.prune keeps
    dims = tuple(max(int(d * (1.0 - ratio) + 1e-9), 1) for d in dims)
  return export.timm_model_for(export.timm_recipe(arch, dict(dims=dims)))


def _torch(name, mode, batch, size=32):
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count() or 1)
  model = _torch_model(name)
  x = torch.randn(batch, 3, size, size)
  y = torch.zeros(batch, dtype=torch.long)
  if mode == 'infer':
    model.eval()

    def fn():
      with torch.no_grad():
        model(x)

    return fn
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss()

  def fn():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()

  return fn


def worker(args):
  from core_jax import host_memory  # pylint: disable=import-outside-toplevel

  host_memory.retain_freed_memory()
  _CHANNEL_MULTIPLE[0] = args.channel_multiple
  _COMPUTE[0] = args.compute
  fn = (_ours if args.contender == 'ours' else _torch)(args.model, args.mode, args.batch, args.size)
  record = {
      'bench': 'pruned_speed',
      'contender': args.contender,
      'mode': args.mode,
      'model': args.model,
      'batch': args.batch,
      'size': args.size,
      'threads': _threads(args.contender),
  }
  if args.contender == 'ours':
    record['channel_multiple'] = _CHANNEL_MULTIPLE[0]
    record['compute'] = _COMPUTE[0]
  if args.serve:
    return common.serve(fn, args.warmup, record)
  stats = common.time_calls(fn, warmup=args.warmup, repeats=args.repeats)
  common.emit({**record, **stats})


def _threads(contender: str) -> int:
  if contender == 'torch':
    import torch  # pylint: disable=import-outside-toplevel

    return torch.get_num_threads()
  return os.cpu_count() or 1  # XLA:CPU's intra-op pool: one thread per core


def _macs(name, size: int = 32) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from core_jax import counting  # pylint: disable=import-outside-toplevel
  from core_jax.compute import Compute  # pylint: disable=import-outside-toplevel
  from pruning_jax import models, zoo  # pylint: disable=import-outside-toplevel

  if _split(name)[0] not in models.CONVNEXT_FAMILIES:
    return zoo.params_and_macs(models.create(name), 'cifar')[1]
  model, variables = _build(name, Compute(), size)
  return counting.count_macs(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), variables=variables)


def measure(
    pairs=DEFAULT_PAIRS,
    batch=64,
    repeats=5,
    warmup=2,
    modes=('infer', 'train'),
    channel_multiples=(8,),
    size=32,
    computes=('auto',),
) -> list:
  """One record per pair, mode, channel multiple and `computes` entry (config.compute overrides, 'auto': the
  line's policy; `_compute_options`), all of a pair's contenders in the same interleaved rounds."""
  records = []
  variants = [(k, c) for k in channel_multiples for c in computes]
  label = lambda k, c: f'ours{k}' if c == 'auto' else f'ours{k}[{c}]'

  for large, pruned in pairs:
    macs_ratio = _macs(large, size) / _macs(pruned, size)
    convnext = _split(large)[0] in _convnext_families()
    for mode in modes:
      if convnext and mode == 'train':
        continue  # inference only (see the module docstring)
      cli = lambda c, m, k=1, compute='auto': [
          '--worker',
          '--contender',
          c,
          '--mode',
          mode,
          '--model',
          m,
          '--batch',
          str(batch),
          '--warmup',
          str(warmup),
          '--channel-multiple',
          str(k),
          '--size',
          str(size),
          '--compute',
          compute,
      ]
      contenders = {f'torch:{m}': cli('torch', m) for m in (large, pruned)}
      contenders.update({f'{label(k, c)}:{m}': cli('ours', m, k, c) for k, c in variants for m in (large, pruned)})
      by = common.interleaved('benchmarks.pruned_speed', contenders, rounds=repeats)
      t = {k: v['times_s'] for k, v in by.items()}
      threads = {k: v.get('threads') for k, v in by.items()}
      for k, compute in variants:
        ours = label(k, compute)
        rec = {
            'bench': 'pruned_speed',
            'mode': mode,
            'large': large,
            'pruned': pruned,
            'batch': batch,
            'size': size,
            'channel_multiple': k,
            'compute': compute,
            'threads': {'ours': threads[f'{ours}:{large}'], 'torch': threads[f'torch:{large}']},
            'macs_ratio': macs_ratio,
            'ours_speedup': common.paired_ratio(t[f'{ours}:{pruned}'], t[f'{ours}:{large}']),
            'torch_speedup': common.paired_ratio(t[f'torch:{pruned}'], t[f'torch:{large}']),
            'ours_per_torch_large': common.paired_ratio(t[f'{ours}:{large}'], t[f'torch:{large}']),
            'ours_per_torch_pruned': common.paired_ratio(t[f'{ours}:{pruned}'], t[f'torch:{pruned}']),
            'median_s': (
                {'ours:' + m: statistics.median(t[f'{ours}:{m}']) for m in (large, pruned)}
                | {'torch:' + m: statistics.median(t[f'torch:{m}']) for m in (large, pruned)}
            ),
        }
        rec['ours_speedup_of_macs_ratio'] = rec['ours_speedup'] / macs_ratio
        records.append(rec)
        common.emit(rec)
  return records


def table(records) -> str:
  lines = [
      '| mode | large -> pruned | channel multiple | MACs ratio | ours speed-up | torch speed-up | '
      'ours speed-up / MACs ratio | ours / torch (large) | ours / torch (pruned) | ours step large / pruned (ms) | '
      'threads ours / torch |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in records:
    m = r['median_s']
    th = r.get('threads') or {}
    lines.append(
        f"| {r['mode']} | {r['large']} -> {r['pruned']}{_size_note(r)} | {r.get('channel_multiple', '-')}"
        f'{_compute_note(r)} | '
        f"{r['macs_ratio']:.2f} | "
        f"{r['ours_speedup']:.2f}x | "
        f"{r['torch_speedup']:.2f}x | {r['ours_speedup_of_macs_ratio']:.2f} | "
        f"{r['ours_per_torch_large']:.2f}x | {r['ours_per_torch_pruned']:.2f}x | "
        f"{1e3 * m['ours:' + r['large']]:.1f} / {1e3 * m['ours:' + r['pruned']]:.1f} | "
        f"{th.get('ours', '-')} / {th.get('torch', '-')} |"
    )
  return '\n'.join(lines)


def _compute_note(record) -> str:
  compute = record.get('compute', 'auto')
  return '' if compute == 'auto' else f' ({compute})'


def _size_note(record) -> str:
  size, batch = record.get('size', 32), record.get('batch')
  return '' if size == 32 else f' ({size}x{size}, batch {batch})'


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--contender', choices=('ours', 'torch'), default='ours')
  p.add_argument('--model', default='resnet56')
  p.add_argument('--mode', choices=('infer', 'train'), default='infer')
  p.add_argument('--modes', default='infer,train')
  p.add_argument('--pairs', default=','.join(f'{a}:{b}' for a, b in DEFAULT_PAIRS))
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--size', type=int, default=32, help='input height and width')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--channel-multiple', type=int, default=8, help=argparse.SUPPRESS)
  p.add_argument('--channel-multiples', default='8', help='ours at each compute.channel_multiple, e.g. 8,1')
  p.add_argument('--compute', default='auto', help=argparse.SUPPRESS)
  p.add_argument(
      '--computes',
      default='auto',
      help="ours under each of these ';'-separated config.compute overrides ('auto': the line's policy), e.g. "
      "'auto;dwconv=xla,patch_conv=conv,fusion_barriers=false' (ConvNeXt as the generic pruning policy ran it)",
  )
  args = p.parse_args()
  if args.worker:
    return worker(args)
  pairs = [tuple(s.split(':')) for s in args.pairs.split(',')]
  multiples = tuple(int(k) for k in args.channel_multiples.split(','))
  computes = tuple(c.strip() for c in args.computes.split(';'))
  records = measure(
      pairs, args.batch, args.repeats, args.warmup, tuple(args.modes.split(',')), multiples, args.size, computes
  )
  print(table(records))
  return records


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  main()
