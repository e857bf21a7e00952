"""The anytime line's report: the per-exit table (mIoU, GFLOPs, fraction of pixels computed, the mean over exits),
WORKDIR/anytime.json (the runs' numbers) and WORKDIR/anytime.png (the anytime curve, drawn by anytime_jax.curve; the
paper's points beside it for Cityscapes configs); `plot_scene` draws WORKDIR/scene.png (one scene: the input, its
labels, the prediction at each exit and the mask of the pixels each exit computed; anytime_jax.job.scene_figure
runs the model for it)."""

import json
import math
import os

ANYTIME_JSON = 'anytime.json'
ANYTIME_PNG = 'anytime.png'
SCENE_PNG = 'scene.png'


def anytime_options(config):
  """The config's `anytime` group ({} when it has none)."""
  return config.get('anytime', None) or {}


def run_label(config) -> str:
  """'ADP-C (tau 0.998)', 'EE+RH', 'EE', 'HRNet (base)' from the model options, unless anytime.label is set."""
  label = str(anytime_options(config).get('label', '') or '')
  if label:
    return label
  m = config.model
  exits = tuple(m.get('exits', (1, 2, 3, 4)))
  if len(exits) == 1:
    return f'HRNet-{m.arch} (base)'
  name = 'EE' if m.get('exit_type', 'rh') == 'ee' else 'EE+RH'
  if m.get('confidence_adaptive', False):
    name = ('ADP-C' if name == 'EE+RH' else 'EE+CA') + f' (tau {float(m.tau):g})'
  return name


def run_entry(label: str, results: dict, config) -> dict:
  """One run of anytime.json from its results.json dict: per exit mIoU (%), GFLOPs, fraction; the mean."""
  ev = results['eval']
  exits = [int(k[len('exit') :].split('/')[0]) for k in ev if k.startswith('exit') and k.endswith('/miou')]
  rows = [
      {
          'exit': k,
          'miou': 100.0 * ev[f'exit{k}/miou'],
          'gflops': ev[f'exit{k}/gflops'],
          'fraction': ev[f'exit{k}/fraction'],
      }
      for k in sorted(exits)
  ]
  mean = {'miou': 100.0 * ev['mean/miou'], 'gflops': ev['mean/gflops'], 'fraction': ev['mean/fraction']}
  m = config.model
  return {
      'label': label,
      'workdir': results.get('workdir', ''),
      'exits': rows,
      'mean': mean,
      'confidence_adaptive': bool(m.get('confidence_adaptive', False)),
      'tau': float(m.tau) if m.get('confidence_adaptive', False) else None,
      'params': results.get('params', results.get('num_params')),
      'eval_size': results.get('eval_size'),
      'gflops_dense': results.get('gflops_dense'),
      'step': results.get('step'),
      'weights': results.get('weights'),
      'train_seconds': results.get('train_seconds_this_run'),
  }


def table(runs: list[dict]) -> str:
  """The per-exit table: for each run mIoU %, GFLOPs, % of pixels computed and skipped, and the mean."""
  exits = sorted({e['exit'] for r in runs for e in r['exits']})
  width = max([len(r['label']) for r in runs] + [3])
  head = f"{'run':<{width}}  {'':<10}" + ''.join(f'{f"exit{k}":>9}' for k in exits) + f"{'mean':>9}"
  lines = [head, '-' * len(head)]
  for r in runs:
    by = {e['exit']: e for e in r['exits']}

    def row(name, fn, mean=None, first=False):
      cells = ''.join(f'{fn(by[k]):>9}' if k in by else f"{'-':>9}" for k in exits)
      return f"{r['label'] if first else '':<{width}}  {name:<10}" + cells + f"{mean if mean is not None else '':>9}"

    lines.append(row('mIoU %', lambda e: f"{e['miou']:.1f}", f"{r['mean']['miou']:.1f}", first=True))
    lines.append(row('GFLOPs', lambda e: _gf(e['gflops']), _gf(r['mean']['gflops'])))
    lines.append(row('computed %', lambda e: f"{100 * e['fraction']:.1f}", f"{100 * r['mean']['fraction']:.1f}"))
    lines.append(row('skipped %', lambda e: f"{100 * (1 - e['fraction']):.1f}"))
  return '\n'.join(lines)


def _gf(x: float) -> str:
  if not math.isfinite(x):
    return 'nan'
  return f'{x:.1f}' if x >= 10 else (f'{x:.3f}' if x >= 0.01 else f'{x:.2e}')


def _title(config) -> str:
  m = config.model
  return f'{config.data.name}: HRNet-{m.arch}, {config.data.eval_split}'


def write(workdir: str, runs: list[dict], config) -> dict:
  """Prints the table; writes WORKDIR/anytime.json and WORKDIR/anytime.png (atomically); returns the json."""
  import jax  # pylint: disable=import-outside-toplevel

  from anytime_jax import curve  # pylint: disable=import-outside-toplevel

  reference = str(anytime_options(config).get('reference', '') or '')
  data = {'title': _title(config), 'reference': reference, 'runs': runs}
  if reference:
    data['reference_points'] = {
        k: [{'gflops': g, 'miou': v} for g, v in pts] for k, pts in curve.REFERENCES[reference].items()
    }
  if jax.process_index() == 0:
    path = os.path.join(workdir, ANYTIME_JSON)
    with open(path + '.tmp', 'w') as f:
      json.dump(data, f, indent=2)
    os.replace(path + '.tmp', path)
    png = curve.plot(runs, os.path.join(workdir, ANYTIME_PNG), data['title'], [reference] if reference else [])
    print(table(runs), flush=True)
    print(f'anytime curve: {png}\nnumbers:       {path}', flush=True)
  return data


def plot_scene(out: str, image, labels, exits: list[dict], title: str, num_classes: int) -> str:
  """One scene as ADP-C sees it: the input and its labels (first column), then per exit its prediction (top) and
  the mask of the pixels it computed (bottom, white = computed, black = copied from the earlier exit).

  image (H, W, 3) uint8; labels (H, W) class ids (255 = ignore); exits: [{'exit', 'prediction' (H, W) ids,
  'computed' (h, w) 0/1 mask at the logits' resolution, 'fraction'}]. Writes the PNG `out` atomically."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from core_jax import seg_figure  # pylint: disable=import-outside-toplevel

  top = [(np.asarray(image), 'input')]
  bottom = [(seg_figure.paint(labels, num_classes), 'labels')]
  for e in exits:
    top.append((seg_figure.paint(e['prediction'], num_classes), f"exit {e['exit']}: prediction"))
    bottom.append((np.asarray(e['computed'], np.float32), f"exit {e['exit']}: computed {100 * e['fraction']:.0f}%"))
  return seg_figure.plot_panels(out, [top, bottom], title)
