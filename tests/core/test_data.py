"""Data layer: embedded TFDS datasets, sources, transforms, grain pipelines."""

import math
import os
import pickle
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

from core_jax.data import ops, pipeline, registry, sources
from core_jax.errors import UserError

FAST_READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


def _ids(n):
  """A source whose records carry their own index (as label) plus an image to augment."""
  return [{'image': np.full((6, 6, 3), i % 256, np.uint8), 'label': np.int64(i)} for i in range(n)]


def _train(src, **kw):
  args = dict(
      transforms=['random_crop(size=6, padding=2)', 'flip_lr'],
      global_batch_size=8,
      seed=0,
      process_index=0,
      process_count=1,
      read_options=FAST_READ,
  )
  args.update(kw)
  return pipeline.make_train_iterator(src, **args)


def _take(it, k):
  return [next(it) for _ in range(k)]


# --------------------------------------------------------------------------- embedded datasets


def test_digits_prepared_offline(digits_train, digits_test):
  train, info = digits_train
  test, test_info = digits_test
  assert len(train) == 1437 and len(test) == 360
  assert info.name == 'digits' and info.num_classes == 10
  assert info.splits == {'train': 1437, 'test': 360} and set(info.features) == {'image', 'label'}
  ex = train[0]
  assert ex['image'].shape == (32, 32, 3) and ex['image'].dtype == np.uint8
  np.testing.assert_array_equal(ex['image'][..., 0], ex['image'][..., 2])  # gray replicated
  for src in (train, test):
    labels = np.array([int(src[i]['label']) for i in range(len(src))])
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() >= 20  # every class present in both splits
  assert max(int(train[i]['image'].max()) for i in range(20)) >= 200  # 0..16 -> 0..255


def test_digits_split_is_fixed_and_lossless(digits_test):
  from PIL import Image

  from core_jax.data.embedded import digits

  test, _ = digits_test
  # TFDS stores records in a (deterministic) key-hash order, so compare as multisets.
  stored = sorted((int(test[i]['label']), test[i]['image'].tobytes()) for i in range(len(test)))
  generated = sorted(
      (ex['label'], np.asarray(Image.open(ex['image'])).tobytes())
      for _, ex in digits.Digits._generate_examples(None, 'test')
  )
  assert stored == generated  # lossless PNG round trip, same fixed split


def test_digit_scenes(tfds_dir):
  from PIL import Image

  from core_jax.data.embedded import digit_scenes

  t = time.time()
  val, info = sources.load_source('digit_scenes', 'validation', tfds_dir)
  print(f'digit_scenes ready in {time.time() - t:.1f}s')
  assert info.splits == {'train': 1000, 'validation': 200} and info.num_classes == 11
  assert set(info.features) == {'image', 'segmentation'}
  seen = set()
  for i in range(len(val)):
    ex = val[i]
    assert ex['image'].shape == (64, 128, 3) and ex['image'].dtype == np.uint8
    assert ex['segmentation'].shape == (64, 128) and ex['segmentation'].dtype == np.uint8
    seen |= set(np.unique(ex['segmentation']).tolist())
  assert seen <= set(range(11)) | {255}
  assert {0, 255} <= seen and len(seen & set(range(1, 11))) == 10
  # Deterministic: regenerating gives the stored canvases (as a multiset, see above).
  stored = sorted(val[i]['segmentation'].tobytes() + val[i]['image'].tobytes() for i in range(len(val)))
  generated = sorted(
      ex['segmentation'].tobytes() + np.asarray(Image.open(ex['image'])).tobytes()
      for _, ex in digit_scenes.DigitScenes._generate_examples(None, 'validation')
  )
  assert stored == generated


def test_concurrent_prepare_is_safe(tmp_path):
  """Two processes preparing the same embedded dataset at once both succeed, one copy results."""
  code = (
      'import sys; from core_jax.data.sources import load_source; '
      's, _ = load_source("digits", "test", sys.argv[1]); print(len(s))'
  )
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  procs = [
      subprocess.Popen(
          [sys.executable, '-c', code, str(tmp_path)],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.DEVNULL,
          text=True,
      )
      for _ in range(2)
  ]
  outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0] and outs == ['360', '360']
  assert sorted(os.listdir(tmp_path / 'digits')) == ['1.0.0']


# ------------------------------------------------------------------------------ real datasets


@pytest.mark.parametrize(
    'name,needle',
    [
        ('cifar10', 'tfds build cifar10'),
        ('imagenet2012', 'ILSVRC2012_img_train.tar'),
        ('cityscapes', 'gtFine_trainvaltest.zip'),
        ('cityscapes/semantic_segmentation', 'put leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip in'),
    ],
)
def test_missing_real_dataset_fails_fast(tmp_path, name, needle):
  t = time.time()
  with pytest.raises(UserError) as e:
    sources.load_source(name, 'train', str(tmp_path))
  assert time.time() - t < 10
  msg = str(e.value)
  assert '\n' not in msg and repr(name) in msg and needle in msg and str(tmp_path) in msg


def test_cityscapes_with_some_manual_files_names_the_missing_one(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  (manual / 'leftImg8bit_trainvaltest.zip').write_bytes(b'')
  with pytest.raises(UserError) as e:
    sources.load_source('cityscapes/semantic_segmentation', 'train', str(tmp_path))
  msg = str(e.value)
  assert '\n' not in msg and str(manual) in msg and msg.endswith('(missing: gtFine_trainvaltest.zip)')


def test_unknown_dataset(tmp_path):
  with pytest.raises(UserError, match='no_such_dataset_xyz'):
    sources.load_source('no_such_dataset_xyz', 'train', str(tmp_path))


def test_unknown_split(digits_train, tfds_dir):
  with pytest.raises(UserError, match='validation'):
    sources.load_source('digits', 'validation', tfds_dir)


# --------------------------------------------------------------------------------- transforms


def test_transform_spec_errors():
  with pytest.raises(UserError, match='no_such_op'):
    ops.build_transforms(['flip_lr', 'no_such_op(size=3)'])
  with pytest.raises(UserError, match='random_crop'):
    ops.build_transforms(['random_crop(size=x)'])  # not a literal
  with pytest.raises(UserError):
    ops.build_transforms(['random_crop(siz=3)'])  # bad kwarg
  with pytest.raises(ValueError):
    registry.register('flip_lr')(lambda: None)
  assert {'random_crop', 'flip_lr', 'center_crop', 'resize', 'normalize', 'keep'} <= set(registry.registered())


def test_transforms_shapes_and_determinism(digits_train):
  train, _ = digits_train
  f = ops.build_transforms(
      [
          'random_crop(size=32, padding=4)',
          'flip_lr',
          'resize(size=40)',
          'center_crop(36)',
          'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))',
          "keep(('image', 'label'))",
      ]
  )
  a = f(train[3], np.random.default_rng(7))
  b = f(train[3], np.random.default_rng(7))
  assert a['image'].shape == (36, 36, 3) and a['image'].dtype == np.float32
  assert -1.0 <= a['image'].min() and a['image'].max() <= 1.0
  np.testing.assert_array_equal(a['image'], b['image'])
  rrc = ops.build_transforms(['random_resized_crop(size=24)'])(train[3], np.random.default_rng(1))
  assert rrc['image'].shape == (24, 24, 3) and rrc['image'].dtype == np.uint8


def test_segmentation_transforms_are_joint():
  h, w = 10, 12
  image = np.zeros((h, w, 3), np.uint8)
  image[..., 0] = np.arange(h * w).reshape(h, w) % 200 + 1  # never 0, so padding is visible
  ex = {'image': image, 'segmentation': image[..., 0].copy()}
  f = ops.build_transforms(['random_crop(size=(8, 16), padding=3)', 'flip_lr(p=1.0)'])
  for s in range(10):
    out = f(ex, np.random.default_rng(s))
    img, seg = out['image'][..., 0], out['segmentation']
    assert seg.shape == (8, 16) == img.shape
    pad = img == 0
    assert np.all(seg[pad] == 255) and np.all(seg[~pad] == img[~pad])
  r = ops.build_transforms(['resize(size=(5, 6))'])(ex, np.random.default_rng(0))
  assert r['segmentation'].shape == (5, 6)
  assert set(np.unique(r['segmentation'])) <= set(np.unique(ex['segmentation']))  # nearest


# ----------------------------------------------------------------------------------- pipeline


def test_train_batches_types_and_determinism(digits_train):
  train, _ = digits_train
  kw = dict(transforms=['random_crop(size=32, padding=4)', 'flip_lr', 'normalize'], global_batch_size=32)
  a = _take(_train(train, **kw), 3)
  b = _take(_train(train, **kw), 3)
  c = _take(_train(train, seed=1, **kw), 3)
  assert a[0]['image'].shape == (32, 32, 32, 3) and a[0]['image'].dtype == np.float32
  assert a[0]['label'].shape == (32,) and a[0]['label'].dtype == np.int32
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(a[0]['label'], c[0]['label'])


def test_epochs_are_permutations_in_different_orders():
  n, gb = 100, 8  # 12 steps per epoch, 4 examples dropped per epoch
  steps = pipeline.steps_per_epoch(n, gb)
  assert steps == 12
  batches = list(_train(_ids(n), global_batch_size=gb, num_epochs=3))
  assert len(batches) == 3 * steps
  epochs = [np.concatenate([b['label'] for b in batches[e * steps : (e + 1) * steps]]) for e in range(3)]
  for ep in epochs:
    assert len(set(ep.tolist())) == steps * gb  # no repeats within an epoch
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  # Infinite stream starts with the same epochs.
  inf = _take(_train(_ids(n), global_batch_size=gb), steps + 1)
  np.testing.assert_array_equal(inf[steps]['label'], batches[steps]['label'])


def test_resume_with_get_state_set_state():
  src = _ids(200)
  it = _train(src)
  _take(it, 5)
  state = it.get_state()
  want = _take(it, 30)  # crosses an epoch boundary (25 steps/epoch)
  it2 = _train(src)
  it2.set_state(state)
  got = _take(it2, 30)
  for x, y in zip(want, got):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_array_equal(x['image'], y['image'])


def test_resume_with_orbax(tmp_path):
  import orbax.checkpoint as ocp

  src = _ids(200)
  it = _train(src)
  _take(it, 4)
  mngr = ocp.CheckpointManager(str(tmp_path))
  mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  mngr.close()
  want = _take(it, 3)
  it2 = _train(src)
  mngr = ocp.CheckpointManager(str(tmp_path))
  mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  mngr.close()
  for x, y in zip(want, _take(it2, 3)):
    np.testing.assert_array_equal(x['image'], y['image'])


@pytest.mark.parametrize('nproc', [2, 4])
def test_process_shards_reassemble_global_batches(nproc):
  src = _ids(300)
  steps = 2 * pipeline.steps_per_epoch(300, 16) + 3  # into the third epoch
  single = _take(_train(src, global_batch_size=16), steps)
  shards = [_take(_train(src, global_batch_size=16, process_index=p, process_count=nproc), steps) for p in range(nproc)]
  for k in range(steps):
    local = [s[k] for s in shards]
    assert all(b['label'].shape == (16 // nproc,) for b in local)
    labels = [b['label'].tolist() for b in local]
    flat = sum(labels, [])
    assert len(set(flat)) == len(flat)  # disjoint across processes
    # In process order the local batches ARE the 1-process batch: same records, same positions (so
    # per-position randomness like drop-path masks matches), same augmentation.
    assert flat == single[k]['label'].tolist()
    np.testing.assert_array_equal(np.concatenate([b['image'] for b in local]), single[k]['image'])


def test_indivisible_batch_is_user_error():
  with pytest.raises(UserError):
    _train(_ids(50), global_batch_size=10, process_count=3)
  with pytest.raises(UserError):
    _train(_ids(5), global_batch_size=8)


@pytest.mark.parametrize('n,gb,nproc', [(360, 64, 1), (360, 64, 2), (360, 63, 3), (7, 4, 2), (361, 96, 3)])
def test_eval_batches_count_each_example_once(n, gb, nproc):
  src = _ids(n)
  counts = np.zeros(n, int)
  lens = []
  for p in range(nproc):
    ds = pipeline.make_eval_batches(
        src, transforms=['center_crop(size=4)'], global_batch_size=gb, process_index=p, process_count=nproc
    )
    batches = list(ds)
    lens.append(len(batches))
    assert len(ds) == len(batches)
    for b in batches:
      assert b['mask'].dtype == bool and b['mask'].shape == (gb // nproc,)
      assert b['image'].shape == (gb // nproc, 4, 4, 3)
      assert np.all(b['image'][~b['mask']] == 0)
      np.add.at(counts, b['label'][b['mask']], 1)
  assert len(set(lens)) == 1 and lens[0] == -(-math.ceil(n / nproc) // (gb // nproc))
  np.testing.assert_array_equal(counts, 1)


def test_eval_padding_fills_label_maps_with_ignore():
  """Padded eval examples: segmentation (and a spatial 'label') 255, never class 0; other features 0."""
  src = [
      {
          'image': np.full((3, 4, 3), 9, np.uint8),
          'segmentation': np.full((3, 4), 2, np.uint8),
          'label': np.int64(4),
          'label_map': np.ones((3, 4), np.uint8),
      }
      for _ in range(3)
  ]
  grid = [{'image': np.zeros((2, 2, 1), np.uint8), 'label': np.full((2, 2), 3, np.uint8)}]
  batches = list(
      pipeline.make_eval_batches(src, transforms=None, global_batch_size=2, process_index=0, process_count=1)
  )
  last = batches[-1]
  assert last['mask'].tolist() == [True, False]
  assert np.all(last['segmentation'][1] == 255) and np.all(last['segmentation'][0] == 2)
  assert last['label'][1] == 0 and np.all(last['image'][1] == 0) and np.all(last['label_map'][1] == 0)
  padded = list(
      pipeline.make_eval_batches(grid, transforms=None, global_batch_size=2, process_index=0, process_count=1)
  )[0]
  assert np.all(padded['label'][1] == 255) and np.all(padded['label'][0] == 3)


def test_segmentation_num_classes_come_from_the_dataset_modules():
  from core_jax.data import cityscapes
  from core_jax.data.embedded import digit_scenes

  assert sources.segmentation_num_classes('digit_scenes') == digit_scenes.NUM_CLASSES == 11
  assert sources.segmentation_num_classes('cityscapes') == cityscapes.NUM_CLASSES == 19
  assert sources.segmentation_num_classes('digits') is None


_REGISTRY_SCRIPT = r"""
import ast, os, sys
from core_jax.data import registry
ops_modules = ['core_jax.data.transforms', 'core_jax.data.augment', 'core_jax.data.randaugment',
               'core_jax.data.segmentation', 'core_jax.data.cityscapes', 'core_jax.data.ops']
assert registry.registered() == () and not [m for m in ops_modules if m in sys.modules], 'registry imported ops'
from core_jax.data import ops
listed = {m.__name__ for m in ops.OP_MODULES}
origins = {registry.factory(n).__module__ for n in registry.registered()}
assert origins == listed, (origins, listed)
# Module-level imports inside core_jax.data form no cycle (the op modules never import ops.py).
root = os.path.dirname(registry.__file__)
graph = {}
for name in os.listdir(root):
  if name.endswith('.py'):
    mod = 'core_jax.data.' + name[:-3]
    tree = ast.parse(open(os.path.join(root, name)).read())
    deps = set()
    for node in tree.body:
      if isinstance(node, ast.ImportFrom) and node.module:
        deps |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
      elif isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
    local = {f'core_jax.data.{n[:-3]}' for n in os.listdir(root) if n.endswith('.py')}
    graph[mod] = deps & local
def visit(m, stack):
  assert m not in stack, 'import cycle: ' + ' -> '.join(stack + [m])
  for d in graph.get(m, ()):
    visit(d, stack + [m])
for m in graph:
  visit(m, [])
print(len(registry.registered()))
"""


def test_registry_imports_no_ops_and_every_op_comes_from_a_listed_module():
  out = subprocess.run(
      [sys.executable, '-c', _REGISTRY_SCRIPT],
      capture_output=True,
      text=True,
      timeout=120,
      env=dict(os.environ, PYTHONPATH=os.getcwd()),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.split()[-1]) >= 20


def test_existing_specs_build_through_ops():
  from configs.convnext import digits, in1k
  from configs.pruning import _recipes

  imagenet = _recipes.imagenet_recipe(_recipes.experiment_config()).data
  ex = {'image': np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)}
  for specs in (
      digits.get_config().data.train_transforms,
      in1k.TRAIN_TRANSFORMS(32),
      in1k.EVAL_224,
      imagenet.train_transforms[2:],  # after keep and decode_jpeg: the example is an array already
      imagenet.eval_transforms[2:],
  ):
    a = ops.build_transforms(list(specs))(dict(ex), np.random.default_rng(1))
    b = ops.build_transforms(list(specs))(dict(ex), np.random.default_rng(1))
    assert a['image'].dtype == np.float32
    np.testing.assert_array_equal(a['image'], b['image'])


def test_to_global_single_process():
  import jax
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = Mesh(np.array(jax.devices()), ('data',))
  batch = next(_train(_ids(64), global_batch_size=8 * len(jax.devices())))
  g = pipeline.to_global(batch, NamedSharding(mesh, P('data')))
  assert isinstance(g['image'], jax.Array) and g['image'].shape == batch['image'].shape
  np.testing.assert_array_equal(np.asarray(g['label']), batch['label'])
  g2 = pipeline.to_global(batch, lambda x: NamedSharding(mesh, P('data')))
  assert g2['label'].sharding == g['label'].sharding


def test_embedded_records_decode_once_and_reads_are_copies(digits_train):
  """An embedded split keeps each record after its first read (sources.DecodedOnce); a read is a new dict of
  copies, so a transform that writes into its example leaves the kept record as read; pickled (grain's workers)
  without the kept records."""
  source, _ = digits_train
  kept = source.source
  assert isinstance(kept, sources.DecodedOnce)
  first = source[3]
  want = first['image'].copy()
  first['image'][:] = 0
  first['label'] = -1
  again = source[3]
  assert np.array_equal(again['image'], want) and again['label'] != -1
  assert np.array_equal(again['image'], kept.source[3]['image'])  # the kept record is the decoded one
  assert 3 in kept._records and not pickle.loads(pickle.dumps(kept))._records
