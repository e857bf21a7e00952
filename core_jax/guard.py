"""The loss-spike guard: a run whose loss explodes (finite but k times its running median) stops before the
exploding state is checkpointed, and the steps already saved from that trajectory are moved aside.

Why the step before the spike is suspect too: the loss of step t is computed on the parameters after t - 1
updates, i.e. on checkpoint t - 1. At lr 1e8 the loss of step 2 was 5.8e16: checkpoint 1 already held the
diverged parameters (the largest 5e14), so a restart from it died again. So when step t's loss spikes (or is
NaN/inf), every kept step >= t - 1 moves to WORKDIR/checkpoints_superseded/ (kept, not deleted) and the error
offers the last step before them, from which a rerun with `--config.checkpoint.restore_step=N` and a sane
learning rate continues.

Config (`config.guard`, core_jax.config.base_config):
  loss_spike_factor  1000.0; 0 turns the guard off. A step's loss is a spike when it exceeds
                     factor * max(median of the last `window` step losses, the first loss of this run). The floor
                     (the first loss, usually the highest of a healthy run) keeps the noise of a converged run
                     (median 0.01, a hard batch at 0.5) far from the threshold; a blow-up passes it by orders of
                     magnitude.
  window             200 steps of history for the median (this process's steps; a resumed run starts afresh).

Per-step losses are read from the step metrics' 'loss' (a clu Average) only where the loop reads its metrics
anyway (log lines, evals, checkpoints): no extra device synchronization per step.
"""

import collections
import dataclasses
import math

import jax
import numpy as np

from core_jax.errors import UserError

DEFAULTS = dict(loss_spike_factor=1000.0, window=200)


class LossSpike(UserError):
  """The loss exploded (or became NaN/inf) at a step; the states of that trajectory were not kept."""


def check_options(guard_cfg) -> None:
  factor, window = _option(guard_cfg, 'loss_spike_factor'), _option(guard_cfg, 'window')
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (factor == 0 or factor > 1):
    raise UserError(f'guard.loss_spike_factor must be 0 (off) or > 1, got {factor!r}')
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise UserError(f'guard.window must be an integer >= 1, got {window!r}')


def _option(guard_cfg, key):
  value = guard_cfg.get(key, None) if guard_cfg is not None else None
  return DEFAULTS[key] if value is None else value


@dataclasses.dataclass
class Spike:
  step: int  # the step whose loss spiked: computed on the parameters after step - 1 updates
  loss: float
  threshold: float


class LossSpikeGuard:
  """Collects each step's metrics (device values, not read), judges them at `check()`."""

  def __init__(self, guard_cfg=None):
    self.factor = float(_option(guard_cfg, 'loss_spike_factor'))
    self.history = collections.deque(maxlen=int(_option(guard_cfg, 'window')))
    self.first = None
    self.pending = []  # (step, the step's 'loss' metric) not yet judged

  def observe(self, step: int, step_metrics) -> None:
    """`step`: the loop's step count after this update (its loss is of the parameters before it)."""
    loss = getattr(step_metrics, 'loss', None)
    if self.factor and loss is not None and hasattr(loss, 'total') and hasattr(loss, 'count'):
      self.pending.append((step, loss.total, loss.count))

  def check(self) -> Spike | None:
    """The first spike among the steps observed since the last check (None: all fine); one host transfer."""
    if not self.pending:
      return None
    pending, self.pending = self.pending, []
    values = jax.device_get([(total, count) for _, total, count in pending])
    for (step, _, _), (total, count) in zip(pending, values):
      loss = float(np.sum(total)) / max(float(np.sum(count)), 1e-12)
      if not math.isfinite(loss):
        return Spike(step, loss, math.nan)
      if self.first is None:
        self.first = abs(loss)
      threshold = self.factor * max(float(np.median(self.history)) if self.history else 0.0, self.first)
      if threshold > 0 and loss > threshold:
        return Spike(step, loss, threshold)
      self.history.append(loss)
    return None


def stop(spike: Spike, ckpt, workdir: str) -> LossSpike:
  """Moves the kept steps >= spike.step - 1 aside (see the module docstring) and returns the one-line error."""
  ckpt.wait()
  suspect = ckpt.set_aside_later_than(spike.step - 2)
  kept = ckpt.all_steps()
  what = (
      f'training loss became {spike.loss} at step {spike.step}'
      if math.isnan(spike.threshold)
      else f'training loss {spike.loss:.3g} at step {spike.step} exceeds {spike.threshold:.3g} '
      '(guard.loss_spike_factor x its running median)'
  )
  moved = (
      f'; steps {", ".join(map(str, suspect))} of that trajectory moved to {workdir}/checkpoints_superseded'
      if suspect
      else ''
  )
  way_back = (
      f'restart from step {kept[-1]}, the last before the spike, with --config.checkpoint.restore_step={kept[-1]} '
      'and a lower learning rate'
      if kept
      else 'no checkpoint from before it was kept; start again with a lower learning rate'
  )
  return LossSpike(f'{what} (not saved){moved}; {way_back}')
