"""The one training loop every research line runs: `run(config, workdir, task_cls)`.

A line supplies a `Task` (core_jax.task); nothing here knows about ConvNeXt, pruning or exits. The file reads
top to bottom in the order of a run, each part a function a test can call on its own:

  building      `build(config, workdir, task_cls) -> Built`: mesh (`build_mesh`), data (`build_data`), task and
                model, optimizer (`build_optimizer`: the task's pre transforms, the optimizer's chain, the
                task's post transforms), the state's init function, abstract state and shardings
  steps         `train_step(task, model, tx, state, batch, ema_decay=...)` and
                `eval_step(task, model, params, batch_stats, batch)`: pure, the task passed explicitly;
                `compile_steps(built)` jits them (and `Task.on_epoch_end`) over the mesh
  state         `restore_or_init(built, checkpointer)`: resume (latest, or `checkpoint.restore_step`), else
                init, `init_from` weights (`load_pretrained`), then the optimizer state from those weights
  eval only     `evaluate_only`: the `init_from` weights or the workdir's checkpoint, evaluated once into
                WORKDIR/eval/<tag>/ (`eval_tag`), the training run's files read, never written
  the loop      steps, epoch hooks, progress lines, evals, checkpoints (never of a non-finite state),
                preemption, and the final results.json (with `Task.extra_results`)

Generic options and their defaults: core_jax.config.base_config. Nothing is written to the workdir before the
data, the model and `init_from` have loaded (a bad dataset name or weights file leaves no empty folders).
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from core_jax import checkpoint as checkpoint_lib
from core_jax import config as config_lib
from core_jax import counting, guard, optim, parallel, pause_points, run_log, workdir_lock, xla_cache
from core_jax import metrics as metrics_lib
from core_jax import weights as weights_lib
from core_jax.data import ops, pipeline, sources
from core_jax.errors import UserError
from core_jax.task import Task


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # None when EMA is off
  rng: jax.Array


class NonFiniteLoss(UserError):
  """The loss or the parameters became NaN/inf; nothing of that state was saved."""


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


# ============================================================================================ building
@dataclasses.dataclass
class Data:
  info: Any  # sources.DatasetInfo
  train_source: Any
  train_iter: Any  # grain iterator of process-local batches (checkpointed with the state)
  eval_batches: Any  # process-local padded eval batches with a 'mask'
  eval_examples: int  # the eval split's size: every evaluation counts that many unpadded examples, or stops
  example: dict  # one eval-transformed host example with a leading batch axis of 1 (for model.init)
  steps_per_epoch: int
  total_steps: int


@dataclasses.dataclass
class Built:
  """Everything a run needs before it restores or initializes its state."""

  config: Any
  workdir: str
  mesh: Mesh
  data: Data
  task: Task
  model: Any
  tx: optax.GradientTransformation
  schedule: optim.Schedule  # lr(loader step)
  ema_decay: float
  init_fn: Callable[[], TrainState]
  abstract_state: TrainState
  state_sharding: Any
  batch_sharding: Any
  num_params: int


def _check_workdir(workdir: str) -> None:
  """Fails early if `workdir` cannot be written, creating nothing: the folder itself is made by `_make_workdir`
  once the data, the model and the weights have loaded, so bad input leaves no empty folder behind."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'workdir {workdir} is not writable: it is a file, not a directory')
  if os.path.isdir(workdir):
    try:
      with tempfile.NamedTemporaryFile(dir=workdir):
        pass
    except OSError as e:
      raise UserError(f'workdir {workdir} is not writable: {e.strerror or e}') from None
    _check_workdir_entries(workdir)
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):  # the nearest existing ancestor is the folder makedirs will write into
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f'workdir {workdir} is not writable: {parent} is not a directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f'workdir {workdir} is not writable: no write permission in {parent}')


# What a run writes in its workdir, folders and files: another kind of entry under one of these names ended in a
# traceback (a file named checkpoints: orbax's listdir, after the model had compiled; a folder named results.json:
# at the end of the training).
_WORKDIR_FOLDERS = ('checkpoints', checkpoint_lib.CORRUPT_DIR, checkpoint_lib.SUPERSEDED_DIR, 'tensorboard', 'eval')
_WORKDIR_FILES = ('results.json', run_log.LOG_FILE)


def _check_workdir_entries(workdir: str) -> None:
  for name in _WORKDIR_FOLDERS:
    path = os.path.join(workdir, name)
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError(f'{path} is a file where the run keeps a folder: move it out of the workdir')
  for name in _WORKDIR_FILES:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      raise UserError(f'{path} is a folder where the run writes a file: move it out of the workdir')


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable: {e.strerror or e}') from None


def build_mesh(config) -> Mesh:
  """Starts jax.distributed (once per process), builds the mesh and checks the batch sizes against it."""
  parallel.initialize_distributed(config)
  mesh = parallel.make_mesh(config)
  parallel.check_batch_size(config.batch_size, mesh, 'batch_size')
  parallel.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  return mesh


def build_data(config) -> Data:
  dcfg = config.data
  data_dir = dcfg.get('data_dir') or None
  train_source, info = sources.load_source(dcfg.name, dcfg.train_split, data_dir)
  eval_source, _ = sources.load_source(dcfg.name, dcfg.eval_split, data_dir)
  train_tf = ops.build_transforms(dcfg.train_transforms)
  eval_tf = ops.build_transforms(dcfg.eval_transforms)
  steps_per_epoch = len(train_source) // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f'batch_size {config.batch_size} is larger than the {len(train_source)} training examples')
  total_steps = (
      config.num_train_steps if config.get('num_train_steps', -1) > 0 else int(config.num_epochs * steps_per_epoch)
  )
  pidx, pcount = jax.process_index(), jax.process_count()
  train_iter = pipeline.make_train_iterator(
      train_source,
      transforms=train_tf,
      global_batch_size=config.batch_size,
      seed=config.seed,
      process_index=pidx,
      process_count=pcount,
      worker_count=dcfg.get('worker_count', 0),
      # A CPU host makes the records on the main thread while the train step it dispatched runs on XLA's threads
      # (on the same cores grain's reader threads would use); grain's prefetch bookkeeping (a lock per buffered
      # future per record) cost a third on top of making the records: digits at batch 64, 28 -> 20 ms of CPU
      # time per batch. Same records in the same order either way.
      read_options=pipeline.SYNCHRONOUS_READ if jax.default_backend() == 'cpu' else None,
  )
  eval_batches = pipeline.make_eval_batches(
      eval_source,
      transforms=eval_tf,
      global_batch_size=config.eval_batch_size,
      process_index=pidx,
      process_count=pcount,
  )
  example = eval_tf(dict(train_source[0]), np.random.default_rng(0))
  example = {k: np.asarray(v)[None] for k, v in example.items()}
  return Data(
      info=info,
      train_source=train_source,
      train_iter=train_iter,
      eval_batches=eval_batches,
      eval_examples=len(eval_source),
      example=example,
      steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
  )


def build_optimizer(config, task: Task, data: Data) -> tuple[optax.GradientTransformation, Callable]:
  """(tx, schedule): the task's pre transforms, the optimizer's own chain, the task's post transforms."""
  if data.total_steps <= 0:
    raise UserError(
        f'num_epochs {config.num_epochs} at {data.steps_per_epoch} steps per epoch is {data.total_steps} training '
        'steps: ask for at least one (num_epochs or num_train_steps)'
    )
  tx, schedule = optim.build_optimizer(
      config.optimizer,
      steps_per_epoch=data.steps_per_epoch,
      total_steps=data.total_steps,
      params=None,
      lr_scale_fn=task.lr_scale_fn(),
      global_batch_size=config.batch_size,
  )
  own = task.own_optimizer(schedule)
  if own is not None:
    if int(config.optimizer.get('accumulate_steps', 1) or 1) > 1:
      raise UserError(f'{type(task).__name__} updates some parameters itself: optimizer.accumulate_steps must be 1')
    selects, own_tx = own

    def labels(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, _: 'own' if selects(optim.path_to_names(path)) else 'configured', params
      )

    tx = optax.multi_transform({'configured': tx, 'own': own_tx}, labels)
  pre, post = task.optimizer_transforms()
  if pre or post:  # without them the optimizer state keeps the plain chain's layout (older checkpoints load)
    tx = optax.chain(*pre, tx, *post)
  return tx, schedule


def make_init_fn(config, model, tx, init_inputs: tuple, ema_decay: float) -> Callable[[], TrainState]:
  def init_state():
    rng = jax.random.PRNGKey(config.seed)
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({'params': params_rng, 'dropout': dropout_rng}, *init_inputs, train=False)
    params = variables['params']
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        ema_params=params if ema_decay else None,
        rng=state_rng,
    )

  return init_state


def build(config, workdir: str, task_cls) -> Built:
  mesh = build_mesh(config)
  data = build_data(config)
  task = task_cls(config, data.info)
  model = task.build_model()
  tx, schedule = build_optimizer(config, task, data)
  ema_decay = float(config.optimizer.get('ema_decay', 0.0) or 0.0)
  init_fn = make_init_fn(config, model, tx, task.init_inputs(data.example), ema_decay)
  abstract_state = jax.eval_shape(init_fn)
  return Built(
      config=config,
      workdir=workdir,
      mesh=mesh,
      data=data,
      task=task,
      model=model,
      tx=tx,
      schedule=schedule,
      ema_decay=ema_decay,
      init_fn=init_fn,
      abstract_state=abstract_state,
      state_sharding=parallel.state_shardings(mesh, abstract_state),
      batch_sharding=parallel.batch_sharding(mesh),
      num_params=counting.count_params(abstract_state.params),
  )


# ============================================================================================ steps
def _variables(params, batch_stats) -> dict:
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables


def train_step(
    task: Task, model, tx: optax.GradientTransformation, state: TrainState, batch: dict, *, ema_decay: float = 0.0
):
  """One optimizer step on a global batch: (new state, the task's train metrics of this step)."""
  batch = task.prepare_train_batch(batch, state.rng, state.step)
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    return task.train_loss(model, _variables(params, state.batch_stats), batch, rng)

  (_, (outputs, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optim.ema_update(state.ema_params, params, ema_decay) if ema_decay else state.ema_params
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      ema_params=ema,
      batch_stats=new_vars.get('batch_stats', state.batch_stats),
  )
  return new_state, task.train_metrics.single_from_model_output(**outputs)


def eval_step(task: Task, model, params, batch_stats, batch: dict, constants: dict | None = None):
  """The task's eval metrics of one global (padded, masked) batch; `constants`: `task.eval_constants()`."""
  variables = _variables(params, batch_stats)
  if constants:
    variables['constants'] = constants
  return task.eval_metrics.single_from_model_output(**task.eval_outputs(model, variables, batch))


def _all_finite(trees) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(trees) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.bool_(True)


@dataclasses.dataclass
class Steps:
  train: Callable  # (state, global batch) -> (state, train metrics); donates the state
  eval: Callable  # (params, batch_stats, global batch, task.eval_constants()) -> eval metrics
  epoch_end: Callable | None  # (state, completed epochs) -> state; None when the task has no hook
  finite: Callable  # (params, batch_stats) -> bool: every float finite (_finite_check)


def compile_steps(b: Built) -> Steps:
  replicated = parallel.replicated(b.mesh)
  ss = b.state_sharding
  # `xla_compiler_options` (a config may set it): XLA options of the train and eval steps, e.g. the embedded
  # anytime job's {'xla_backend_optimization_level': 1}, which compiles its step in 3/4 of the time, runs as fast
  xla_options = dict(b.config.get('xla_compiler_options', None) or {}) or None

  # The lr schedule's numbers are an input of the step, not constants in it (optim.Schedule): runs that differ
  # only in them (a pruning experiment's fine-tune and scratch phases) lower to one program and compile it once
  # through the persistent compilation cache.
  def train_with_schedule(state, batch, schedule_numbers):
    with b.schedule.traced(schedule_numbers):
      return train_step(b.task, b.model, b.tx, state, batch, ema_decay=b.ema_decay)

  train_jit = jax.jit(
      train_with_schedule,
      in_shardings=(ss, b.batch_sharding, replicated),
      out_shardings=(ss, replicated),
      donate_argnums=(0,),
      compiler_options=xla_options,
  )
  schedule_numbers = jax.device_put(b.schedule.numbers, replicated)
  train = functools.partial(_train_with_numbers, train_jit, schedule_numbers)
  evaluate_ = jax.jit(
      functools.partial(eval_step, b.task, b.model),
      in_shardings=(ss.params, ss.batch_stats, b.batch_sharding, replicated),
      out_shardings=replicated,
      compiler_options=xla_options,
  )
  epoch_end = None
  if type(b.task).on_epoch_end is not Task.on_epoch_end:
    epoch_end = jax.jit(b.task.on_epoch_end, in_shardings=(ss, replicated), out_shardings=ss, donate_argnums=(0,))
  return Steps(train=train, eval=evaluate_, epoch_end=epoch_end, finite=_finite_check(replicated))


def _finite_check(replicated) -> Callable:
  """(params, batch_stats) -> whether every float in them is finite, checked before each checkpoint.

  On a CPU host whose arrays are all local, numpy reads them where they lie: no program to compile (about 1 s of
  CPU per model even at XLA's cheapest options, for a check that runs in milliseconds). Elsewhere a jitted
  reduction, so a GPU's or a multi-process state is not copied to one host for it."""
  reduction = jax.jit(
      lambda p, s: _all_finite((p, s)), out_shardings=replicated, compiler_options=cheap_compiler_options()
  )

  def finite(params, batch_stats) -> bool:
    leaves = jax.tree.leaves((params, batch_stats))
    if jax.default_backend() == 'cpu' and all(x.is_fully_addressable for x in leaves):
      return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact))
    return bool(reduction(params, batch_stats))

  return finite


def _train_with_numbers(train_jit, schedule_numbers, state, batch):
  return train_jit(state, batch, schedule_numbers)


class CompiledAhead:
  """A jitted step whose program for one argument signature is compiled on a worker thread from the moment this
  is made, ahead of its first call: XLA compiles a program on one core, so on a CPU host the eval step compiles
  while the main thread compiles and runs the train step, instead of after the last step. A call with arguments
  of that signature (tree, shapes, dtypes) waits for the program and runs it; any other call goes to the jit.
  A compile error is raised at the first such call, as the jit would raise it there."""

  def __init__(self, jitted: Callable, *args):
    self._jitted = jitted
    self._signature = _signature(args)
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='compile_ahead')
    self._compiled = executor.submit(lambda: jitted.lower(*specs).compile())
    executor.shutdown(wait=False)  # the one task still runs; the thread ends with it

  def __call__(self, *args):
    if _signature(args) == self._signature:
      return self._compiled.result()(*args)
    return self._jitted(*args)


def _signature(args) -> tuple:
  leaves, tree = jax.tree.flatten(args)
  return tree, tuple((tuple(x.shape), jnp.dtype(x.dtype), bool(getattr(x, 'weak_type', False))) for x in leaves)


def compile_eval_ahead(b: Built, steps: Steps, state: TrainState) -> Steps:
  """`steps` whose eval step compiles on a worker thread now (`CompiledAhead`), for the signature `evaluate`
  calls it with: the state's params and batch_stats, the first eval batch, the task's eval constants."""
  batch = pipeline.to_global(next(iter(b.data.eval_batches)), b.batch_sharding)
  constants = jax.tree.map(jnp.asarray, b.task.eval_constants())
  return dataclasses.replace(steps, eval=CompiledAhead(steps.eval, state.params, state.batch_stats, batch, constants))


def evaluate(b: Built, steps: Steps, state: TrainState, with_ema: bool) -> dict[str, float]:
  """The task's eval metrics over the eval split, flattened (metrics.to_floats); EMA ones prefixed 'ema_'.

  The examples evaluated (unpadded, summed over processes) are counted: any number but the split's size stops the
  run, so a metric is never computed over part of the split."""
  results = {}
  weights = {'': state.params}
  if with_ema:
    weights['ema_'] = state.ema_params
  constants = jax.tree.map(jnp.asarray, b.task.eval_constants())
  for prefix, params in weights.items():
    collection, local_examples = None, 0
    for local in b.data.eval_batches:
      local_examples += int(np.count_nonzero(local['mask']))
      m = steps.eval(params, state.batch_stats, pipeline.to_global(local, b.batch_sharding), constants)
      collection = m if collection is None else collection.merge(m)
    examples = _sum_over_processes(local_examples)
    if examples != b.data.eval_examples:
      raise RuntimeError(f'evaluated {examples} examples of the {b.data.eval_examples} in the eval split')
    results.update({prefix + k: v for k, v in metrics_lib.to_floats(collection).items()})
  return results


def _sum_over_processes(count: int) -> int:
  if jax.process_count() == 1:
    return count
  return int(np.sum(multihost_utils.process_allgather(np.asarray(count, np.int64))))


# ============================================================================================ state
def cheap_compiler_options() -> dict | None:
  """XLA options for programs whose run time is negligible: on CPU, no LLVM optimization, and the classic
  elementwise emitters instead of the fusion (MLIR) emitters, which compile an initializer's many small threefry
  fusions in about half the time (ConvNeXt digits' init 1.1 s instead of 2.1 s of CPU, ADP-C digit_scenes' 3.7 s
  instead of 4.8 s; the same values to the bit)."""
  if jax.default_backend() == 'cpu':
    return {
        'xla_backend_optimization_level': 0,
        'xla_llvm_disable_expensive_passes': True,
        'xla_cpu_use_fusion_emitters': False,
    }
  return None


def _compile_once_cheaply(fn, out_shardings):
  """jit for functions that run once (init): on CPU, XLA's optimizing backend spends many seconds on the
  threefry calls of a few dozen initializers; level 0 compiles them quickly and they run in milliseconds."""
  return jax.jit(fn, out_shardings=out_shardings).lower().compile(compiler_options=cheap_compiler_options())


def _to_host(tree):
  return jax.tree.map(
      lambda x: np.asarray(x) if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True), tree
  )


def _tree_mismatch(name: str, got, want) -> str | None:
  """None when `got` has `want`'s keys and shapes, else what differs first (one line)."""
  got_leaves = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  want_leaves = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  key = lambda p: jax.tree_util.keystr(p)
  missing = sorted(key(p) for p in want_leaves.keys() - got_leaves.keys())
  extra = sorted(key(p) for p in got_leaves.keys() - want_leaves.keys())
  if missing or extra:
    return f'{name} of another structure (missing {missing[:3]}, unexpected {extra[:3]})'
  for p, w in want_leaves.items():
    if tuple(np.shape(got_leaves[p])) != tuple(w.shape):
      return f'{name}{key(p)} of shape {tuple(np.shape(got_leaves[p]))}; the model has {tuple(w.shape)}'
  return None


def _check_same_tree(name: str, got, want) -> None:
  mismatch = _tree_mismatch(name, got, want)
  if mismatch:
    raise UserError(f'load_pretrained returned {mismatch}')


def _zeros_state(b: Built) -> TrainState:
  """The state's layout on its devices with every leaf zero, for weights loaded whole (no init compiled)."""
  return jax.tree.map(
      lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: np.zeros(a.shape, a.dtype)[idx]),
      b.abstract_state,
      b.state_sharding,
  )


def _put_weights(b: Built, state: TrainState, params, batch_stats, ema_params=None) -> TrainState:
  """Host weights (numpy trees of the state's shapes) onto the devices in the state's shardings: params, their
  EMA copy (`ema_params` when given, else the params) and batch_stats."""

  def put(values, like, shardings):  # a fresh device copy each call: params and EMA must not share buffers
    return jax.tree.map(
        lambda v, t, s: jax.make_array_from_callback(t.shape, s, lambda idx: np.asarray(v, t.dtype)[idx]),
        values,
        like,
        shardings,
    )

  ss = b.state_sharding
  ema = params if ema_params is None else ema_params
  return state.replace(
      params=put(params, state.params, ss.params),
      ema_params=put(ema, state.params, ss.params) if state.ema_params is not None else None,
      batch_stats=put(batch_stats or {}, state.batch_stats, ss.batch_stats),
  )


def load_pretrained(b: Built, state: TrainState) -> TrainState:
  """`config.init_from` weights into `state` through `Task.load_pretrained` (params, EMA copy, batch_stats).

  The optimizer state is not touched here: `restore_or_init` rebuilds it from the loaded params."""
  variables = {'params': _to_host(state.params), 'batch_stats': _to_host(state.batch_stats)}
  loaded = b.task.load_pretrained(variables, b.config.init_from, bool(b.config.get('init_reinit_head', False)))
  for name in ('params', 'batch_stats'):
    _check_same_tree(name, loaded.get(name, {}), getattr(state, name))
  return _put_weights(b, state, loaded['params'], loaded.get('batch_stats', {}))


# Options whose change on resume would make the checkpoint's run another run: a different data order, other
# examples per step, another model or optimizer state. A resume that changes one stops (checkpoint.
# allow_config_change=True resumes anyway); any other changed option (a lower lr after a loss spike, more epochs,
# other devices or compute choices) is named on the "resumed" line. Options that never change a run are ignored.
RESUME_FIXED = (
    'seed',
    'batch_size',
    'data.name',
    'data.train_split',
    'data.train_transforms',
    'optimizer.name',
    'optimizer.accumulate_steps',
)
RESUME_FIXED_GROUPS = ('model.',)
RESUME_IGNORED = ('init_from', 'init_reinit_head', 'eval_only', 'checkpoint.', 'debug.', 'distributed.', 'mesh.')


def config_changes(config, saved: dict, ignored: tuple[str, ...], keys_in_both: bool = False) -> dict[str, tuple]:
  """{option: (then, now)} of the options, as dotted keys, whose value differs between `config` and the `saved`
  one, except those starting with one of `ignored`; an option only one side has reads '(unset)' on the other
  (`keys_in_both`: such options are left out: a default the code added or dropped since)."""
  now = weights_lib.flatten(json.loads(config.to_json_best_effort()), sep='.')
  then = weights_lib.flatten(saved, sep='.')
  keys = set(now) & set(then) if keys_in_both else set(now) | set(then)
  return {
      k: (then.get(k, '(unset)'), now.get(k, '(unset)'))
      for k in sorted(keys)
      if now.get(k) != then.get(k) and not k.startswith(ignored)
  }


def changes_text(changes: dict[str, tuple], limit: int | None = None) -> str:
  """'key then -> now, ...' of `config_changes`' result, its first `limit` and how many more."""
  names = list(changes)[:limit]
  text = ', '.join(f'{k} {changes[k][0]!r} -> {changes[k][1]!r}' for k in names)
  return text + (f' and {len(changes) - len(names)} more' if len(changes) > len(names) else '')


def resume_config_changes(config, saved: dict | None, workdir: str, step: int) -> str:
  """'' or the text naming the options that changed since the checkpoint's run (its meta keeps that run's config);
  UserError when one of them fixes the run (RESUME_FIXED...), unless checkpoint.allow_config_change."""
  if not saved:  # a checkpoint written before the meta kept the config: nothing to compare
    return ''
  changes = config_changes(config, saved, RESUME_IGNORED)
  if not changes:
    return ''
  fixed = {k: v for k, v in changes.items() if k in RESUME_FIXED or k.startswith(RESUME_FIXED_GROUPS)}
  if fixed and not config.checkpoint.get('allow_config_change', False):
    raise UserError(
        f'{workdir} holds step {step} of another run: {changes_text(fixed, 4)} since its checkpoints were '
        'written; use a new workdir, or resume anyway with --config.checkpoint.allow_config_change=True'
    )
  return 'changed options: ' + changes_text(changes)


def restore_or_init(b: Built, ckpt: checkpoint_lib.Checkpointer) -> tuple[TrainState, int | None]:
  """(state, restored_from_step): the checkpoint to resume, else a fresh init with `init_from` weights.

  `checkpoint.restore_step=N` resumes kept step N and moves later steps to checkpoints_superseded/ (a rerun of
  the same command then resumes this new branch, not N again); `restored_from_step` is N for such a branch
  (recorded in the checkpoints' meta), else None."""
  config, ckpt_cfg = b.config, b.config.checkpoint
  init_from = config.get('init_from') or None
  restore_step = int(ckpt_cfg.get('restore_step', -1))
  target = flax.serialization.to_state_dict(
      jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), b.abstract_state, b.state_sharding)
  )
  it = b.data.train_iter
  restored, lineage = None, None
  steps = ckpt.all_steps()
  first_try = restore_step if restore_step in steps else (steps[-1] if steps else None)
  if first_try is not None:  # another model's checkpoint: name the change, not the first array that differs
    resume_config_changes(config, (ckpt.read_meta(first_try) or {}).get('config'), b.workdir, first_try)
  if restore_step >= 0:
    lineage = restore_step
    later = [s for s in steps if s > restore_step]
    if later and (ckpt.read_meta(later[-1]) or {}).get('restored_from_step') == restore_step:
      restored = ckpt.restore_latest(target, it)
      _say(f'checkpoint.restore_step={restore_step} was applied by an earlier run; resuming from its latest step')
    else:
      restored = ckpt.restore_step(restore_step, target, it)
      if later:
        ckpt.set_aside_later_than(restore_step)
        _say(
            f'restarting from step {restore_step}: moved later steps {", ".join(map(str, later))} to '
            f'{os.path.join(b.workdir, checkpoint_lib.SUPERSEDED_DIR)}'
        )
  else:
    restored = ckpt.restore_latest(target, it, allow_fresh_start=bool(ckpt_cfg.get('allow_fresh_start', False)))
    if restored is not None:
      lineage = (restored[1] or {}).get('restored_from_step')
  spe, total = b.data.steps_per_epoch, b.data.total_steps
  if restored is not None:
    state = flax.serialization.from_state_dict(b.abstract_state, restored[0])
    changed = resume_config_changes(config, (restored[1] or {}).get('config'), b.workdir, int(state.step))
    _say(f'resumed from step {int(state.step)} of {total} in {b.workdir}' + (f' with {changed}' if changed else ''))
    return state, lineage
  state = _compile_once_cheaply(b.init_fn, b.state_sharding)()
  if init_from:
    state = load_pretrained(b, state)
    # Optimizer state (incl. the task's masks) derives from the weights the run trains from.
    opt_init = jax.jit(b.tx.init, in_shardings=(b.state_sharding.params,), out_shardings=b.state_sharding.opt_state)
    state = state.replace(opt_state=opt_init(state.params))
    _say(f'initialized from {init_from}' + (' (head re-initialized)' if config.get('init_reinit_head') else ''))
  _say(
      f'fresh start in {b.workdir}: {b.num_params:,} parameters, {total} steps ({spe} per epoch), '
      f'{jax.device_count()} devices on {jax.process_count()} process(es)'
  )
  return state, None


# ============================================================================================ reporting
def _jsonable(x):
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f'{type(x).__name__} is not JSON serializable')


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'results.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(results, f, indent=2, default=_jsonable)
    os.replace(path + '.tmp', path)


def _primary(task: Task, values: dict) -> float:
  if task.primary_metric not in values:
    raise UserError(
        f'{type(task).__name__}.primary_metric {task.primary_metric!r} is not an eval metric '
        f'(have: {", ".join(values)})'
    )
  return values[task.primary_metric]


def _scalars_text(values: dict, keys=None) -> str:
  """`k v` pairs for a console line; per-class entries ('iou/7') stay in TensorBoard and results.json."""
  keys = [k for k in values if not k.rsplit('/', 1)[-1].isdigit()] if keys is None else keys
  return '  '.join(f'{k} {values[k]:.4f}' for k in keys)


def _progress_keys(task: Task, values: dict) -> tuple[str, ...] | None:
  if task.progress_metrics is None:
    return None
  unknown = [k for k in task.progress_metrics if k not in values]
  if unknown:
    raise UserError(
        f'{type(task).__name__}.progress_metrics names {unknown}, not train metrics ' f'(have: {", ".join(values)})'
    )
  return tuple(task.progress_metrics)


def _append_digest(workdir: str, step: int, inputs) -> None:
  digest = hashlib.sha1(np.ascontiguousarray(inputs).tobytes()).hexdigest()[:16]
  with open(os.path.join(workdir, f'batch_digests.{jax.process_index()}.txt'), 'a') as f:
    f.write(f'{step} {digest}\n')


def _diverged(what: str, step: int, ckpt: checkpoint_lib.Checkpointer) -> NonFiniteLoss:
  ckpt.wait()
  kept = ckpt.all_steps()
  way_back = (
      (
          f'kept checkpoints: steps {", ".join(map(str, kept))}; restart from one with '
          f'--config.checkpoint.restore_step=N (e.g. with a lower learning rate)'
      )
      if kept
      else 'no checkpoint was kept; start again with a lower learning rate'
  )
  return NonFiniteLoss(f'{what} at step {step} (not saved); {way_back}')


# ============================================================================================ the run
def run(config, workdir: str, task_cls) -> dict:
  """Trains (or resumes) in `workdir`, evaluates, writes `workdir/results.json`; returns the results.

  With `eval_only` it evaluates instead (`evaluate_only`): results in WORKDIR/eval/<tag>/, never over a training
  run's results.json, the workdir's checkpoints read but never touched."""
  optim.check_config(config)  # a phase's derived config too (the command line's was checked by cli.run_main)
  config_lib.check_run_options(config)
  guard.check_options(config.get('guard', None))
  if config.get('eval_only', False):
    return evaluate_only(config, workdir, task_cls)
  _check_workdir(workdir)
  b = build(config, workdir, task_cls)
  # one process per workdir (core_jax.workdir_lock): an existing workdir is locked now, before the restore may
  # move steps aside; a fresh one as it is made. Process 0 holds it for a multi-process job.
  lock = workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0)
  lock.acquire()
  ckpt_cfg = config.checkpoint
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'),
      save_every_steps=ckpt_cfg.every_steps,
      keep=ckpt_cfg.keep,
      best_metric=b.task.primary_metric if ckpt_cfg.get('keep_best', True) else None,
      best_mode=b.task.metric_mode,
      asynchronous=ckpt_cfg.get('asynchronous', True),
  )
  try:
    state, lineage = restore_or_init(b, ckpt)
    _make_workdir(workdir)  # data, model and weights have loaded: the first thing this run writes
    lock.acquire()
    xla_cache.start_compilation_cache()  # an experiment's WORKDIR/xla_cache, likewise only now
    steps = compile_steps(b)
    return _train(b, steps, ckpt, state, lineage)
  finally:
    ckpt.close()
    lock.release()


# ============================================================================================ eval only
EVAL_DIR = 'eval'


def eval_step_dir(config, workdir: str) -> str | None:
  """The checkpoint step an eval-only run evaluates: None when it evaluates `init_from`, else WORKDIR's
  `checkpoint.restore_step` or its latest step. Reads the folder listing only (creates and moves nothing)."""
  if config.get('init_from'):
    return None
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  restore = int(config.checkpoint.get('restore_step', -1))
  if restore < 0:
    step_dir = checkpoint_lib.latest_step_dir(workdir)
    if step_dir is None:
      raise UserError(f'eval_only: no checkpoint in {workdir} and no init_from weights to evaluate')
    return step_dir
  step_dir = os.path.join(directory, str(restore))
  if not os.path.isdir(os.path.join(step_dir, 'state')):
    kept = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    raise UserError(
        f'eval_only: checkpoint.restore_step={restore}: no such step in {directory} '
        f'(kept steps: {", ".join(map(str, kept)) or "none"})'
    )
  return step_dir


def eval_tag(task: Task, step_dir: str | None, weights: str | None, trained_dtype: str = 'float32') -> str:
  """The name of an eval-only run's folder under WORKDIR/eval/: what it evaluates (`step<N>` of the workdir's
  checkpoints, `weights-<file name>` of init_from), then `Task.eval_tag()` when the task evaluates one set of
  weights several ways (ADP-C: `tau0.99`), then the compute dtype when it is not the one the weights were trained
  in (`trained_dtype`: the step's run config; float32 for a weights file), as another dtype gives other numbers (an
  evaluation in bfloat16 overwrote the float32 one of the same weights), while a recipe evaluated as it trained
  (ImageNet's bfloat16) keeps the plain name; e.g. step496-tau0.99, weights-hrnet_w48-dense, step1000,
  step1000-bfloat16."""
  if step_dir is not None:
    what = f'step{os.path.basename(step_dir)}'
  else:
    path = os.path.normpath(os.path.abspath(weights))
    name = os.path.basename(path)
    if name.isdigit() and os.path.basename(os.path.dirname(path)) == 'checkpoints':  # a step dir of another run
      name = f'{os.path.basename(os.path.dirname(os.path.dirname(path)))}-step{name}'
    for ext in ('.safetensors', '.msgpack', '.pth', '.pt', '.bin', '.npz'):
      if name.endswith(ext):
        name = name[: -len(ext)]
        break
    what = 'weights-' + (''.join(ch if ch.isalnum() or ch in '._-' else '_' for ch in name) or 'file')
  dtype = str((task.config.get('compute_dtype', None) if task.config is not None else None) or 'float32')
  return '-'.join(part for part in (what, task.eval_tag(), '' if dtype == str(trained_dtype) else dtype) if part)


def _load_step(b: Built, step_dir: str) -> tuple[TrainState, bool, str]:
  """(a state with the weights of one of the workdir's checkpoint steps, whether it holds their EMA copy, the
  compute dtype the step was trained in).

  A step of this very model configuration is loaded as it is, EMA included, into a state of zeros: every weight
  an evaluation reads comes from the step, so no initializer is compiled or run. Any other (e.g. an ADP-C model
  evaluated without confidence adaptivity, whose checkpoint has masked convs the dense model lacks) goes through
  `Task.load_pretrained`, which knows how the line's weights fit a fresh init of another of its configurations."""
  ckpt = checkpoint_lib.read_training_checkpoint(step_dir)
  trained_dtype = str(((ckpt['meta'] or {}).get('config') or {}).get('compute_dtype') or 'float32')
  loaded = {'params': ckpt['params'], 'batch_stats': ckpt['batch_stats'] or {}}
  like = b.abstract_state
  if _tree_mismatch('params', loaded['params'], like.params) or _tree_mismatch(
      'batch_stats', loaded['batch_stats'], like.batch_stats
  ):
    state = _compile_once_cheaply(b.init_fn, b.state_sharding)()
    variables = {'params': _to_host(state.params), 'batch_stats': _to_host(state.batch_stats)}
    loaded = b.task.load_pretrained(variables, step_dir, False)
    for name in ('params', 'batch_stats'):
      _check_same_tree(name, loaded.get(name, {}), getattr(state, name))
    return _put_weights(b, state, loaded['params'], loaded.get('batch_stats', {})), False, trained_dtype
  state = _zeros_state(b)
  ema = ckpt['ema_params']
  with_ema = ema is not None and state.ema_params is not None and not _tree_mismatch('ema_params', ema, state.params)
  state = _put_weights(b, state, loaded['params'], loaded['batch_stats'], ema if with_ema else None)
  step = int((ckpt['meta'] or {}).get('step', os.path.basename(step_dir)))
  return state.replace(step=jnp.asarray(step, jnp.int32)), with_ema, trained_dtype


def evaluate_only(config, workdir: str, task_cls) -> dict:
  """Evaluates `init_from` (a file, a step dir or workdir of another run), else WORKDIR's checkpoint (latest, or
  `checkpoint.restore_step`), and writes WORKDIR/eval/<tag>/results.json and its TensorBoard scalars (`eval_tag`).

  The training run's results.json and checkpoints are never written: the step is read from its files (no
  checkpoint manager is opened, so nothing is cleaned up, moved or created there). The results carry
  'eval_dir', where they were written."""
  step_dir = eval_step_dir(config, workdir)  # bad input before any data or device work
  init_from = config.get('init_from') or None
  _check_workdir(workdir)
  b = build(config, workdir, task_cls)
  if step_dir is not None:
    _say(f'evaluating step {os.path.basename(step_dir)} of {os.path.abspath(workdir)}')
    state, with_ema, trained_dtype = _load_step(b, step_dir)
    source = step_dir
  else:
    _say(f'evaluating weights {init_from}')
    state = _compile_once_cheaply(b.init_fn, b.state_sharding)()  # a file's weights may keep some fresh ones
    state, with_ema = load_pretrained(b, state), False  # a file holds one set of weights
    source, trained_dtype = init_from, 'float32'
  eval_dir = os.path.join(os.path.abspath(workdir), EVAL_DIR, eval_tag(b.task, step_dir, init_from, trained_dtype))
  _make_workdir(eval_dir)  # data, model and weights have loaded: the first thing this run writes
  xla_cache.start_compilation_cache()  # an experiment's WORKDIR/xla_cache, likewise only now
  steps = compile_steps(b)
  final = evaluate(b, steps, state, with_ema=with_ema and bool(b.ema_decay))
  step = int(state.step)
  results = {
      'eval_only': True,
      'weights': source,
      'step': step,
      'eval': final,
      'eval_examples': b.data.eval_examples,  # evaluate() counted exactly these: no example was skipped
      'num_params': b.num_params,
      'primary_metric': b.task.primary_metric,
      b.task.primary_metric: _primary(b.task, final),
      'eval_dir': eval_dir,
      **b.task.extra_results(state),
  }
  _write_results(eval_dir, results)
  writer = metrics_lib.create_writer(os.path.join(eval_dir, 'tensorboard'))
  writer.write_scalars(step, {f'eval/{k}': v for k, v in final.items()})
  writer.close()
  dcfg = b.config.data
  _say(
      f'eval of {source} on {dcfg.name}:{dcfg.eval_split}: {_scalars_text(final)}\n'
      f'  results:     {os.path.join(eval_dir, "results.json")}'
  )
  return results


def _train(b: Built, steps: Steps, ckpt: checkpoint_lib.Checkpointer, state: TrainState, lineage: int | None) -> dict:
  config, task, workdir = b.config, b.task, b.workdir
  total_steps, spe = b.data.total_steps, b.data.steps_per_epoch
  writer = metrics_lib.create_writer(os.path.join(workdir, 'tensorboard'))
  step = int(state.step)
  log_every = config.log_every_steps
  eval_every = max(1, int(config.get('eval_every_epochs', 1) * spe))
  every_steps = config.checkpoint.every_steps
  debug = config.get('debug', {})
  meta_config = json.loads(config.to_json_best_effort())
  history, train_metrics = [], None
  spike_guard = guard.LossSpikeGuard(config.get('guard', None))
  start_step, t_start = step, time.time()
  if config.get('compile_eval_ahead', False) and step < total_steps:
    steps = compile_eval_ahead(b, steps, state)
  pause_points.reach('train:before_first_step')  # fault tests: started (lock, tensorboard) but nothing saved
  while step < total_steps:
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      local_batch = next(b.data.train_iter)
      if debug.get('step_delay_s', 0):  # tests: keep a run alive long enough to signal it mid-way
        time.sleep(debug.step_delay_s)
      if debug.get('write_batch_digests', False):  # tests: prove each process's data order
        _append_digest(workdir, step, local_batch[task.input_key])
      state, m = steps.train(state, pipeline.to_global(local_batch, b.batch_sharding))
    step += 1
    spike_guard.observe(step, m)
    train_metrics = m if train_metrics is None else train_metrics.merge(m)
    if steps.epoch_end is not None and step % spe == 0:
      state = steps.epoch_end(state, np.int32(step // spe))
    is_eval = step % eval_every == 0 or step == total_steps
    is_ckpt = step % every_steps == 0 or step == total_steps
    stop = ckpt.should_stop_for_preemption(step)
    if step % log_every == 0 or is_eval or is_ckpt or stop:
      # Read the loss before any checkpoint so a diverged state is never saved.
      spike = spike_guard.check()
      if spike is not None:
        raise guard.stop(spike, ckpt, workdir)
      values = metrics_lib.to_floats(train_metrics)
      train_metrics = None
      watched = {k: v for k, v in values.items() if k == 'loss'} or values
      bad = {k: v for k, v in watched.items() if not math.isfinite(v)}
      if bad:
        raise _diverged(f'training {" and ".join(bad)} became {list(bad.values())[0]}', step, ckpt)
      keys = _progress_keys(task, values)
      now = time.time()
      rate = (step - start_step) / max(now - t_start, 1e-9)
      lr = float(b.schedule(step - 1))
      writer.write_scalars(
          step, {**{f'train/{k}': v for k, v in values.items()}, 'train/lr': lr, 'train/steps_per_sec': rate}
      )
      eta = (total_steps - step) / max(rate, 1e-9)
      _say(
          f'step {step}/{total_steps}  {_scalars_text(values, keys)}  lr {lr:.3g}  {rate:.2f} steps/s  '
          f'{rate * config.batch_size:.0f} examples/s  ETA {eta / 60:.1f} min'
      )
    eval_values = None
    if is_eval:
      eval_values = evaluate(b, steps, state, with_ema=bool(b.ema_decay))
      _primary(task, eval_values)
      writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_values.items()})
      history.append({'step': step, **eval_values})
      _say(f'eval at step {step}: {_scalars_text(eval_values)}')
    if is_ckpt or is_eval or stop:
      if not bool(steps.finite(state.params, state.batch_stats)):
        raise _diverged('parameters became non-finite', step, ckpt)
      meta = {'step': step, 'metrics': eval_values, 'config': meta_config}
      if lineage is not None:
        meta['restored_from_step'] = lineage
      ckpt.save(
          step,
          flax.serialization.to_state_dict(state),
          b.data.train_iter,
          meta=meta,
          metrics=eval_values,
          force=is_eval or stop or step == total_steps,
      )
    if stop:
      ckpt.wait()
      _say(f'{ckpt.stop_reason}: saved step {step}; rerun the same command to resume')
      writer.close()
      return {'preempted_at_step': step}
  writer.flush()
  ckpt.wait()

  final = (
      evaluate(b, steps, state, with_ema=bool(b.ema_decay))
      if not history or history[-1]['step'] != step
      else {k: v for k, v in history[-1].items() if k != 'step'}
  )
  results = {
      'step': step,
      'eval': final,
      'eval_examples': b.data.eval_examples,  # evaluate() counted exactly these: no example was skipped
      'num_params': b.num_params,
      'primary_metric': task.primary_metric,
      task.primary_metric: _primary(task, final),
      'history_this_run': history,
      'train_seconds_this_run': time.time() - t_start,
      'devices': jax.device_count(),
      'processes': jax.process_count(),
      **task.extra_results(state),
  }
  _write_results(workdir, results)
  writer.close()
  _say(
      f'done: {task.primary_metric} {results[task.primary_metric]:.4f} at step {step}\n'
      f'  results:     {os.path.join(workdir, "results.json")}\n'
      f'  checkpoints: {os.path.join(workdir, "checkpoints")}\n'
      f'  tensorboard: tensorboard --logdir {os.path.join(workdir, "tensorboard")}'
  )
  return results
