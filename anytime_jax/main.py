"""python -m anytime_jax.main --config=configs/anytime/<name>.py --workdir=DIR [--config.key=value ...]

Trains and evaluates an anytime HRNet (anytime_jax.task.AnytimeSegTask through core_jax.train), then prints the
per-exit table (mIoU, GFLOPs, fraction of pixels computed, the mean over exits) and writes DIR/anytime.json and
DIR/anytime.png (the anytime curve, anytime_jax.curve; the paper's points beside it for Cityscapes configs).

- `--config.eval_only=True` evaluates without training: the weights of `--config.init_from` (a timm / official
  ADP-C .pth or .safetensors, or one of our step dirs / workdirs), else DIR's checkpoint (latest, or
  `checkpoint.restore_step`). When DIR holds a training run, the evaluation goes to its own sub-directory
  DIR/eval_tau<t> (DIR/eval_dense without CA), so the training's results.json is never overwritten.
- `--config.model.tau=0.99` (with eval_only) evaluates the same weights at another threshold, no retraining.
  The threshold is an argument of the compiled eval step (`AnytimeSegTask.eval_constants`), not a constant in
  it, and compiled programs are kept in DIR/xla_cache (`anytime.compilation_cache`, default True; a
  JAX_COMPILATION_CACHE_DIR already set wins), so evaluating another threshold compiles nothing new.
- Configs with `anytime.eval_taus` or `anytime.baseline_exit_type` (configs/anytime/digit_scenes.py) run the
  whole comparison as one core_jax.experiment: [baseline without CA,] the CA model, eval-only runs of the CA
  weights at each threshold; the table and curve then hold every run. Rerunning skips finished phases.
  With eval_only such a config runs the one evaluation (e.g. of a phase directory at another tau).

`run(config, workdir)` is the importable entry (returns {'runs': [...], ...} as written to anytime.json).
`--help` lists the config files of configs/anytime; `--config=FILE --help` lists that config's keys.
"""

import json
import math
import os
import sys

from core_jax import cli
from core_jax.errors import UserError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'anytime')
ANYTIME_JSON = 'anytime.json'
ANYTIME_PNG = 'anytime.png'


def _anytime(config):
  return config.get('anytime', None) or {}


def validate(config) -> None:
  """All anytime options checked before any data or device work (one-line UserErrors)."""
  from anytime_jax import confidence, curve, task  # pylint: disable=import-outside-toplevel

  task.validate_config(config)
  a = _anytime(config)
  curve.check_reference(str(a.get('reference', '') or ''))
  for t in tuple(a.get('eval_taus', ()) or ()):
    confidence.check_tau(t)
  base = str(a.get('baseline_exit_type', '') or '')
  if base and base not in ('ee', 'rh'):
    raise UserError(f"anytime.baseline_exit_type must be 'ee', 'rh' or '', got {base!r}")


def run_label(config) -> str:
  """'ADP-C (tau 0.998)', 'EE+RH', 'EE', 'HRNet (base)' from the model options, unless anytime.label is set."""
  label = str(_anytime(config).get('label', '') or '')
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


def _tau_tag(config) -> str:
  m = config.model
  return f'eval_tau{float(m.tau):g}' if m.get('confidence_adaptive', False) else 'eval_dense'


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


def report(workdir: str, runs: list[dict], config) -> dict:
  """Prints the table; writes WORKDIR/anytime.json and WORKDIR/anytime.png (atomically); returns the json."""
  import jax  # pylint: disable=import-outside-toplevel

  from anytime_jax import curve  # pylint: disable=import-outside-toplevel

  reference = str(_anytime(config).get('reference', '') or '')
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


def _eval_dir(config, workdir: str):
  """(workdir to write into, config) of an eval_only run: DIR's own checkpoint is evaluated in a sub-dir."""
  from core_jax import checkpoint  # pylint: disable=import-outside-toplevel

  if config.get('init_from'):
    has_training = os.path.isfile(os.path.join(workdir, 'results.json')) and not json.load(
        open(os.path.join(workdir, 'results.json'))
    ).get('eval_only', False)
    if not has_training and checkpoint.latest_step_dir(workdir) is None:
      return workdir, config
    return os.path.join(workdir, _tau_tag(config)), config
  if checkpoint.latest_step_dir(workdir) is None:
    raise UserError(f'eval_only: no checkpoint in {workdir} and no init_from weights to evaluate')
  restore = int(config.checkpoint.get('restore_step', -1))
  step_dir = (
      os.path.join(os.path.abspath(workdir), 'checkpoints', str(restore))
      if restore >= 0
      else checkpoint.latest_step_dir(workdir)
  )
  if not os.path.isdir(step_dir):
    raise UserError(f'eval_only: checkpoint step {restore} is not in {os.path.join(workdir, "checkpoints")}')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init_from = step_dir
    config.checkpoint.restore_step = -1
  return os.path.join(workdir, _tau_tag(config)), config


def _single(config, workdir: str) -> dict | None:
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from core_jax import train  # pylint: disable=import-outside-toplevel

  if config.get('eval_only', False):
    workdir, config = _eval_dir(config, workdir)
  results = train.run(config, workdir, AnytimeSegTask)
  if 'preempted_at_step' in results:
    return None
  results = {**results, 'workdir': os.path.abspath(workdir)}
  return report(workdir, [run_entry(run_label(config), results, config)], config)


def job_configs(config) -> list[tuple[str, object, str | None]]:
  """[(phase name, config, name of the phase whose weights it evaluates or None), ...] of a comparison job."""
  a = _anytime(config)
  phases = []
  base = str(a.get('baseline_exit_type', '') or '')
  if base:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.model.exit_type = base
      c.model.confidence_adaptive = False
      c.anytime.label = ''
    phases.append(('ee_rh' if base == 'rh' else 'ee', c, None))
  main_name = 'adp_c' if config.model.get('confidence_adaptive', False) else 'model'
  phases.append((main_name, config, None))
  for t in tuple(a.get('eval_taus', ()) or ()):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.model.tau = float(t)
      c.model.confidence_adaptive = True
      c.eval_only = True
      c.anytime.label = ''
    phases.append((f'{main_name}_tau{float(t):g}', c, main_name))
  return phases


def _job(config, workdir: str) -> dict | None:
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from core_jax import checkpoint, experiment  # pylint: disable=import-outside-toplevel

  specs = job_configs(config)

  def make(c, source):
    def make_config(done):
      if source is None:
        return c
      step_dir = checkpoint.latest_step_dir(done[source]['workdir'])
      if step_dir is None:
        raise UserError(f'phase {source} left no checkpoint to evaluate in {done[source]["workdir"]}')
      out = c.copy_and_resolve_references()
      with out.unlocked():
        out.init_from = step_dir
      return out

    return make_config

  phases = [experiment.train_phase(name, make(c, source), AnytimeSegTask) for name, c, source in specs]
  done = experiment.run_experiment(phases, workdir)
  if any('preempted_at_step' in r for r in done.values()) or len(done) < len(specs):
    return None
  runs = [run_entry(run_label(c), done[name], c) for name, c, _ in specs]
  return report(workdir, runs, config)


def run(config, workdir: str) -> dict | None:
  """Validates, trains/evaluates, reports; None when preempted (rerun the same command to continue)."""
  from core_jax import experiment  # pylint: disable=import-outside-toplevel

  validate(config)
  a = _anytime(config)
  with experiment.compilation_cache(workdir, bool(a.get('compilation_cache', True))):
    if (a.get('eval_taus') or a.get('baseline_exit_type')) and not config.get('eval_only', False):
      return _job(config, workdir)
    return _single(config, workdir)


def _run(config, workdir):
  run(config, workdir)


if __name__ == '__main__':
  sys.exit(cli.run_main(_run, prog='anytime_jax.main', config_dir=CONFIG_DIR))
