"""UperNetSegTask (convnext_jax.upernet_task): the official stage-wise lr decay, the loss, eval outputs, routing.

Run: .venv/bin/python -m pytest tests/convnext/test_upernet_task.py -q
"""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convnext_jax import models, train, upernet_convert, upernet_task
from core_jax import cli, optim, weights
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Info:
  num_classes = 11


def demo_config():
  return cli.load_config_file(os.path.join(REPO, 'configs', 'convnext', 'upernet_digit_scenes.py'))


def official_stage_wise_id(mmseg_key: str, num_layers_eff: int) -> int:
  """get_num_layer_stage_wise of facebookresearch/ConvNeXt's layer_decay_optimizer_constructor.py, on the
  mmseg parameter names."""
  if mmseg_key.startswith('backbone.downsample_layers'):
    return 0
  if mmseg_key.startswith('backbone.stages'):
    return int(mmseg_key.split('.')[2]) + 1
  return num_layers_eff - 1


@pytest.mark.parametrize('num_layers', [6, 12])
def test_stage_wise_decay_equals_the_official_rule_on_every_param(num_layers):
  model = models.create_model('upernet_convnext_tiny', depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), channels=16)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  fn = upernet_task.stage_wise_scale_fn(0.9, num_layers)
  table = upernet_convert.rule_table()
  eff = num_layers + 2  # the official constructor's num_layers + 2
  for path in weights.flatten(shapes['params']):
    key = table.to_external_key(f'params/{path}')[0]
    want = 0.9 ** (eff - official_stage_wise_id(key, eff) - 1)
    assert fn(tuple(path.split('/')), None) == pytest.approx(want, rel=1e-12), (path, key)
  line = upernet_task.describe_scales(0.9, num_layers)
  scales = [float(v) for v in re.findall(r' (\d\.\d{3})', line)]
  if num_layers == 6:  # ConvNeXt-T's config: stem 0.478, stage0 0.531 .. stage3 0.729, heads 1
    assert scales == [0.478, 0.531, 0.590, 0.656, 0.729, 1.0]
  else:  # S..XL: the backbone trains at <= 0.387 of the heads' lr
    assert scales == [0.254, 0.282, 0.314, 0.349, 0.387, 1.0]


def test_demo_config_routes_to_the_segmentation_task_and_prints_the_scales(capsys):
  config = demo_config()
  assert train.task_for(config) is upernet_task.UperNetSegTask
  task = upernet_task.UperNetSegTask(config, Info())
  assert task.lr_scale_fn() is not None and 'stem+downsample 0.478' in capsys.readouterr().out
  model = task.build_model()
  assert model.num_classes == 11 and model.dims == (16, 32, 64, 128) and model.patch_size == 2
  config.model.name = 'convnext_tiny'
  assert train.task_for(config) is not upernet_task.UperNetSegTask
  with pytest.raises(UserError, match=r"^model.name 'convnext_tiny' is not an UperNet segmentor"):
    upernet_task.UperNetSegTask(config, Info())
  config.optimizer.layer_decay = 1.0
  assert upernet_task.UperNetSegTask(demo_config(), Info()).lr_scale_fn() is not None
  assert optim.layerwise_lr_decay_scale(6, 0.9, lambda p: 7)((), None) == 1.0


# Compiles a train-mode and an eval-mode forward of a tiny UperNet: 69 s while this 2-core machine ran at load ~17.
@pytest.mark.slow
def test_loss_is_decode_plus_weighted_aux_and_eval_predicts_at_label_size():
  config = demo_config()
  config.model.overrides = dict(
      depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), patch_size=2, channels=8, aux_channels=8, dropout=0.0
  )
  config.model.drop_path_rate = 0.0
  config.compute.dwconv = 'xla'  # the plain formulation: nothing but this small program to compile
  task = upernet_task.UperNetSegTask(config, Info())
  model = task.build_model()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
  variables['batch_stats'] = jax.tree_util.tree_map(np.abs, variables['batch_stats'])
  labels = rng.integers(0, 11, (2, 32, 32)).astype(np.int32)
  labels[0, :4] = 255
  batch = {'image': rng.normal(size=(2, 32, 32, 3)).astype(np.float32), 'segmentation': labels}
  batch['mask'] = np.array([True, False])

  @jax.jit
  def run(variables, batch):
    loss, (out, _) = task.train_loss(model, variables, batch, jax.random.PRNGKey(1))
    return loss, out, task.eval_outputs(model, variables, batch)

  loss, out, ev = run(variables, batch)  # (the loss itself is tested against PyTorch in tests/anytime)
  assert np.isfinite(float(loss)) and float(out['loss']) == float(loss)
  assert float(loss) == pytest.approx(float(out['decode_loss']) + 0.4 * float(out['aux_loss']), rel=1e-6)
  assert float(out['aux_loss']) > 0 and float(out['decode_loss']) > 0
  assert ev['predictions'].shape == (2, 32, 32) and ev['mask'].tolist() == [True, False]
  scores = task.eval_metrics.single_from_model_output(**ev).compute()
  assert set(scores) == {'miou', 'pixel_accuracy', 'iou'} and 0.0 <= scores['miou'] <= 1.0


class FixedLogits(nn.Module):
  """Stands in for the UperNet in train_loss: the given decode and auxiliary logits (nothing to compile but a
  softmax)."""

  logits: np.ndarray
  aux_logits: np.ndarray

  @nn.compact
  def __call__(self, x, train=False):
    del x, train
    return jnp.asarray(self.logits), {'aux_logits': jnp.asarray(self.aux_logits)}


def reference_weighted_ce(logits, labels, weights):
  """mean over the valid pixels of w_y * nll, divided by the mean w_y (PyTorch's CrossEntropyLoss(weight))."""
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = labels != 255
  y = labels[valid]
  w = np.asarray(weights)[y]
  return float((w * -logp[valid, y]).sum() / w.sum())


def test_class_weight_weighs_both_heads_losses_and_bad_weights_are_one_line():
  config = demo_config()
  weights_ = config.loss.class_weight
  assert len(weights_) == 11 and weights_[0] < min(weights_[1:])  # the demo down-weights the background
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 8, 8, 11)).astype(np.float32)
  aux = rng.normal(size=(2, 8, 8, 11)).astype(np.float32)
  labels = np.where(rng.random((2, 8, 8)) < 0.7, 0, rng.integers(1, 11, (2, 8, 8))).astype(np.int32)
  labels[1, :2] = 255
  batch = {'image': np.zeros((2, 8, 8, 3), np.float32), 'segmentation': labels}
  model = FixedLogits(logits, aux)
  task = upernet_task.UperNetSegTask(config, Info())
  _, (out, _) = task.train_loss(model, {}, batch, None)
  assert float(out['decode_loss']) == pytest.approx(reference_weighted_ce(logits, labels, weights_), rel=1e-5)
  assert float(out['aux_loss']) == pytest.approx(reference_weighted_ce(aux, labels, weights_), rel=1e-5)
  config.loss.class_weight = ()  # unset: uniform, as the official ADE20K configs
  _, (uniform, _) = upernet_task.UperNetSegTask(config, Info()).train_loss(model, {}, batch, None)
  assert float(uniform['decode_loss']) == pytest.approx(reference_weighted_ce(logits, labels, [1.0] * 11), rel=1e-5)
  assert abs(float(uniform['decode_loss']) - float(out['decode_loss'])) > 1e-3
  config.loss.class_weight = (1.0,) * 10
  with pytest.raises(UserError, match=r'^loss.class_weight has 10 entries; the dataset has 11 classes$'):
    upernet_task.UperNetSegTask(config, Info())
  config.loss.class_weight = (-1.0,) + (1.0,) * 10
  with pytest.raises(UserError, match=r'^loss.class_weight must be >= 0 with one > 0'):
    upernet_task.UperNetSegTask(config, Info())


def _anytime_json(demo_dir, exit4_miou: float) -> str:
  """An anytime.json as the anytime demo writes it (anytime_jax.report.write) into DEMO_DIR/anytime_digit_scenes:
  the trained ADP-C run, then the eval-only run at tau 0.99 (a lower last exit)."""
  from anytime_jax import report  # pylint: disable=import-outside-toplevel

  def run(label, tau, mious):
    exits = [{'exit': k, 'miou': m, 'gflops': 0.01 * k, 'fraction': 1.0} for k, m in enumerate(mious, 1)]
    return {'label': label, 'exits': exits, 'confidence_adaptive': True, 'tau': tau}

  runs = [run('ADP-C (tau 0.998)', 0.998, [17.0, 20.1, 21.7, exit4_miou]), run('ADP-C (tau 0.99)', 0.99, [17.0] * 4)]
  folder = os.path.join(demo_dir, 'anytime_digit_scenes')
  os.makedirs(folder)
  path = os.path.join(folder, report.ANYTIME_JSON)
  with open(path, 'w') as f:
    json.dump({'title': 'digit_scenes', 'runs': runs}, f)
  return path


def test_demo_table_reads_the_anytime_demos_last_exit(tmp_path):
  from convnext_jax import report as convnext_report  # pylint: disable=import-outside-toplevel
  from convnext_jax import upernet_demo  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path / 'upernet_digit_scenes')
  path = upernet_demo.anytime_json_path(workdir)
  assert upernet_demo.anytime_last_exit_miou(path) is None  # the anytime demo has not run
  assert _anytime_json(str(tmp_path), 22.37) == path
  miou = upernet_demo.anytime_last_exit_miou(path)
  assert miou == 22.37
  text = convnext_report.upernet_demo_table({'miou': 0.1234, 'pixel_accuracy': 0.9}, 437_430, miou, 8.4123)
  lines = text.splitlines()
  assert len(lines) == 4
  assert 'ConvNeXt + UperNet (this run, 437,430 params)' in lines[1] and lines[1].split()[-2:] == ['12.3', '90.0']
  assert lines[2].startswith(convnext_report.ANYTIME_ROW) and lines[2].split()[-2:] == ['22.4', '-']
  assert lines[3].split()[-2] == '8.4'
  with pytest.raises(UserError, match=r'results.json does not exist: train first'):
    upernet_demo.run(demo_config(), workdir)


def test_demo_table_without_the_anytime_demo_says_how_to_get_it():
  from convnext_jax import report as convnext_report  # pylint: disable=import-outside-toplevel

  lines = convnext_report.upernet_demo_table(
      {'miou': 0.1234, 'pixel_accuracy': 0.9}, 437_430, None, 8.4123
  ).splitlines()
  assert lines[2].startswith(convnext_report.ANYTIME_ROW) and lines[2].split()[-2:] == ['-', '-']
  assert lines[4] == '(no anytime demo numbers beside this workdir: run `make demo LINE=anytime` for the ADP-C row)'


def test_an_anytime_json_without_a_confidence_adaptive_run_is_one_line(tmp_path):
  from convnext_jax import upernet_demo  # pylint: disable=import-outside-toplevel

  path = _anytime_json(str(tmp_path), 22.4)
  with open(path) as f:
    data = json.load(f)
  for run in data['runs']:
    run['confidence_adaptive'] = False
  with open(path, 'w') as f:
    json.dump(data, f)
  with pytest.raises(UserError, match=r'anytime.json has no confidence-adaptive run: not the anytime demo'):
    upernet_demo.anytime_last_exit_miou(path)


def test_background_row_is_computed_from_the_validation_labels(tfds_dir):
  """The table's 'background everywhere' row: predicting class 0 at every pixel of the 200 validation scenes,
  computed from their label maps; the README's table prints it."""
  from convnext_jax import upernet_demo  # pylint: disable=import-outside-toplevel

  config = demo_config()
  config.data.data_dir = str(tfds_dir)
  miou = upernet_demo.background_only_miou(config)
  assert 5 < miou < 20  # the background IoU (most pixels) over the 11 classes, the digits' IoU 0
  with open(os.path.join(REPO, 'README.md')) as f:
    row = next(line for line in f if line.startswith('| background everywhere |'))
  assert row.split('|')[2].strip() == f'{miou:.1f}'


def test_readmes_upernet_table_cites_the_anytime_tables_last_exit():
  """The README's UperNet table row of the ADP-C HRNet is the anytime demo's exit 4 at tau 0.998 (its own table
  in the README), as `make demo LINE=all` prints it."""
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read().splitlines()
  anytime = next(line for line in text if line.startswith('| ADP-C tau 0.998 |'))
  upernet = next(line for line in text if line.startswith('| ADP-C HRNet w8_nano, exit 4 '))
  assert upernet.split('|')[2].strip() == anytime.split('|')[2].split('/')[-1].strip()


@pytest.mark.parametrize(
    'key, value, message',
    [
        # (0, 0) was a ZeroDivisionError traceback at the first evaluation, after the whole training
        ('slide_window', (0, 0), r'^slide_window must be 2 positive integers, got \(0, 0\)$'),
        ('slide_window', (32,), r'^slide_window must be 2 positive integers, got \(32,\)$'),
        ('slide_window', (32, 48), r'^slide_window \(crop, stride\) = \(32, 48\): a stride above the crop leaves'),
        ('eval_resize', (64, -1), r'^eval_resize must be 2 positive integers, got \(64, -1\)$'),
        ('eval_scales', (1.0, 0.0), r'^eval_scales must be ratios above 0, got \(1.0, 0.0\)$'),
    ],
)
def test_eval_options_no_evaluation_can_use_are_one_line_at_start_up(key, value, message):
  config = demo_config()
  with config.unlocked():
    config[key] = value
  with pytest.raises(UserError, match=message):
    upernet_task.UperNetSegTask(config, Info())
  with config.unlocked():
    config[key] = dict(slide_window=(32, 16), eval_resize=(128, 64), eval_scales=(0.5, 1.0))[key]
  upernet_task.UperNetSegTask(config, Info())  # the usable values pass


@pytest.mark.parametrize(
    'results, message',
    [
        ('{"step": 7, "ev', r"^cannot read the training's results .*results.json \(.*\): rerun the training"),
        ('[1, 2]', r"results.json is not the training's results \(a JSON list, not an object\): rerun the training"),
        ('{"eval": {"accuracy": 0.9}, "num_params": 5}', r'results.json holds no UperNet evaluation \(eval.miou'),
    ],
)
def test_the_demo_report_of_a_damaged_results_file_is_one_line(tmp_path, results, message):
  """Each was a traceback (JSONDecodeError, KeyError 'eval')."""
  from convnext_jax import upernet_demo  # pylint: disable=import-outside-toplevel

  (tmp_path / 'results.json').write_text(results)
  with pytest.raises(UserError, match=message):
    upernet_demo.run(demo_config(), str(tmp_path))
  assert (tmp_path / 'results.json').read_text() == results  # left as it was


def test_the_demo_report_of_another_lines_config_is_one_line(tmp_path):
  """The digits ConvNeXt's config was a KeyError 'segmentation' on its dataset's records."""
  from convnext_jax import upernet_demo  # pylint: disable=import-outside-toplevel

  digits = cli.load_config_file(os.path.join(REPO, 'configs', 'convnext', 'digits.py'))
  with pytest.raises(
      UserError, match=r"^the UperNet demo reports an UperNet run; this config trains 'convnext_digits'$"
  ):
    upernet_demo.run(digits, str(tmp_path))
