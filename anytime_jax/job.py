"""The anytime line's job: one run (train, or evaluate with eval_only), or a comparison of several as phases of one
core_jax.experiment ([baseline without CA,] the CA model, eval-only runs of its weights at each of
`anytime.eval_taus`); then the report (anytime_jax.report) and, for a comparison job with confidence adaptivity,
WORKDIR/scene.png (`scene_figure`). `run(config, workdir)` is the entry of `python -m anytime_jax.main`, which
documents the options."""

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


def _main_phase_name(config) -> str:
  return 'adp_c' if config.model.get('confidence_adaptive', False) else 'model'


def _is_comparison(config) -> bool:
  a = report.anytime_options(config)
  return bool(a.get('eval_taus') or a.get('baseline_exit_type'))


def evaluated_workdir(config, workdir: str) -> str:
  """The workdir an eval-only run evaluates: WORKDIR itself, or, for a comparison job's WORKDIR (the digit_scenes
  demo's), whose checkpoints are its trained phase's (WORKDIR/adp_c/checkpoints), that phase's folder, as the
  job's own tau phases do (it was 'no checkpoint in WORKDIR' beside a trained model)."""
  if not config.get('eval_only', False) or config.get('init_from') or not _is_comparison(config):
    return workdir
  phase = os.path.join(workdir, _main_phase_name(config))
  if os.path.isdir(os.path.join(workdir, 'checkpoints')) or not os.path.isdir(os.path.join(phase, 'checkpoints')):
    return workdir
  print(f'eval_only: {workdir} holds a comparison job; evaluating its trained phase {phase}', flush=True)
  return phase


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
  main_name = _main_phase_name(config)
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
  data = report.write(workdir, runs, config)
  main_name, main_config, _ = next(s for s in specs if s[2] is None and s[1] is config)
  if main_config.model.get('confidence_adaptive', False):
    print(f'scene:         {scene_figure(main_config, done[main_name]["workdir"], workdir)}', flush=True)
  return data


def scene_figure(config, weights_dir: str, workdir: str, index: int | None = None) -> str:
  """WORKDIR/scene.png: one eval-split scene through the weights of `weights_dir` (a training workdir: its latest
  checkpoint) at the config's threshold, drawn by report.plot_scene: the prediction of every exit and the mask
  of the pixels each exit computed (exit 1 computes all; exit k > 1 those exit k - 1 was not confident about,
  `confidence.confidence_mask` of its aggregated logits, exactly the mask the model applies).
  `index` None: the scene with the most labelled classes among the split's first 20."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from anytime_jax import confidence, task  # pylint: disable=import-outside-toplevel
  from core_jax import train  # pylint: disable=import-outside-toplevel
  from core_jax.data import ops, sources  # pylint: disable=import-outside-toplevel
  from core_jax.seg_ops import resize_bilinear  # pylint: disable=import-outside-toplevel

  d = config.data
  source, info = sources.load_source(d.name, d.eval_split, d.get('data_dir') or None)
  if index is None:
    counts = [len(np.unique(np.asarray(source[i][task.LABEL_KEY]))) for i in range(min(20, len(source)))]
    index = int(np.argmax(counts))
  raw = dict(source[index])
  example = ops.build_transforms(d.eval_transforms)(dict(raw), np.random.default_rng(0))
  seg_task = task.AnytimeSegTask(config, info)
  model = seg_task.build_model()
  variables = task.read_our_checkpoint(weights_dir)
  tau = float(seg_task.options['tau'])
  labels = np.asarray(example[task.LABEL_KEY])

  def forward(variables, image):
    out = model.apply(variables, image, train=False)
    logits = out['logits']
    preds = [jax.numpy.argmax(resize_bilinear(lg, *labels.shape), axis=-1)[0] for lg in logits]
    # exit k computes where exit k-1's aggregated logits are not confident (the model's own mask); exit 1 all
    computed = [jax.numpy.ones(logits[0].shape[1:3])] + [confidence.confidence_mask(lg, tau)[0] for lg in logits[:-1]]
    return preds, computed, [f[0] for f in out['fractions']]

  # runs once: on CPU compiled as core_jax.train compiles init (XLA's optimizing backend takes longer than the run)
  image = np.asarray(example[seg_task.input_key])[None]
  lowered = jax.jit(forward).lower(variables, image)
  compiled = lowered.compile(compiler_options=train.cheap_compiler_options())
  preds, computed, fractions = compiled(variables, image)
  masked = seg_task.options['masked_stages']
  exits = [
      {
          'exit': k,
          'prediction': np.asarray(p),
          'computed': np.asarray(m) if k in masked else np.ones_like(np.asarray(m)),
          'fraction': float(f),
      }
      for k, p, m, f in zip(seg_task.exits, preds, computed, fractions)
  ]
  title = f'{report.run_label(config)}: {d.name} {d.eval_split} scene {index}'
  return report.plot_scene(
      os.path.join(workdir, report.SCENE_PNG), raw['image'], labels, exits, title, seg_task.num_classes
  )


def run(config, workdir: str) -> dict | None:
  """Validates, trains/evaluates, reports; None when preempted (rerun the same command to continue)."""
  from core_jax import experiment  # pylint: disable=import-outside-toplevel

  validate(config)
  a = report.anytime_options(config)
  with experiment.compilation_cache(workdir, bool(a.get('compilation_cache', True))):
    if _is_comparison(config) and not config.get('eval_only', False):
      return _job(config, workdir)
    return _single(config, evaluated_workdir(config, workdir))
