"""The anytime line's job: one run (train, or evaluate with eval_only), or a comparison of several as phases of one
core_jax.experiment ([baseline without CA,] the CA model, eval-only runs of its weights at each of
`anytime.eval_taus`); then the report (anytime_jax.report). `run(config, workdir)` is the entry of
`python -m anytime_jax.main`, which documents the options."""

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


def _single(config, workdir: str) -> dict | None:
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from core_jax import train  # pylint: disable=import-outside-toplevel

  results = train.run(config, workdir, AnytimeSegTask)
  if 'preempted_at_step' in results:
    return None
  out = results.get('eval_dir', os.path.abspath(workdir))  # eval-only: the core's WORKDIR/eval/<tag>/
  results = {**results, 'workdir': out}
  return report.write(out, [report.run_entry(report.run_label(config), results, config)], config)


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
      c.init_from = ''  # the source phase's checkpoint, not the weights the training started from
      c.checkpoint.restore_step = -1
      c.anytime.label = ''
    phases.append((f'{main_name}_tau{float(t):g}', c, main_name))
  return phases


def _job(config, workdir: str) -> dict | None:
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from core_jax import experiment, train  # pylint: disable=import-outside-toplevel

  specs = job_configs(config)

  def evaluation(name, c, source):
    """An eval-only phase of the weights of phase `source`: the core evaluates that phase's workdir (its latest
    checkpoint) into SOURCE_DIR/eval/<tag>/; this phase's own folder gets the results.json of the experiment."""
    return experiment.Phase(name, lambda workdir, done: train.run(c, done[source]['workdir'], AnytimeSegTask))

  phases = [
      experiment.train_phase(name, lambda done, c=c: c, AnytimeSegTask)
      if source is None
      else evaluation(name, c, source)
      for name, c, source in specs
  ]
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
