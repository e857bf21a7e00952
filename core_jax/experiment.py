"""Multi-phase experiments: a list of phases run in order, each in its own sub-workdir of one experiment dir.

  phases = [train_phase('seed0/large', large_config, Task),           # an ordinary core_jax.train.run
            Phase('seed0/prune', prune),                              # any function of the earlier results
            train_phase('seed0/finetune', finetune_config, Task)]     # init_from set from 'seed0/prune'
  results = run_experiment(phases, workdir)

Contract
  Phase(name, run)      name: the phase's sub-workdir, relative to the experiment dir ('seed0/large');
                        run(phase_workdir, done) -> results dict, where done = {earlier phase name: its results}.
                        (writes_results=True: run writes results.json itself, as train.run does.)
  train_phase(name, make_config, task_cls)
                        a Phase whose run is core_jax.train.run(make_config(done), phase_workdir, task_cls); an
                        eval_only config evaluates (its results in PHASE_DIR/eval/<tag>/ and PHASE_DIR/results.json).
  run_experiment(phases, workdir) -> {phase name: results}
  - A phase is finished when PHASE_DIR/results.json exists: train.run writes it atomically at the end of a run;
    for other phases run_experiment writes the returned dict (atomically). Finished phases are not run again on
    a rerun: their results are read back. So rerunning the same command after a crash or SIGKILL skips what is
    done, and a training phase that was running resumes bitwise from its own checkpoints.
  - Every results dict in `done` (and in the returned dict) carries 'workdir': the phase's absolute directory, so
    a later phase finds the weights of an earlier one, e.g.
      config.init_from = core_jax.checkpoint.latest_step_dir(done['seed0/large']['workdir'])
    or a file / step directory a non-training phase wrote (read with core_jax.checkpoint.read_training_checkpoint).
  - A preempted training phase (train.run returned {'preempted_at_step': N}: SIGTERM, the scheduler's warning)
    stops the experiment: run_experiment returns the results so far, the last one holding 'preempted_at_step',
    without running later phases; rerun the same command to continue.
  - A non-training phase must be safe to run again from the start (it is, when killed before its results.json):
    write its outputs atomically or overwrite them.
  - Multi-process jobs: every process runs every phase (the phases' jitted code is collective); results.json
    of a non-training phase is written by process 0. Initialize jax.distributed before the first phase touches
    JAX (a non-training phase that runs first on a rerun would otherwise start the backend without it).
"""

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils

from core_jax import pause_points
from core_jax.errors import UserError, read_json_dict

# The experiment's compilation cache, kept in a module of its own that train.run can import too: train.run
# switches it on, and this module imports train (train_phase), so living here would close an import circle.
from core_jax.xla_cache import CACHE_DIR, compilation_cache, start_compilation_cache  # noqa: F401  (its API)

RESULTS_FILE = 'results.json'


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str  # sub-workdir relative to the experiment dir, e.g. 'seed0/large'
  run: Callable[[str, dict], dict]  # (phase_workdir, done: {phase name: its results dict}) -> results
  writes_results: bool = False  # run() itself writes PHASE_DIR/results.json when it finishes (train.run does)


def train_phase(name: str, make_config: Callable[[dict], ml_collections.ConfigDict], task_cls) -> Phase:
  """A phase that trains: `core_jax.train.run(make_config(done), phase_workdir, task_cls)`.

  make_config sees the results of the earlier phases (each with its 'workdir'), e.g. to set init_from."""

  def run(workdir: str, done: dict) -> dict:
    from core_jax import train  # pylint: disable=import-outside-toplevel  (experiment.py stays light to import)

    config = make_config(done)
    results = train.run(config, workdir, task_cls)
    if config.get('eval_only', False):  # the core wrote WORKDIR/eval/<tag>/results.json; the phase needs its own
      _write_results(os.path.join(workdir, RESULTS_FILE), results, name)
    return results

  return Phase(name, run, writes_results=True)


def _check_names(phases: Sequence[Phase]) -> None:
  seen = set()
  for phase in phases:
    name = phase.name
    norm = os.path.normpath(name) if name else ''
    if not name or os.path.isabs(name) or norm == '.' or norm.split(os.sep)[0] == '..':
      raise UserError(f'phase name {name!r} must be a relative sub-directory of the experiment dir')
    if norm in seen:
      raise UserError(f'two phases are named {name!r}')
    seen.add(norm)


def _is_main_process() -> bool:
  # jax.process_index() would start the backend; before jax.distributed is up every process counts as main
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def _say(text: str) -> None:
  if _is_main_process():
    print(text, flush=True)


def _read_results(path: str, name: str) -> dict:
  return read_json_dict(path, f'the results of phase {name!r}', 'remove it to run the phase again')


def _write_results(path: str, results: dict, name: str) -> None:
  try:
    text = json.dumps(results, indent=2)
  except (TypeError, ValueError) as e:
    raise UserError(f'phase {name!r} returned results that are not JSON: {e}') from None
  if _is_main_process():
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      f.write(text + '\n')
    os.replace(tmp, path)  # atomic: a phase is finished or it is not
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'experiment_phase_done_{name}')


def _make_dirs(path: str) -> list[str]:
  """`os.makedirs(path)`; returns the folders it created, deepest first."""
  made = []
  head = path
  while not os.path.exists(head):
    made.append(head)
    head = os.path.dirname(head)
  os.makedirs(path, exist_ok=True)
  return made


def _remove_empty(folders: list[str]) -> None:
  for folder in folders:  # deepest first, so a parent is empty once its children are gone
    try:
      os.rmdir(folder)
    except OSError:
      return  # not empty (the phase wrote something) or gone: keep it and everything above it


CONFIG_FILE = 'experiment_config.json'
# Options an experiment may change between its runs: where the data is, how much it logs, more seeds or another
# choice of phases (each seed's phases are their own folders), its compilation cache; with train.RESUME_IGNORED's
# (checkpoint., debug., mesh., ...).
FREE_OPTIONS = (
    'experiment.seeds',
    'experiment.phases',
    'experiment.compilation_cache',
    'log_every_steps',
    'data.data_dir',
    'data.worker_count',
)


def _check_same_experiment(config, workdir: str) -> None:
  """Stops with one line when `workdir` holds an experiment begun with another config (WORKDIR/CONFIG_FILE, written
  once its first phase finished): its finished phases would be skipped and their old results reported as this
  config's (another pruning ratio or model printed the old table, exit 0). checkpoint.allow_config_change goes on,
  naming the changes."""
  from core_jax import train  # pylint: disable=import-outside-toplevel  (deferred: the loop is heavy to import)

  path = os.path.join(workdir, CONFIG_FILE)
  if config is None or not os.path.isfile(path):
    return
  then = read_json_dict(path, "the experiment's config", 'remove it to skip this check')
  # keys in both only: an option the code added or dropped since (its default) is no change of the user's
  changed = train.config_changes(config, then, train.RESUME_IGNORED + FREE_OPTIONS, keys_in_both=True)
  if not changed:
    return
  text = train.changes_text(changed, 4)
  if not config.get('checkpoint', {}).get('allow_config_change', False):
    raise UserError(
        f'{workdir} holds an experiment begun with another config: {text}; its finished phases would be reported '
        "as this one's: use a new workdir, or go on anyway with --config.checkpoint.allow_config_change=True"
    )
  _say(f'changed options since this experiment began (finished phases are not rerun): {text}')


def _record_config(config, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  if config is None or os.path.exists(path) or not _is_main_process():
    return
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(json.dumps(json.loads(config.to_json_best_effort()), indent=1) + '\n')
  os.replace(tmp, path)


def run_experiment(phases: Sequence[Phase], workdir: str, config=None) -> dict[str, dict]:
  """Runs `phases` in order under `workdir`, skipping finished ones; returns {phase name: results}.

  See the module docstring for what finished means, how weights are handed on, and preemption. `config`, the
  experiment's: a rerun with another one stops (`_check_same_experiment`); it is kept in WORKDIR/CONFIG_FILE
  once a phase has finished (nothing is written before the first phase's inputs have loaded)."""
  _check_names(phases)
  workdir = os.path.abspath(workdir)
  _check_same_experiment(config, workdir)
  done: dict[str, dict] = {}
  for index, phase in enumerate(phases, 1):
    phase_dir = os.path.join(workdir, phase.name)
    results_path = os.path.join(phase_dir, RESULTS_FILE)
    if os.path.isfile(results_path):
      done[phase.name] = {**_read_results(results_path, phase.name), 'workdir': phase_dir}
      _say(f'phase {index}/{len(phases)} {phase.name}: finished earlier ({results_path}); skipped')
      _record_config(config, workdir)  # an experiment begun before the config was kept: from now on
      continue
    made = _make_dirs(phase_dir)
    _say(f'phase {index}/{len(phases)} {phase.name}: running in {phase_dir}')
    pause_points.reach(f'phase_start:{phase.name}')  # fault tests: the hand-over, the phase's folder made
    try:
      results = phase.run(phase_dir, dict(done))
    except BaseException:
      _remove_empty(made)  # a phase failing on bad input (a dataset name, a weights file) leaves no empty folder
      raise
    if not isinstance(results, dict):
      raise UserError(f'phase {phase.name!r} returned a {type(results).__name__}, not a results dict')
    if 'preempted_at_step' in results:
      done[phase.name] = {**results, 'workdir': phase_dir}
      _say(
          f'experiment stopped: phase {phase.name} was preempted at step {results["preempted_at_step"]}; '
          'rerun the same command to continue'
      )
      return done
    if not phase.writes_results:
      _write_results(results_path, results, phase.name)
    _record_config(config, workdir)
    pause_points.reach(f'phase_done:{phase.name}')  # fault tests: the hand-over, results.json written
    done[phase.name] = {**results, 'workdir': phase_dir}
  _say(f'experiment done: {len(phases)} phases in {workdir}')
  return done
