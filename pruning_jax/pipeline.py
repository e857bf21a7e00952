"""One pruning experiment of "Rethinking the Value of Network Pruning": phases per seed, then the paper's table.

Per seed k (DIR/seed<k>/...), as core_jax.experiment phases (a finished phase is skipped on a rerun, a killed
training phase resumes from its own checkpoints):
  large      train the unpruned model (config.num_epochs, the experiment's optimizer; sparsity.s for slimming),
             or, when config.init_from names weights, only evaluate them (0 epochs)
  prune      not training: the method on the large weights -> the pruned cfg and weights, exported with
             pruning_jax.io as prune/pruned.safetensors (+ .json sidecar); the mask implementation
             (prune.mode='mask') also writes the large model with the pruned channels zeroed (masked.safetensors)
             and its mask (mask.safetensors). The pruned model (or the masked one) is evaluated without fine-tuning
  finetune   the pruned weights trained finetune.num_epochs at the constant lr finetune.lr (CIFAR: 40, 0.001)
  scratch_e  the pruned architecture from random init, the large model's epochs and schedule
  scratch_b  the same for int(epochs * MACs_large / MACs_pruned) epochs (pruning_jax.budget; capped at
             scratch.budget_cap x when > 0, ImageNet L1: 2), lr milestones at the same fractions of the run
             (int(f * epochs) for the config's decay_fractions f, the original's int(0.5 E), int(0.75 E))
Then DIR/results.json (per phase and seed: accuracy, params, MACs, epochs; mean and sample std over seeds) and
DIR/results.md (the paper's row: unpruned / pruned / Fine-tuned / Scratch-E / Scratch-B), printed at the end.

Config fields beyond core_jax.config.base_config and pruning_jax.task: prune (method 'l1_norm' with scheme, or
'slimming' with percent; mode 'physical' | 'mask'; on_empty_layer 'keep_strongest' | 'error'), finetune
(num_epochs, lr), scratch (budget_cap), experiment (title, seeds, phases, paper: the paper's numbers,
compilation_cache).

Compiled steps are shared between phases and seeds through JAX's persistent compilation cache in
DIR/xla_cache (experiment.compilation_cache=True, the default; a JAX_COMPILATION_CACHE_DIR the user set wins):
phases whose steps lower to the same program (every phase of a second seed with the same cfg, reruns) load the
executable instead of compiling it again. The cache holds compiled code only, so the results are the same with
or without it.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from core_jax import checkpoint, experiment
from core_jax.errors import UserError
from pruning_jax import budget, models
from pruning_jax.task import PruningTask, build_from_config, merge_weights, read_weights, save_mask

PHASES = ('large', 'prune', 'finetune', 'scratch_e', 'scratch_b')
COLUMNS = {
    'large': 'unpruned',
    'prune': 'pruned',
    'finetune': 'Fine-tuned',
    'scratch_e': 'Scratch-E',
    'scratch_b': 'Scratch-B',
}
METHODS = ('l1_norm', 'slimming')
EXPORT, MASKED, MASK = 'pruned.safetensors', 'masked.safetensors', 'mask.safetensors'


# ----------------------------------------------------------------------------------------------- configs
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def experiment_config():
  """core_jax.config.base_config plus the pruning groups, with neutral defaults (configs/pruning set them)."""
  from core_jax import config as core_config  # pylint: disable=import-outside-toplevel

  c = core_config.base_config()
  c.model.update(dict(name='', cfg=None, selections=None, num_classes=None))
  c.sparsity = ml_collections.ConfigDict(dict(s=0.0))
  c.mask = ml_collections.ConfigDict(dict(path=''))
  c.prune = ml_collections.ConfigDict(
      dict(method='l1_norm', scheme=None, percent=0.0, mode='physical', on_empty_layer='keep_strongest')
  )
  c.finetune = ml_collections.ConfigDict(dict(num_epochs=40, lr=0.001))
  c.scratch = ml_collections.ConfigDict(dict(budget_cap=0.0))
  c.experiment = ml_collections.ConfigDict(dict(title='', seeds=(0,), phases=PHASES, paper={}, compilation_cache=True))
  c.checkpoint.keep_best = False  # every phase hands on its final weights; the best epoch is not used
  return c


def _paper_sgd(decay_fractions) -> dict:
  """The paper's optimizer on both datasets: SGD 0.9, wd 1e-4 on every parameter, lr 0.1 / 10 at the given fractions
  of the run (fractions, so a Scratch-B budget scales the decays with the epochs)."""
  return dict(
      name='sgd',
      lr=0.1,
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,
      wd_exclude_1d=False,
      schedule='step',
      decay_fractions=decay_fractions,
      decay_epochs=(),
      decay_factor=0.1,
      warmup_epochs=0.0,
  )


def cifar_recipe(c, dataset: str = 'cifar10'):
  """The paper's CIFAR protocol: SGD 0.9 (not Nesterov), wd 1e-4 on every parameter, batch 64 (test 256),
  160 epochs, lr 0.1 / 10 at 50% and 75%, zero-pad 4 + random 32x32 crop + horizontal flip, CIFAR mean / std."""
  c.data.update(
      dict(
          name=dataset,
          train_split='train',
          eval_split='test',
          worker_count=0,
          train_transforms=(
              'keep(keys=("image", "label"))',
              'random_crop(size=32, padding=4)',
              'flip_lr',
              f'normalize(mean={CIFAR_MEAN}, std={CIFAR_STD})',
          ),
          eval_transforms=('keep(keys=("image", "label"))', f'normalize(mean={CIFAR_MEAN}, std={CIFAR_STD})'),
      )
  )
  c.batch_size, c.eval_batch_size, c.num_epochs = 64, 256, 160
  c.optimizer.update(_paper_sgd(decay_fractions=(0.5, 0.75)))
  c.finetune.update(dict(num_epochs=40, lr=0.001))
  c.scratch.budget_cap = 0.0
  c.log_every_steps = 200
  c.eval_every_epochs = 10.0
  c.checkpoint.every_steps = 2000
  return c


def imagenet_recipe(c):
  """pytorch/examples 0.3.1: SGD 0.9, wd 1e-4, batch 256, 90 epochs, lr 0.1 / 10 every 30 epochs;
  RandomResizedCrop 224 + flip, eval resize 256 + center crop 224, ImageNet mean / std."""
  c.data.update(
      dict(
          name='imagenet2012',
          train_split='train',
          eval_split='validation',
          worker_count=16,
          train_transforms=(
              'keep(keys=("image", "label"))',
              'decode_jpeg',
              'random_resized_crop(size=224)',
              'flip_lr',
              f'normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})',
          ),
          eval_transforms=(
              'keep(keys=("image", "label"))',
              'decode_jpeg',
              'resize_small(size=256)',
              'center_crop(size=224)',
              f'normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})',
          ),
      )
  )
  c.batch_size, c.eval_batch_size, c.num_epochs = 256, 500, 90
  c.optimizer.update(_paper_sgd(decay_fractions=(1 / 3, 2 / 3)))
  c.log_every_steps = 500
  c.eval_every_epochs = 1.0
  c.checkpoint.every_steps = 5000
  return c


# ----------------------------------------------------------------------------------------------- checks
def check_config(config) -> None:
  """One-line errors for an experiment config before anything runs."""
  phases = tuple(config.experiment.phases)
  unknown = [p for p in phases if p not in PHASES]
  if unknown:
    raise UserError(f'experiment.phases names {unknown[0]!r} (phases: {", ".join(PHASES)})')
  if any(p in phases for p in PHASES[2:]) and 'prune' not in phases:
    raise UserError('experiment.phases: fine-tune and scratch phases need the prune phase')
  if not config.experiment.seeds:
    raise UserError('experiment.seeds is empty')
  if config.get('num_train_steps', -1) > 0:
    raise UserError('num_train_steps is not used by pruning experiments: every phase budget is in epochs')
  method = config.prune.method
  if method not in METHODS:
    raise UserError(f'unknown pruning method {method!r} (known: {", ".join(METHODS)})')
  if config.prune.mode not in ('physical', 'mask'):
    raise UserError(f'prune.mode must be physical or mask, got {config.prune.mode!r}')
  if config.prune.mode == 'mask' and method != 'slimming':
    raise UserError('prune.mode=mask is implemented for slimming only')
  if config.prune.get('on_empty_layer', 'keep_strongest') not in ('keep_strongest', 'error'):
    raise UserError(f'prune.on_empty_layer must be keep_strongest or error, got {config.prune.on_empty_layer!r}')
  if method == 'slimming' and not 0.0 <= float(config.prune.percent) < 1.0:
    raise UserError(f'prune.percent must be in [0, 1) for slimming, got {config.prune.percent}')
  num_epochs = float(config.num_epochs)
  if num_epochs <= 0 or num_epochs != int(num_epochs):
    raise UserError(f'num_epochs must be a positive whole number of epochs, got {config.num_epochs}')
  model = build_from_config(config.model, config.model.get('num_classes') or 10)  # unknown model / bad cfg: now
  if method == 'l1_norm':  # a bad scheme (skip list, ratio that empties a layer) stops before any training
    from pruning_jax.methods import l1_norm  # pylint: disable=import-outside-toplevel

    l1_norm.target_cfg(model, _scheme(config))


def _scheme(config):
  scheme = config.prune.scheme
  scheme = scheme.to_dict() if hasattr(scheme, 'to_dict') else scheme
  if not scheme:
    raise UserError('prune.scheme is empty: name an L1-norm scheme (e.g. resnet56_a) or give {skip, ratios}')
  return scheme


# ----------------------------------------------------------------------------------------------- phase configs
def _base(config, seed: int):
  c = copy.deepcopy(config)
  c.seed = int(seed)
  c.sparsity.s = 0.0
  c.mask.path = ''
  c.init_from = ''
  c.eval_only = False
  return c


def _pruned_model(c, prune_results: dict):
  d = prune_results['pruned_model']
  c.model.name, c.model.cfg, c.model.selections = d['family'], list(d['cfg']), d.get('selections')
  return c


def large_config(config, seed: int):
  c = _base(config, seed)
  c.sparsity.s = float(config.sparsity.s)
  if config.init_from:  # given weights: evaluated, not trained
    c.init_from, c.eval_only = config.init_from, True
  return c


def finetune_config(config, seed: int, prune_results: dict):
  c = _base(config, seed)
  if config.prune.mode == 'mask':  # the large shape with the pruned channels held at 0
    c.init_from, c.mask.path = prune_results['masked_export'], prune_results['mask']
  else:
    c = _pruned_model(c, prune_results)
    c.init_from = prune_results['export']
  c.num_epochs = float(config.finetune.num_epochs)
  c.optimizer.lr = float(config.finetune.lr)
  c.optimizer.schedule = 'constant'
  c.optimizer.decay_epochs, c.optimizer.decay_fractions = (), ()
  return c


def scratch_b_budget(config, prune_results: dict) -> budget.Budget:
  cap = float(config.scratch.get('budget_cap', 0.0) or 0.0)
  return budget.scratch_b(
      int(config.num_epochs), int(prune_results['macs_large']), int(prune_results['macs']), cap=cap if cap > 0 else None
  )


def scratch_config(config, seed: int, prune_results: dict, kind: str):
  c = _pruned_model(_base(config, seed), prune_results)
  if kind == 'scratch_b':
    epochs = scratch_b_budget(config, prune_results).epochs
    base = int(config.num_epochs)
    opt = c.optimizer
    if opt.get('schedule') == 'step':  # milestones at the same fractions of the longer run, as the original
      fractions = tuple(opt.get('decay_fractions', ()) or ()) or tuple(e / base for e in opt.get('decay_epochs', ()))
      opt.decay_fractions = ()
      opt.decay_epochs = tuple(int(f * epochs + 1e-9) for f in fractions)
    c.num_epochs = float(epochs)
  return c


# ----------------------------------------------------------------------------------------------- the prune phase
def _abstract_variables(model, input_shape):
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape, jnp.float32)))
  return {c: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), dict(v[c])) for c in v}


def _counts(model, input_shape) -> tuple[int, int]:
  from core_jax import counting  # pylint: disable=import-outside-toplevel

  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape, jnp.float32)))
  return counting.count_params(v['params']), counting.count_macs(
      model, jax.ShapeDtypeStruct(input_shape, jnp.float32), variables=v
  )


def _say(text: str) -> None:
  if not jax.distributed.is_initialized() or jax.process_index() == 0:
    print(text, flush=True)


def run_method(config, model, variables: dict):
  """(pruned model, its variables, report) of config.prune on `model`'s trained `variables`."""
  p = config.prune
  if p.method == 'l1_norm':
    from pruning_jax.methods import l1_norm  # pylint: disable=import-outside-toplevel

    scheme = _scheme(config)
    result = l1_norm.prune(model, None, variables, scheme)
    return result.model, result.variables, {'scheme': scheme, **result.report}
  from pruning_jax.methods import slimming  # pylint: disable=import-outside-toplevel

  result = slimming.prune(model, None, variables, float(p.percent))
  small, small_vars, report = result.model, result.variables, dict(result.report)
  emptied = list(report.get('emptied') or ())
  if emptied:
    what = (
        f'slimming at percent {p.percent} (threshold {report.get("threshold", float("nan")):.4g}) would remove '
        f'every channel of {", ".join(emptied)}'
    )
    if p.get('on_empty_layer', 'keep_strongest') == 'error':
      raise UserError(f'{what}; lower prune.percent or train with more sparsity (prune.on_empty_layer=error)')
    _say(f'warning: {what}; each keeps its strongest channel')
  return small, small_vars, report


def run_mask(config, model, variables: dict):
  """(large-shape variables with the pruned channels zeroed, the params mask) of the mask implementation."""
  from pruning_jax.methods import slimming  # pylint: disable=import-outside-toplevel

  result = slimming.prune(model, None, variables, float(config.prune.percent), mask=True)
  return result.variables, result.mask


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def prune_phase(config, seed: int):
  large_name = f'seed{seed}/large'

  def run(workdir: str, done: dict) -> dict:
    from core_jax import train  # pylint: disable=import-outside-toplevel

    large = done[large_name]
    source = config.init_from or checkpoint.latest_step_dir(large['workdir'])
    if not source:
      raise UserError(f'phase {large_name} left no checkpoint in {large["workdir"]} to prune')
    input_shape = tuple(large.get('input_shape') or (1, 32, 32, 3))
    num_classes = int(large['model']['num_classes'])
    model = build_from_config(config.model, num_classes)
    _, loaded = read_weights(source)
    variables = merge_weights(_abstract_variables(model, input_shape), loaded, source)
    small, small_vars, report = run_method(config, model, variables)
    params_large, macs_large = _counts(model, input_shape)
    params, macs = _counts(small, input_shape)
    main_process = not jax.distributed.is_initialized() or jax.process_index() == 0
    from pruning_jax import io  # pylint: disable=import-outside-toplevel

    export = os.path.join(workdir, EXPORT)
    extra = {'method': config.prune.method, 'report': _jsonable(report), 'source': source}
    if main_process:
      io.save_pruned(export, small, small_vars, extra=extra)
    results = {
        'method': config.prune.method,
        'source': source,
        'export': export,
        'large_model': models.describe(model),
        'pruned_model': models.describe(small),
        'params_large': params_large,
        'macs_large': macs_large,
        'params': params,
        'macs': macs,
        'params_pruned_percent': 100.0 * (1 - params / params_large),
        'macs_pruned_percent': 100.0 * (1 - macs / macs_large),
        'report': _jsonable(report),
    }
    evaluated = export
    if config.prune.mode == 'mask':
      masked_vars, mask = run_mask(config, model, variables)
      results['masked_export'], results['mask'] = os.path.join(workdir, MASKED), os.path.join(workdir, MASK)
      if main_process:
        io.save_pruned(results['masked_export'], model, masked_vars, extra=extra)
        save_mask(results['mask'], mask)
      evaluated = results['masked_export']
    if jax.distributed.is_initialized() and jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      multihost_utils.sync_global_devices(f'pruned_{seed}')
    # the pruned model's accuracy before any training, through the loop's eval
    ec = _base(config, seed)
    if config.prune.mode != 'mask':
      ec = _pruned_model(ec, results)
    ec.init_from, ec.eval_only = evaluated, True
    evaluation = train.run(ec, os.path.join(workdir, 'eval'), PruningTask)
    results['accuracy'] = evaluation['accuracy']
    results['eval'] = evaluation['eval']
    _say(
        f'pruned ({config.prune.method}): cfg {list(small_cfg(results))}; params {params:,} of {params_large:,} '
        f'({results["params_pruned_percent"]:.1f}% pruned), MACs {macs:,} of {macs_large:,} '
        f'({results["macs_pruned_percent"]:.1f}% pruned); accuracy before fine-tuning {results["accuracy"]:.4f}'
    )
    return results

  return experiment.Phase(f'seed{seed}/prune', run)


def small_cfg(prune_results: dict) -> list:
  return prune_results['pruned_model']['cfg']


# ----------------------------------------------------------------------------------------------- the experiment
def phases_for(config) -> list[experiment.Phase]:
  wanted = tuple(config.experiment.phases)
  out = []
  for seed in config.experiment.seeds:
    seed = int(seed)

    def prune_of(done, s=seed):
      return done[f'seed{s}/prune']

    if 'large' in wanted or 'prune' in wanted:
      out.append(experiment.train_phase(f'seed{seed}/large', lambda done, s=seed: large_config(config, s), PruningTask))
    if 'prune' in wanted:
      out.append(prune_phase(config, seed))
    if 'finetune' in wanted:
      out.append(
          experiment.train_phase(
              f'seed{seed}/finetune', lambda done, s=seed, p=prune_of: finetune_config(config, s, p(done)), PruningTask
          )
      )
    for kind in ('scratch_e', 'scratch_b'):
      if kind in wanted:
        out.append(
            experiment.train_phase(
                f'seed{seed}/{kind}',
                lambda done, s=seed, p=prune_of, k=kind: scratch_config(config, s, p(done), k),
                PruningTask,
            )
        )
  return out


def _epochs(config, phase: str, r: dict, prune_results: dict | None) -> int | None:
  if phase == 'large':
    return 0 if config.init_from else int(config.num_epochs)
  if phase == 'prune':
    return 0
  if phase == 'finetune':
    return int(config.finetune.num_epochs)
  if phase == 'scratch_e':
    return int(config.num_epochs)
  return scratch_b_budget(config, prune_results).epochs


def _stats(values: list[float]) -> dict:
  arr = np.asarray(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {'mean': float(arr.mean()), 'std': std, 'min': float(arr.min()), 'max': float(arr.max())}


def summarize(config, done: dict) -> dict:
  """results.json of the experiment from the phases' results."""
  phases = {}
  for phase in PHASES:
    per_seed = []
    for seed in config.experiment.seeds:
      r = done.get(f'seed{int(seed)}/{phase}')
      if r is None:
        continue
      pr = done.get(f'seed{int(seed)}/prune')
      if phase == 'prune':
        params, macs, nonzero = r['params'], r['macs'], None
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
  return {
      'title': config.experiment.title,
      'dataset': config.data.name,
      'model': config.model.name,
      'method': config.prune.method,
      'prune': _jsonable(config.prune.to_dict()),
      'seeds': [int(s) for s in config.experiment.seeds],
      'phases': phases,
      'paper': paper,
      'accuracy_note': 'top-1 % at the end of each phase; mean and sample std over seeds',
  }


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
  mode = ', mask implementation' if prune.get('mode') == 'mask' else ''
  return f'Network Slimming {100 * float(prune["percent"]):g}%{mode}'


def markdown(summary: dict) -> str:
  ph = summary['phases']
  n = len(summary['seeds'])
  cols = [COLUMNS[p] for p in PHASES]
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
    lines.append(f'| {label} | ' + ' | '.join(cell(p, ph.get(p)) for p in PHASES) + ' |')

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
  prune = ph.get('prune')
  if prune:
    cfgs = {json.dumps(s['cfg']) for s in prune['per_seed']}
    lines += ['', f'pruned cfg{"s" if len(cfgs) > 1 else ""}: ' + '; '.join(sorted(cfgs))]
  return '\n'.join(lines) + '\n'


def _write_atomic(path: str, text: str) -> None:
  if jax.distributed.is_initialized() and jax.process_index() != 0:
    return
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns the summary (also DIR/results.json, results.md)."""
  check_config(config)
  # no makedirs here: run_experiment makes each phase's folder (and removes it again if the phase's input fails)
  with experiment.compilation_cache(workdir, config.experiment.get('compilation_cache', True)):
    done = experiment.run_experiment(phases_for(config), workdir)
  if any('preempted_at_step' in r for r in done.values()):
    return {'preempted': True}
  summary = summarize(config, done)
  text = markdown(summary)
  _write_atomic(os.path.join(workdir, 'results.json'), json.dumps(summary, indent=1, allow_nan=True) + '\n')
  _write_atomic(os.path.join(workdir, 'results.md'), text)
  _say(f'\n{text}\nresults: {os.path.join(os.path.abspath(workdir), "results.json")}, results.md')
  return summary
