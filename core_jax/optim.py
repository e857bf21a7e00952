"""Optax optimizers and learning-rate schedules built from an `ml_collections.ConfigDict`.

Config fields (`opt_cfg`; defaults in `DEFAULTS`):
  name            'sgd' | 'adamw'                                       (required)
  lr              peak / base learning rate                             (required)
  base_batch_size reference batch for linear lr scaling (0/None = no scaling; see `scaled_lr`)
  momentum        sgd momentum, 0.9 (0 = plain SGD)
  nesterov        sgd Nesterov momentum, False
  b1, b2, eps     adamw, 0.9 / 0.999 / 1e-8
  weight_decay    0.0. sgd: classic L2 coupled into the gradient (PyTorch `SGD(weight_decay=)`:
                  g += wd * p before momentum). adamw: decoupled (PyTorch `AdamW`:
                  p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)).
  wd_exclude_1d   True: no decay on parameters with ndim <= 1 (biases, norm scales, layer-scale gammas).
  grad_clip_norm  0.0 = off; otherwise clip the global gradient norm (before weight decay is added).
  ema_decay       0.0 = off. Not part of the optax chain: the train loop keeps an EMA copy and calls
                  `ema_update` after every optimizer update.
  accumulate_steps 1; k > 1 wraps the chain in `optax.MultiSteps` (update every k micro-batches with the
                  mean gradient).
  schedule        'cosine' | 'step' | 'poly' | 'constant', default 'cosine'
  warmup_epochs   0; linear warmup from `warmup_init_lr` (0.0) reaching `lr` exactly at the last warmup step
  min_lr          0.0; end value of 'cosine' and 'poly'
  decay_epochs    () milestones (absolute epochs, counted from step 0) for 'step'
  decay_fractions () milestones for 'step' as fractions of `total_steps` (e.g. (0.5, 0.75)), so a scaled
                  budget (Scratch-B) scales them too; exclusive with decay_epochs
  decay_factor    0.1 for 'step'
  decay_factors   () or one factor per milestone (sorted by milestone) for 'step', instead of decay_factor at
                  every milestone: lr = lr * the factors of the milestones passed (soft filter pruning's CIFAR
                  schedule: lr 0.01, factors (10, 0.2, 0.2, 0.2) at epochs (1, 60, 120, 160))
  poly_power      0.9 for 'poly'

Step units: `steps_per_epoch` and `total_steps` count data-loader steps (micro-batches). Without
accumulation that is one optimizer update per step. With `accumulate_steps = k` the optimizer updates every
k steps and update number u (0-based) uses `schedule_fn(u * k)`, i.e. the returned `schedule_fn` is always
indexed by the loader step, which is what the train loop should log.

Chain order (one optimizer update):
  1. clip_by_global_norm(grad_clip_norm)                         [if > 0]
  2. sgd:   add_decayed_weights(wd, mask) -> trace(momentum, nesterov) -> * -schedule(t)
     adamw: scale_by_adam -> add_decayed_weights(wd, mask)          -> * -schedule(t)
  3. per-parameter lr scale: updates[leaf] *= lr_scale_fn(path, leaf)   [if lr_scale_fn]
Because (3) comes last it multiplies the entire step, including the weight-decay term, which equals a
per-parameter-group learning rate in PyTorch (timm / BEiT layer-wise lr decay).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core_jax.errors import UserError

DEFAULTS = dict(
    base_batch_size=0,
    momentum=0.9,
    nesterov=False,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    wd_exclude_1d=True,
    grad_clip_norm=0.0,
    ema_decay=0.0,
    accumulate_steps=1,
    schedule='cosine',
    warmup_epochs=0,
    warmup_init_lr=0.0,
    min_lr=0.0,
    decay_epochs=(),
    decay_fractions=(),
    decay_factor=0.1,
    decay_factors=(),
    poly_power=0.9,
)
OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'step', 'poly', 'constant')

LrScaleFn = Callable[[tuple, Any], float]


def _get(cfg, key):
  value = cfg.get(key, None) if hasattr(cfg, 'get') else getattr(cfg, key, None)
  if value is None:
    if key not in DEFAULTS:
      raise UserError(f'optimizer config is missing required field {key!r}')
    return DEFAULTS[key]
  return value


def _number(opt_cfg, key) -> float:
  value = _get(opt_cfg, key)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise UserError(f'optimizer.{key} must be a finite number, got {value!r}')
  return float(value)


def check_options(opt_cfg, *, num_epochs: float | None = None, num_train_steps: int | None = None) -> None:
  """Raises a one-line UserError for optimizer options that cannot be meant, before anything is built or run.

  The rules (each names the key): `name` and `schedule` known; lr > 0; weight_decay, grad_clip_norm, min_lr,
  warmup_init_lr, base_batch_size, warmup_epochs >= 0; momentum, b1, b2, ema_decay in [0, 1); eps, decay_factor,
  poly_power > 0; accumulate_steps an integer >= 1; min_lr and warmup_init_lr <= lr; decay milestones >= 0.
  With the run's length (`num_epochs`, unless `num_train_steps` > 0 sets it): num_epochs >= 0 and warmup within it
  (a milestone beyond the end is allowed: a shortened run simply never reaches it). A negative lr would otherwise
  train by gradient ascent and exit 0."""
  name = _get(opt_cfg, 'name')
  if name not in OPTIMIZERS:
    raise UserError(f'unknown optimizer {name!r} (expected one of {", ".join(OPTIMIZERS)})')
  kind = _get(opt_cfg, 'schedule')
  if kind not in SCHEDULES:
    raise UserError(f'unknown lr schedule {kind!r} (expected one of {", ".join(SCHEDULES)})')
  lr = _number(opt_cfg, 'lr')
  if lr <= 0:
    raise UserError(f'optimizer.lr must be > 0, got {lr:g}')
  for key in ('weight_decay', 'grad_clip_norm', 'min_lr', 'warmup_init_lr', 'base_batch_size', 'warmup_epochs'):
    if _number(opt_cfg, key) < 0:
      raise UserError(f'optimizer.{key} must be >= 0, got {_number(opt_cfg, key):g}')
  for key in ('momentum', 'b1', 'b2', 'ema_decay'):
    if not 0.0 <= _number(opt_cfg, key) < 1.0:
      raise UserError(f'optimizer.{key} must lie in [0, 1), got {_number(opt_cfg, key):g}')
  for key in ('eps', 'decay_factor', 'poly_power'):
    if _number(opt_cfg, key) <= 0:
      raise UserError(f'optimizer.{key} must be > 0, got {_number(opt_cfg, key):g}')
  k = _get(opt_cfg, 'accumulate_steps')
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise UserError(f'optimizer.accumulate_steps must be an integer >= 1, got {k!r}')
  for key in ('min_lr', 'warmup_init_lr'):
    if _number(opt_cfg, key) > lr:
      raise UserError(f'optimizer.{key} ({_number(opt_cfg, key):g}) must not exceed optimizer.lr ({lr:g})')
  if name == 'sgd' and bool(_get(opt_cfg, 'nesterov')) and _number(opt_cfg, 'momentum') <= 0:
    raise UserError('sgd: nesterov=True needs momentum > 0')
  milestones = tuple(_get(opt_cfg, 'decay_epochs'))
  if any(float(e) < 0 for e in milestones):
    raise UserError(f'optimizer.decay_epochs must be >= 0, got {milestones}')
  if num_train_steps is not None and num_train_steps > 0:
    return  # the length is in steps: warmup is checked against it once steps_per_epoch is known (make_schedule)
  if num_epochs is None:
    return
  epochs = float(num_epochs)
  if not math.isfinite(epochs) or epochs < 0:
    raise UserError(f'num_epochs must be >= 0, got {num_epochs!r}')
  warmup = _number(opt_cfg, 'warmup_epochs')
  if epochs > 0 and warmup > epochs:
    raise UserError(f'optimizer.warmup_epochs ({warmup:g}) exceeds num_epochs ({epochs:g})')


def check_config(config) -> None:
  """`check_options` on a run config (base_config layout): its optimizer group and its length."""
  if 'optimizer' not in config:
    return
  check_options(config.optimizer, num_epochs=config.get('num_epochs'), num_train_steps=config.get('num_train_steps'))


def scaled_lr(opt_cfg, global_batch_size: int | None = None) -> float:
  """Peak lr: `lr`, linearly scaled by effective_batch / base_batch_size when both are given.

  `global_batch_size` is the batch of one loader step summed over all devices; the effective batch per
  optimizer update is global_batch_size * accumulate_steps.
  """
  lr = float(_get(opt_cfg, 'lr'))
  base = _get(opt_cfg, 'base_batch_size')
  if base and global_batch_size:
    lr *= global_batch_size * int(_get(opt_cfg, 'accumulate_steps')) / float(base)
  return lr


def _epochs_to_steps(epochs, steps_per_epoch: int) -> int:
  return int(round(float(epochs) * steps_per_epoch))


def make_schedule(opt_cfg, *, steps_per_epoch: int, total_steps: int, peak_lr: float | None = None) -> Schedule:
  """lr(step) as a jit-able function of the (loader) step; see the module docstring for the fields.

  warmup (t < W): init + (peak - init) * t / W
  cosine:  w = 0.5 * (1 + cos(pi * min(t - W, T) / T)), lr = peak * w + min_lr * (1 - w), T = total - W
  poly:    w = (1 - min(t - W, T) / T) ** power,        lr = peak * w + min_lr * (1 - w)
  step:    peak * decay_factor ** #{milestones m : t >= m}, m = round(e * steps_per_epoch) for decay_epochs
           or round(f * total_steps) for decay_fractions
  constant: peak
  so lr(W) == peak and lr(total_steps) == min_lr exactly (the convex form keeps both endpoints exact).
  """
  kind = _get(opt_cfg, 'schedule')
  if kind not in SCHEDULES:
    raise UserError(f'unknown lr schedule {kind!r} (expected one of {", ".join(SCHEDULES)})')
  if steps_per_epoch <= 0 or total_steps <= 0:
    raise UserError(f'steps_per_epoch ({steps_per_epoch}) and total_steps ({total_steps}) must be positive')
  peak = float(_get(opt_cfg, 'lr')) if peak_lr is None else float(peak_lr)
  init = float(_get(opt_cfg, 'warmup_init_lr'))
  end = float(_get(opt_cfg, 'min_lr'))
  warmup = _epochs_to_steps(_get(opt_cfg, 'warmup_epochs'), steps_per_epoch)
  if warmup < 0 or warmup > total_steps:
    raise UserError(f'warmup ({warmup} steps) must lie within [0, total_steps={total_steps}]')
  decay_steps = max(total_steps - warmup, 1)

  milestones, factor, factors = [], 1.0, []
  if kind == 'step':
    epochs, fractions = tuple(_get(opt_cfg, 'decay_epochs')), tuple(_get(opt_cfg, 'decay_fractions'))
    if epochs and fractions:
      raise UserError(f'step schedule: give decay_epochs {epochs} or decay_fractions {fractions}, not both')
    bad = [f for f in fractions if not 0.0 <= float(f) <= 1.0]
    if bad:
      raise UserError(f'step schedule: decay_fractions must lie in [0, 1], got {bad}')
    milestones = sorted(
        [_epochs_to_steps(e, steps_per_epoch) for e in epochs] + [int(round(float(f) * total_steps)) for f in fractions]
    )
    factor = float(_get(opt_cfg, 'decay_factor'))
    factors = [float(f) for f in _get(opt_cfg, 'decay_factors')]
    if factors and (len(factors) != len(milestones) or not all(f > 0 and math.isfinite(f) for f in factors)):
      raise UserError(
          f'step schedule: decay_factors {tuple(factors)} must be {len(milestones)} positive factors, one per milestone'
      )
    if factors:  # the lr after passing milestones[0..i]: the running product of their factors
      passed_lr = [peak * math.prod(factors[: i + 1]) for i in range(len(factors))]
  power = float(_get(opt_cfg, 'poly_power'))

  if kind in ('step', 'constant') and warmup == 0:
    return _step_schedule(peak, milestones if kind == 'step' else [], factor, passed_lr if factors else None)

  def main(t):  # t: float32 loader step >= warmup
    # remaining fraction r = 1 - (t - W) / T, computed from integers so it is exact near the end;
    # 0.5 * (1 + cos(pi * (1 - r))) == sin(pi * r / 2) ** 2 keeps float32 relative accuracy near min_lr.
    r = jnp.clip((warmup + decay_steps - t) / decay_steps, 0.0, 1.0)
    if kind == 'cosine':
      w = jnp.sin(0.5 * jnp.pi * r) ** 2
      return peak * w + end * (1.0 - w)
    if kind == 'poly':
      w = r**power
      return peak * w + end * (1.0 - w)
    if kind == 'step':
      if not milestones:
        return jnp.full_like(t, peak)
      passed = jnp.sum(t[..., None] >= jnp.asarray(milestones, jnp.float32), axis=-1)
      if factors:
        return jnp.asarray([peak, *passed_lr], jnp.float32)[passed]
      return peak * jnp.asarray(factor, jnp.float32) ** passed
    return jnp.full_like(t, peak)

  def schedule(numbers, step):
    del numbers  # every number is a constant of the program: see Schedule
    t = jnp.asarray(step, jnp.float32)
    lr = main(t)
    if warmup > 0:
      lr = jnp.where(t < warmup, init + (peak - init) * t / warmup, lr)
    return lr

  return Schedule({}, schedule)


MILESTONE_SLOTS = 4  # 'step' / 'constant' schedules with up to this many milestones share one form


def _step_schedule(peak: float, milestones: list[int], factor: float, passed_lr: list[float] | None) -> Schedule:
  """A 'step' schedule without warmup ('constant': no milestone) whose numbers are inputs (Schedule.traced).

  'constant' is the 'step' form with no milestone passed (peak * factor ** 0 == peak), and unused milestone slots
  hold inf (never passed), so a constant-lr fine-tune and the step-schedule scratch phases of one model lower to
  one program. The numbers are the float32 values the constants were: the lr values are the same to the bit."""
  slots = max(MILESTONE_SLOTS, len(milestones))
  numbers = dict(peak=np.float32(peak), milestones=np.full(slots, np.inf, np.float32))
  numbers['milestones'][: len(milestones)] = milestones
  if passed_lr is not None:  # the lr after passing milestones[0..i]; unused slots repeat the last (never indexed)
    lrs = [peak, *passed_lr]
    numbers['passed_lr'] = np.asarray(lrs + [lrs[-1]] * (slots + 1 - len(lrs)), np.float32)
  else:
    numbers['factor'] = np.float32(factor)

  def schedule(n, step):
    t = jnp.asarray(step, jnp.float32)
    passed = jnp.sum(t[..., None] >= jnp.asarray(n['milestones']), axis=-1)
    if passed_lr is not None:
      return jnp.asarray(n['passed_lr'])[passed]
    return n['peak'] * jnp.asarray(n['factor']) ** passed

  return Schedule(numbers, schedule)


class Schedule:
  """lr(step), a jit-able function of the loader step (make_schedule) whose numbers can be inputs of a program.

  `schedule(step)` computes with `numbers` (float32 arrays) as constants. While a thread traces a program under
  `with schedule.traced(numbers):` (`numbers` being that program's argument), calls in that thread compute with
  those traced values instead: the program holds the schedule's form (its kind, how many milestones), not its
  numbers. So train steps of runs
  that differ only in lr, milestones or length (a pruning experiment's fine-tune, Scratch-E and Scratch-B of one
  pruned model) lower to one program, and the persistent compilation cache compiles it once.

  Only 'step' and 'constant' schedules without warmup have numbers (`_step_schedule`); the others keep every
  number a constant (`numbers` is empty): XLA folds the warmup ramp's constant arithmetic into other float32
  operations than the traced ones, so with traced numbers their lr would differ in the last bit."""

  def __init__(self, numbers: dict, fn: Callable[[dict, Any], jax.Array]):
    self.numbers = numbers
    self._fn = fn
    self._traced = threading.local()

  @contextlib.contextmanager
  def traced(self, numbers: dict):
    previous = getattr(self._traced, 'numbers', None)
    self._traced.numbers = numbers
    try:
      yield
    finally:
      self._traced.numbers = previous

  def __call__(self, step) -> jax.Array:
    numbers = getattr(self._traced, 'numbers', None)
    return self._fn(self.numbers if numbers is None else numbers, step)


def path_to_names(path) -> tuple[str, ...]:
  """A jax key path as a tuple of strings, e.g. ('stages_0', 'block_1', 'dwconv', 'kernel')."""
  out = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def weight_decay_mask(params, exclude_1d: bool = True):
  """Pytree of bools like `params`: True where weight decay applies (ndim > 1 when `exclude_1d`)."""
  return jax.tree.map(lambda p: (jnp.ndim(p) > 1) if exclude_1d else True, params)


def lr_scale_tree(params, lr_scale_fn: LrScaleFn):
  """Pytree of python floats: lr_scale_fn(path_names, leaf) for every leaf of `params`."""
  return jax.tree_util.tree_map_with_path(lambda p, x: float(lr_scale_fn(path_to_names(p), x)), params)


def layerwise_lr_decay_scale(num_layers: int, decay: float, layer_id_fn: Callable[[tuple], int]) -> LrScaleFn:
  """BEiT / ConvNeXt layer-wise lr decay: scale = decay ** (num_layers + 1 - layer_id_fn(path)).

  `layer_id_fn(path_names)` returns 0 for the stem/embedding, 1..num_layers for the blocks and
  num_layers + 1 for the head (scale 1).
  """

  def fn(path, leaf):
    del leaf
    return float(decay) ** (num_layers + 1 - int(layer_id_fn(path)))

  return fn


def scale_by_lr_scale_fn(lr_scale_fn: LrScaleFn) -> optax.GradientTransformation:
  """Multiplies each leaf's update by lr_scale_fn(path, leaf); scales are static python floats."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params

    def scale(path, u):
      s = float(lr_scale_fn(path_to_names(path), u))
      return u if s == 1.0 else u * jnp.asarray(s, u.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def build_optimizer(
    opt_cfg,
    *,
    steps_per_epoch: int,
    total_steps: int,
    params,
    lr_scale_fn: LrScaleFn | None = None,
    global_batch_size: int | None = None,
) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
  """(optax transformation, schedule_fn) for `opt_cfg`; see the module docstring.

  `params` (arrays or ShapeDtypeStructs) is used to validate the weight-decay mask and `lr_scale_fn`
  eagerly; the transformation itself recomputes both from the tree it is given, so dict/FrozenDict
  containers need not match. `global_batch_size` enables `base_batch_size` lr scaling (`scaled_lr`).
  `schedule_fn(loader_step)` is the base lr (before per-parameter scales).
  """
  name = _get(opt_cfg, 'name')
  if name not in OPTIMIZERS:
    raise UserError(f'unknown optimizer {name!r} (expected one of {", ".join(OPTIMIZERS)})')
  peak = scaled_lr(opt_cfg, global_batch_size)
  schedule = make_schedule(opt_cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps, peak_lr=peak)
  k = int(_get(opt_cfg, 'accumulate_steps'))
  if k < 1:
    raise UserError(f'accumulate_steps must be >= 1, got {k}')
  # The inner optimizer's step counter counts updates; map update u to loader step u * k.
  inner_schedule = schedule if k == 1 else (lambda u: schedule(u * k))

  wd = float(_get(opt_cfg, 'weight_decay'))
  exclude_1d = bool(_get(opt_cfg, 'wd_exclude_1d'))
  mask_fn = lambda p: weight_decay_mask(p, exclude_1d)
  mask_fn(params)
  if lr_scale_fn is not None:
    bad = {n: s for n, s in zip(*_flat_names(lr_scale_tree(params, lr_scale_fn))) if not (s >= 0 and math.isfinite(s))}
    if bad:
      raise UserError(f'lr_scale_fn returned invalid scales: {bad}')

  parts = []
  clip = float(_get(opt_cfg, 'grad_clip_norm'))
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if name == 'sgd':
    momentum = float(_get(opt_cfg, 'momentum'))
    nesterov = bool(_get(opt_cfg, 'nesterov'))
    if nesterov and momentum <= 0:
      raise UserError('sgd: nesterov=True needs momentum > 0')
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask_fn))
    parts.append(optax.sgd(inner_schedule, momentum=momentum or None, nesterov=nesterov))
  else:
    parts.append(
        optax.adamw(
            inner_schedule,
            b1=float(_get(opt_cfg, 'b1')),
            b2=float(_get(opt_cfg, 'b2')),
            eps=float(_get(opt_cfg, 'eps')),
            weight_decay=wd,
            mask=mask_fn,
        )
    )
  if lr_scale_fn is not None:
    parts.append(scale_by_lr_scale_fn(lr_scale_fn))
  tx = optax.chain(*parts)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx, schedule


def _flat_names(tree):
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return ['/'.join(path_to_names(p)) for p, _ in leaves], [v for _, v in leaves]


def ema_update(ema_params, params, decay):
  """One EMA step: ema <- decay * ema + (1 - decay) * params (leafwise; keeps ema's dtypes).

  Pure; call it after each optimizer update. The EMA is initialised to a copy of the parameters
  (`ema_init`), as timm's ModelEma used by ConvNeXt does, so there is no bias correction. `decay` may be a
  python float or a traced scalar (e.g. to switch the EMA on after some step, pass decay=0 before it).
  Works on any pytree, e.g. params and batch_stats together.
  """

  def upd(e, p):
    d = jnp.asarray(decay, jnp.float32)
    return (d * e.astype(jnp.float32) + (1.0 - d) * p.astype(jnp.float32)).astype(e.dtype)

  return jax.tree.map(upd, ema_params, params)


def ema_init(params):
  """Initial EMA state: a copy of `params`."""
  return jax.tree.map(jnp.array, params)
