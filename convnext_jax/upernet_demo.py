"""The UperNet digit_scenes demo's report: its mIoU beside the anytime HRNet's final exit on the same validation
scenes, and WORKDIR/scene.png (validation scenes: the input, its labels, the prediction). This module computes
them (reads the run's results, runs the model on the scenes); convnext_jax.report draws the table and figure.

  python -m convnext_jax.upernet_demo --config=configs/convnext/upernet_digit_scenes.py --workdir=WORKDIR

after the training run `python -m convnext_jax.main` with the same config and workdir (`make demo LINE=upernet`
runs both). The anytime row is read from the anytime demo's numbers (`make demo LINE=anytime`:
configs/anytime/digit_scenes.py into ANYTIME_WORKDIR beside this workdir, its anytime.json), not rerun here; without
them the row shows '-' and a note says how to get them. `make demo LINE=all` runs the anytime demo first."""

import os
import sys

from convnext_jax import report

# The anytime demo's workdir, beside this demo's as `make demo` lays them out (DEMO_DIR/anytime_digit_scenes).
ANYTIME_WORKDIR = 'anytime_digit_scenes'


def anytime_json_path(workdir: str) -> str:
  """Where the anytime demo writes its numbers, for this demo's `workdir`."""
  from anytime_jax import report as anytime_report  # pylint: disable=import-outside-toplevel

  return os.path.join(os.path.dirname(os.path.abspath(workdir)), ANYTIME_WORKDIR, anytime_report.ANYTIME_JSON)


def anytime_last_exit_miou(path: str) -> float | None:
  """The last exit's mIoU % of the anytime demo's trained ADP-C run (the first confidence-adaptive run of its
  anytime.json at `path`; the eval-only runs at other thresholds follow it), or None when there is no such file."""
  from core_jax.errors import UserError, read_json_dict  # pylint: disable=import-outside-toplevel

  if not os.path.isfile(path):
    return None
  runs = read_json_dict(path, "the anytime demo's numbers", 'rerun `make demo LINE=anytime`').get('runs')
  run = next((r for r in runs or () if isinstance(r, dict) and r.get('confidence_adaptive')), None)
  if run is None:
    raise UserError(f'{path} has no confidence-adaptive run: not the anytime demo (configs/anytime/digit_scenes.py)')
  return max(run['exits'], key=lambda e: e['exit'])['miou']


def background_only_miou(config) -> float:
  """The mIoU % of predicting background everywhere on the config's evaluation split, from its label maps."""
  from convnext_jax import upernet_task  # pylint: disable=import-outside-toplevel
  from core_jax import metrics  # pylint: disable=import-outside-toplevel
  from core_jax.data import sources  # pylint: disable=import-outside-toplevel
  from core_jax.data.registry import IGNORE_LABEL  # pylint: disable=import-outside-toplevel

  d = config.data
  source, info = sources.load_source(d.name, d.eval_split, d.get('data_dir') or None)
  labels = (source[i][upernet_task.LABEL_KEY] for i in range(len(source)))
  return 100.0 * metrics.background_only_miou(labels, int(info.num_classes), ignore_label=IGNORE_LABEL)


def scene_figure(config, workdir: str, count: int = 3) -> str:
  """WORKDIR/scene.png: the `count` validation scenes (of the first 20) with the most labelled classes through the
  workdir's latest weights: input, labels, prediction (core_jax.seg_figure, as the anytime line's scene)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from convnext_jax import upernet_task  # pylint: disable=import-outside-toplevel
  from core_jax import weights as weights_lib  # pylint: disable=import-outside-toplevel
  from core_jax.data import ops, sources  # pylint: disable=import-outside-toplevel

  d = config.data
  source, info = sources.load_source(d.name, d.eval_split, d.get('data_dir') or None)
  label_key = upernet_task.LABEL_KEY
  classes = [len(np.unique(np.asarray(source[i][label_key]))) for i in range(min(20, len(source)))]
  indices = sorted(np.argsort(classes, kind='stable')[::-1][:count].tolist())
  transform = ops.build_transforms(d.eval_transforms)
  raws = [dict(source[i]) for i in indices]
  examples = [transform(dict(r), np.random.default_rng(0)) for r in raws]
  task = upernet_task.UperNetSegTask(config, info)
  model = task.build_model()
  tree = weights_lib.unflatten(weights_lib.read_weights(workdir).tensors)
  variables = {k: tree.get(k, {}) for k in ('params', 'batch_stats')}
  images = np.stack([np.asarray(e[task.input_key]) for e in examples])
  labels = np.stack([np.asarray(e[label_key]) for e in examples]).astype(np.int32)
  batch = {task.input_key: images, label_key: labels, 'mask': np.ones(len(examples), bool)}
  predict = jax.jit(lambda v, b: task.eval_outputs(model, v, b)['predictions'])
  preds = np.asarray(predict(variables, batch))
  title = f'ConvNeXt + UperNet ({config.model.name}, shrunk): {d.name} {d.eval_split}'
  scenes = list(zip(indices, raws, labels, preds))
  return report.plot_scenes(os.path.join(workdir, report.SCENE_PNG), scenes, task.num_classes, title)


def run(config, workdir: str) -> str:
  """Prints the table and draws the scenes of a finished run in `workdir`; returns the table."""
  from core_jax.errors import UserError, read_json_dict  # pylint: disable=import-outside-toplevel

  train_first = 'train first (python -m convnext_jax.main with the same config)'
  if not str(config.model.name).startswith('upernet_'):  # another line's config: a KeyError on its labels before
    raise UserError(f'the UperNet demo reports an UperNet run; this config trains {config.model.name!r}')
  path = os.path.join(workdir, 'results.json')
  if not os.path.isfile(path):
    raise UserError(f'{path} does not exist: {train_first}')
  # a finished run's rerun of the training command rewrites results.json from its last checkpoint
  rewrite = 'rerun the training (python -m convnext_jax.main, the same config and workdir) to rewrite it'
  results = read_json_dict(path, "the training's results", rewrite)
  if not {'miou', 'pixel_accuracy'} <= set(results.get('eval') or ()) or 'num_params' not in results:
    raise UserError(f'{path} holds no UperNet evaluation (eval.miou, eval.pixel_accuracy, num_params): {rewrite}')
  anytime_miou = anytime_last_exit_miou(anytime_json_path(workdir))
  text = report.upernet_demo_table(
      results['eval'], int(results['num_params']), anytime_miou, background_only_miou(config)
  )
  print(text, flush=True)
  print(f'scene:  {scene_figure(config, workdir)}', flush=True)
  return text


if __name__ == '__main__':
  from core_jax import cli  # pylint: disable=ungrouped-imports

  sys.exit(cli.run_main(run, prog='convnext_jax.upernet_demo'))
