"""The one training loop every research line runs: `run(config, workdir, task)`.

Reads top to bottom in sections: devices, workdir, data, model and optimizer, state and shardings,
restore-or-init, the jitted steps, eval-only, the loop, and the final report. A line supplies a `Task`
(core_jax.task); nothing here knows about ConvNeXt, pruning or exits.

Optional config fields:
  mixup          ConfigDict(mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing): batch-level
                 Mixup/CutMix (core_jax.data.mixing, timm semantics) inside the jitted train step, keyed by
                 (state.rng, step), so runs are deterministic and resume bitwise. Its soft targets carry the
                 label smoothing (default: config.label_smoothing); the task does not smooth them again.
  init_from      weights file loaded by `Task.load_pretrained` into the initialized params on a fresh start
                 only (never on resume); `init_reinit_head` keeps the freshly initialized head.
  eval_only      evaluate (EMA too when present) and write results.json without training: the weights of
                 `init_from` when given, else the latest checkpoint in the workdir.
"""
import hashlib
import json
import math
import os
import tempfile
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from core_jax import checkpoint as checkpoint_lib
from core_jax import counting
from core_jax.data import mixing, pipeline, sources, transforms
from core_jax import metrics as metrics_lib
from core_jax import optim
from core_jax import parallel
from core_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # None when EMA is off
  rng: jax.Array


class NonFiniteLoss(UserError):
  pass


def _check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable: {e.strerror or e}') from None


def _append_digest(workdir: str, step: int, local_batch: dict) -> None:
  digest = hashlib.sha1(np.ascontiguousarray(local_batch['image']).tobytes()).hexdigest()[:16]
  with open(os.path.join(workdir, f'batch_digests.{jax.process_index()}.txt'), 'a') as f:
    f.write(f'{step} {digest}\n')


def _compile_once_cheaply(fn, out_shardings):
  """jit for functions that run once (init): on CPU, XLA's optimizing backend spends ~20 s on the
  threefry calls of a few dozen initializers; level 0 compiles in ~1 s and runs in milliseconds."""
  lowered = jax.jit(fn, out_shardings=out_shardings).lower()
  if jax.default_backend() == 'cpu':
    return lowered.compile(compiler_options={'xla_backend_optimization_level': 0,
                                             'xla_llvm_disable_expensive_passes': True})
  return lowered.compile()


def _load_pretrained(task, config, state, state_sharding):
  """`config.init_from` weights into `state` (params, and the EMA copy when there is one).

  The optimizer state is kept: it holds no parameter values (zero moments / accumulators)."""
  host = jax.tree.map(lambda x: np.asarray(x) if x.is_fully_addressable
                      else multihost_utils.process_allgather(x, tiled=True), state.params)
  loaded = task.load_pretrained(host, config.init_from, bool(config.get('init_reinit_head', False)))
  put = lambda: jax.tree.map(  # called twice: params and EMA must not share (donated) buffers
      lambda v, t, s: jax.make_array_from_callback(t.shape, s, lambda idx: np.asarray(v, t.dtype)[idx]),
      loaded, state.params, state_sharding.params)
  return state.replace(params=put(), ema_params=put() if state.ema_params is not None else None)


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'results.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(results, f, indent=2)
    os.replace(path + '.tmp', path)


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def run(config, workdir: str, task_cls) -> dict:
  """Trains (or resumes) in `workdir`, evaluates, writes `workdir/results.json`; returns the results."""
  # ------------------------------------------------------------------ devices and workdir
  parallel.initialize_distributed(config)
  _check_workdir(workdir)
  mesh = parallel.make_mesh(config)
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh)
  pidx, pcount = jax.process_index(), jax.process_count()
  writer = metrics_lib.create_writer(os.path.join(workdir, 'tensorboard'))

  # ------------------------------------------------------------------ data
  dcfg = config.data
  train_source, info = sources.load_source(dcfg.name, dcfg.train_split, dcfg.get('data_dir') or None)
  eval_source, _ = sources.load_source(dcfg.name, dcfg.eval_split, dcfg.get('data_dir') or None)
  train_tf = transforms.build_transforms(dcfg.train_transforms)
  eval_tf = transforms.build_transforms(dcfg.eval_transforms)
  steps_per_epoch = len(train_source) // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f'batch_size {config.batch_size} is larger than the {len(train_source)} training examples')
  total_steps = config.num_train_steps if config.get('num_train_steps', -1) > 0 \
      else int(config.num_epochs * steps_per_epoch)
  train_iter = pipeline.make_train_iterator(
      train_source, transforms=train_tf, global_batch_size=config.batch_size, seed=config.seed,
      process_index=pidx, process_count=pcount, worker_count=dcfg.get('worker_count', 0))
  eval_batches = pipeline.make_eval_batches(
      eval_source, transforms=eval_tf, global_batch_size=config.eval_batch_size,
      process_index=pidx, process_count=pcount)
  batch_sharding = parallel.batch_sharding(mesh)

  # ------------------------------------------------------------------ model and optimizer
  task = task_cls(config, info)
  model = task.build_model()
  example = eval_tf(dict(train_source[0]), np.random.default_rng(0))
  init_inputs = task.init_inputs({k: np.asarray(v)[None] for k, v in example.items()})
  tx, schedule = optim.build_optimizer(config.optimizer, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                       params=None, lr_scale_fn=task.lr_scale_fn(),
                                       global_batch_size=config.batch_size)
  ema_decay = config.optimizer.get('ema_decay', 0.0)

  # ------------------------------------------------------------------ state and shardings
  def init_state():
    rng = jax.random.PRNGKey(config.seed)
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({'params': params_rng, 'dropout': dropout_rng}, *init_inputs, train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                      ema_params=params if ema_decay else None, rng=state_rng)

  abstract_state = jax.eval_shape(init_state)
  state_sharding = parallel.state_shardings(mesh, abstract_state)
  num_params = counting.count_params(abstract_state.params)

  # ------------------------------------------------------------------ restore or init
  ckpt_cfg = config.checkpoint
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'), save_every_steps=ckpt_cfg.every_steps, keep=ckpt_cfg.keep,
      best_metric=task.primary_metric if ckpt_cfg.get('keep_best', True) else None,
      best_mode=task.metric_mode, asynchronous=ckpt_cfg.get('asynchronous', True))
  target = flax.serialization.to_state_dict(jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sharding))
  eval_only, init_from = config.get('eval_only', False), config.get('init_from') or None
  restored = None if eval_only and init_from else ckpt.restore_latest(target, train_iter)
  if restored is None:
    if eval_only and not init_from:
      raise UserError(f'eval_only: no checkpoint in {workdir} and no init_from weights to evaluate')
    state = _compile_once_cheaply(init_state, state_sharding)()
    if init_from:
      state = _load_pretrained(task, config, state, state_sharding)
      _say(f'initialized from {init_from}' + (' (head re-initialized)' if config.get('init_reinit_head') else ''))
    _say(f'fresh start in {workdir}: {num_params:,} parameters, {total_steps} steps '
         f'({steps_per_epoch} per epoch), {jax.device_count()} devices on {pcount} process(es)')
  else:
    state = flax.serialization.from_state_dict(abstract_state, restored[0])
    _say(f'resumed from step {int(state.step)} of {total_steps} in {workdir}')

  # ------------------------------------------------------------------ jitted steps
  mix_cfg = config.get('mixup') or None
  if mix_cfg is not None and not info.num_classes:
    raise UserError(f'mixup needs a dataset with a class count; {dcfg.name} has none')

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if mix_cfg is not None:  # own stream (the salt), so the dropout rng is the same with or without mixup
      mix_key = jax.random.fold_in(jax.random.fold_in(state.rng, 0x6d6978), state.step)
      batch = mixing.mixup_cutmix_jax(
          batch, mix_key, mixup_alpha=mix_cfg.mixup_alpha, cutmix_alpha=mix_cfg.cutmix_alpha,
          prob=mix_cfg.get('prob', 1.0), switch_prob=mix_cfg.get('switch_prob', 0.5),
          label_smoothing=mix_cfg.get('label_smoothing', config.get('label_smoothing', 0.0)),
          num_classes=info.num_classes)

    def loss_fn(params):
      variables = {'params': params}
      if state.batch_stats:
        variables['batch_stats'] = state.batch_stats
      return task.train_loss(model, variables, batch, rng)

    (_, (outputs, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema_decay:
      ema = optim.ema_update(ema, params, ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                              batch_stats=new_vars.get('batch_stats', state.batch_stats))
    return new_state, task.train_metrics.single_from_model_output(**outputs)

  def eval_step(params, batch_stats, batch):
    variables = {'params': params}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    return task.eval_metrics.single_from_model_output(**task.eval_outputs(model, variables, batch))

  replicated = parallel.replicated(mesh)
  p_train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  p_eval_step = jax.jit(eval_step, in_shardings=(state_sharding.params, state_sharding.batch_stats,
                                                 batch_sharding), out_shardings=replicated)

  def evaluate(state, with_ema=bool(ema_decay)) -> dict:
    results = {}
    weights = {'': state.params}
    if with_ema:
      weights['ema_'] = state.ema_params
    for prefix, params in weights.items():
      collection = None
      for local in eval_batches:
        m = p_eval_step(params, state.batch_stats, pipeline.to_global(local, batch_sharding))
        collection = m if collection is None else collection.merge(m)
      results.update({prefix + k: v for k, v in metrics_lib.to_floats(collection).items()})
    return results

  # ------------------------------------------------------------------ eval only
  if eval_only:
    source = init_from or f'checkpoint step {int(state.step)}'
    final = evaluate(state, with_ema=bool(ema_decay) and not init_from)  # a file holds one set of weights
    results = {'eval_only': True, 'weights': source, 'step': int(state.step), 'eval': final,
               'num_params': num_params, 'primary_metric': task.primary_metric,
               task.primary_metric: final[task.primary_metric]}
    _write_results(workdir, results)
    ckpt.close()
    writer.close()
    _say(f'eval of {source} on {dcfg.name}:{dcfg.eval_split}: ' + '  '.join(
        f'{k} {v:.4f}' for k, v in final.items() if k.endswith(('accuracy', 'top5', 'loss'))))
    return results

  # ------------------------------------------------------------------ loop
  step = int(state.step)
  log_every = config.log_every_steps
  eval_every = max(1, int(config.get('eval_every_epochs', 1) * steps_per_epoch))
  meta_config = json.loads(config.to_json_best_effort())
  history, train_metrics = [], None
  start_step, t_start = step, time.time()
  while step < total_steps:
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      local_batch = next(train_iter)
      debug = config.get('debug', {})
      if debug.get('step_delay_s', 0):  # tests: keep a run alive long enough to SIGKILL it mid-way
        time.sleep(debug.step_delay_s)
      if debug.get('write_batch_digests', False):  # tests: prove each process's data order
        _append_digest(workdir, step, local_batch)
      batch = pipeline.to_global(local_batch, batch_sharding)
      state, m = p_train_step(state, batch)
    step += 1
    train_metrics = m if train_metrics is None else train_metrics.merge(m)
    is_eval = step % eval_every == 0 or step == total_steps
    is_ckpt = step % ckpt_cfg.every_steps == 0 or step == total_steps
    stop = ckpt.should_stop_for_preemption(step)
    if step % log_every == 0 or is_eval or is_ckpt or stop:
      # Read the loss before any checkpoint so a diverged state is never saved.
      values = metrics_lib.to_floats(train_metrics)
      train_metrics = None
      if not math.isfinite(values['loss']):
        ckpt.wait()
        raise NonFiniteLoss(f'training loss became {values["loss"]} at step {step}; last good checkpoint '
                            f'is step {max(ckpt.all_steps(), default="none")} (lower the learning rate?)')
      now = time.time()
      rate = (step - start_step) / max(now - t_start, 1e-9)
      values['lr'] = float(schedule(step - 1))
      values['steps_per_sec'] = rate
      writer.write_scalars(step, {f'train/{k}': v for k, v in values.items()})
      eta = (total_steps - step) / max(rate, 1e-9)
      _say(f'step {step}/{total_steps}  loss {values["loss"]:.4f}  acc {values["accuracy"]:.4f}  '
           f'lr {values["lr"]:.3g}  {rate * config.batch_size:.0f} img/s  ETA {eta / 60:.1f} min')
    eval_values = None
    if is_eval:
      eval_values = evaluate(state)
      writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_values.items()})
      history.append({'step': step, **eval_values})
      _say(f'eval at step {step}: ' + '  '.join(f'{k} {v:.4f}' for k, v in eval_values.items()))
    if is_ckpt or is_eval or stop:
      ckpt.save(step, flax.serialization.to_state_dict(state), train_iter,
                meta={'step': step, 'metrics': eval_values, 'config': meta_config},
                metrics=eval_values, force=is_eval or stop or step == total_steps)
    if stop:
      ckpt.wait()
      _say(f'preempted: saved step {step}; rerun the same command to resume')
      writer.flush()
      return {'preempted_at_step': step}
  writer.flush()
  ckpt.wait()

  # ------------------------------------------------------------------ final report
  final = evaluate(state) if not history or history[-1]['step'] != step else \
      {k: v for k, v in history[-1].items() if k != 'step'}
  results = {
      'step': step, 'eval': final, 'num_params': num_params,
      'primary_metric': task.primary_metric, task.primary_metric: final[task.primary_metric],
      'history_this_run': history,
      'train_seconds_this_run': time.time() - t_start,
      'devices': jax.device_count(), 'processes': pcount,
  }
  _write_results(workdir, results)
  ckpt.close()
  writer.close()
  _say(f'done: {task.primary_metric} {final[task.primary_metric]:.4f} at step {step}\n'
       f'  results:     {os.path.join(workdir, "results.json")}\n'
       f'  checkpoints: {os.path.join(workdir, "checkpoints")}\n'
       f'  tensorboard: tensorboard --logdir {os.path.join(workdir, "tensorboard")}')
  return results
