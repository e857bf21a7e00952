"""The base config every line config extends: every option the shared loop reads, with its default.

A line config starts from it and sets what its recipe needs:

  c = base_config()
  c.model.name = 'convnext_tiny'
  c.optimizer.update(name='adamw', lr=4e-3)

so every generic option (`--config.init_from=...`, `--config.checkpoint.restore_step=N`, ...) is accepted by
every config on the command line. Groups and fields (read by core_jax.train unless noted):

  seed                  PRNG seed of init, dropout and the data order
  batch_size            global train batch (all devices, all processes)
  eval_batch_size       global eval batch
  num_epochs            training length in epochs (float)
  num_train_steps       > 0 overrides num_epochs
  log_every_steps       progress line and TensorBoard train scalars every N steps
  eval_every_epochs     eval (and a checkpoint) every N epochs (float); always at the end
  compute_dtype         activation and conv / matmul dtype of every line's model: float32 or bfloat16 (params,
                        losses and BatchNorm statistics stay float32; core_jax.compute.compute_dtype)
  compute               the compute policy (core_jax.compute): patch_conv, small_conv, pointwise_conv,
                        channel_multiple, fusion_barriers, dwconv, masked_conv, dense_grad, masked_dense_above,
                        patch_max_by_channels, dense_entry;
                        'auto' / None: the line's choice for the running backend; a choice the line's models
                        cannot honour is an error
  xla_compiler_options  (not in the base; a config may add it) XLA compile options of the train and eval steps,
                        e.g. {'xla_backend_optimization_level': 1} (core_jax.train.compile_steps)
  compile_eval_ahead    (not in the base; a config may add it) True: a training run compiles its eval step on a
                        worker thread from before the first train step (core_jax.train.CompiledAhead), on a CPU
                        host beside the train step's compile, instead of after the last step
  init_from             weights file loaded by `Task.load_pretrained` on a fresh start only (never on resume)
  init_reinit_head      keep the freshly initialized classifier instead of the file's
  eval_only             evaluate without training: the weights of `init_from` when given, else the workdir's
                        checkpoint (latest, or `checkpoint.restore_step`), into WORKDIR/eval/<tag>/results.json
                        (core_jax.train.evaluate_only; the training's results and checkpoints are not touched)
  checkpoint            every_steps, keep (last N), keep_best (plus the best by the task's primary metric),
                        asynchronous (write in the background), restore_step (-1: latest; N: resume from
                        kept step N, later steps are moved to checkpoints_superseded/), allow_fresh_start
                        (start over when every checkpoint of the workdir is unreadable; default: stop),
                        allow_config_change (resume although the seed, batch size, data, model or optimizer kind
                        differ from the checkpoint's run; default: stop, core_jax.train.resume_config_changes)
  mesh                  fsdp: devices per parameter shard (1: parameters replicated)
  distributed           coordinator_address, num_processes, process_id (-1: from the environment), auto
                        (let JAX discover a TPU pod / SLURM job)
  guard                 loss_spike_factor (1000; 0 = off), window: stop before a state whose loss exploded is
                        saved, and move the steps of that trajectory aside (core_jax.guard)
  debug                 test-only knobs, off by default: step_delay_s (sleep per step, so a test can signal
                        a run mid-way; same numerics), write_batch_digests (append each step's batch digest
                        to WORKDIR/batch_digests.<process>.txt, to prove the data order)
  data                  name, data_dir, train_split, eval_split, worker_count, train_transforms,
                        eval_transforms (core_jax.data)
  optimizer             core_jax.optim.build_optimizer fields (its DEFAULTS fill what is not set here)
  model                 the line's model fields (name, ...)

A config file that builds on a sibling file of its folder (a recipe shared by several configs) loads it with
`load_sibling(__file__, 'in1k.py')`: config folders are not packages, so a plain import would not find it.
"""

import importlib.util
import os
import types

import ml_collections
from ml_collections import config_dict

from core_jax.errors import UserError


def load_sibling(config_file: str, name: str) -> types.ModuleType:
  """Imports the file `name` from the folder of `config_file` (a config's `__file__`) and returns the module."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  module_name = '_config_' + os.path.splitext(os.path.basename(path))[0] + f'_{abs(hash(path))}'
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(
        f'{os.path.basename(config_file)} builds on {name}, which is not in {os.path.dirname(path)}'
    )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_epochs = 1.0
  c.num_train_steps = -1
  c.log_every_steps = 100
  c.eval_every_epochs = 1.0
  c.compute_dtype = 'float32'
  c.compute = ml_collections.ConfigDict(
      dict(
          patch_conv='auto',
          small_conv='auto',
          pointwise_conv='auto',
          channel_multiple=config_dict.placeholder(int),
          fusion_barriers=config_dict.placeholder(bool),
          dwconv='auto',
          masked_conv='auto',
          dense_grad='auto',
          masked_dense_above=config_dict.placeholder(tuple),
          patch_max_by_channels=config_dict.placeholder(tuple),
          dense_entry=config_dict.placeholder(tuple),
      )
  )
  c.init_from = ''
  c.init_reinit_head = False
  c.eval_only = False
  c.checkpoint = ml_collections.ConfigDict(
      dict(
          every_steps=1000,
          keep=3,
          keep_best=True,
          asynchronous=True,
          restore_step=-1,
          allow_fresh_start=False,
          allow_config_change=False,
      )
  )
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  c.distributed = ml_collections.ConfigDict(dict(coordinator_address='', num_processes=0, process_id=-1, auto=False))
  c.debug = ml_collections.ConfigDict(dict(step_delay_s=0.0, write_batch_digests=False))
  c.guard = ml_collections.ConfigDict(dict(loss_spike_factor=1000.0, window=200))
  c.data = ml_collections.ConfigDict(
      dict(
          name='',
          data_dir=None,
          train_split='train',
          eval_split='test',
          worker_count=0,
          train_transforms=(),
          eval_transforms=(),
      )
  )
  c.optimizer = ml_collections.ConfigDict(
      dict(
          name='sgd',
          lr=0.1,
          weight_decay=0.0,
          schedule='cosine',
          warmup_epochs=0.0,
          grad_clip_norm=0.0,
          ema_decay=0.0,
          accumulate_steps=1,
      )
  )
  c.model = ml_collections.ConfigDict(dict(name=''))
  return c


# (key, smallest value, what it counts): the loop's own options that divide or seed something, so a value below
# the smallest is a traceback deep in the loop (a modulo by zero, grain's seed check) or a run that keeps nothing.
_AT_LEAST = (
    ('seed', 0, 'a non-negative integer'),
    ('log_every_steps', 1, 'steps'),
    ('checkpoint.every_steps', 1, 'steps'),
    ('checkpoint.keep', 1, 'checkpoints (0 would keep none to resume from)'),
    ('mesh.fsdp', 1, 'devices per parameter shard'),
)


# (key, smallest value, what it means): options whose -1 means unset; below it (or num_train_steps 0) the run went
# on as if unset, without a word.
_UNSET_OR_AT_LEAST = (
    ('num_train_steps', 1, 'a number of steps >= 1, or -1 for num_epochs to decide'),
    ('checkpoint.restore_step', 0, 'a kept step >= 0, or -1 for the latest'),
)
_MISSING = object()


def _option(config, key: str):
  """The value at the dotted `key`, or _MISSING where the config lacks it."""
  group, _, leaf = key.rpartition('.')
  node = config.get(group) if group else config
  return _MISSING if node is None or leaf not in node else node[leaf]


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_run_options(config) -> None:
  """One-line UserErrors for the loop's own options (base_config) that no run can use; keys a config lacks are
  skipped. Called by every line's command line before its job starts and by each run (a phase's derived config)."""
  for key, least, what in _AT_LEAST:
    value = _option(config, key)
    if value is not _MISSING and (not _is_int(value) or value < least):
      raise UserError(f'{key} must be an integer >= {least} ({what}), got {value!r}')
  for key, least, what in _UNSET_OR_AT_LEAST:
    value = _option(config, key)
    if value is not _MISSING and (not _is_int(value) or (value != -1 and value < least)):
      raise UserError(f'{key} must be {what}, got {value!r}')
  every = config.get('eval_every_epochs', 1.0)
  if not every > 0:
    raise UserError(f'eval_every_epochs must be > 0, got {every!r}')
