"""The anytime curve: GFLOPs per image against mIoU, one line per run (one point per exit).

`python -m anytime_jax.curve DIR_OR_JSON... --out FILE.png [--title TEXT]` redraws one figure from the
`anytime.json` of several runs (a directory stands for DIR/anytime.json); `anytime_jax.main` writes both after
each run. anytime.json: {'title': str, 'reference': name or '', 'runs': [{'label', 'exits': [{'exit', 'miou'
(percent), 'gflops', 'fraction'}, ...], 'mean': {'miou', 'gflops', 'fraction'}, ...}, ...]}.

The paper's published points (`REFERENCES`, the reference sheet §4.1: Cityscapes val, 1024x2048) are drawn as
grey dashed lines when a run names them; W18-Small-v2 has only its base point (the README gives no FLOPs for
ADP-C W18). Matplotlib with the Agg backend (no display needed).
"""

import json
import os
import sys

from core_jax.errors import UserError
from core_jax.seg_figure import save_figure

REFERENCES = {
    'cityscapes_w48': {
        'paper ADP-C (W48)': [(41.9, 44.3), (93.9, 60.1), (259.3, 76.8), (387.1, 81.3)],
        'paper EE+RH (W48)': [(41.9, 44.6), (105.6, 60.2), (368.0, 76.6), (701.3, 79.9)],
        'paper HRNet-W48': [(696.2, 80.7)],
    },
    'cityscapes_w18_small_v2': {
        'paper HRNet-W18-Small-v2': [(71.6, 76.2)],
    },
}


def check_reference(name: str) -> str:
  if name and name not in REFERENCES:
    raise UserError(f'anytime.reference {name!r} is not one of {", ".join(REFERENCES)} (or empty)')
  return name


def read_anytime_json(path: str) -> dict:
  """The anytime.json of a run directory or a .json path; one-line errors."""
  file = os.path.join(path, 'anytime.json') if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise UserError(f'no anytime.json at {path} (run anytime_jax.main there first)')
  try:
    with open(file) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {file}: {e}') from None
  if not isinstance(data, dict) or not isinstance(data.get('runs'), list):
    raise UserError(f'{file} is not an anytime.json (no runs list)')
  return data


def plot(runs: list[dict], out: str, title: str = '', references=()) -> str:
  """Draws `runs` (anytime.json run entries) and the named reference lines into the PNG `out`; returns it."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=120)
  for name in references:
    for label, points in REFERENCES[check_reference(name)].items():
      xs, ys = zip(*points)
      ax.plot(
          xs,
          ys,
          linestyle='--',
          color='0.55',
          marker='s' if len(points) == 1 else 'x',
          markersize=5,
          linewidth=1.2,
          label=label,
      )
  markers = 'osD^vP*X'
  for i, run in enumerate(runs):
    xs = [e['gflops'] for e in run['exits']]
    ys = [e['miou'] for e in run['exits']]
    ax.plot(xs, ys, marker=markers[i % len(markers)], linewidth=1.6, markersize=5, label=run['label'])
    if i == 0:
      for e in run['exits']:
        ax.annotate(
            f"exit{e['exit']}",
            (e['gflops'], e['miou']),
            textcoords='offset points',
            xytext=(4, -11),
            fontsize=7,
            color='0.3',
        )
  ax.set_xlabel('GFLOPs per image (cumulative to the exit; conv/linear MACs / 1024^3)')
  ax.set_ylabel('mIoU (%)')
  ax.set_title(title or 'anytime curve')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc='lower right')
  return save_figure(fig, out)


def redraw(paths: list[str], out: str, title: str = '') -> str:
  """One figure from the anytime.json of several runs (labels made unique by their directory)."""
  runs, references, titles = [], [], []
  for path in paths:
    data = read_anytime_json(path)
    titles.append(data.get('title', ''))
    ref = data.get('reference') or ''
    if ref and ref not in references:
      references.append(check_reference(ref))
    for run in data['runs']:
      runs.append(dict(run))
  labels = [r['label'] for r in runs]
  if len(set(labels)) < len(labels):
    for r in runs:
      if labels.count(r['label']) > 1:
        r['label'] = f"{r['label']} ({os.path.basename(os.path.normpath(r.get('workdir', '')))})"
  if not title:
    title = titles[0] if len(set(titles)) == 1 else 'anytime curves'
  return plot(runs, out, title, references)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  usage = 'usage: python -m anytime_jax.curve DIR_OR_JSON... --out FILE.png [--title TEXT]'
  if '--help' in argv or '-h' in argv:
    print(usage)
    return 0
  paths, out, title = [], None, ''
  it = iter(argv)
  try:
    for arg in it:
      if arg.startswith('--out'):
        out = arg.partition('=')[2] if '=' in arg else next(it)
      elif arg.startswith('--title'):
        title = arg.partition('=')[2] if '=' in arg else next(it)
      elif arg.startswith('--'):
        raise UserError(f'unknown flag {arg}; {usage}')
      else:
        paths.append(arg)
    if out is None or not paths:
      raise UserError(f'give at least one run and --out FILE.png; {usage}')
    if not out.endswith('.png'):
      raise UserError(f'--out must name a .png file, got {out}')
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
      raise UserError(f'output directory does not exist: {os.path.dirname(os.path.abspath(out))}')
    print(redraw(paths, out, title))
  except StopIteration:
    print(f'error: --out / --title need a value; {usage}', file=sys.stderr)
    return 2
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
