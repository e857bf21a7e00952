"""One pruning experiment of "Rethinking the Value of Network Pruning": what phases run per seed, in what order.

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
Unstructured magnitude pruning (prune.method='magnitude', percent) is always the mask implementation: the prune
phase exports the large model with the pruned conv weights zeroed (pruned.safetensors), its mask, and the seed's
Scratch-E/B init (scratch_init.safetensors: each conv re-drawn at std sqrt(2 / (nnz / in_channels)), masked, or with
scratch.init='model' the model's own fresh init under the mask); its
params and MACs count the non-zero weights, so Scratch-B scales with the non-zero conv MACs.

Lottery tickets (prune.method='lottery'; lottery.structure, rounds, lrs) run their own phases per seed:
  init                 the large model's random init, saved (init.safetensors)
  lr<lr>/large         trained from that file at lr
  lr<lr>/prune<r>      the mask of round r (unstructured: percent of the remaining conv weights; l1: the scheme),
                       the winning ticket (init x mask) and, last round, the random init under the mask
  lr<lr>/round<r>      the ticket retrained before round r + 1 (unstructured, rounds > 1)
  lr<lr>/ticket, lr<lr>/random   the winning ticket and the random init trained under the final mask
and the table has one row per lr: unpruned, winning ticket, random init.

Sparse Structure Selection (prune.method='sss', pruning_jax.methods.sss) runs the same phases: the large model
learns a factor per residual branch (model.block_scale, the proximal step of sss.gamma / sss.momentum), the prune
phase removes the blocks whose factor is 0 and folds the others into their branch's last BatchNorm; with a fixed
sss.architecture (resnet41 / 32 / 26) the large ResNet-50 trains plainly and the prune phase cuts that architecture.

Soft filter pruning (prune.method='sfp', pruning_jax.methods.sfp): the large phase trains with SFP's epoch hook
(pruning_jax.task.SoftFilterTask: each conv's weakest filters at sfp.keep_rate zeroed after every epoch, from
init_from weights when given), the prune phase hard-prunes the zero filters through the surgery; Scratch-B's base
is scratch.base_epochs when > 0 (SFP: 400, the baseline's and the SFP run's epochs together).

Guided pruning (prune.method='guided', pruning_jax.methods.guided) runs, per seed, the source run (large with
sparsity training, prune = Network Slimming at prune.percent, and the scratch phases asked of its architecture),
then
  guided                          not training: the runs' (and guided.runs_from's) kept-width ratios averaged
                                  per stage (DIR/guided/pattern.json) -> the guided cfg; guided.pattern_from's
                                  pattern -> the transferred cfg; uniform: one ratio for every width, solved for
                                  the guided (else the transferred) model's params
  seed<k>/<architecture>/scratch_e, scratch_b   each of them trained from scratch (guided, transferred, uniform)
and the table has one row per architecture: params, MACs, Scratch-E, Scratch-B. With guided.structure='unstructured'
(guided sparsification) the source runs are unstructured magnitude pruning at prune.percent, the guided phase
averages their masks' kept fractions and kernel keep-probability maps per stage (DIR/guided/pattern.json), draws
the guided mask from them (guided.pattern_from's unstructured pattern: the transferred one, stage k to stage k) and
the uniform one at its non-zero count (DIR/guided/<architecture>/mask.safetensors, a Scratch-E/B init per seed
beside it), each trained as the mask implementation.

Then pruning_jax.report writes DIR/results.json and DIR/results.md (the paper's table) and prints the table. The
recipes the configs build on (the experiment groups, the paper's CIFAR and ImageNet protocols) are
configs/pruning/_recipes.py.

Config fields beyond core_jax.config.base_config and pruning_jax.task: prune (method 'l1_norm' with scheme,
'slimming' / 'magnitude' / 'guided' with percent, 'lottery' with percent or scheme; mode 'physical' | 'mask';
on_empty_layer 'keep_strongest' | 'error'), finetune (num_epochs, lr), scratch (budget_cap), lottery (structure,
rounds, lrs), guided (granularity 'stage' | 'layer', runs_from, pattern_from, uniform, structure, kernel_maps),
experiment (title, seeds, phases, paper: the paper's numbers, compilation_cache).

Compiled steps are shared between phases and seeds through JAX's persistent compilation cache in
DIR/xla_cache (experiment.compilation_cache=True, the default; a JAX_COMPILATION_CACHE_DIR the user set wins):
phases whose steps lower to the same program (every phase of a second seed with the same cfg, reruns; the
fine-tune, Scratch-E and Scratch-B of one pruned cfg, whose lr schedules are inputs of one train step:
core_jax.optim.Schedule) load the executable instead of compiling it again. The cache holds compiled code only,
so the results are the same with or without it.
"""

import copy
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import checkpoint, experiment, optim
from core_jax.errors import UserError
from pruning_jax import budget, models, report
from pruning_jax.task import (
    PruningTask,
    SoftFilterTask,
    build_from_config,
    count_nonzero,
    merge_weights,
    read_weights,
    save_mask,
)

PHASES = ('large', 'prune', 'finetune', 'scratch_e', 'scratch_b')
METHODS = ('l1_norm', 'slimming', 'graph', 'magnitude', 'lottery', 'guided', 'sss', 'sfp', 'thinet', 'regression')
RECONSTRUCTION = ('thinet', 'regression')  # prune from sampled activations: the prune phase reads training images
GRAPH_CRITERIA = ('l1', 'l2', 'bn_scale')  # Taylor needs batches the prune phase does not read
UNSTRUCTURED = ('magnitude',)  # the large shape with weights held at 0: always the mask implementation
SCRATCH_INITS = ('sparse_he', 'model')  # unstructured Scratch-E/B: the paper's sparse He re-draw | the model's init
EXPORT, MASKED, MASK = 'pruned.safetensors', 'masked.safetensors', 'mask.safetensors'
SCRATCH_INIT = 'scratch_init.safetensors'  # unstructured: the seed's sparse re-initialization for Scratch-E/B
LOTTERY_INIT, TICKET, RANDOM_INIT = 'init.safetensors', 'ticket.safetensors', 'random_init.safetensors'


# ----------------------------------------------------------------------------------------------- checks
def check_config(config) -> None:
  """One-line errors for an experiment config before anything runs."""
  phases = tuple(config.experiment.phases)
  unknown = [p for p in phases if p not in PHASES]
  if unknown:
    raise UserError(f'experiment.phases names {unknown[0]!r} (phases: {", ".join(PHASES)})')
  if any(p in phases for p in PHASES[2:]) and 'prune' not in phases and config.prune.method != 'guided':
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
  if config.prune.mode == 'mask' and method not in ('slimming', *UNSTRUCTURED):
    raise UserError('prune.mode=mask is implemented for slimming only (unstructured pruning always masks)')
  if config.scratch.get('init', 'sparse_he') not in SCRATCH_INITS:
    raise UserError(f'scratch.init must be one of {", ".join(SCRATCH_INITS)}, got {config.scratch.init!r}')
  if config.prune.get('on_empty_layer', 'keep_strongest') not in ('keep_strongest', 'error'):
    raise UserError(f'prune.on_empty_layer must be keep_strongest or error, got {config.prune.on_empty_layer!r}')
  if method in ('slimming', 'guided') and not 0.0 <= float(config.prune.percent) < 1.0:
    raise UserError(f'prune.percent must be in [0, 1) for {method}, got {config.prune.percent}')
  if method in UNSTRUCTURED:
    from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

    magnitude.check_percent(config.prune.percent)
  if method == 'lottery':
    _check_lottery(config)
  if method == 'guided':
    _check_guided(config)
  if method == 'sss':
    _check_sss(config)
  if method == 'sfp':
    from pruning_jax.methods import sfp  # pylint: disable=import-outside-toplevel

    if config.get('sfp') is None:
      raise UserError('prune.method=sfp needs the config group sfp (keep_rate)')
    sfp.check_keep_rate(config.sfp.keep_rate)
  if config.get('eval_only', False):  # each phase is trained or evaluated by the experiment itself; not a no-op
    raise UserError(
        'eval_only: a pruning experiment evaluates each phase as it ends (DIR/seed<N>/<phase>/results.json; the '
        'table: DIR/results.md); to evaluate a weights file as the large model without training it, start an '
        'experiment in a new workdir with --config.init_from=FILE'
    )
  num_epochs = float(config.num_epochs)
  if num_epochs <= 0 or num_epochs != int(num_epochs):
    raise UserError(f'num_epochs must be a positive whole number of epochs, got {config.num_epochs}')
  if method == 'graph':
    if config.prune.get('criterion', 'l1') not in GRAPH_CRITERIA:
      raise UserError(
          f'prune.criterion must be one of {", ".join(GRAPH_CRITERIA)} for graph, got {config.prune.criterion!r}'
      )
  ratio = config.prune.get('ratio', 0.5)
  if not 0.0 <= float(ratio) < 1.0:  # every method: a bad value of this shared recipe key is never silently unused
    read_by = '' if method == 'graph' else f'; only prune.method=graph reads it, this run is {method}'
    raise UserError(f'prune.ratio must be in [0, 1) for graph, got {ratio}{read_by}')
  if 'finetune' in phases:  # its options derive from the command line's: a bad finetune.lr fails now, not hours in
    try:
      optim.check_options(_finetune_optimizer(config), num_epochs=float(config.finetune.num_epochs))
    except UserError as e:
      raise UserError(
          f'the fine-tune phase (finetune.lr={config.finetune.lr!r}, finetune.num_epochs='
          f'{config.finetune.num_epochs!r}): {e}'
      ) from None
  model = build_from_config(config.model, config.model.get('num_classes') or 10)  # unknown model / bad cfg: now
  if 'prune' not in phases:  # training only (a fixed architecture from scratch): no method runs
    return
  if method in RECONSTRUCTION:  # a bad keep ratio, layer or fixed architecture stops before any training
    _check_reconstruction(config, model)
  if method == 'l1_norm':  # a bad scheme (skip list, ratio that empties a layer) stops before any training
    from pruning_jax.methods import l1_norm  # pylint: disable=import-outside-toplevel

    l1_norm.target_cfg(model, _scheme(config))


def _check_reconstruction(config, model) -> None:
  from pruning_jax.methods import reconstruction  # pylint: disable=import-outside-toplevel

  p = config.prune
  for key in ('sample_images', 'sample_locations', 'alternations'):
    value = p.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f'prune.{key} must be an int >= 1, got {value!r}')
  if float(p.get('finetune_between', 0.0)) < 0:
    raise UserError(f'prune.finetune_between must be >= 0 epochs, got {p.finetune_between}')
  _reconstruction_counts(config, model, reconstruction)


def _reconstruction_counts(config, model, reconstruction) -> dict:
  p = config.prune
  widths = reconstruction.target_widths(model, p.target) if p.get('target') else None
  return reconstruction.keep_counts(model, tuple(p.get('layers') or ()), p.get('keep_ratio'), widths)


def _check_lottery(config) -> None:
  from pruning_jax.methods import lottery, magnitude  # pylint: disable=import-outside-toplevel

  lt = config.get('lottery')
  if lt is None:
    raise UserError('prune.method=lottery needs the config group lottery (structure, rounds, lrs)')
  lottery.check_rounds(lt.rounds, lt.structure)
  if not tuple(lt.lrs) or any(float(lr) <= 0 for lr in lt.lrs):
    raise UserError(f'lottery.lrs must be positive learning rates, got {tuple(lt.lrs)}')
  if config.init_from:
    raise UserError('lottery tickets start from the random init the large model is trained from: no init_from')
  if lt.structure == 'unstructured':
    magnitude.check_percent(config.prune.percent)
  else:  # a bad scheme stops before any training
    from pruning_jax.methods import l1_norm  # pylint: disable=import-outside-toplevel

    l1_norm.target_cfg(build_from_config(config.model, config.model.get('num_classes') or 10), _scheme(config))


def _check_sss(config) -> None:
  from pruning_jax.methods import sss  # pylint: disable=import-outside-toplevel

  group = config.get('sss')
  if group is None:
    raise UserError('prune.method=sss needs the config group sss (gamma, momentum, architecture)')
  sss.proximal_gradient(0.1, group.gamma, group.momentum)  # gamma < 0, momentum outside [0, 1): one line now
  architecture = group.get('architecture', '') or ''
  if architecture and architecture not in sss.STAGE_BLOCKS:
    raise UserError(f'sss.architecture must be empty or one of {", ".join(sss.STAGE_BLOCKS)}, got {architecture!r}')
  if config.init_from and not architecture:
    raise UserError(
        'Sparse Structure Selection learns its block factors in the large phase: no init_from '
        '(or name a fixed sss.architecture to cut from given weights)'
    )
  model = build_from_config(config.model, config.model.get('num_classes') or 10)
  family = models.family_of(model)
  if family not in models.BLOCK_FAMILIES or (architecture and family != 'resnet50'):
    need = 'resnet50' if architecture else ' or '.join(models.BLOCK_FAMILIES)
    raise UserError(
        f'Sparse Structure Selection{" " + architecture if architecture else ""} needs a {need} model, '
        f'got {config.model.name} ({family})'
    )


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
  c.model.block_scale = False
  return c


def _pruned_model(c, prune_results: dict):
  d = prune_results['pruned_model']
  c.model.name, c.model.cfg, c.model.selections = d['family'], list(d['cfg']), d.get('selections')
  c.model.widths = d.get('widths')
  c.model.block_scale = bool(d.get('block_scale'))
  return c


def large_config(config, seed: int):
  c = _base(config, seed)
  c.sparsity.s = float(config.sparsity.s)
  c.model.block_scale = sss_training(config)
  if config.init_from:  # given weights: evaluated, not trained (soft filter pruning trains from them)
    c.init_from, c.eval_only = config.init_from, config.prune.method != 'sfp'
  return c


def large_model(config, seed: int, num_classes: int):
  """The trained large model as the prune phase rebuilds it: SSS's with its block factors, under the configured
  compute policy as the task's model (the methods' forward passes run it)."""
  return build_from_config(large_config(config, seed).model, num_classes, compute=config.get('compute'))


def sss_training(config) -> bool:
  """The large model learns SSS's block factors (prune.method=sss without a fixed sss.architecture)."""
  return config.prune.method == 'sss' and not (config.get('sss') or {}).get('architecture')


def mask_mode(config) -> bool:
  """The pruned model is the large one with weights held at 0 (slimming's mask implementation, unstructured)."""
  return config.prune.mode == 'mask' or config.prune.method in UNSTRUCTURED


def finetune_config(config, seed: int, prune_results: dict):
  c = _base(config, seed)
  if mask_mode(config):  # the large shape with the pruned channels held at 0
    c.init_from, c.mask.path = prune_results['masked_export'], prune_results['mask']
  else:
    c = _pruned_model(c, prune_results)
    c.init_from = prune_results['export']
  c.num_epochs = float(config.finetune.num_epochs)
  c.optimizer = _finetune_optimizer(config)
  return c


def _finetune_optimizer(config):
  """The fine-tune phase's optimizer: the experiment's, at `finetune.lr` with a constant schedule."""
  opt = copy.deepcopy(config.optimizer)
  opt.lr = float(config.finetune.lr)
  opt.schedule = 'constant'
  opt.decay_epochs, opt.decay_fractions = (), ()
  return opt


def scratch_config(config, seed: int, prune_results: dict, kind: str):
  c = _pruned_model(_base(config, seed), prune_results)
  if config.prune.method in UNSTRUCTURED or 'scratch_init' in prune_results:  # the large shape, under the mask
    c.init_from, c.mask.path = prune_results['scratch_init'], prune_results['mask']
  if kind == 'scratch_b':
    epochs = budget.scratch_b_of_experiment(config, prune_results).epochs
    base = int(config.num_epochs)
    opt = c.optimizer
    if opt.get('schedule') == 'step':  # milestones at the same fractions of the longer run, as the original
      fractions = tuple(opt.get('decay_fractions', ()) or ()) or tuple(e / base for e in opt.get('decay_epochs', ()))
      opt.decay_fractions = ()
      if config.scratch.get('equal_decay_steps', False):  # MXNet's step every int(f1 * E): SSS 117 -> 35/70/105
        step = int(fractions[0] * epochs + 1e-9)
        opt.decay_epochs = tuple(step * (i + 1) for i in range(len(fractions)))
      else:
        opt.decay_epochs = tuple(int(f * epochs + 1e-9) for f in fractions)
    c.num_epochs = float(epochs)
  return c


# ----------------------------------------------------------------------------------------------- the prune phase
def _abstract_variables(model, input_shape):
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape, jnp.float32)))
  return {c: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), dict(v[c])) for c in v}


def _fresh_variables(model, input_shape, seed: int, draw: int = 0) -> dict:
  """The model's own initialization for `seed` (host numpy), drawn as the training loop draws it (another draw
  for draw > 0)."""
  key = jax.random.PRNGKey(seed)
  params_rng, dropout_rng, _ = jax.random.split(jax.random.fold_in(key, draw) if draw else key, 3)
  init = jax.jit(
      lambda: model.init({'params': params_rng, 'dropout': dropout_rng}, jnp.zeros(input_shape), train=False)
  )
  return {c: jax.tree_util.tree_map(np.asarray, dict(v)) for c, v in jax.device_get(init()).items()}


def _scratch_init(config, model, input_shape, seed: int, mask) -> dict:
  """The seed's Scratch-E/B init of a masked (unstructured) model: scratch.init 'sparse_he' re-draws each conv at
  the sparse He std under the mask (the paper's cifar_E.py), 'model' keeps the model's own init under it."""
  from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

  fresh = _fresh_variables(model, input_shape, seed)
  if config.scratch.get('init', 'sparse_he') == 'sparse_he':
    fresh['params'] = magnitude.sparse_reinit(fresh['params'], mask, seed)
  else:
    fresh['params'] = magnitude.apply(fresh['params'], mask)
  return fresh


def _counts(model, input_shape) -> tuple[int, int]:
  from core_jax import counting  # pylint: disable=import-outside-toplevel

  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape, jnp.float32)))
  return counting.count_params(v['params']), counting.count_macs(
      model, jax.ShapeDtypeStruct(input_shape, jnp.float32), variables=v
  )


def _say(text: str) -> None:
  if not jax.distributed.is_initialized() or jax.process_index() == 0:
    print(text, flush=True)


def run_graph(config, model, variables: dict, input_shape):
  """The traced surgery (pruning_jax.structured) on `model`: traced with the plain-XLA compute policy (the
  variables are the same whatever the policy computes them with), run with `model`'s (the configured one); a
  pruned model pruned again is one Rewidthed over the base with both tables (`rewidth.rewidthed`)."""
  from pruning_jax import structured  # pylint: disable=import-outside-toplevel

  p = config.prune
  result = structured.prune(
      model,
      variables,
      jnp.zeros(input_shape, jnp.float32),
      float(p.get('ratio', 0.5)),
      p.get('criterion', 'l1'),
      scope=p.get('scope', 'layer'),
      min_width=int(p.get('min_width', 1)),
  )
  for note in result.report['notes']:
    _say(f'warning: {note}')
  return result.model, result.variables, dict(result.report)


def sample_images(config, seed: int) -> np.ndarray:
  """prune.sample_images training images (NHWC, the eval transform applied), drawn without replacement by `seed`:
  the activations ThiNet and regression pruning sample."""
  from core_jax.data import ops, sources  # pylint: disable=import-outside-toplevel

  source, _ = sources.load_source(config.data.name, config.data.train_split, config.data.get('data_dir') or None)
  n = int(config.prune.sample_images)
  if n > len(source):
    raise UserError(f'prune.sample_images={n} is more than the {len(source)} training images')
  transform = ops.build_transforms(config.data.eval_transforms)
  chosen = np.sort(np.random.default_rng(seed).choice(len(source), n, replace=False))
  return np.stack([np.asarray(transform(dict(source[int(i)]), np.random.default_rng(0))['image']) for i in chosen])


def _finetune_between(config, seed: int, workdir: str, input_shape):
  """The `between` hook of the reconstruction methods: prune.finetune_between epochs of the fine-tune phase's
  training (finetune.lr, constant) on the model pruned so far, in WORKDIR/between/<k> (a finished one is reused
  on a rerun of the phase: the layers before it are chosen the same way from the same samples)."""
  from core_jax import train  # pylint: disable=import-outside-toplevel
  from pruning_jax import io  # pylint: disable=import-outside-toplevel

  epochs = float(config.prune.get('finetune_between', 0.0) or 0.0)
  if epochs <= 0:
    return None

  def between(model, variables, set_name, index):
    run_dir = os.path.join(workdir, 'between', f'{index}')
    os.makedirs(run_dir, exist_ok=True)
    start = os.path.join(run_dir, 'start.safetensors')
    if not jax.distributed.is_initialized() or jax.process_index() == 0:
      io.save_pruned(start, model, variables, extra={'after': set_name})
    c = finetune_config(config, seed, {'pruned_model': models.describe(model), 'export': start})
    c.num_epochs = epochs
    train.run(c, os.path.join(run_dir, 'train'), PruningTask)
    source = checkpoint.latest_step_dir(os.path.join(run_dir, 'train'))
    _say(f'fine-tuned {epochs:g} epochs after pruning {set_name}')
    return merge_weights(_abstract_variables(model, input_shape), read_weights(source)[1], source)

  return between


def run_reconstruction(config, model, variables: dict, input_shape, seed: int = 0, workdir: str | None = None):
  """ThiNet / regression pruning of `model` from activations of the seed's sampled training images."""
  from pruning_jax.methods import reconstruction, regression, thinet  # pylint: disable=import-outside-toplevel

  p = config.prune
  counts = _reconstruction_counts(config, model, reconstruction)
  between = _finetune_between(config, seed, workdir, input_shape) if workdir else None
  options = dict(
      keep_widths=counts, per_image=int(p.sample_locations), seed=seed, between=between, target=p.get('target') or None
  )
  images = sample_images(config, seed)
  if p.method == 'thinet':
    result = thinet.prune(model, None, variables, images, p.keep_ratio, **options)
  else:
    result = regression.prune(model, None, variables, images, p.keep_ratio, int(p.alternations), **options)
  for layer in result.report['layers']:
    errors = ', '.join(f'{k} {v:.4g}' for k, v in layer.items() if k.startswith('error_') and v is not None)
    _say(f'{p.method}: {layer["set"]} keeps {layer["kept"]} of {layer["of"]}; reconstruction MSE {errors}')
  return result.model, result.variables, dict(result.report)


def run_method(config, model, variables: dict, input_shape=(1, 32, 32, 3), seed: int = 0, workdir: str | None = None):
  """(pruned model, its variables, report) of config.prune on `model`'s trained `variables` (unstructured: the
  large model with the pruned weights zeroed; thinet / regression sample the seed's training images and, with
  prune.finetune_between, fine-tune in `workdir` after each layer)."""
  p = config.prune
  if p.method in RECONSTRUCTION:
    return run_reconstruction(config, model, variables, input_shape, seed, workdir)
  if p.method in UNSTRUCTURED:
    result = run_unstructured(config, model, variables)
    return result.model, result.variables, dict(result.report)
  if p.method == 'graph':
    return run_graph(config, model, variables, input_shape)
  if p.method == 'sss':
    return run_sss(config, model, variables)
  if p.method == 'sfp':
    from pruning_jax.methods import sfp  # pylint: disable=import-outside-toplevel

    result = sfp.hard_prune(model, variables)
    r = result.report
    _say(f'sfp: {r["filters_removed"]} zero filters cut, {r["zero_filters_kept"]} on shared residual channels kept')
    return result.model, result.variables, dict(r)
  if p.method == 'l1_norm':
    from pruning_jax.methods import l1_norm  # pylint: disable=import-outside-toplevel

    scheme = _scheme(config)
    result = l1_norm.prune(model, None, variables, scheme)
    return result.model, result.variables, {'scheme': scheme, **result.report}
  from pruning_jax.methods import slimming  # pylint: disable=import-outside-toplevel

  result = slimming.prune(model, None, variables, float(p.percent))
  small, small_vars, method_report = result.model, result.variables, dict(result.report)
  emptied = list(method_report.get('emptied') or ())
  if emptied:
    what = (
        f'slimming at percent {p.percent} (threshold {method_report.get("threshold", float("nan")):.4g}) would remove '
        f'every channel of {", ".join(emptied)}'
    )
    if p.get('on_empty_layer', 'keep_strongest') == 'error':
      raise UserError(f'{what}; lower prune.percent or train with more sparsity (prune.on_empty_layer=error)')
    _say(f'warning: {what}; each keeps its strongest channel')
  return small, small_vars, method_report


def run_sss(config, model, variables: dict):
  """Sparse Structure Selection: the blocks whose trained factor is 0 removed, or the fixed sss.architecture cut
  from the large model."""
  from pruning_jax.methods import sss  # pylint: disable=import-outside-toplevel

  architecture = config.sss.get('architecture', '') or ''
  if architecture:
    small, small_vars = sss.fixed(model, variables, architecture)
    return small, small_vars, {'method': 'sss', 'architecture': architecture, 'cfg': list(models.cfg_of(small))}
  result = sss.prune(model, None, variables, on_empty_layer=config.prune.get('on_empty_layer', 'keep_strongest'))
  for name in result.report['emptied']:
    _say(f'warning: sss: every factor of the stage of {name} is 0 (sss.gamma={config.sss.gamma}); it keeps {name}')
  removed = result.report['removed_blocks']
  _say(f'sss: {len(removed)} blocks removed ({", ".join(removed) or "none"}), depth {result.report["depth"]}')
  return result.model, result.variables, dict(result.report)


def run_unstructured(config, model, variables: dict):
  from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

  return magnitude.prune(model, None, variables, float(config.prune.percent))


def run_mask(config, model, variables: dict):
  """(large-shape variables with the pruned channels zeroed, the params mask) of the mask implementation."""
  if config.prune.method in UNSTRUCTURED:
    result = run_unstructured(config, model, variables)
    return result.variables, result.mask
  from pruning_jax.methods import slimming  # pylint: disable=import-outside-toplevel

  result = slimming.prune(model, None, variables, float(config.prune.percent), mask=True)
  return result.variables, result.mask


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
    model = large_model(config, seed, num_classes)
    _, loaded = read_weights(source)
    variables = merge_weights(_abstract_variables(model, input_shape), loaded, source)
    small, small_vars, method_report = run_method(config, model, variables, input_shape, seed, workdir)
    params_large, macs_large = _counts(model, input_shape)
    params, macs = _counts(small, input_shape)
    unstructured = config.prune.method in UNSTRUCTURED
    if unstructured:
      # Counted over the non-zero weights of the pruned model, i.e. after its mask is applied: the Scratch-B budget
      # (pruning_jax.budget) scales with these MACs. The original cifar_B.py / imagenet main_B.py compute the ratio
      # before loading the pruned checkpoint, so their Scratch-B trains Scratch-E's epochs (reference sheet
      # section 9, item 3); we count what the pruned model really keeps.
      from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

      params, macs = count_nonzero(small_vars['params']), magnitude.nonzero_macs(small, small_vars, input_shape)
    main_process = not jax.distributed.is_initialized() or jax.process_index() == 0
    from pruning_jax import io  # pylint: disable=import-outside-toplevel

    export = os.path.join(workdir, EXPORT)
    extra = {'method': config.prune.method, 'report': report.jsonable(method_report), 'source': source}
    if main_process:
      io.save_pruned(export, small, small_vars, extra=extra)
    results = {
        'method': config.prune.method,
        'source': source,
        'export': export,
        'large_model': models.describe(model),
        'pruned_model': models.describe(small),
        **_counts_entry(params, macs, params_large, macs_large),
        'report': report.jsonable(method_report),
    }
    evaluated = export
    if unstructured:  # the export is already the masked large model; its mask and the Scratch-E/B init beside it
      from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

      mask = run_mask(config, model, variables)[1]
      results['masked_export'], results['mask'] = export, os.path.join(workdir, MASK)
      results['scratch_init'] = os.path.join(workdir, SCRATCH_INIT)
      if main_process:
        save_mask(results['mask'], mask)
        fresh = _scratch_init(config, model, input_shape, seed, mask)
        io.save_pruned(results['scratch_init'], model, fresh, extra={'method': config.prune.method, 'seed': seed})
    elif config.prune.mode == 'mask':
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
    if not mask_mode(config):
      ec = _pruned_model(ec, results)
    ec.init_from, ec.eval_only = evaluated, True
    evaluation = train.run(ec, workdir, PruningTask)  # into PRUNE_DIR/eval/weights-pruned/
    results['accuracy'] = evaluation['accuracy']
    results['eval'] = evaluation['eval']
    _say(
        f'pruned ({config.prune.method}): cfg {list(small_cfg(results))}{_widths_note(results)}; '
        f'params {params:,} of {params_large:,} ({results["params_pruned_percent"]:.1f}% pruned), '
        f'MACs {macs:,} of {macs_large:,} ({results["macs_pruned_percent"]:.1f}% pruned); '
        f'accuracy before fine-tuning {results["accuracy"]:.4f}'
    )
    return results

  return experiment.Phase(f'seed{seed}/prune', run)


def _counts_entry(params: int, macs: int, params_large: int, macs_large: int) -> dict:
  """A pruned architecture's counts as the prune phase hands them on (Scratch-B reads macs and macs_large)."""
  return {
      'params_large': params_large,
      'macs_large': macs_large,
      'params': params,
      'macs': macs,
      'params_pruned_percent': 100.0 * (1 - params / params_large),
      'macs_pruned_percent': 100.0 * (1 - macs / macs_large),
  }


def _widths_note(prune_results: dict) -> str:
  widths = prune_results['pruned_model'].get('widths')
  return f' with {len(widths)} layers rewidthed by the traced surgery' if widths else ''


def small_cfg(prune_results: dict) -> list:
  return prune_results['pruned_model']['cfg']


# ----------------------------------------------------------------------------------------------- lottery tickets
def lottery_lr_tag(lr) -> str:
  return f'lr{float(lr):g}'


def _lottery_train_config(config, seed: int, lr: float, init_from: str, mask_path: str):
  c = _base(config, seed)
  c.optimizer.lr = float(lr)
  c.init_from, c.mask.path = init_from, mask_path
  return c


def _data_shape(config) -> tuple[tuple, int]:
  """(input shape of one image, number of classes) from the dataset, before anything trains."""
  from core_jax import train  # pylint: disable=import-outside-toplevel

  data = train.build_data(config)
  shape = (1,) + tuple(np.shape(data.example['image'])[1:])
  return shape, int(config.model.get('num_classes') or data.info.num_classes)


def lottery_init_phase(config, seed: int) -> experiment.Phase:
  """Saves the large model's random initialization (the draw the loop makes for this seed): every run of the
  seed's lottery starts from this file, the large models and the winning tickets bit for bit."""

  def run(workdir: str, done: dict) -> dict:
    from pruning_jax import io  # pylint: disable=import-outside-toplevel

    input_shape, num_classes = _data_shape(_base(config, seed))
    model = build_from_config(config.model, num_classes)
    path = os.path.join(workdir, LOTTERY_INIT)
    if not jax.distributed.is_initialized() or jax.process_index() == 0:
      io.save_pruned(path, model, _fresh_variables(model, input_shape, seed), extra={'seed': seed, 'what': 'init'})
    return {'init': path, 'input_shape': list(input_shape), 'num_classes': num_classes}

  return experiment.Phase(f'seed{seed}/init', run)


def lottery_prune_phase(config, seed: int, lr, round_index: int, trained: str) -> experiment.Phase:
  """Round r: the mask from the weights of phase `trained` (and round r-1's mask), the winning ticket (saved init
  x mask) and, in the last round, the random re-init under the same mask."""
  tag = f'seed{seed}/{lottery_lr_tag(lr)}'
  rounds = int(config.lottery.rounds)

  def run(workdir: str, done: dict) -> dict:
    from pruning_jax import io  # pylint: disable=import-outside-toplevel
    from pruning_jax.methods import lottery, magnitude  # pylint: disable=import-outside-toplevel
    from pruning_jax.task import load_mask  # pylint: disable=import-outside-toplevel

    init = done[f'seed{seed}/init']
    input_shape, num_classes = tuple(init['input_shape']), int(init['num_classes'])
    source = checkpoint.latest_step_dir(done[f'{tag}/{trained}']['workdir'])
    if not source:
      raise UserError(f'phase {tag}/{trained} left no checkpoint to prune')
    model = build_from_config(config.model, num_classes)
    variables = merge_weights(_abstract_variables(model, input_shape), read_weights(source)[1], source)
    previous = None
    if round_index > 1:
      previous = load_mask(done[f'{tag}/prune{round_index - 1}']['mask'], variables['params'])
    structure = config.lottery.structure
    how = float(config.prune.percent) if structure == 'unstructured' else _scheme(config)
    mask, method_report = lottery.next_mask(structure, model, variables, how, previous)
    _, init_vars = io.load_pruned(init['init'])
    ticket = lottery.winning_ticket(init_vars, mask)
    paths = {'mask': os.path.join(workdir, MASK), 'ticket': os.path.join(workdir, TICKET)}
    if round_index == rounds:
      paths['random_init'] = os.path.join(workdir, RANDOM_INIT)
    if not jax.distributed.is_initialized() or jax.process_index() == 0:
      save_mask(paths['mask'], mask)
      io.save_pruned(paths['ticket'], model, ticket, extra={'seed': seed, 'what': 'winning ticket'})
      if 'random_init' in paths:
        fresh = _fresh_variables(model, input_shape, seed, draw=1)
        io.save_pruned(paths['random_init'], model, lottery.random_init(fresh, mask, seed), extra={'seed': seed})
    params_large, macs_large = _counts(model, input_shape)
    masked_out = sum(int(np.sum(np.asarray(m) == 0)) for m in jax.tree_util.tree_leaves(mask))
    _say(
        f'lottery {lottery_lr_tag(lr)} round {round_index}/{rounds} ({structure}): {masked_out:,} of '
        f'{params_large:,} params masked; the ticket is {init["init"]} x this mask'
    )
    return {
        **paths,
        'source': source,
        'round': round_index,
        'params_large': params_large,
        'macs_large': macs_large,
        'params': params_large - masked_out,  # what the mask keeps (an init's BN biases are 0 but not pruned)
        'macs': magnitude.nonzero_macs(model, ticket, input_shape),
        'report': report.jsonable(method_report),
    }

  return experiment.Phase(f'{tag}/prune{round_index}', run)


def lottery_phases(config, seed: int) -> list[experiment.Phase]:
  """Per seed: init; per lr: large (from the init), rounds of prune{r} (+ round{r}: the ticket retrained, before
  the next round), then the winning ticket and the random init trained under the last mask."""
  out = [lottery_init_phase(config, seed)]
  rounds = int(config.lottery.rounds)
  for lr in config.lottery.lrs:
    tag = f'seed{seed}/{lottery_lr_tag(lr)}'

    def init_of(done, s=seed):
      return done[f'seed{s}/init']['init']

    out.append(
        experiment.train_phase(
            f'{tag}/large',
            lambda done, s=seed, lr=lr: _lottery_train_config(config, s, lr, init_of(done), ''),
            PruningTask,
        )
    )
    trained = 'large'
    for r in range(1, rounds + 1):
      out.append(lottery_prune_phase(config, seed, lr, r, trained))
      pruned = f'{tag}/prune{r}'
      runs = [(f'round{r}', 'ticket')] if r < rounds else [('ticket', 'ticket'), ('random', 'random_init')]
      for name, init_key in runs:
        out.append(
            experiment.train_phase(
                f'{tag}/{name}',
                lambda done, s=seed, lr=lr, p=pruned, k=init_key: _lottery_train_config(
                    config, s, lr, done[p][k], done[p]['mask']
                ),
                PruningTask,
            )
        )
      trained = f'round{r}'
  return out


# ----------------------------------------------------------------------------------------------- guided pruning
GUIDED_PATTERN = 'pattern.json'


def guided_architectures(config) -> tuple[str, ...]:
  """Which architectures the guided phase builds: 'guided' from the source runs (this experiment's own prune
  phases and guided.runs_from), 'transferred' from guided.pattern_from, 'uniform' at the params of the first."""
  own = 'prune' in tuple(config.experiment.phases) or bool(tuple(config.guided.runs_from))
  names = (('guided',) if own else ()) + (('transferred',) if config.guided.pattern_from else ())
  return names + (('uniform',) if names and config.guided.uniform else ())


def _guided_runs_from(path: str) -> list:
  """The pruning runs of another experiment's workdir (its finished seed*/prune phases)."""
  import glob  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel

  from pruning_jax.methods import guided  # pylint: disable=import-outside-toplevel

  files = sorted(glob.glob(os.path.join(path, 'seed*', 'prune', 'results.json')))
  if not files:
    raise UserError(f'guided.runs_from: {path} has no finished prune phase (seed*/prune/results.json)')
  runs = []
  for f in files:
    with open(f, encoding='utf-8') as fh:
      r = json.load(fh)
    if r['pruned_model'].get('widths') or r['pruned_model'].get('selections'):
      raise UserError(f'guided.runs_from: {f} is not a cfg-only pruned model (traced widths or channel selections)')
    runs.append(guided.Run(r['large_model']['family'], tuple(r['large_model']['cfg']), tuple(r['pruned_model']['cfg'])))
  return runs


def guided_pattern_from(path: str):
  """The Pattern of guided.pattern_from: a pattern.json, or the workdir of the guided experiment that wrote it."""
  import json  # pylint: disable=import-outside-toplevel

  from pruning_jax.methods import guided  # pylint: disable=import-outside-toplevel

  for candidate in (path, os.path.join(path, 'guided', GUIDED_PATTERN), os.path.join(path, GUIDED_PATTERN)):
    if os.path.isfile(candidate):
      try:
        with open(candidate, encoding='utf-8') as fh:
          return guided.Pattern.from_json(json.load(fh), f'guided.pattern_from {candidate}')
      except (OSError, ValueError) as e:
        raise UserError(f'guided.pattern_from: cannot read {candidate}: {e}') from None
  raise UserError(f'guided.pattern_from: no pattern at {path} (a pattern.json, or a guided experiment dir)')


def _check_guided(config) -> None:
  from pruning_jax.methods import guided  # pylint: disable=import-outside-toplevel

  g = config.get('guided')
  if g is None:
    raise UserError('prune.method=guided needs the config group guided (granularity, runs_from, pattern_from, uniform)')
  if g.granularity not in guided.GRANULARITIES:
    raise UserError(f'guided.granularity must be one of {", ".join(guided.GRANULARITIES)}, got {g.granularity!r}')
  phases = tuple(config.experiment.phases)
  own = 'prune' in phases
  structure = g.get('structure', 'structured')
  if structure not in guided.STRUCTURES:
    raise UserError(f'guided.structure must be one of {", ".join(guided.STRUCTURES)}, got {structure!r}')
  if structure == 'unstructured':
    from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

    magnitude.check_percent(config.prune.percent)
    if g.runs_from or not (own or g.pattern_from):
      raise UserError(
          'guided.structure=unstructured averages its own magnitude runs (the prune phase) or transfers '
          'guided.pattern_from; guided.runs_from is for the structured variant'
      )
    if config.init_from:
      raise UserError('guided pruning trains its source runs and architectures itself: no init_from')
    if g.pattern_from:  # its stages are matched to the target's in the guided phase (tracing needs the data's shape)
      source = guided_pattern_from(g.pattern_from)
      if source.structure != 'unstructured':
        raise UserError(
            f'guided.pattern_from: {g.pattern_from} holds a {source.structure} pattern (channel widths); '
            'guided.structure=unstructured transfers the pattern of a guided sparsification experiment'
        )
    return
  if not own and 'finetune' in phases:
    raise UserError('experiment.phases: finetune needs the prune phase (it fine-tunes the source runs)')
  if not guided_architectures(config):
    raise UserError(
        'guided pruning needs at least 1 source run: experiment.phases has no prune phase, guided.runs_from names no '
        'pruning experiment and guided.pattern_from no pattern'
    )
  if config.init_from:
    raise UserError('guided pruning trains its source runs and architectures itself: no init_from')
  target = build_from_config(config.model, config.model.get('num_classes') or 10)
  family, cfg = models.family_of(target), tuple(models.cfg_of(target))
  runs = [guided.Run(family, cfg, cfg)] if own else []  # a stand-in for the own runs: their family and cfg
  for path in g.runs_from:
    runs += _guided_runs_from(path)
  if runs:  # different families or networks among the runs, or no stage map onto the target: now, not after training
    guided.stage_map(guided.average(runs, g.granularity), family, cfg)
  if g.pattern_from:
    guided.stage_map(guided_pattern_from(g.pattern_from), family, cfg)


def _guided_results(architectures: dict, params_large: int, macs_large: int, input_shape, num_classes: int) -> dict:
  return {
      'architectures': architectures,
      'params_large': params_large,
      'macs_large': macs_large,
      'input_shape': list(input_shape),
      'num_classes': num_classes,
  }


def guided_source_config(config):
  """The config of the guided experiment's own source runs: unstructured magnitude pruning at prune.percent for
  guided.structure=unstructured, else the experiment's (Network Slimming)."""
  if config.guided.get('structure', 'structured') != 'unstructured':
    return config
  c = copy.deepcopy(config)
  c.prune.method = 'magnitude'
  return c


def _guided_sparsity(config, done: dict, workdir: str) -> dict:
  """The guided phase of guided.structure=unstructured: the own runs' masks averaged per stage (or conv) with their
  kernel maps (guided), guided.pattern_from's pattern on this network (transferred), and the uniform mask at the
  first one's non-zero count, each with its mask file and a Scratch-E/B init per seed (the scratch.init of
  unstructured pruning) under WORKDIR/<architecture>/. The masks draw from the first seed: one mask per
  architecture, as one pruned architecture per run."""
  import json  # pylint: disable=import-outside-toplevel

  from core_jax import weights  # pylint: disable=import-outside-toplevel
  from core_jax.weights import flatten, unflatten  # pylint: disable=import-outside-toplevel
  from pruning_jax import io  # pylint: disable=import-outside-toplevel
  from pruning_jax.methods import guided, magnitude  # pylint: disable=import-outside-toplevel
  from pruning_jax.task import load_mask  # pylint: disable=import-outside-toplevel

  g = config.guided
  seeds = [int(s) for s in config.experiment.seeds]
  own = 'prune' in tuple(config.experiment.phases)
  large = done.get(f'seed{seeds[0]}/large')
  if large is not None:
    input_shape, num_classes = tuple(large.get('input_shape') or (1, 32, 32, 3)), int(large['model']['num_classes'])
  else:
    input_shape, num_classes = _data_shape(_base(config, seeds[0]))
  model = build_from_config(config.model, num_classes)
  family, cfg = models.family_of(model), tuple(models.cfg_of(model))
  zeros = _abstract_variables(model, input_shape)
  layout = guided.conv_stages(model, zeros, input_shape)
  flat_zeros = flatten(zeros['params'])
  shapes = {p: flat_zeros[p].shape for _, paths in layout for p in paths}
  patterns, mappings = {}, {}
  if own:
    masks = []
    for s in seeds:
      tree = load_mask(done[f'seed{s}/prune']['mask'], zeros['params'])
      masks.append({p: np.asarray(m) for p, m in flatten(tree).items() if m is not None})
    runs = f'{len(seeds)} run{"s" if len(seeds) > 1 else ""}'
    source = f'magnitude pruning {100 * float(config.prune.percent):g}%, {runs} ({config.data.name})'
    patterns['guided'] = guided.average_density(masks, layout, g.granularity, family, cfg, source=source)
    mappings['guided'] = {name: name for name, _ in layout}
  if g.pattern_from:
    patterns['transferred'] = guided_pattern_from(g.pattern_from)
    mappings['transferred'] = guided.sparse_stage_map(patterns['transferred'], layout, f'{family} {list(cfg)}')
  arch_masks = {}
  for name, pattern in patterns.items():
    # the paper's "kernel-sparsity pattern per layer stage" (its figure: the average 3x3 keep-probability maps of
    # each stage, whose mean is the stage's density) read as both: density per stage and where in the kernel the
    # weights are kept; guided.kernel_maps=False keeps the densities only (positions uniform)
    by_position = guided.conv_position_weights(pattern, layout, shapes, mappings[name]) if g.kernel_maps else None
    densities = guided.conv_densities(pattern, layout, mappings[name])
    arch_masks[name] = guided.sparse_mask(shapes, densities, seeds[0], by_position)
  if g.uniform:
    matched = next(iter(arch_masks))
    total = sum(math.prod(shape) for shape in shapes.values())
    density = sum(float(m.sum()) for m in arch_masks[matched].values()) / total
    arch_masks['uniform'] = guided.sparse_mask(shapes, {p: density for p in shapes}, seeds[0])
  params_large, macs_large = _counts(model, input_shape)
  main_process = not jax.distributed.is_initialized() or jax.process_index() == 0
  architectures = {}
  for name, flat_mask in arch_masks.items():
    arch_dir = os.path.join(workdir, name)
    os.makedirs(arch_dir, exist_ok=True)
    mask = unflatten(flat_mask)
    entry = {'pruned_model': models.describe(model), 'mask': os.path.join(arch_dir, MASK), 'scratch_inits': {}}
    if main_process:
      save_mask(entry['mask'], mask)
    for s in seeds:
      fresh = _scratch_init(config, model, input_shape, s, mask)
      entry['scratch_inits'][str(s)] = os.path.join(arch_dir, f'scratch_init_seed{s}.safetensors')
      if main_process:
        io.save_pruned(entry['scratch_inits'][str(s)], model, fresh, extra={'method': 'guided', 'seed': s})
    kept = sum(int(m.sum()) for m in flat_mask.values())
    params = params_large - (sum(m.size for m in flat_mask.values()) - kept)
    macs = magnitude.nonzero_macs(model, fresh, input_shape)  # a seed's init: non-zero exactly under the mask
    entry.update(_counts_entry(params, macs, params_large, macs_large), kept_weights=kept)
    if name in patterns:
      entry['pattern'] = patterns[name].to_json()
      entry['stage_map'] = mappings[name]
      # the maps the drawn mask has (one draw, pooled per stage like the source's): what the network trains with
      entry['drawn_kernel_maps'] = [m.to_json() for m in guided.average_kernel_maps([flat_mask], layout)]
    else:
      entry['ratio'], entry['matched'] = density, matched
    architectures[name] = entry
    _say(f'{name}: {kept:,} conv weights kept; params {params:,} of {params_large:,}, MACs {macs:,} of {macs_large:,}')
  results = _guided_results(architectures, params_large, macs_large, input_shape, num_classes)
  if own:
    results['pattern_file'] = os.path.join(workdir, GUIDED_PATTERN)
    if main_process:
      text = json.dumps(patterns['guided'].to_json(), indent=1) + '\n'
      weights.write_text_atomic(results['pattern_file'], text)
  return results


def guided_phase(config) -> experiment.Phase:
  """Not training: averages the source runs' kept-width ratios (DIR/guided/pattern.json), builds the guided, the
  transferred and the uniform architectures and counts them."""
  own = 'prune' in tuple(config.experiment.phases)
  seeds = [int(s) for s in config.experiment.seeds]

  def run(workdir: str, done: dict) -> dict:
    import json  # pylint: disable=import-outside-toplevel

    from pruning_jax.methods import guided  # pylint: disable=import-outside-toplevel

    g = config.guided
    if g.get('structure', 'structured') == 'unstructured':
      return _guided_sparsity(config, done, workdir)
    large = done.get(f'seed{seeds[0]}/large')
    if large is not None:
      input_shape, num_classes = tuple(large.get('input_shape') or (1, 32, 32, 3)), int(large['model']['num_classes'])
    else:
      input_shape, num_classes = _data_shape(_base(config, seeds[0]))
    target = build_from_config(config.model, num_classes)
    family, cfg = models.family_of(target), tuple(models.cfg_of(target))
    count = guided.Counter(num_classes, input_shape)
    runs = []
    if own:
      runs += [guided.Run(family, cfg, tuple(small_cfg(done[f'seed{s}/prune']))) for s in seeds]
    for path in g.runs_from:
      runs += _guided_runs_from(path)
    cfgs, patterns = {}, {}
    if runs:
      source = f'Network Slimming {100 * float(config.prune.percent):g}%, {len(runs)} run{"s" if len(runs) > 1 else ""}'
      patterns['guided'] = guided.average(runs, g.granularity, source=f'{source} ({config.data.name})')
      cfgs['guided'] = guided.apply(patterns['guided'], family, cfg)
    if g.pattern_from:
      patterns['transferred'] = guided_pattern_from(g.pattern_from)
      cfgs['transferred'] = guided.apply(patterns['transferred'], family, cfg)
    if g.uniform:
      matched = next(iter(cfgs))
      cfgs['uniform'], ratio = guided.uniform_at_params(family, cfg, count.params(family, cfgs[matched]), count.params)
    params_large, macs_large = count.params(family, cfg), count.macs(family, cfg)
    architectures = {}
    for name, arch in cfgs.items():
      description = {'family': family, 'cfg': list(arch), 'num_classes': num_classes, 'selections': None}
      params, macs = count.params(family, arch), count.macs(family, arch)
      architectures[name] = {'pruned_model': description, **_counts_entry(params, macs, params_large, macs_large)}
      if name in patterns:
        architectures[name]['pattern'] = patterns[name].to_json()
        architectures[name]['stage_map'] = guided.stage_map(patterns[name], family, cfg)
      else:
        architectures[name]['ratio'] = ratio
        architectures[name]['matched'] = matched
      _say(f'{name}: cfg {list(arch)}; params {params:,} of {params_large:,}, MACs {macs:,} of {macs_large:,}')
    results = _guided_results(architectures, params_large, macs_large, input_shape, num_classes)
    if 'guided' in patterns:
      results['pattern_file'] = os.path.join(workdir, GUIDED_PATTERN)
      if not jax.distributed.is_initialized() or jax.process_index() == 0:
        from core_jax import weights  # pylint: disable=import-outside-toplevel

        weights.write_text_atomic(results['pattern_file'], json.dumps(patterns['guided'].to_json(), indent=1) + '\n')
    return results

  return experiment.Phase('guided', run)


def _architecture_of_seed(architecture: dict, seed: int) -> dict:
  """A guided architecture as scratch_config reads it: guided sparsification's masks have one init per seed."""
  if 'scratch_inits' not in architecture:
    return architecture
  return {**architecture, 'scratch_init': architecture['scratch_inits'][str(seed)]}


def guided_phases(config) -> list[experiment.Phase]:
  """The source runs (per seed: large with sparsity training, prune, and the phases asked of their pruned
  architectures), the guided phase, then per seed Scratch-E / Scratch-B of every architecture it built
  (DIR/seed<k>/<architecture>/scratch_e ...)."""
  wanted = tuple(config.experiment.phases)
  seeds = [int(s) for s in config.experiment.seeds]
  source = guided_source_config(config)
  own = [p for s in seeds for p in seed_phases(source, s, wanted)] if 'prune' in wanted else []
  if not own and 'large' in wanted:  # the unpruned model of the table, without source runs of its own
    own = [p for s in seeds for p in seed_phases(source, s, ('large',))]
  out = own + [guided_phase(config)]
  for seed in seeds:
    for name in guided_architectures(config):
      for kind in ('scratch_e', 'scratch_b'):
        if kind in wanted:
          out.append(
              experiment.train_phase(
                  f'seed{seed}/{name}/{kind}',
                  lambda done, s=seed, n=name, k=kind: scratch_config(
                      config, s, _architecture_of_seed(done['guided']['architectures'][n], s), k
                  ),
                  PruningTask,
              )
          )
  return out


# ----------------------------------------------------------------------------------------------- the experiment
def phases_for(config) -> list[experiment.Phase]:
  if config.prune.method == 'lottery':
    return [p for seed in config.experiment.seeds for p in lottery_phases(config, int(seed))]
  if config.prune.method == 'guided':
    return guided_phases(config)
  return [p for seed in config.experiment.seeds for p in seed_phases(config, int(seed), config.experiment.phases)]


def seed_phases(config, seed: int, wanted) -> list[experiment.Phase]:
  """One seed's large / prune / finetune / scratch_e / scratch_b phases (those in `wanted`), in that order."""

  def prune_of(done, s=seed):
    return done[f'seed{s}/prune']

  out = []
  if 'large' in wanted or 'prune' in wanted:
    large_task = SoftFilterTask if config.prune.method == 'sfp' else PruningTask  # SFP: its epoch hook
    out.append(experiment.train_phase(f'seed{seed}/large', lambda done, s=seed: large_config(config, s), large_task))
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


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns the summary (also DIR/results.json, results.md)."""
  check_config(config)
  # no makedirs here: run_experiment makes each phase's folder (and removes it again if the phase's input fails)
  with experiment.compilation_cache(workdir, config.experiment.get('compilation_cache', True)):
    done = experiment.run_experiment(phases_for(config), workdir, config)
  if any('preempted_at_step' in r for r in done.values()):
    return {'preempted': True}
  return report.write(config, done, workdir)
