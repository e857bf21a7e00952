"""The pruning experiment's report: DIR/results.json (per phase and seed: accuracy, params, MACs, epochs; mean and
sample std over seeds) and DIR/results.md (the paper's row: unpruned / pruned / Fine-tuned / Scratch-E /
Scratch-B), printed at the end of `pruning_jax.job.run`."""

import json
import os

import jax
import numpy as np

from core_jax import weights
from pruning_jax import budget

UNSTRUCTURED = ('magnitude',)  # methods whose params / MACs are counted over the non-zero weights

COLUMNS = {  # phase -> its column, in the table's order (the order of pruning_jax.job.PHASES)
    'large': 'unpruned',
    'prune': 'pruned',
    'finetune': 'Fine-tuned',
    'scratch_e': 'Scratch-E',
    'scratch_b': 'Scratch-B',
}


def jsonable(x):
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def _epochs(config, phase: str, r: dict, prune_results: dict | None) -> int | None:
  if phase == 'large':
    return 0 if config.init_from else int(config.num_epochs)
  if phase == 'prune':  # ThiNet's fine-tuning between pruned layers (prune.finetune_between epochs after each)
    between = float(config.prune.get('finetune_between', 0.0) or 0.0)
    layers = len((r.get('report') or {}).get('layers') or ()) if config.prune.method in ('thinet', 'regression') else 0
    return int(between * layers)
  if phase == 'finetune':
    return int(config.finetune.num_epochs)
  if phase == 'scratch_e':
    return int(config.num_epochs)
  return budget.scratch_b_of_experiment(config, prune_results).epochs


def _stats(values: list[float]) -> dict:
  arr = np.asarray(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {'mean': float(arr.mean()), 'std': std, 'min': float(arr.min()), 'max': float(arr.max())}


def summarize(config, done: dict) -> dict:
  """results.json of the experiment from the phases' results."""
  phases = {}
  unstructured = config.prune.method in UNSTRUCTURED
  for phase in COLUMNS:
    per_seed = []
    for seed in config.experiment.seeds:
      r = done.get(f'seed{int(seed)}/{phase}')
      if r is None:
        continue
      pr = done.get(f'seed{int(seed)}/prune')
      if phase == 'prune':
        params, macs, nonzero = r['params'], r['macs'], None
      elif unstructured and phase != 'large':  # the weights the mask keeps (the prune phase counts the same way)
        params, macs, nonzero = r.get('nonzero_params'), r.get('nonzero_macs', r.get('macs')), r.get('nonzero_params')
      else:
        params, macs, nonzero = r.get('params'), r.get('macs'), r.get('nonzero_params')
      per_seed.append(
          {
              'seed': int(seed),
              'accuracy': float(r['accuracy']),
              'params': params,
              'macs': macs,
              'nonzero_params': nonzero,
              'epochs': _epochs(config, phase, r, pr),
              'cfg': (r['pruned_model'] if phase == 'prune' else r.get('model', {})).get('cfg'),
              'widths': r['pruned_model'].get('widths') if phase == 'prune' else None,
              'workdir': r.get('workdir'),
          }
      )
    if not per_seed:
      continue
    entry = {'per_seed': per_seed, 'accuracy': _stats([100.0 * s['accuracy'] for s in per_seed])}
    for key in ('params', 'macs', 'epochs', 'nonzero_params'):
      values = [s[key] for s in per_seed if s[key] is not None]
      if values:
        entry[key] = _stats(values)
    phases[phase] = entry
  large = phases.get('large')
  for phase, entry in phases.items():
    if large and phase != 'large' and 'params' in entry:
      entry['params_pruned_percent'] = 100.0 * (1 - entry['params']['mean'] / large['params']['mean'])
      entry['macs_pruned_percent'] = 100.0 * (1 - entry['macs']['mean'] / large['macs']['mean'])
  paper = config.experiment.get('paper') or {}
  paper = paper.to_dict() if hasattr(paper, 'to_dict') else dict(paper)
  claim = scratch_b_claim(phases)
  return {
      **({'claim': claim} if claim else {}),
      **_summary_head(config),
      'phases': phases,
      'paper': paper,
      'accuracy_note': 'top-1 % at the end of each phase; mean and sample std over seeds',
  }


def scratch_b_claim(phases: dict) -> dict | None:
  """The paper's claim the table is there to show: Scratch-B matches or beats Fine-tuned. It holds when Scratch-B's
  mean is at least Fine-tuned's less the seeds' spread (the sum of both sample stds; 0 with one seed).

  This, not a CPU's digits, is what a run must reproduce: XLA:CPU rounds differently on different CPUs, and a few
  hundred steps amplify that into points of accuracy (README "Pruning")."""
  if 'finetune' not in phases or 'scratch_b' not in phases:
    return None
  ft, sb = phases['finetune']['accuracy'], phases['scratch_b']['accuracy']
  difference, spread = sb['mean'] - ft['mean'], sb['std'] + ft['std']
  return {'scratch_b_minus_finetuned': difference, 'spread': spread, 'holds': bool(difference >= -spread)}


def _claim_text(claim: dict) -> str:
  verdict = 'holds' if claim['holds'] else 'does NOT hold'
  return (
      f"the paper's claim, Scratch-B >= Fine-tuned within the seeds' spread: {verdict} "
      f"(Scratch-B - Fine-tuned = {claim['scratch_b_minus_finetuned']:+.2f} points, spread {claim['spread']:.2f})"
  )


def _num(v: float) -> str:
  if v >= 1e9:
    return f'{v / 1e9:.2f}G'
  if v >= 1e6:
    return f'{v / 1e6:.2f}M'
  if v >= 1e3:
    return f'{v / 1e3:.1f}K'
  return f'{v:.0f}'


def _count_cell(stats: dict | None, exact: bool = False) -> str:
  if stats is None:
    return '-'
  if stats['min'] == stats['max']:
    return f'{int(stats["min"]):,}' if exact else _num(stats['mean'])
  return f'{_num(stats["mean"])} ({_num(stats["min"])}-{_num(stats["max"])})'


def _method_text(prune: dict) -> str:
  if prune['method'] == 'l1_norm':
    scheme = prune.get('scheme')
    return f'L1-norm {scheme}' if isinstance(scheme, str) else f'L1-norm {json.dumps(scheme)}'
  if prune['method'] == 'magnitude':
    percent = 100 * float(prune['percent'])
    return f'unstructured magnitude pruning {percent:g}% of the conv weights (params, MACs: non-zero)'
  if prune['method'] == 'graph':
    return (
        f'traced groups, {prune.get("criterion", "l1")} importance, {100 * float(prune.get("ratio", 0.5)):g}% of each '
        f'{"group" if prune.get("scope", "layer") == "layer" else "model (global)"}'
    )
  if prune['method'] == 'sfp':
    return "soft filter pruning (each conv's smallest-L2 filters zeroed after every epoch, then cut)"
  if prune['method'] == 'sss':
    return 'Sparse Structure Selection (residual blocks whose factor reached 0 removed)'
  if prune['method'] in ('thinet', 'regression'):
    name = 'ThiNet' if prune['method'] == 'thinet' else 'regression-based reconstruction (LASSO + least squares)'
    layers = ', '.join(prune.get('layers') or ()) or 'every conv-read layer'
    widths = f'to {prune["target"]}' if prune.get('target') else f'keep {float(prune["keep_ratio"]):g} of {layers}'
    return f'{name} {widths}, {prune["sample_images"]} images x {prune["sample_locations"]} locations'
  mode = ', mask implementation' if prune.get('mode') == 'mask' else ''
  return f'Network Slimming {100 * float(prune["percent"]):g}%{mode}'


def markdown(summary: dict) -> str:
  ph = summary['phases']
  n = len(summary['seeds'])
  cols = [COLUMNS[p] for p in COLUMNS]
  lines = [
      f'### {summary["title"]}',
      '',
      f'{summary["dataset"]}, {_method_text(summary["prune"])}, {n} seed{"s" if n != 1 else ""} (mean ± std '
      'of the final top-1 accuracy)',
      '',
      '| | ' + ' | '.join(cols) + ' |',
      '|---|' + '---|' * len(cols),
  ]

  def row(label, cell):
    lines.append(f'| {label} | ' + ' | '.join(cell(p, ph.get(p)) for p in COLUMNS) + ' |')

  row(
      'accuracy (%)',
      lambda p, e: '-'
      if e is None
      else (f'{e["accuracy"]["mean"]:.2f} ± {e["accuracy"]["std"]:.2f}' if n > 1 else f'{e["accuracy"]["mean"]:.2f}'),
  )
  if summary.get('paper'):
    row('paper (%)', lambda p, e: '-' if summary['paper'].get(p) is None else f'{summary["paper"][p]}')

  def pct(e, key):
    return f' (-{e[key]:.1f}%)' if e is not None and key in e else ''

  row(
      'params',
      lambda p, e: '-'
      if e is None or 'params' not in e
      else _count_cell(e['params']) + pct(e, 'params_pruned_percent'),
  )
  row(
      'MACs',
      lambda p, e: '-' if e is None or 'macs' not in e else _count_cell(e['macs']) + pct(e, 'macs_pruned_percent'),
  )
  row('epochs', lambda p, e: '-' if e is None else _count_cell(e['epochs'], exact=True))
  if summary.get('claim'):
    lines += ['', _claim_text(summary['claim'])]
  prune = ph.get('prune')
  if prune:
    cfgs = {json.dumps(s['cfg']) for s in prune['per_seed']}
    lines += ['', f'pruned cfg{"s" if len(cfgs) > 1 else ""}: ' + '; '.join(sorted(cfgs))]
    widths = prune['per_seed'][0].get('widths')
    if widths:  # the traced surgery's widths over the cfg (pruning_jax.rewidth)
      layers = ', '.join(f'{path} {"/".join(str(v) for _, v in fields)}' for path, fields in widths)
      lines += [f'pruned layer widths (seed {prune["per_seed"][0]["seed"]}): {layers}']
  return '\n'.join(lines) + '\n'


def _write_atomic(path: str, text: str) -> None:
  if jax.distributed.is_initialized() and jax.process_index() != 0:
    return
  weights.write_text_atomic(path, text)


# ----------------------------------------------------------------------------------------------- lottery tickets
LOTTERY_COLUMNS = {'large': 'unpruned', 'ticket': 'winning ticket', 'random': 'random init'}


def _summary_head(config) -> dict:
  """What every experiment's results.json starts with: the experiment, its data, model, method and seeds."""
  return {
      'title': config.experiment.title,
      'dataset': config.data.name,
      'model': config.model.name,
      'method': config.prune.method,
      'prune': jsonable(config.prune.to_dict()),
      'seeds': [int(s) for s in config.experiment.seeds],
  }


def summarize_lottery(config, done: dict) -> dict:
  """results.json of a lottery experiment: per lr, the unpruned model, the winning ticket and the random init
  (accuracy mean and sample std over seeds), the final mask's non-zero params and MACs."""
  rounds = int(config.lottery.rounds)
  by_lr = {}
  for lr in config.lottery.lrs:
    tag = f'lr{float(lr):g}'
    entry = {}
    for phase in LOTTERY_COLUMNS:
      runs = [(int(s), done.get(f'seed{int(s)}/{tag}/{phase}')) for s in config.experiment.seeds]
      runs = [(s, r) for s, r in runs if r is not None]
      if runs:
        entry[phase] = {
            'accuracy': _stats([100.0 * float(r['accuracy']) for _, r in runs]),
            'per_seed': [{'seed': s, 'accuracy': float(r['accuracy']), 'workdir': r.get('workdir')} for s, r in runs],
        }
    pruned = [done.get(f'seed{int(s)}/{tag}/prune{rounds}') for s in config.experiment.seeds]
    pruned = [p for p in pruned if p is not None]
    if pruned:
      entry['pruned'] = {
          key: _stats([p[key] for p in pruned]) for key in ('params', 'macs', 'params_large', 'macs_large')
      }
    by_lr[tag] = entry
  return {
      **_summary_head(config),
      'lottery': jsonable(config.lottery.to_dict()),
      'lrs': by_lr,
      'paper': jsonable(dict(config.experiment.get('paper') or {})),
      'accuracy_note': 'top-1 % at the end of each phase; mean and sample std over seeds',
  }


def _lottery_text(summary: dict) -> str:
  lt, prune = summary['lottery'], summary['prune']
  if lt['structure'] == 'l1':
    scheme = prune.get('scheme')
    return f'structured (L1-norm {scheme if isinstance(scheme, str) else json.dumps(scheme)}, mask)'
  rounds, percent = int(lt['rounds']), float(prune['percent'])
  final = 100 * (1 - (1 - percent) ** rounds)
  plural = 's' if rounds != 1 else ''
  return f'unstructured, {rounds} round{plural} of {100 * percent:g}% ({final:.1f}% of the conv weights)'


def markdown_lottery(summary: dict) -> str:
  n = len(summary['seeds'])
  lines = [
      f'### {summary["title"]}',
      '',
      f'{summary["dataset"]}, lottery tickets, {_lottery_text(summary)}, {n} seed{"s" if n != 1 else ""} (mean ± std '
      'of the final top-1 accuracy)',
      '',
      '| lr | ' + ' | '.join(LOTTERY_COLUMNS.values()) + ' | params (non-zero) | MACs (non-zero) |',
      '|---|' + '---|' * (len(LOTTERY_COLUMNS) + 2),
  ]
  gaps = []
  for tag, entry in summary['lrs'].items():
    cells = []
    for phase in LOTTERY_COLUMNS:
      a = entry.get(phase, {}).get('accuracy')
      cells.append('-' if a is None else (f'{a["mean"]:.2f} ± {a["std"]:.2f}' if n > 1 else f'{a["mean"]:.2f}'))
    p = entry.get('pruned')
    counts = ['-', '-']
    if p:
      counts = [
          f'{_count_cell(p[k])} (-{100 * (1 - p[k]["mean"] / p[f"{k}_large"]["mean"]):.1f}%)'
          for k in ('params', 'macs')
      ]
    lines.append(f'| {tag[2:]} | ' + ' | '.join(cells + counts) + ' |')
    if 'ticket' in entry and 'random' in entry:
      gaps.append(f'lr {tag[2:]}: {entry["ticket"]["accuracy"]["mean"] - entry["random"]["accuracy"]["mean"]:+.2f}')
  if gaps:
    lines += ['', 'winning ticket - random init (points): ' + '; '.join(gaps)]
  paper = summary.get('paper') or {}
  if paper:
    lines += ['', 'paper: ' + '; '.join(f'{k} {v}' for k, v in paper.items())]
  return '\n'.join(lines) + '\n'


def write(config, done: dict, workdir: str) -> dict:
  """Writes DIR/results.json and DIR/results.md from the phases' results, prints the table; returns the summary."""
  if config.prune.method == 'lottery':
    summary = summarize_lottery(config, done)
    text = markdown_lottery(summary)
  elif config.prune.method == 'guided':
    summary = summarize_guided(config, done)
    text = markdown_guided(summary)
    main_process = not jax.distributed.is_initialized() or jax.process_index() == 0
    if (
        main_process
        and _unstructured(summary)
        and (summary['rows'].get('guided', {}).get('pattern') or {}).get('kernel_maps')
    ):
      summary['kernel_maps_png'] = plot_kernel_maps(summary['rows']['guided'], os.path.join(workdir, KERNEL_MAPS_PNG))
      text += f'\nthe maps as a picture (brighter: kept more often): {summary["kernel_maps_png"]}\n'
  else:
    summary = summarize(config, done)
    text = markdown(summary)
  _write_atomic(os.path.join(workdir, 'results.json'), json.dumps(summary, indent=1, allow_nan=True) + '\n')
  _write_atomic(os.path.join(workdir, 'results.md'), text)
  if not jax.distributed.is_initialized() or jax.process_index() == 0:
    print(f'\n{text}\nresults: {os.path.join(os.path.abspath(workdir), "results.json")}, results.md', flush=True)
  return summary


# ----------------------------------------------------------------------------------------------- guided pruning
GUIDED_ROWS = {  # row -> its label: the pruned architectures of section 5, each trained from scratch
    'pruned': 'Network Slimming (each run)',
    'guided': 'guided (averaged ratios)',
    'transferred': 'transferred guided',
    'uniform': 'uniform',
}


def summarize_guided(config, done: dict) -> dict:
  """results.json of a guided-pruning experiment: per architecture (the source runs' own pruned ones, guided,
  transferred, uniform at the same params) its params, MACs and Scratch-E / Scratch-B accuracy over seeds."""
  seeds = [int(s) for s in config.experiment.seeds]
  guided = done.get('guided') or {}
  rows = {}

  def accuracy_of(phase_of):
    runs = [(s, done.get(phase_of(s))) for s in seeds]
    runs = [(s, r) for s, r in runs if r is not None]
    if not runs:
      return None
    return {
        'accuracy': _stats([100.0 * float(r['accuracy']) for _, r in runs]),
        'per_seed': [{'seed': s, 'accuracy': float(r['accuracy']), 'workdir': r.get('workdir')} for s, r in runs],
    }

  large = accuracy_of(lambda s: f'seed{s}/large')
  if large:
    rows['unpruned'] = {'scratch_e': large, 'epochs': {'scratch_e': int(config.num_epochs)}}
    if guided:
      rows['unpruned'].update(params=_stats([guided['params_large']]), macs=_stats([guided['macs_large']]))
  pruned = [done.get(f'seed{s}/prune') for s in seeds]
  pruned = [p for p in pruned if p is not None]
  for name in ('pruned', *GUIDED_ROWS):
    if name == 'pruned':
      if not pruned:
        continue
      archs, phase_of = pruned, lambda s, k: f'seed{s}/{k}'
      cfgs = [p['pruned_model']['cfg'] for p in pruned]
    else:
      arch = (guided.get('architectures') or {}).get(name)
      if arch is None:
        continue
      archs, phase_of = [arch], lambda s, k, n=name: f'seed{s}/{n}/{k}'
      cfgs = [arch['pruned_model']['cfg']]
    row = {
        'params': _stats([a['params'] for a in archs]),
        'macs': _stats([a['macs'] for a in archs]),
        'cfgs': cfgs,
        'epochs': {'scratch_e': int(config.num_epochs)},
    }
    row['epochs']['scratch_b'] = [budget.scratch_b_of_experiment(config, a).epochs for a in archs]
    for key in ('pattern', 'stage_map', 'ratio', 'matched', 'drawn_kernel_maps'):
      if name != 'pruned' and key in archs[0]:
        row[key] = archs[0][key]
    for kind in ('scratch_e', 'scratch_b'):
      got = accuracy_of(lambda s, k=kind, f=phase_of: f(s, k))
      if got:
        row[kind] = got
    rows[name] = row
  claims = {}
  for other in ('guided', 'transferred'):
    if other in rows and 'uniform' in rows and rows['uniform'].get('matched') == other:
      claims[other] = {kind: _lead(rows[other], rows['uniform'], kind) for kind in ('scratch_e', 'scratch_b')}
  return {
      **_summary_head(config),
      'guided': jsonable(config.guided.to_dict()),
      'rows': rows,
      **({'claim': claims} if claims else {}),
      'pattern_file': guided.get('pattern_file'),
      'paper': jsonable(dict(config.experiment.get('paper') or {})),
      'accuracy_note': 'top-1 % at the end of each phase; mean and sample std over seeds',
  }


def _lead(row: dict, uniform: dict, kind: str) -> dict | None:
  """The guided row's lead over uniform at the same params (the paper: guided beats uniform), and whether the
  claim holds within the seeds' spread (the sum of both sample stds)."""
  if kind not in row or kind not in uniform:
    return None
  a, b = row[kind]['accuracy'], uniform[kind]['accuracy']
  lead, spread = a['mean'] - b['mean'], a['std'] + b['std']
  return {'lead': lead, 'spread': spread, 'holds': bool(lead >= -spread)}


def _ratios_text(pattern: dict) -> str:
  return ', '.join(f'{k} {v:.3f}' for k, v in pattern['ratios'].items())


def _unstructured(summary: dict) -> bool:
  return (summary.get('guided') or {}).get('structure', 'structured') == 'unstructured'


def _guided_source(summary: dict) -> str:
  if _unstructured(summary):
    return 'guided sparsification: unstructured magnitude pruning'
  return 'guided pruning: Network Slimming'


def _guided_what(summary: dict) -> str:
  return 'kept conv-weight fractions' if _unstructured(summary) else 'width ratios'


KERNEL_MAPS_PNG = 'kernel_maps.png'


def plot_kernel_maps(row: dict, out: str) -> str:
  """The guided row's keep-probability maps as a PNG: one column per stage and kernel size, one row per source run,
  then their mean and the map of the mask drawn from it (gray from 0, black, to 1, white)."""
  from core_jax import seg_figure  # pylint: disable=import-outside-toplevel

  maps = row['pattern']['kernel_maps']
  drawn = {(m['stage'], tuple(m['kernel'])): m['mean'] for m in row.get('drawn_kernel_maps') or ()}
  runs = max(len(m['runs']) for m in maps)
  grid = [
      [(m['runs'][i], f'{m["stage"]} run {i + 1}') if i < len(m['runs']) else None for m in maps] for i in range(runs)
  ]
  grid.append([(m['mean'], f'{m["stage"]} mean ({np.mean(m["mean"]):.2f})') for m in maps])
  if drawn:
    grid.append([(drawn.get((m['stage'], tuple(m['kernel']))), f'{m["stage"]} drawn') for m in maps])
    grid[-1] = [None if cell[0] is None else cell for cell in grid[-1]]
  title = f'keep probability per kernel position ({row["pattern"].get("source") or row["pattern"]["family"]})'
  return seg_figure.plot_panels(out, grid, title, panel_size=(1.6, 1.6))


def _kernel_map_cell(values) -> str:
  return ' / '.join(' '.join(f'{v:.2f}' for v in row) for row in values)


def _kernel_maps_table(name: str, row: dict) -> list[str]:
  """The pattern's average keep-probability maps per stage (kernel rows top to bottom, separated by /), their
  largest std over the source runs, and the maps of the mask drawn from them (mapped stage by stage)."""
  pattern = row['pattern']
  runs = len(pattern.get('runs') or ()) or 1
  density = pattern['ratios'] if pattern.get('granularity') == 'stage' else {}
  source_of = {v: k for k, v in (row.get('stage_map') or {}).items()}  # source stage -> the target stage it sets
  drawn = {(m['stage'], tuple(m['kernel'])): m['mean'] for m in row.get('drawn_kernel_maps') or ()}
  lines = [
      f'{name}: average keep probability per kernel position, per stage ({pattern.get("source") or pattern["family"]};'
      f' the std is over the {runs} run{"s" if runs != 1 else ""})',
      '',
      '| stage | kernel | density | keep probability (rows top to bottom) | max std over runs | drawn mask |',
      '|---|---|---|---|---|---|',
  ]
  for m in pattern['kernel_maps']:
    kernel = tuple(m['kernel'])
    stage = (
        m['stage']
        if source_of.get(m['stage'], m['stage']) == m['stage']
        else f'{m["stage"]} -> {source_of[m["stage"]]}'
    )
    mine = drawn.get((source_of.get(m['stage'], m['stage']), kernel))
    d = density.get(m['stage'])
    lines.append(
        f'| {stage} | {kernel[0]}x{kernel[1]} | {"-" if d is None else f"{d:.3f}"} | {_kernel_map_cell(m["mean"])} | '
        f'{max(v for r in m["std"] for v in r):.3f} | {"-" if mine is None else _kernel_map_cell(mine)} |'
    )
  return lines


def markdown_guided(summary: dict) -> str:
  n = len(summary['seeds'])
  rows = summary['rows']
  g = summary['guided']
  lines = [
      f'### {summary["title"]}',
      '',
      f'{summary["dataset"]}, {_guided_source(summary)} {100 * float(summary["prune"]["percent"]):g}% '
      f'per-{g["granularity"]} {_guided_what(summary)} averaged, each architecture trained from scratch, {n} seed'
      f'{"s" if n != 1 else ""} (mean ± std of the final top-1 accuracy)',
      '',
      '| architecture | params | MACs | Scratch-E (%) | Scratch-B (%) | epochs E / B |',
      '|---|---|---|---|---|---|',
  ]

  def acc(entry):
    if entry is None:
      return '-'
    a = entry['accuracy']
    return f'{a["mean"]:.2f} ± {a["std"]:.2f}' if n > 1 else f'{a["mean"]:.2f}'

  labels = {'unpruned': 'unpruned', **GUIDED_ROWS}
  if _unstructured(summary):
    what = 'densities and kernel maps' if g.get('kernel_maps', True) else 'densities'
    labels['pruned'] = 'magnitude pruning (each run)'
    labels['guided'] = f'guided sparsification (averaged {what})'
    labels['transferred'] = f'transferred guided sparsification ({what})'

  for name, row in rows.items():
    label = labels[name]
    if name == 'uniform' and 'ratio' in row:
      label = f'uniform (x{row["ratio"]:.3f}, at {row.get("matched")}\'s params)'
    b = row['epochs'].get('scratch_b')
    epochs = f'{row["epochs"]["scratch_e"]} / ' + ('-' if not b else '/'.join(str(e) for e in sorted(set(b))))
    lines.append(
        f'| {label} | {_count_cell(row.get("params"))} | {_count_cell(row.get("macs"))} | '
        f'{acc(row.get("scratch_e"))} | {acc(row.get("scratch_b"))} | {epochs} |'
    )
  for name in ('guided', 'transferred'):
    row = rows.get(name)
    if row and 'pattern' in row:
      p = row['pattern']
      where = f'{p["source"]}, ' if p.get('source') else ''
      moved = [f'{t} <- {s}' for t, s in (row.get('stage_map') or {}).items() if t != s]
      mapping = f'; stage map {", ".join(moved)}' if moved else ''
      lines += ['', f'{name} ratios ({where}{p["family"]} {p["granularity"]}s{mapping}): {_ratios_text(p)}']
  if _unstructured(summary):
    if 'uniform' in rows and 'ratio' in rows['uniform']:
      lines.append(f'uniform density: {rows["uniform"]["ratio"]:.3f} of every conv')
    for name in ('guided', 'transferred'):
      if name in rows and (rows[name].get('pattern') or {}).get('kernel_maps'):
        lines += ['', *_kernel_maps_table(name, rows[name])]
  else:
    for name, row in rows.items():
      if name not in ('unpruned', 'pruned'):
        lines.append(f'{name} cfg: {json.dumps(row["cfgs"][0])}')
    if 'pruned' in rows:
      lines.append('Network Slimming cfgs: ' + '; '.join(sorted({json.dumps(c) for c in rows['pruned']['cfgs']})))
  for name, claim in (summary.get('claim') or {}).items():
    parts = [
        f'{COLUMNS[kind]} {c["lead"]:+.2f} (spread {c["spread"]:.2f})' for kind, c in claim.items() if c is not None
    ]
    if parts:
      verdict = 'holds' if all(c['holds'] for c in claim.values() if c is not None) else 'does NOT hold'
      lines += [
          '',
          f"the paper's claim, {name} >= uniform at the same params within the seeds' spread: {verdict} "
          f'({name} - uniform, points: {"; ".join(parts)})',
      ]
  paper = summary.get('paper') or {}
  if paper:
    lines += ['', 'paper: ' + '; '.join(f'{k} {v}' for k, v in paper.items())]
  return '\n'.join(lines) + '\n'
