"""The anytime line's job: one run (train, or evaluate with eval_only), or a comparison of several as phases of one
core_jax.experiment ([baseline without CA,] the CA model, eval-only runs of its weights at each of
`anytime.eval_taus`); then the report (anytime_jax.report). `run(config, workdir)` is the entry of
`python -m anytime_jax.main`, which documents the options."""

import json
import os

from anytime_jax import report
from core_jax.errors import UserError


def validate(config) -> None:
  """All anytime options checked before any data or device work (one-line UserErrors)."""
  from anytime_jax import confidence, curve, task  # pylint: disable=import-outside-toplevel

  task.validate_config(config)
  a = report.anytime_options(config)
  curve.check_reference(str(a.get('reference', '') or ''))
  for t in tuple(a.get('eval_taus', ()) or ()):
    confidence.check_tau(t)
  base = str(a.get('baseline_exit_type', '') or '')
  if base and base not in ('ee', 'rh'):
    raise UserError(f"anytime.baseline_exit_type must be 'ee', 'rh' or '', got {base!r}")


def _tau_tag(config) -> str:
  m = config.model
  return f'eval_tau{float(m.tau):g}' if m.get('confidence_adaptive', False) else 'eval_dense'


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
  return report.write(workdir, [report.run_entry(report.run_label(config), results, config)], config)


def job_configs(config) -> list[tuple[str, object, str | None]]:
  """[(phase name, config, name of the phase whose weights it evaluates or None), ...] of a comparison job."""
  a = report.anytime_options(config)
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
  runs = [report.run_entry(report.run_label(c), done[name], c) for name, c, _ in specs]
  return report.write(workdir, runs, config)


def run(config, workdir: str) -> dict | None:
  """Validates, trains/evaluates, reports; None when preempted (rerun the same command to continue)."""
  from core_jax import experiment  # pylint: disable=import-outside-toplevel

  validate(config)
  a = report.anytime_options(config)
  with experiment.compilation_cache(workdir, bool(a.get('compilation_cache', True))):
    if (a.get('eval_taus') or a.get('baseline_exit_type')) and not config.get('eval_only', False):
      return _job(config, workdir)
    return _single(config, workdir)
