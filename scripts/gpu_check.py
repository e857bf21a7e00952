"""`make gpu-check`: every line's main model trained a few steps on a GPU in float32 and bfloat16, then the GPU
benchmark rows. Under 10 minutes on one GPU; where there is no GPU it prints one line and exits 0.

Each line runs through its real config, Task and the core loop (`core_jax.train.run`), at a small size: the demo
config of the line (ConvNeXt digits, the pruning large phase of digits_l1, the ADP-C phase of digit_scenes) with
a few steps on a slice of its data, once with `compute_dtype=float32` and once with `bfloat16`, from the same seed
and data. bf16 passes when every eval loss of the bf16 run is within BF16_RTOL of the fp32 run's (bf16 keeps 8
bits of mantissa: after a few steps of the same updates the losses agree to a few percent), or, for a line whose
eval has no loss, every per-pixel accuracy within BF16_PIXEL_ATOL; and nothing is non-finite. Then
`benchmarks/run_all.py` writes the benchmark rows measured on this GPU to benchmarks/RESULTS_GPU.md (the same
writer as `make bench`: date, commit, machine in its header); commit it.

  python scripts/gpu_check.py                        # on a GPU machine (make gpu-check)
  python scripts/gpu_check.py --cpu --tiny --no-bench  # the same code path on CPU at toy size (tests)
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BF16_RTOL = 0.05  # |loss_bf16 - loss_fp32| <= BF16_RTOL * |loss_fp32|, per eval loss
# A line whose eval has no loss (ADP-C: confusion matrices) is compared on its per-pixel accuracies, averages over
# thousands of pixels, so a few pixels flipping by rounding move them by far less than this.
BF16_PIXEL_ATOL = 0.01
GPU_RESULTS = os.path.join(REPO, 'benchmarks', 'RESULTS_GPU.md')


def _convnext(tiny: bool):
  from convnext_jax.task import ConvNeXtTask  # pylint: disable=import-outside-toplevel
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  c = cli.load_config_file(os.path.join(REPO, 'configs', 'convnext', 'digits.py'))
  _shrink(c, tiny, batch=64)
  return c, ConvNeXtTask


def _pruning(tiny: bool):
  from core_jax import cli  # pylint: disable=import-outside-toplevel
  from pruning_jax import job  # pylint: disable=import-outside-toplevel
  from pruning_jax.task import PruningTask  # pylint: disable=import-outside-toplevel

  c = job.large_config(cli.load_config_file(os.path.join(REPO, 'configs', 'pruning', 'digits_l1.py')), seed=0)
  _shrink(c, tiny, batch=64)
  return c, PruningTask


def _anytime(tiny: bool):
  from anytime_jax import job  # pylint: disable=import-outside-toplevel
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  config = cli.load_config_file(os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py'))
  c = [c for _, c, source in job.job_configs(config) if source is None][-1]  # the trained ADP-C phase
  _shrink(c, tiny, batch=16)
  return c, AnytimeSegTask


LINES = {'convnext': _convnext, 'pruning': _pruning, 'anytime': _anytime}


def _shrink(c, tiny: bool, batch: int):
  """A few steps on a slice of the line's data, one eval at the end, no checkpoint until then."""
  steps = 3 if tiny else 20
  with c.unlocked():
    c.data.train_split = f'{c.data.train_split.split("[")[0]}[:{8 * batch if not tiny else 2 * batch}]'
    c.data.eval_split = f'{c.data.eval_split.split("[")[0]}[:{2 * batch if not tiny else batch}]'
    if tiny:
      c.batch_size = min(c.batch_size, 8)
    c.eval_batch_size = c.batch_size
    c.num_train_steps = steps
    c.optimizer.warmup_epochs = 0.0  # the recipe's warmup is longer than these few steps
    c.log_every_steps = steps
    c.eval_every_epochs = 1e6
    c.checkpoint.every_steps = steps
    c.checkpoint.asynchronous = False


def _compared(results: dict) -> dict:
  """The eval values bf16 must reproduce: the losses, or where there is none the per-pixel accuracies."""
  values = {k: float(v) for k, v in results['eval'].items() if k.endswith('loss')}
  return values or {k: float(v) for k, v in results['eval'].items() if k.endswith('pixel_accuracy')}


def _difference(key: str, fp32: float, bf16: float) -> float:
  """The difference in units of its tolerance (<= 1 passes; NaN fails)."""
  if key.endswith('loss'):
    return abs(bf16 - fp32) / max(abs(fp32), 1e-6) / BF16_RTOL
  return abs(bf16 - fp32) / BF16_PIXEL_ATOL


def check_line(name: str, tiny: bool, workdir: str, data_dir: str) -> dict:
  """fp32 and bf16 runs of one line; returns the eval losses of both and whether bf16 is within tolerance."""
  from core_jax import train  # pylint: disable=import-outside-toplevel

  out = {'line': name}
  for dtype in ('float32', 'bfloat16'):
    config, task_cls = LINES[name](tiny)
    with config.unlocked():
      config.compute_dtype = dtype
      if data_dir:
        config.data.data_dir = data_dir
    t0 = time.time()
    results = train.run(config, os.path.join(workdir, f'{name}_{dtype}'), task_cls)
    out[dtype] = {'compared': _compared(results), 'primary': float(results[results['primary_metric']])}
    out[dtype]['seconds'] = round(time.time() - t0, 1)
  fp32, bf16 = out['float32']['compared'], out['bfloat16']['compared']
  out['difference_in_tolerances'] = {k: _difference(k, fp32[k], bf16[k]) for k in fp32}
  out['ok'] = bool(fp32) and all(math.isfinite(v) for v in (*fp32.values(), *bf16.values()))
  out['ok'] = out['ok'] and all(d <= 1.0 for d in out['difference_in_tolerances'].values())
  return out


def has_gpu() -> bool:
  import jax  # pylint: disable=import-outside-toplevel

  return jax.default_backend() == 'gpu'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cpu', action='store_true', help='run on the CPU (a check of this script, not of a GPU)')
  parser.add_argument('--tiny', action='store_true', help='3 steps on a few examples')
  parser.add_argument('--lines', default=','.join(LINES), help='comma-separated: ' + ', '.join(LINES))
  parser.add_argument('--no-bench', action='store_true', help='skip the benchmark rows')
  parser.add_argument('--workdir', default='', help='where the runs go (default: a temporary folder)')
  parser.add_argument('--data-dir', default=os.environ.get('TFDS_DATA_DIR', ''), help='TFDS data dir')
  parser.add_argument('--json', default='', help='also write the per-line results here')
  args = parser.parse_args(argv)
  if not args.cpu and not has_gpu():
    import jax  # pylint: disable=import-outside-toplevel

    print(f'gpu-check: skipped, no GPU here (jax backend {jax.default_backend()})')
    return 0
  lines = [n for n in args.lines.split(',') if n]
  unknown = sorted(set(lines) - set(LINES))
  if unknown:
    parser.error(f'unknown line {unknown[0]!r}; known: ' + ', '.join(LINES))
  workdir = args.workdir or tempfile.mkdtemp(prefix='gpu_check_')
  report = []
  for name in lines:
    r = check_line(name, args.tiny, workdir, args.data_dir)
    report.append(r)
    diffs = ', '.join(f'{k} {v:.2g}' for k, v in r['difference_in_tolerances'].items())
    print(
        f'gpu-check {name}: {"ok" if r["ok"] else "FAILED"} (bf16 vs fp32, in units of the tolerance, relative '
        f'{BF16_RTOL} for losses, absolute {BF16_PIXEL_ATOL} for pixel accuracies: {diffs}; '
        f'fp32 {r["float32"]["seconds"]} s, bf16 {r["bfloat16"]["seconds"]} s)',
        flush=True,
    )
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'bf16_rtol': BF16_RTOL, 'lines': report}, f, indent=1)
  ok = all(r['ok'] for r in report)
  if ok and not args.no_bench:
    from benchmarks import run_all  # pylint: disable=import-outside-toplevel

    run_all.main(['--out', GPU_RESULTS, '--only', 'convnext_throughput,anytime_cost'])
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
