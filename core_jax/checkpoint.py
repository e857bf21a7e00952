"""Checkpoints: one orbax `CheckpointManager` behind a small class, so a move to orbax v1 touches one file.

A checkpoint step directory holds three items committed atomically together:
  state  the TrainState pytree (params, batch_stats, opt_state, ema_params, step, rng)
  data   the Grain iterator state of this process (a few bytes of JSON), so resume sees the exact next batch
  meta   JSON: step, metrics at that step, the config that produced it
Kept: the last `keep` steps plus the best one by `best_metric`. Restores always go against target shardings,
so a run saved on 8 devices resumes on 1 and vice versa.

Restoring never half-happens: the state is read first, the data iterator is set only after that, and put back
as it was when anything fails. Unreadable steps are moved to `<workdir>/checkpoints_corrupt/` (never deleted);
when no readable step is left the restore refuses (UserError) unless the caller allows a fresh start. A
chosen step (`restore_step`) restores that step only; `set_aside_later_than` moves the steps after it to
`<workdir>/checkpoints_superseded/`. The directory is created on the first save or restore that needs it.
"""

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import sys
import threading

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from core_jax.errors import UserError

CORRUPT_DIR = 'checkpoints_corrupt'
SUPERSEDED_DIR = 'checkpoints_superseded'


class _SigtermFlag:
  """Turns SIGTERM (what schedulers send before preemption) into a flag the loop polls once per step; in a
  single-process run the first Ctrl-C (SIGINT) does the same, so a run stopped by hand keeps the steps since its
  last checkpoint, and a second Ctrl-C stops at once (KeyboardInterrupt: the saved steps are kept as after a
  SIGKILL). `restore` puts the handlers found back (an in-process caller, e.g. a test session, keeps its own)."""

  def __init__(self):
    self.raised = False
    self.reason = 'preempted'
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      if jax.process_count() == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.raised:  # the second Ctrl-C
        raise KeyboardInterrupt
      self.reason = 'interrupted (Ctrl-C)'
      print('interrupt: saving at the end of this step, then stopping (Ctrl-C again stops now)', file=sys.stderr)
    self.raised = True

  def restore(self):
    if threading.current_thread() is threading.main_thread():
      for signum, handler in self._previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    self._previous = {}


class Checkpointer:
  """Saves and restores step directories of one workdir; opens (and creates) the directory only on first use,
  so a run that fails before its first save leaves no empty checkpoints/ folder behind."""

  def __init__(
      self,
      directory: str,
      *,
      save_every_steps: int,
      keep: int = 3,
      best_metric: str | None = None,
      best_mode: str = 'max',
      asynchronous: bool = True,
  ):
    self.directory = os.path.abspath(directory)
    preserve = [policies.LatestN(keep)]
    if best_metric:
      preserve.append(
          policies.BestN(
              get_metric_fn=lambda m: m[best_metric],
              reverse=(best_mode == 'min'),
              n=1,
              keep_checkpoints_without_metrics=False,
          )
      )
    self._options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.FixedIntervalPolicy(save_every_steps),
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,  # half-written saves of a killed run are removed at start
    )
    self._manager = None
    self._sigterm = _SigtermFlag()
    self._saving_step = None  # the step of an async save not yet joined
    self._save_failed = False

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=self._options,
          item_handlers={
              'state': ocp.StandardCheckpointHandler(),
              'meta': ocp.JsonCheckpointHandler(),
              'data': grain.checkpoint.CheckpointHandler(),
          },
      )
    return self._manager

  def _reopen(self):
    if self._manager is not None:
      # The manager starts deleting half-written saves of earlier runs in a background thread when it opens,
      # and only its save() waits for that; close() does not. A run that stops early (bad input found after the
      # checkpoints were opened) would otherwise exit with the thread still running, which then fails loudly
      # in interpreter shutdown after our one-line error. So wait for it here.
      await_cleanup = getattr(self._manager, '_maybe_await_cleanup_tmp_directory', None)
      if await_cleanup is not None:
        try:
          await_cleanup()
        except Exception as e:  # pylint: disable=broad-except  (leftover temp dirs only; never hide the run's error)
          logging.warning('checkpoint temp-dir cleanup failed: %s', _first_line(e))
      try:
        self._manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if not self._save_failed:  # close() joins the failed save again: its error was raised already, once
          raise
        logging.warning('checkpoint manager close after a failed save: %s', _first_line(e))
      self._manager = None

  # ---------------------------------------------------------------- saving
  def save(self, step: int, state, data_iterator, meta: dict, metrics: dict | None = None, force: bool = False) -> bool:
    """Saves if the interval says so (or `force`); returns whether a save started.

    A save that fails for want of space (a full disk or quota; async: found when the next save or `wait` joins it)
    is a UserError naming the step: orbax commits a step by renaming its temporary folder, so the failed step is
    never among the kept ones, and those are left as they were."""
    # The same join of the previous async save that orbax's manager.save() does first, made here so that its
    # failure is reported as that step's, not this one's.
    self.wait()
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(data_iterator),
    )
    with self._failing_save_is_user_error(step):
      started = self.manager.save(step, args=args, metrics=metrics, force=force)
    if started:
      self._saving_step = step
    return started

  def should_stop_for_preemption(self, step: int) -> bool:
    """True when this step's checkpoint must be the last: SIGTERM here, or a preemption notice on any host."""
    if jax.process_count() > 1:
      # jax.distributed's preemption sync manager agrees on one step across hosts; a local flag cannot.
      return self.manager.reached_preemption(step)
    return self._sigterm.raised

  def wait(self):
    if self._manager is not None:
      with self._failing_save_is_user_error(self._saving_step):
        self._manager.wait_until_finished()
      self._saving_step = None

  @contextlib.contextmanager
  def _failing_save_is_user_error(self, step):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless the disk is full)
      reason = _disk_full_reason(e)
      if reason is None:
        raise
      self._save_failed = True
      kept = sorted(int(d) for d in os.listdir(self.directory) if d.isdigit()) if os.path.isdir(self.directory) else []
      raise UserError(
          f'saving checkpoint step {step} in {self.directory} failed: {reason}; the step was not kept, the kept '
          f'steps ({_steps_text(kept)}) are as they were: free space and rerun the same command to resume'
      ) from None

  @property
  def stop_reason(self) -> str:
    """What stopped the run early: 'preempted' (SIGTERM, a preemption notice) or 'interrupted (Ctrl-C)'."""
    return self._sigterm.reason

  def close(self):
    self._sigterm.restore()
    self._reopen()

  # ---------------------------------------------------------------- restoring
  def all_steps(self) -> list[int]:
    if self._manager is None and not os.path.isdir(self.directory):
      return []
    return sorted(self.manager.all_steps())

  def corrupt_steps(self) -> list[int]:
    """Steps earlier runs moved to `<workdir>/checkpoints_corrupt` (unreadable ones)."""
    folder = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []

  def read_meta(self, step: int) -> dict | None:
    """The JSON meta of `step`, or None when it cannot be read."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception:  # pylint: disable=broad-except
      return None

  def restore_step(self, step: int, abstract_state, data_iterator):
    """Restores `step` (must be kept) into `abstract_state`'s shardings and `data_iterator`: (state, meta).

    The iterator is set only once the state has been read, and put back as it was if anything fails, so a
    failed restore changes nothing. Raises UserError for a missing step, a model mismatch or an unreadable step.
    """
    steps = self.all_steps()
    if step not in steps:
      raise UserError(
          f'checkpoint.restore_step={step}: no such step in {self.directory} ' f'(kept steps: {_steps_text(steps)})'
      )
    try:
      return self._restore(step, abstract_state, data_iterator)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      raise UserError(
          f'checkpoint step {step} in {self.directory} is unreadable ' f'({type(e).__name__}: {_first_line(e)})'
      ) from None

  def restore_latest(self, abstract_state, data_iterator, *, allow_fresh_start: bool = False):
    """Restores the newest readable checkpoint into `abstract_state`'s shardings and `data_iterator`.

    Returns (state, meta) or None when there is nothing to resume. A checkpoint that fails to read (a corrupt
    or truncated file) is moved aside to `<workdir>/checkpoints_corrupt/<step>` (kept, not deleted) and the
    previous one is tried; a failed try leaves `data_iterator` untouched. When checkpoints existed but none is
    readable (now or in an earlier run), raises UserError naming them, unless `allow_fresh_start`.
    """
    steps = self.all_steps()
    moved = []
    for i, step in enumerate(reversed(steps)):
      try:
        return self._restore(step, abstract_state, data_iterator)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
        older = steps[len(steps) - 2 - i] if i + 1 < len(steps) else None
        self._set_aside(step, e, older)
        moved.append(step)
    corrupt = self.corrupt_steps()
    if corrupt and not allow_fresh_start:
      folder = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
      now = f'steps {_steps_text(moved)} were just moved' if moved else f'steps {_steps_text(corrupt)} were moved'
      raise UserError(
          f'no readable checkpoint in {self.directory} ({now} to {folder}); to start this run over '
          f'on purpose, pass --config.checkpoint.allow_fresh_start=True or remove {folder}'
      )
    return None

  def _restore(self, step: int, abstract_state, data_iterator):
    before = data_iterator.get_state()
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
      )
      self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except Exception as e:  # pylint: disable=broad-except
      data_iterator.set_state(before)
      # Another model's step is readable, not corrupt: it must not be moved aside as one (orbax words a shape
      # change as 'not compatible', a key change as a tree diff: the saved shapes decide when they read).
      difference = self._first_difference(step, abstract_state)
      if difference or _is_shape_mismatch(e):
        raise UserError(
            f'checkpoint step {step} in {self.directory} does not match the model: {difference or _first_line(e)}'
        ) from None
      raise
    return restored['state'], restored['meta']

  def _first_difference(self, step: int, abstract_state) -> str:
    """The first array whose name or shape differs between `step`'s state and `abstract_state`, in words, and
    how many differ ('' when the saved shapes cannot be read): orbax's own text is a multi-line tree diff, or a
    shape without the array's name."""
    try:
      saved = _shapes(getattr(self.manager.item_metadata(step)['state'], 'tree', None))
    except Exception:  # pylint: disable=broad-except  (the metadata is a best-effort help for the message)
      return ''
    wanted = _shapes(abstract_state)
    if not saved or not wanted:
      return ''
    # the parameters first: their names are the model's (an optimizer's moments repeat them under opt_state.*)
    differ = sorted(
        (k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)), key=lambda k: (k[:7] != 'params.', k)
    )
    if not differ:
      return ''
    first = differ[0]
    if first not in wanted:
      what = f'{first} is in the checkpoint, not in the model'
    elif first not in saved:
      what = f'{first} is in the model, not in the checkpoint'
    else:
      what = f'{first} is {saved[first]} in the checkpoint, {wanted[first]} in the model'
    return (
        f'{what} ({len(differ)} of {len(saved | wanted)} arrays differ: another model, width or head; '
        'use a new workdir)'
    )

  def set_aside_later_than(self, step: int) -> list[int]:
    """Moves the steps after `step` to `<workdir>/checkpoints_superseded/` (a run restarted from `step`)."""
    later = [s for s in self.all_steps() if s > step]
    for s in later:
      self._move(s, SUPERSEDED_DIR)
    if later:
      self._reopen()
    return later

  def _set_aside(self, step: int, error: Exception, older: int | None):
    target = self._move(step, CORRUPT_DIR)
    then = f'falling back to step {older}' if older is not None else 'no older checkpoint to fall back to'
    # The run's log gets the traceback every time; TensorStore's own thread tracebacks come only on some runs.
    logging.warning(
        'checkpoint step %d is unreadable: %s: %s',
        step,
        type(error).__name__,
        error,
        exc_info=(type(error), error, error.__traceback__),
    )
    if jax.process_index() == 0:
      print(
          f'warning: checkpoint step {step} is unreadable ({type(error).__name__}: {_first_line(error)}); '
          f'moved it to {target}; {then}',
          flush=True,
      )
    self._reopen()

  def _move(self, step: int, folder: str) -> str:
    target = os.path.join(os.path.dirname(self.directory), folder, str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.exists(target):
        shutil.rmtree(target)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'move_{folder}_{step}')
    return target


def _shapes(tree) -> dict[str, tuple]:
  """{'params.stem.kernel': shape} of a tree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
  if tree is None:
    return {}
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      '.'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): tuple(leaf.shape)
      for path, leaf in leaves
      if getattr(leaf, 'shape', None) is not None
  }


def _steps_text(steps) -> str:
  return ', '.join(str(s) for s in sorted(steps)) or 'none'


# TensorStore appends its whole spec (JSON, often dozens of lines once pretty-printed) and C++ source locations
# to an error; the warning and error lines keep the message, the full text goes to the run's log (core_jax.run_log).
_TENSORSTORE_DETAILS = re.compile(r'\s*\[(tensorstore_spec|source locations)=.*', re.DOTALL)


def _first_line(e: Exception, limit: int = 240) -> str:
  text = _TENSORSTORE_DETAILS.sub('', str(e)).strip().splitlines()
  line = text[0] if text else type(e).__name__
  return line if len(line) <= limit else line[: limit - 3] + '...'


_DISK_FULL = {
    errno.ENOSPC: 'no space left on device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EFBIG: 'file too large',
}


def _disk_full_reason(e: BaseException) -> str | None:
  """'no space left on device' (or the quota / file size limit) when `e` or an error it came from says so, else
  None. TensorStore reports the OS error in its message, not as an OSError."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      return _DISK_FULL[e.errno]
    text = str(e).lower()
    for reason in _DISK_FULL.values():
      if reason in text:
        return reason
    e = e.__cause__ or e.__context__
  return None


def _is_shape_mismatch(e: Exception) -> bool:
  text = str(e)
  return (
      ('shape' in text.lower() and ('mismatch' in text.lower() or 'does not match' in text.lower()))
      or 'Dict key mismatch' in text
      or 'tree structure' in text.lower()
  )


# ---------------------------------------------------------------- reading a step outside the loop
def latest_step_dir(workdir: str) -> str | None:
  """The newest committed step directory of `workdir/checkpoints` (absolute path), or None when there is none.

  A save in flight lives in a temporary name (`STEP.orbax-checkpoint-tmp-...`) until it commits, so only
  all-digit names with a `state` item count."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    return None
  steps = [int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d, 'state'))]
  return os.path.join(directory, str(max(steps))) if steps else None


def read_training_checkpoint(step_dir: str) -> dict:
  """The weights of one step saved by `Checkpointer` (e.g. `latest_step_dir(workdir)`), on host memory.

  Returns {'params', 'batch_stats', 'ema_params' (None when the run had no EMA): nested dicts of numpy arrays,
  'meta': the step's JSON meta ({'step', 'metrics', 'config'}; {} when the step has none)}. Whatever device count
  saved it, it is read onto this host; the optimizer state is not read. Bad input is a one-line UserError."""
  import numpy as np  # pylint: disable=import-outside-toplevel  (kept here: this section is appended as a unit)

  step_dir = os.path.abspath(step_dir)
  state_dir = os.path.join(step_dir, 'state')
  if not os.path.isdir(state_dir):
    raise UserError(f'{step_dir} is not a training checkpoint step (expected WORKDIR/checkpoints/STEP/state)')
  try:
    checkpointer = ocp.PyTreeCheckpointer()
    saved = checkpointer.metadata(state_dir).item_metadata.tree
    if 'params' not in saved:
      raise ValueError(f'no params in its state (items: {", ".join(sorted(saved))})')
    wanted = {k: saved[k] for k in ('params', 'batch_stats', 'ema_params') if saved.get(k)}
    here = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
    item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), wanted)
    restore_args = jax.tree.map(lambda m: ocp.ArrayRestoreArgs(sharding=here, dtype=m.dtype), wanted)
    tree = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
    )
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    raise UserError(f'cannot read training checkpoint {step_dir}: {type(e).__name__}: {_first_line(e)}') from None
  host = lambda t: jax.tree.map(np.asarray, t) if t else t  # pylint: disable=unnecessary-lambda-assignment
  meta = {}
  meta_dir = os.path.join(step_dir, 'meta')
  if os.path.isdir(meta_dir):
    try:
      meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir) or {}
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'cannot read the meta of training checkpoint {step_dir}: {_first_line(e)}') from None
  return {
      'params': host(tree['params']),
      'batch_stats': host(tree.get('batch_stats')) or {},
      'ema_params': host(tree.get('ema_params')) or None,
      'meta': meta,
  }
