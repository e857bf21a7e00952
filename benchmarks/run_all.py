"""`make bench`: every benchmark with small settings; writes benchmarks/RESULTS.md (machine, versions, numbers).

The file's `DESIGN_HEADING` section is written by hand (measurements behind design choices, with their date and
command) and kept as it is when the file is rewritten.
"""

import datetime
import json
import os

from benchmarks import anytime_cost, common, convnext_throughput, devices_scaling, input_pipeline, pruned_speed

DESIGN_HEADING = '## Design measurements'


def kept_design_section(path: str) -> str:
  """The hand-written design section of an existing RESULTS.md (up to the raw records), or ''."""
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    text = f.read()
  start = text.find(DESIGN_HEADING)
  if start < 0:
    return ''
  end = text.find('\n<details>', start)
  return text[start : end if end >= 0 else len(text)].rstrip() + '\n'


def main():
  sections = []
  records = []
  runs = [
      (
          'ConvNeXt-T throughput at 224, batch 32 (fp32, 5 interleaved rounds; torch.compile: run '
          'convnext_throughput alone)',
          convnext_throughput.table,
          lambda: convnext_throughput.measure(
              'convnext_tiny', batch=32, size=224, repeats=5, contenders=('ours', 'timm', 'timm_retain')
          ),
      ),
      (
          'Input pipeline: ConvNeXt train transforms on real-size JPEGs',
          input_pipeline.table,
          lambda: input_pipeline.measure(images=192, repeats=5),
      ),
      (
          'Input pipeline ops: the C++ image kernels vs the Pillow calls timm makes (equal pixels, one core)',
          input_pipeline.ops_table,
          lambda: input_pipeline.measure_ops(images=48, repeats=5),
      ),
      (
          'Data parallelism: 8 simulated devices vs 1 (ConvNeXt-atto, 64x64, global batch 64)',
          devices_scaling.table,
          lambda: devices_scaling.measure('convnext_atto', batch=64, size=64, repeats=5),
      ),
      (
          'Pruned CIFAR models: speed-up over the unpruned model vs the MACs ratio, ours and PyTorch eager '
          '(batch 64, 3 interleaved rounds; all five pairs: run pruned_speed alone)',
          pruned_speed.table,
          lambda: pruned_speed.measure(
              (('vgg16', 'vgg16_a'), ('resnet56', 'resnet56_b'), ('resnet110', 'resnet110_b')), batch=64, repeats=3
          ),
      ),
      (
          'ADP-C cost per exit: wall-clock next to GFLOPs, and the HRNet backbone vs timm (W18-Small-v2 at 512x1024, '
          'batch 1, fp32; W48 at 1024x2048 too on a GPU)',
          anytime_cost.table,
          lambda: anytime_cost.measure_all(repeats=2, rounds=3),
      ),
  ]
  for title, table, run in runs:
    print(f'== {title}', flush=True)
    result = run()
    records += result
    text = table(result)
    print(text, flush=True)
    sections.append(f'## {title}\n\n{text}\n')
  info = common.machine()
  out = os.path.join(common.REPO, 'benchmarks', 'RESULTS.md')
  design = kept_design_section(out)
  with open(out, 'w') as f:
    f.write('# Benchmark results\n\n')
    f.write(f'Measured by `make bench` (benchmarks/run_all.py) on {datetime.date.today().isoformat()}.\n\n')
    f.write('Machine: ' + ', '.join(f'{k} {v}' for k, v in info.items()) + '\n\n')
    f.write(
        'Ratios are ours / reference (above 1.0x = ours faster). Each contender runs in its own process; '
        'the ConvNeXt throughput processes take turns step by step, and each of those ratios is the median '
        'of the per-round ratios.\n\n'
    )
    f.write('\n'.join(sections))
    if design:
      f.write('\n' + design)
    f.write(
        '\n<details><summary>raw records</summary>\n\n```\n'
        + '\n'.join(json.dumps(r) for r in records)
        + '\n```\n</details>\n'
    )
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
