"""Cityscapes: the labelIds -> trainIds table against the reference sheet, bad ids, and TFDS preparation from a
fake manual dir (zips laid out as the real ones, a few 1024x2048 images) through `load_source`."""

import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from core_jax.data import cityscapes, ops, sources
from core_jax.errors import UserError

# ../shared/reference/anytime.md section 7: trainId -> labelId, name.
REFERENCE = [(0, 7, 'road'), (1, 8, 'sidewalk'), (2, 11, 'building'), (3, 12, 'wall'), (4, 13, 'fence'),
             (5, 17, 'pole'), (6, 19, 'traffic light'), (7, 20, 'traffic sign'), (8, 21, 'vegetation'),
             (9, 22, 'terrain'), (10, 23, 'sky'), (11, 24, 'person'), (12, 25, 'rider'), (13, 26, 'car'),
             (14, 27, 'truck'), (15, 28, 'bus'), (16, 31, 'train'), (17, 32, 'motorcycle'), (18, 33, 'bicycle')]
IGNORED_IDS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, -1]


def test_train_id_table_is_the_reference_sheet():
  assert cityscapes.NUM_CLASSES == 19 and cityscapes.TRAIN_ID_LUT.shape == (256,)
  assert cityscapes.TRAIN_ID_LUT.dtype == np.uint8
  want = np.full(256, 255, np.uint8)
  for train_id, label_id, name in REFERENCE:
    want[label_id] = train_id
    assert cityscapes.CLASS_NAMES[train_id] == name
  np.testing.assert_array_equal(cityscapes.TRAIN_ID_LUT, want)
  ignored = np.array(IGNORED_IDS) % 256
  assert np.all(cityscapes.TRAIN_ID_LUT[ignored] == 255)
  assert sorted([label_id for _, label_id, _ in REFERENCE] + IGNORED_IDS[:-1]) == list(range(34))


def test_to_train_ids_maps_every_label_id_and_rejects_others():
  ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
  np.testing.assert_array_equal(cityscapes.to_train_ids(ids), cityscapes.TRAIN_ID_LUT[ids])
  assert cityscapes.to_train_ids(np.array([-1, 7, 33])).tolist() == [255, 0, 18]  # signed ids, license plate
  assert cityscapes.to_train_ids(np.array([255], np.uint8)).tolist() == [255]
  with pytest.raises(UserError, match=r'ids \[34, 200\] outside the labelIds') as e:
    cityscapes.to_train_ids(np.array([[7, 34], [200, 8]], np.uint8))
  assert '\n' not in str(e.value)
  op = ops.build_transforms('cityscapes_train_ids')
  out = op({'image': np.zeros((1, 3, 3), np.uint8), 'segmentation': np.array([[[7], [26], [3]]], np.uint8)},
           np.random.default_rng(0))
  assert out['segmentation'].tolist() == [[0, 13, 255]]


def _png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


@pytest.fixture(scope='module')
def fake_cityscapes(tmp_path_factory):
  """A data dir whose manual dir holds the two zips with one 1024x2048 image per split (two for train)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  manual = data_dir / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  labels = {}
  with zipfile.ZipFile(manual / 'leftImg8bit_trainvaltest.zip', 'w') as left, \
      zipfile.ZipFile(manual / 'gtFine_trainvaltest.zip', 'w') as gt:
    for split, n in (('train', 2), ('val', 1), ('test', 1)):
      for i in range(n):
        image_id = f'aachen_{i:06d}_000019'
        image = np.zeros((1024, 2048, 3), np.uint8)
        image[..., 0] = (i * 40 + np.arange(2048) // 8) % 256
        # Blocks of labelIds 0..33 (every id), so the mapping is exercised on the decoded PNG.
        label = (np.arange(1024)[:, None] // 64 * 4 + np.arange(2048)[None] // 512 + i) % 34
        label = label.astype(np.uint8)
        labels[(split, i)] = label
        left.writestr(f'leftImg8bit/{split}/aachen/{image_id}_leftImg8bit.png', _png(image))
        gt.writestr(f'gtFine/{split}/aachen/{image_id}_gtFine_labelIds.png', _png(label))
  return str(data_dir), labels


@pytest.mark.slow  # TFDS prepares four full-size images
def test_cityscapes_source_yields_images_and_train_ids(fake_cityscapes):
  data_dir, labels = fake_cityscapes
  t = time.time()
  val, info = sources.load_source('cityscapes/semantic_segmentation', 'validation', data_dir)
  print(f'prepared in {time.time() - t:.1f}s')
  assert info.num_classes == 19 and info.features == ('image', 'segmentation')
  assert info.splits == {'train': 2, 'validation': 1, 'test': 1}
  ex = val[0]
  assert set(ex) == {'image', 'segmentation'}
  assert ex['image'].shape == (1024, 2048, 3) and ex['image'].dtype == np.uint8
  assert ex['segmentation'].shape == (1024, 2048) and ex['segmentation'].dtype == np.uint8
  np.testing.assert_array_equal(ex['segmentation'], cityscapes.TRAIN_ID_LUT[labels[('val', 0)]])
  # The full train pipeline on a real-size record: a 512x1024 crop, label values trainIds or 255.
  train, _ = sources.load_source('cityscapes/semantic_segmentation', 'train', data_dir)
  tf = ops.build_transforms(['seg_random_scale_crop(size=(512, 1024))', 'seg_flip', 'imagenet_normalize'])
  out = tf(train[1], np.random.default_rng(0))
  assert out['image'].shape == (512, 1024, 3) and out['image'].dtype == np.float32
  assert out['segmentation'].shape == (512, 1024)
  assert set(np.unique(out['segmentation']).tolist()) <= set(range(19)) | {255}
