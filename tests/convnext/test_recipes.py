"""The ConvNeXt recipe configs (configs/convnext/{in1k,in22k,finetune}.py) each run one real training step.

Every config keeps its hyperparameters (optimizer, schedule, augmentation ops, mixup, EMA, layer decay,
init_from, ...) but with shrunk shapes: a 4-stage ConvNeXt of depths (1, 1, 1, 1) / dims 8-16, 32x32
images, batch 8, on a tiny image-folder tree (3 classes x 4 JPEGs train, x 2 validation) standing in for
imagenet2012 / ImageNet-22K. Also: layer-wise lr decay vs the official mapping, Mixup inside the step,
eval_only on a checkpoint and on a timm-format file, init_from with a re-initialized head.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_MODEL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16))
TINY_COMPUTE = dict(dwconv='xla')
NUM_CLASSES = 3


def _load_config(name, arg):
  from core_jax.cli import load_config_file

  return load_config_file(os.path.join(REPO, 'configs', 'convnext', f'{name}.py') + f':{arg}')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """An image-folder tree with train/ and validation/ splits, and a TFDS dir to prepare it into."""
  root = tmp_path_factory.mktemp('imagefolder')
  rng = np.random.default_rng(0)
  for split, n in (('train', 4), ('validation', 2)):
    for c in range(NUM_CLASSES):
      d = root / split / f'n0000{c}'
      d.mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 255, (36 + 4 * i, 44, 3), dtype=np.uint8)
        img[..., c] = 255  # a learnable colour cue
        Image.fromarray(img).save(d / f'img_{i}.JPEG', quality=90)
  return dict(root=str(root), tfds=str(tmp_path_factory.mktemp('tfds')))


def _shrink(c, data):
  size = lambda specs: tuple(re.sub(r'size=\d+', 'size=32', s) for s in specs)
  c.data.name = f'image_folder:{data["root"]}'
  c.data.data_dir = data['tfds']
  c.data.worker_count = 0
  c.data.train_transforms = size(c.data.train_transforms)
  c.data.eval_transforms = size(c.data.eval_transforms)
  if c.data.eval_split.startswith('train['):  # in22k monitors on a train slice larger than the fixture
    c.data.eval_split = 'train[:8]'
  c.model.overrides = dict(TINY_MODEL)
  c.compute.update(TINY_COMPUTE)
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = 1
  # 1 epoch == 1 step here: a 20-epoch warmup does not fit in the run, and the first warmup step has lr 0.
  c.optimizer.warmup_epochs = 0
  c.log_every_steps = 1
  c.checkpoint.every_steps = 1
  c.checkpoint.asynchronous = False
  return c


def _run(c, workdir):
  from convnext_jax.task import ConvNeXtTask
  from core_jax import train

  return train.run(c, str(workdir), ConvNeXtTask)


def _final_params(workdir):
  import orbax.checkpoint as ocp

  ckpt_dir = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  path = os.path.join(ckpt_dir, str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), tree)
  state = checkpointer.restore(path, target)
  flat = lambda t: {
      '/'.join(str(getattr(k, 'key', k)) for k in p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(t)
  }
  return flat(state['params']), (flat(state['ema_params']) if state.get('ema_params') else None)


def _random_params(num_classes, seed=1):
  from convnext_jax import models

  model = models.create_model('convnext_tiny', num_classes=num_classes, **TINY_MODEL, compute=TINY_COMPUTE)
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))['params']


def _flat(params):
  return {
      '/'.join(str(getattr(k, 'key', k)) for k in p): np.asarray(v)
      for p, v in jax.tree_util.tree_leaves_with_path(params)
  }


# ------------------------------------------------------------------------------------------ recipes

_RUNS = {}


def _recipe_run(name, arg, data, tmp_path_factory, prepare=None, tag=''):
  """Runs one shrunk recipe (memoized per name/arg/tag) -> (config, workdir, results)."""
  key = (name, arg, tag)
  if key not in _RUNS:
    c = _shrink(_load_config(name, arg), data)
    workdir = tmp_path_factory.mktemp(re.sub(r'\W', '_', f'{name}_{arg}_{tag}'))
    if prepare:
      prepare(c, workdir)
    _RUNS[key] = (c, str(workdir), _run(c, workdir))
  return _RUNS[key]


def _finetune_init(c, workdir):
  """Writes the weights `init_from` names: timm safetensors (22K: 7-class head) or official .pth with EMA."""
  from convnext_jax import export

  if c.init_reinit_head:
    path = os.path.join(workdir, 'in22k_timm.safetensors')
    export.save_timm_safetensors(_random_params(7), path, 'convnext_tiny')
  else:
    import torch

    sd = export.flax_to_official(_random_params(NUM_CLASSES, seed=1), 'convnext_tiny')
    sd_ema = export.flax_to_official(_random_params(NUM_CLASSES, seed=2), 'convnext_tiny')
    path = os.path.join(workdir, 'in1k_official.pth')
    torch.save(
        {
            'model': {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
            'model_ema': {k: torch.from_numpy(np.array(v)) for k, v in sd_ema.items()},
        },
        path,
    )
  c.init_from = path


RECIPES = [
    ('in1k', 'tiny'),
    ('in1k', 'small'),
    ('in1k', 'base'),
    ('in1k', 'large'),
    ('in22k', 'base'),
    ('finetune', '22k_to_1k_224:base'),
    ('finetune', '22k_to_1k_384:xlarge'),
    ('finetune', '1k_224_to_384:large'),
]


@pytest.mark.slow  # a train step per recipe at its real model size
@pytest.mark.parametrize('name,arg', RECIPES, ids=[f'{n}:{a}' for n, a in RECIPES])
def test_recipe_one_step(name, arg, data, tmp_path_factory):
  prepare = _finetune_init if name == 'finetune' else None
  c, workdir, results = _recipe_run(name, arg, data, tmp_path_factory, prepare)
  assert results['step'] == 1
  ev = results['eval']
  assert 0.0 <= ev['accuracy'] <= 1.0 and np.isfinite(ev['loss'])
  assert ('ema_accuracy' in ev) == bool(c.optimizer.ema_decay)
  assert os.path.isfile(os.path.join(workdir, 'results.json'))
  # the recipe's own hyperparameters were used
  if name == 'in1k':
    assert c.mixup.mixup_alpha == 0.8 and c.optimizer.ema_decay == 0.9999 and c.optimizer.lr == 4e-3
  if name == 'finetune':
    assert c.mixup is None and c.model.head_init_scale == 0.001 and c.optimizer.layer_decay < 1


@pytest.mark.slow
def test_finetune_22k_init_reinit_head(data, tmp_path_factory):
  c, workdir, _ = _recipe_run('finetune', '22k_to_1k_224:base', data, tmp_path_factory, _finetune_init)
  params, _ = _final_params(workdir)
  src = _flat(_random_params(7))
  # trunk: loaded (1 step at lr ~5e-5 * 8/512 * layer scale hardly moves it); head: fresh, 3 classes, tiny init
  np.testing.assert_allclose(params['stem_conv/kernel'], src['stem_conv/kernel'], atol=1e-5)
  np.testing.assert_allclose(
      params['stages_2_block_0/pwconv1/kernel'], src['stages_2_block_0/pwconv1/kernel'], atol=1e-5
  )
  assert params['head/kernel'].shape == (16, NUM_CLASSES)
  assert np.abs(params['head/kernel']).max() < 0.02 * 0.001 * 5  # head_init_scale 0.001


@pytest.mark.slow
def test_finetune_1k_large_loads_ema_weights(data, tmp_path_factory):
  c, workdir, _ = _recipe_run('finetune', '1k_224_to_384:large', data, tmp_path_factory, _finetune_init)
  assert c.init_from_ema and not c.init_reinit_head
  params, _ = _final_params(workdir)
  ema_src, plain_src = _flat(_random_params(NUM_CLASSES, seed=2)), _flat(_random_params(NUM_CLASSES, seed=1))
  np.testing.assert_allclose(params['stem_conv/kernel'], ema_src['stem_conv/kernel'], atol=1e-5)
  np.testing.assert_allclose(params['head/kernel'], ema_src['head/kernel'], atol=1e-4)  # head kept
  assert not np.allclose(params['stem_conv/kernel'], plain_src['stem_conv/kernel'], atol=1e-3)


# ------------------------------------------------------------------------------- mixup in the step


@pytest.mark.slow  # two training runs
def test_mixup_in_step_is_deterministic(data, tmp_path_factory):
  """Two runs of the mixup recipe give bitwise-equal weights (params and EMA): the mixing key is a function
  of (state.rng, step), both checkpointed, so a resumed run draws the same mixes. (That the jnp mixing
  matches timm is tested with core_jax/data/mixing.py; this run-level test keeps to one compile.)"""
  _, wd_a, _ = _recipe_run('in1k', 'tiny', data, tmp_path_factory)
  _, wd_b, _ = _recipe_run('in1k', 'tiny', data, tmp_path_factory, tag='again')
  (a, ema_a), (b, ema_b) = _final_params(wd_a), _final_params(wd_b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(ema_a[k], ema_b[k], err_msg=k)
  # EMA = 0.9999 init + 0.0001 params: it stays at init, so params != EMA iff the step moved them
  assert max(np.abs(a[k] - ema_a[k]).max() for k in a) > 1e-6, 'the step did not move the weights'
  # the mixing key depends only on (state.rng, step): the same as a jnp call with that key
  from core_jax.data import mixing

  batch = {'image': jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3), 'label': jnp.array([0, 2])}
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0x6D6978), 1)
  out1 = mixing.mixup_cutmix_jax(batch, key, num_classes=3)
  out2 = jax.jit(lambda b, k: mixing.mixup_cutmix_jax(b, k, num_classes=3))(batch, key)
  np.testing.assert_allclose(out1['label'].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(out1['image'], out2['image'])


def test_soft_targets_not_smoothed_twice():
  import ml_collections

  from core_jax.classification import ClassificationTask

  logits = jnp.array([[4.0, 0.0, -1.0], [0.5, 2.0, -3.0]])

  class Fixed:  # a stand-in model with fixed logits

    def apply(self, variables, x, train, rngs=None):
      return logits, {}

  task = ClassificationTask(ml_collections.ConfigDict(dict(label_smoothing=0.1)), None)
  logp = np.asarray(jax.nn.log_softmax(logits))
  soft = np.array([[0.9, 0.05, 0.05], [0.0, 0.5, 0.5]], np.float32)
  loss, _ = task.train_loss(Fixed(), {'params': {}}, {'image': jnp.zeros((2, 1)), 'label': jnp.asarray(soft)}, None)
  np.testing.assert_allclose(loss, -(soft * logp).sum(-1).mean(), rtol=1e-6)  # used as given
  hard = np.array([0, 1])
  loss, _ = task.train_loss(Fixed(), {'params': {}}, {'image': jnp.zeros((2, 1)), 'label': jnp.asarray(hard)}, None)
  smoothed = np.eye(3)[hard] * 0.9 + 0.1 / 3  # integer labels: config.label_smoothing applies
  np.testing.assert_allclose(loss, -(smoothed * logp).sum(-1).mean(), rtol=1e-6)


# ------------------------------------------------------------------------------------------ eval_only


@pytest.mark.slow
def test_eval_only_on_checkpoint(data, tmp_path_factory):
  c, workdir, trained = _recipe_run('in1k', 'tiny', data, tmp_path_factory)
  c = _shrink(_load_config('in1k', 'tiny'), data)
  c.eval_only = True
  results = _run(c, workdir)
  assert results['eval_only'] and results['step'] == 1
  for k in ('accuracy', 'top5', 'ema_accuracy', 'ema_top5'):
    assert results['eval'][k] == pytest.approx(trained['eval'][k], abs=1e-6), k
  on_disk = json.load(open(os.path.join(workdir, 'eval', 'step1', 'results.json')))
  assert (
      on_disk['eval_only']
      and 'top5' in on_disk['eval']
      and results['eval_dir']
      == os.path.dirname(os.path.join(os.path.abspath(workdir), 'eval', 'step1', 'results.json'))
  )
  assert 'eval_only' not in json.load(open(os.path.join(workdir, 'results.json')))  # the training's, kept


@pytest.mark.slow  # eval-only run of a converted timm file through the CLI: ~40 s on 2 cores
def test_eval_only_on_timm_file(data, tmp_path_factory):
  from convnext_jax import export, models
  from core_jax.data import ops, sources

  workdir = tmp_path_factory.mktemp('eval_timm')
  params = _random_params(NUM_CLASSES, seed=3)
  path = os.path.join(workdir, 'convnext_tiny_tiny.safetensors')
  export.save_timm_safetensors(params, path, 'convnext_tiny')
  c = _shrink(_load_config('in1k', 'tiny'), data)
  c.eval_only, c.init_from = True, path  # the recipe's bfloat16 compute: shares in1k:tiny's compiled eval
  results = _run(c, workdir)
  assert results['weights'] == path and 'ema_accuracy' not in results['eval']
  # the same numbers by hand: the file's weights on the eval split
  src, _ = sources.load_source(c.data.name, 'validation', c.data.data_dir)
  tf = ops.build_transforms(c.data.eval_transforms)
  exs = [tf(dict(src[i]), np.random.default_rng(0)) for i in range(len(src))]
  x = np.stack([e['image'] for e in exs])
  y = np.array([e['label'] for e in exs])
  model = models.create_model(
      'convnext_tiny', num_classes=NUM_CLASSES, **TINY_MODEL, compute=TINY_COMPUTE, dtype=jnp.bfloat16
  )
  logits, _ = jax.jit(model.apply)({'params': params}, jnp.asarray(x))
  loss = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), y[:, None], -1).mean()
  assert results['eval']['loss'] == pytest.approx(float(loss), rel=1e-3)
  assert results['eval']['accuracy'] == pytest.approx(float((np.argmax(logits, -1) == y).mean()))


def test_eval_only_without_weights_is_a_user_error(data, tmp_path_factory):
  from core_jax.errors import UserError

  c = _shrink(_load_config('in1k', 'tiny'), data)
  c.eval_only = True
  with pytest.raises(UserError, match='eval_only'):
    _run(c, tmp_path_factory.mktemp('eval_nothing'))


# -------------------------------------------------------------------------------- layer-wise lr decay


def _official_layer_id(var_name):
  """facebookresearch/ConvNeXt optim_factory.get_num_layer_for_convnext (official key names)."""
  if var_name.startswith('downsample_layers'):
    stage_id = int(var_name.split('.')[1])
    return {0: 0, 1: 2, 2: 3, 3: 12}[stage_id]
  if var_name.startswith('stages'):
    stage_id, block_id = int(var_name.split('.')[1]), int(var_name.split('.')[2])
    if stage_id in (0, 1):
      return stage_id + 1
    if stage_id == 2:
      return 3 + block_id // 3
    return 12
  return 13


def _scales(model_name, decay, overrides=None):
  from convnext_jax import models
  from convnext_jax.task import layer_decay_scale_fn
  from core_jax import optim

  model = models.create_model(model_name, **dict(overrides or {}))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  fn = layer_decay_scale_fn(model_name, decay, overrides)
  return {
      '/'.join(optim.path_to_names(p)): fn(optim.path_to_names(p), x)
      for p, x in jax.tree_util.tree_leaves_with_path(shapes['params'])
  }


@pytest.mark.parametrize('model_name', ['convnext_small', 'convnext_base', 'convnext_large', 'convnext_xlarge'])
def test_layer_decay_matches_official(model_name):
  from convnext_jax import convert

  table = convert.rule_table('official')
  scales = _scales(model_name, 0.8)
  assert len(scales) > 300
  for path, s in scales.items():
    official_key = table.to_external_key(path)[0]
    assert s == pytest.approx(0.8 ** (13 - _official_layer_id(official_key)), rel=1e-12), (path, official_key)
  assert scales['stem_conv/kernel'] == pytest.approx(0.8**13)
  assert scales['head/kernel'] == 1.0 and scales['head_norm/scale'] == 1.0
  assert scales['stages_3_block_2/gamma'] == pytest.approx(0.8)
  assert scales['stages_2_block_26/pwconv2/kernel'] == pytest.approx(0.8**2)  # id 11


def test_layer_decay_tiny_generalization():
  scales = _scales('convnext_tiny', 0.7)
  assert scales['stem_norm/bias'] == pytest.approx(0.7**13)
  assert scales['stages_0_block_2/dwconv/kernel'] == pytest.approx(0.7**12)
  assert scales['downsample_1/conv/kernel'] == scales['stages_1_block_0/norm/scale'] == pytest.approx(0.7**11)
  assert scales['downsample_2/norm/scale'] == pytest.approx(0.7**10)
  for j in range(9):  # one group per block: ids 3..11
    assert scales[f'stages_2_block_{j}/pwconv1/kernel'] == pytest.approx(0.7 ** (10 - j))
  assert scales['downsample_3/conv/bias'] == scales['stages_3_block_0/gamma'] == pytest.approx(0.7)
  assert scales['head/bias'] == 1.0


def test_layer_decay_off_and_in_task():
  import ml_collections

  from convnext_jax.task import ConvNeXtTask

  cfg = _load_config('finetune', '22k_to_1k_224:tiny')
  task = ConvNeXtTask(cfg, None)
  fn = task.lr_scale_fn()
  assert fn(('stem_conv', 'kernel'), None) == pytest.approx(0.8**13)
  cfg.optimizer.layer_decay = 1.0
  assert ConvNeXtTask(cfg, None).lr_scale_fn() is None
  assert ConvNeXtTask(_load_config('in1k', 'tiny'), None).lr_scale_fn() is None
  del ml_collections


# ------------------------------------------------------------------------------------------ image folder


def test_image_folder_source(data):
  from core_jax.data import sources

  src, info = sources.load_source(f'image_folder:{data["root"]}', 'train', data['tfds'])
  assert info.num_classes == NUM_CLASSES and info.splits == {'train': 12, 'validation': 6}
  ex = src[0]
  assert isinstance(ex['image'], bytes) and ex['image'][:2] == b'\xff\xd8'  # stored as JPEG bytes
  labels = sorted(int(src[i]['label']) for i in range(len(src)))
  assert labels == [0] * 4 + [1] * 4 + [2] * 4
  sliced, _ = sources.load_source(f'image_folder:{data["root"]}', 'train[:5]', data['tfds'])
  assert len(sliced) == 5
