"""configs/convnext/upernet_ade20k.py: every row of the paper's Table 4 builds with the official recipe (reference
sheet convnext.md 11.1), its header names the command and the paper's numbers; the crop / padding check."""

import ast
import os

import pytest

from convnext_jax import models, upernet, upernet_task
from core_jax import cli, optim
from core_jax.data import ops
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATH = os.path.join(REPO, 'configs', 'convnext', 'upernet_ade20k.py')
# ARG: (size, crop, lr, num_layers, drop path, paper single / multi-scale mIoU) from the reference sheet's table
TABLE_4 = {
    'tiny': ('tiny', 512, 1e-4, 6, 0.4, '46.0 / 46.7'),
    'small': ('small', 512, 1e-4, 12, 0.3, '48.7 / 49.6'),
    'base': ('base', 512, 1e-4, 12, 0.4, '49.1 / 49.9'),
    'base_22k': ('base', 640, 1e-4, 12, 0.4, '52.6 / 53.1'),
    'large_22k': ('large', 640, 1e-4, 12, 0.4, '53.2 / 53.7'),
    'xlarge_22k': ('xlarge', 640, 8e-5, 12, 0.4, '53.6 / 54.0'),
}


class Info:
  num_classes = 150


@pytest.mark.parametrize('arg', sorted(TABLE_4))
def test_every_table_4_row_builds_with_the_official_recipe(arg, capsys):
  size, crop, lr, num_layers, drop_path, paper = TABLE_4[arg]
  c = cli.load_config_file(f'{PATH}:{arg}')
  task = upernet_task.UperNetSegTask(c, Info())
  model = task.build_model()
  assert isinstance(model, upernet.UperNet) and model.num_classes == 150
  assert c.model.name == f'upernet_convnext_{size}' and model.drop_path_rate == drop_path
  ref = models.create_model(f'upernet_convnext_{size}')
  assert (model.depths, model.dims) == (ref.depths, ref.dims)
  o = c.optimizer
  assert (o.name, o.lr, o.b1, o.b2, o.weight_decay, o.wd_exclude_1d) == ('adamw', lr, 0.9, 0.999, 0.05, True)
  assert (o.schedule, o.poly_power, o.min_lr, o.layer_decay, o.layer_decay_num_layers) == (
      'poly',
      1.0,
      0,
      0.9,
      num_layers,
  )
  steps_per_epoch = 20_210 // c.batch_size
  assert c.batch_size == 16 and c.num_train_steps == 160_000
  assert optim._epochs_to_steps(o.warmup_epochs, steps_per_epoch) == 1500 and o.warmup_init_lr == lr * 1e-6
  optim.check_options(o, num_epochs=c.num_epochs, num_train_steps=c.num_train_steps)
  task.lr_scale_fn()
  low = '0.478' if num_layers == 6 else '0.254'
  assert f'stem+downsample {low}' in capsys.readouterr().out
  assert c.loss.aux_weight == 0.4 and c.data.name == 'ade20k' and c.eval_batch_size == 1
  assert not c.loss.get('class_weight')  # the official loss is uniform (only the digit_scenes demo weighs)
  scale = (2048, 512) if crop == 512 else (2560, 640)
  assert tuple(c.eval_resize) == scale and tuple(c.slide_window) == (crop, {512: 341, 640: 426}[crop])
  assert tuple(c.eval_scales) == (1.0,) and not c.eval_flip
  assert c.data.train_transforms[1] == f'seg_random_crop_cat(size=({crop}, {crop}), cat_max_ratio=0.75)'
  ops.build_transforms(list(c.data.train_transforms) + list(c.data.eval_transforms))
  ms = cli.load_config_file(f'{PATH}:{arg}:ms')
  assert tuple(ms.eval_scales) == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and ms.eval_flip and not ms.slide_window
  # the header: the command, the paper's row, "not measured"
  with open(PATH) as f:
    doc = ast.get_docstring(ast.parse(f.read()))
  assert 'python -m convnext_jax.main --config=configs/convnext/upernet_ade20k.py:' in doc and 'not measured' in doc
  row = [line for line in doc.splitlines() if line.strip().startswith(f'{arg} ') and 'mIoU' not in line and '/' in line]
  assert len(row) == 1 and paper in row[0], row


def test_bad_variants_and_crops_larger_than_the_padding():
  with pytest.raises(UserError, match='expected one of tiny, small'):
    cli.load_config_file(f'{PATH}:huge')
  c = cli.load_config_file(f'{PATH}:tiny')
  c.data.train_transforms = tuple(c.data.train_transforms[:-1]) + ('seg_pad(size=(480, 512))',)
  with pytest.raises(UserError, match=r'^train crop \(512, 512\) \(seg_random_crop_cat\) is larger than the padded '):
    upernet_task.UperNetSegTask(c, Info())
  c.data.train_transforms = tuple(c.data.train_transforms[:-1])
  with pytest.raises(UserError, match=r'has no seg_pad\(size=\(512, 512\)\) after it'):
    upernet_task.UperNetSegTask(c, Info())
