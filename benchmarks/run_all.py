"""`make bench`: every benchmark with small settings; writes benchmarks/RESULTS.md whole (header, sections, records).

Nothing in RESULTS.md is written by hand: a rerun replaces all of it, so every row there is what this script
measured on the machine, at the commit and on the date its header names. Analysis of the numbers (and
measurements from standalone runs of the benchmark scripts) lives in benchmarks/ANALYSIS.md, which cites the
rows by their date.

  python -m benchmarks.run_all                       # the whole benchmark, into benchmarks/RESULTS.md
  python -m benchmarks.run_all --quick --out X.md    # every benchmark at toy sizes (a check of this script)
  python -m benchmarks.run_all --only anytime_cost --out X.md
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

from benchmarks import anytime_cost, common, convnext_throughput, devices_scaling, input_pipeline, pruned_speed

RESULTS = os.path.join(common.REPO, 'benchmarks', 'RESULTS.md')


CONVNEXT_PAIRS = (('convnext_tiny', 'convnext_tiny@0.5'),)  # pruning_jax.prune at ratio 0.5 (pruned_speed)


class Bench(NamedTuple):
  name: str
  title: str
  table: Callable[[list], str]
  run: Callable[[], list]  # the settings `make bench` measures at
  quick: Callable[[], list]  # toy settings: the same code path in seconds


BENCHES = (
    Bench(
        'convnext_throughput',
        'ConvNeXt-T throughput at 224, batch 32 (fp32 on CPU, bf16 on GPU; 5 interleaved rounds; torch.compile: run '
        'convnext_throughput alone)',
        convnext_throughput.table,
        lambda: convnext_throughput.measure(
            'convnext_tiny', batch=32, size=224, repeats=5, contenders=('ours', 'timm', 'timm_retain')
        ),
        lambda: convnext_throughput.measure(
            'convnext_atto', batch=2, size=32, repeats=1, warmup=1, contenders=('ours', 'timm'), modes=('infer',)
        ),
    ),
    Bench(
        'input_pipeline',
        'Input pipeline: ConvNeXt train transforms on real-size JPEGs',
        input_pipeline.table,
        lambda: input_pipeline.measure(images=192, repeats=5),
        lambda: input_pipeline.measure(images=8, repeats=1, rounds=1),
    ),
    Bench(
        'input_ops',
        'Input pipeline ops: the C++ image kernels vs the Pillow calls timm makes (equal pixels, one core)',
        input_pipeline.ops_table,
        lambda: input_pipeline.measure_ops(images=48, repeats=5),
        lambda: input_pipeline.measure_ops(images=2, repeats=1),
    ),
    Bench(
        'devices_scaling',
        'Data parallelism: 8 simulated devices vs 1 (ConvNeXt-atto, 64x64, global batch 64)',
        devices_scaling.table,
        lambda: devices_scaling.measure('convnext_atto', batch=64, size=64, repeats=5),
        lambda: devices_scaling.measure('convnext_atto', batch=8, size=32, repeats=1),
    ),
    Bench(
        'pruned_speed',
        'Pruned models: speed-up over the unpruned model vs the MACs ratio, ours and PyTorch eager (timm for '
        "ConvNeXt): the paper's CIFAR pairs at batch 64, ConvNeXt-T with half of every traced channel group "
        'pruned (inference, 112x112, batch 8); 3 interleaved rounds; all five CIFAR pairs: run pruned_speed alone',
        pruned_speed.table,
        lambda: pruned_speed.measure(
            (('vgg16', 'vgg16_a'), ('resnet56', 'resnet56_b'), ('resnet110', 'resnet110_b')), batch=64, repeats=3
        )
        + pruned_speed.measure(CONVNEXT_PAIRS, batch=8, repeats=3, modes=('infer',), size=112),
        lambda: pruned_speed.measure((('resnet56', 'resnet56_b'),), batch=2, repeats=1, warmup=1, modes=('infer',))
        + pruned_speed.measure((('convnext', 'convnext@0.5'),), batch=2, repeats=1, warmup=1, modes=('infer',)),
    ),
    Bench(
        'anytime_cost',
        'ADP-C cost per exit: wall-clock next to GFLOPs, and the HRNet backbone vs timm (W18-Small-v2 at 512x1024, '
        'batch 1, fp32; W48 at 1024x2048 too on a GPU)',
        anytime_cost.table,
        lambda: anytime_cost.measure_all(repeats=2, rounds=3),
        lambda: anytime_cost.measure(height=64, width=128, repeats=1, rounds=1),
    ),
)


def commit() -> str:
  """The checkout's commit (with '+changes' when the work tree differs from it), or 'unknown' outside git."""
  try:
    head = subprocess.run(
        ['git', 'rev-parse', '--short=12', 'HEAD'], cwd=common.REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ['git', 'status', '--porcelain', '--untracked-files=no'], cwd=common.REPO, capture_output=True, text=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return head + ('+changes' if dirty else '')


def render(sections: list, records: list, *, info: dict, date: str, revision: str, command: str) -> str:
  """The whole RESULTS.md: header (date, commit, machine), one section per benchmark, the raw records."""
  lines = [
      '# Benchmark results',
      '',
      f'Written whole by `{command}` (benchmarks/run_all.py) on {date}, at commit {revision}; a rerun replaces '
      'this file. Analysis and standalone measurements: benchmarks/ANALYSIS.md.',
      '',
      'Machine: ' + ', '.join(f'{k} {v}' for k, v in info.items()),
      '',
      'Ratios are ours / reference (above 1.0x = ours faster). Each contender runs in its own process; the '
      'ConvNeXt throughput processes take turns step by step, and each of those ratios is the median of the '
      'per-round ratios.',
      '',
  ]
  for title, text in sections:
    lines += [f'## {title}', '', text.rstrip(), '']
  lines += ['<details><summary>raw records</summary>', '', '```', *(json.dumps(r) for r in records), '```']
  lines += ['</details>', '']
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=RESULTS, help='file to write (default benchmarks/RESULTS.md)')
  parser.add_argument('--quick', action='store_true', help='toy sizes: checks this script, measures nothing useful')
  parser.add_argument(
      '--only', default='', help='comma-separated benchmark names: ' + ', '.join(b.name for b in BENCHES)
  )
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  names = [n for n in args.only.split(',') if n]
  unknown = sorted(set(names) - {b.name for b in BENCHES})
  if unknown:
    parser.error(f'unknown benchmark {unknown[0]!r}; known: ' + ', '.join(b.name for b in BENCHES))
  sections, records = [], []
  for bench in BENCHES:
    if names and bench.name not in names:
      continue
    print(f'== {bench.title}', flush=True)
    result = (bench.quick if args.quick else bench.run)()
    records += result
    text = bench.table(result)
    print(text, flush=True)
    sections.append((bench.title, text))
  command = 'python -m benchmarks.run_all ' + ' '.join(argv) if argv else 'make bench'
  text = render(
      sections,
      records,
      info=common.machine(),
      date=datetime.date.today().isoformat(),
      revision=commit(),
      command=command,
  )
  with open(args.out, 'w') as f:
    f.write(text)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
