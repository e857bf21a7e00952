"""ADE20K: mmseg's label reduction and its range check, the release folder through `load_source` (a tiny fake one
made here), the one-line errors for a missing or malformed folder and for TFDS scene_parse150, and mmseg's ADE20K
train ops (random resize by ratio, the cat_max_ratio crop, the photometric distortion) against the mmseg code
transliterated here with OpenCV's colour conversions."""

import cv2
import numpy as np
import pytest
from PIL import Image

from core_jax.data import ade20k, ops, segmentation, sources
from core_jax.errors import UserError


def test_reduce_zero_label_maps_0_to_ignore_and_shifts_the_classes():
  x = np.array([[0, 1, 2], [150, 255, 75]], np.uint8)
  assert ade20k.reduce_zero_label(x).tolist() == [[255, 0, 1], [149, 255, 74]]
  np.testing.assert_array_equal(ade20k.REDUCE_ZERO_LABEL_LUT[1:151], np.arange(150))
  assert ade20k.reduce_zero_label(np.array([[3]], np.int32)).dtype == np.uint8
  with pytest.raises(UserError, match=r'^a.png has values \[151, 200\] outside the ADE20K classes 0..150') as e:
    ade20k.reduce_zero_label(np.array([[151, 200, 5]], np.uint8), 'a.png')
  assert '\n' not in str(e.value)
  with pytest.raises(UserError, match=r'values \[-1\]'):
    ade20k.reduce_zero_label(np.array([[-1, 5]], np.int64))


def _write_split(root, split, stems, labels, size=(24, 32)):
  (root / 'images' / split).mkdir(parents=True, exist_ok=True)
  (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(stems))
  for stem, label in zip(stems, labels):
    Image.fromarray(rng.integers(0, 256, size + (3,), np.uint8)).save(root / 'images' / split / f'{stem}.jpg')
    Image.fromarray(np.full(size, label, np.uint8)).save(root / 'annotations' / split / f'{stem}.png')


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  root = data_dir / ade20k.FOLDER
  _write_split(root, 'training', ['ADE_train_00000002', 'ADE_train_00000001'], [0, 150])
  _write_split(root, 'validation', ['ADE_val_00000001'], [7])
  return data_dir


def test_release_folder_loads_with_reduced_labels(release):
  source, info = sources.load_source('ade20k', 'train', str(release))
  assert len(source) == 2 and info.num_classes == 150 and info.splits == {'training': 2, 'validation': 1}
  first = source[0]  # sorted stems: ADE_train_00000001 (label 150) first
  assert first['image'].shape == (24, 32, 3) and first['image'].dtype == np.uint8
  assert first['segmentation'].dtype == np.uint8 and set(np.unique(first['segmentation'])) == {149}
  assert set(np.unique(source[1]['segmentation'])) == {255}
  val, _ = sources.load_source(f'ade20k:{release / ade20k.FOLDER}', 'validation')
  assert len(val) == 1 and set(np.unique(val[0]['segmentation'])) == {6}


def test_missing_or_malformed_folders_say_where_to_put_it(tmp_path, release):
  with pytest.raises(UserError, match=rf'^ADE20K: no folder {tmp_path}/{ade20k.FOLDER}/images/training; put ') as e:
    sources.load_source('ade20k', 'train', str(tmp_path))
  assert '\n' not in str(e.value) and ade20k.URL in str(e.value)
  root = tmp_path / 'bad'
  _write_split(root, 'training', ['a', 'b'], [1, 2])
  (root / 'annotations' / 'training' / 'b.png').unlink()
  with pytest.raises(UserError, match=r'^ADE20K: 1 of the 2 images in .* have no annotation b.png in '):
    sources.load_source(f'ade20k:{root}', 'train')
  with pytest.raises(UserError, match=r"^ADE20K has no split 'test'"):
    sources.load_source('ade20k', 'test', str(release))
  with pytest.raises(
      UserError, match=r"^TFDS 'scene_parse150' holds the 2017 instance annotations .*data.name='ade20k'"
  ):
    sources.load_source('scene_parse150', 'train', str(tmp_path))


def test_a_label_outside_0_150_stops_the_read_naming_the_file(tmp_path):
  root = tmp_path / 'ade'
  _write_split(root, 'validation', ['x'], [151])
  source, _ = sources.load_source(f'ade20k:{root}', 'validation')
  with pytest.raises(UserError, match=r'record 0 .*x.png has values \[151\] outside the ADE20K classes') as e:
    source[0]
  assert '\n' not in str(e.value)


# ----------------------------------------------------------------------------------------- mmseg's train ops
def _example(h, w, seed=0, classes=4):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (h, w, 3), np.uint8),
      'segmentation': rng.integers(0, classes, (h, w), np.uint8),
  }


def test_random_resize_ratio_is_mmcv_keep_ratio_of_the_scaled_target():
  assert segmentation.keep_ratio_size(375, 500, (2048, 512)) == (512, 683)  # short side binds
  assert segmentation.keep_ratio_size(100, 1000, (2048, 512)) == (205, 2048)  # long side binds
  op = ops.build_transforms('seg_random_resize_ratio(scale=(200, 50), ratio_range=(0.5, 2.0))')
  ex = _example(30, 40)
  out = op(dict(ex), np.random.default_rng(3))
  ratio = np.random.default_rng(3).random() * 1.5 + 0.5  # mmseg: random_sample() * (hi - lo) + lo
  h, w = segmentation.keep_ratio_size(30, 40, (int(200 * ratio), int(50 * ratio)))
  assert out['image'].shape == (h, w, 3) and out['segmentation'].shape == (h, w)
  np.testing.assert_array_equal(out['image'], cv2.resize(ex['image'], (w, h), interpolation=cv2.INTER_LINEAR))
  np.testing.assert_array_equal(
      out['segmentation'], cv2.resize(ex['segmentation'], (w, h), interpolation=cv2.INTER_NEAREST)
  )


def _mmseg_crop_window(label, ch, cw, cat_max_ratio, rng):
  """mmseg 0.x RandomCrop.get_crop_bbox + the cat_max_ratio loop, with `rng` for np.random."""
  h, w = label.shape

  def bbox():
    off_h = rng.integers(0, max(h - ch, 0) + 1)
    off_w = rng.integers(0, max(w - cw, 0) + 1)
    return off_h, off_h + ch, off_w, off_w + cw

  box = bbox()
  for _ in range(10):
    ids, cnt = np.unique(label[box[0] : box[1], box[2] : box[3]], return_counts=True)
    cnt = cnt[ids != 255]
    if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
      break
    box = bbox()
  return box


@pytest.mark.parametrize('seed', range(6))
def test_cat_max_ratio_crop_follows_mmseg(seed):
  label = np.zeros((40, 60), np.uint8)
  label[30:, 50:] = 1  # a small second class: most windows are one class and get redrawn
  label[:5] = 255
  ex = {'image': np.arange(40 * 60 * 3, dtype=np.int32).reshape(40, 60, 3) % 251, 'segmentation': label}
  out = ops.build_transforms('seg_random_crop_cat(size=(16, 16), cat_max_ratio=0.75)')(
      dict(ex), np.random.default_rng(seed)
  )
  y1, y2, x1, x2 = _mmseg_crop_window(label, 16, 16, 0.75, np.random.default_rng(seed))
  np.testing.assert_array_equal(out['segmentation'], label[y1:y2, x1:x2])
  np.testing.assert_array_equal(out['image'], ex['image'][y1:y2, x1:x2])
  small = ops.build_transforms('seg_random_crop_cat(size=(16, 16))')(_example(10, 30), np.random.default_rng(0))
  assert small['image'].shape == (10, 16, 3)  # no padding here: mmseg pads last (seg_pad)


@pytest.mark.parametrize('width', [64, 128])
def test_hsv_conversions_are_opencvs(width):
  rng = np.random.default_rng(width)
  rgb = rng.integers(0, 256, (32, width, 3), np.uint8)
  hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
  np.testing.assert_array_equal(segmentation.rgb_to_hsv_u8(rgb), hsv)
  hsv = rng.integers(0, 256, (32, width, 3), np.uint8)
  hsv[..., 0] %= 180
  np.testing.assert_array_equal(segmentation.hsv_to_rgb_u8(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def _mmseg_photometric(img, rng):
  """mmseg 0.x PhotoMetricDistortion.__call__ with `rng` for np.random and OpenCV's HSV (RGB image here)."""

  def convert(x, alpha=1, beta=0):
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

  def contrast(x):
    return convert(x, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else x

  if rng.integers(2):
    img = convert(img, beta=rng.uniform(-32, 32))
  mode = rng.integers(2)
  if mode == 1:
    img = contrast(img)
  if rng.integers(2):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  if rng.integers(2):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rng.integers(-18, 18)) % 180
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  if mode == 0:
    img = contrast(img)
  return img


def test_photometric_distortion_is_mmsegs():
  op = ops.build_transforms('photometric_distortion')
  changed = 0
  for seed in range(12):
    ex = _example(16, 64, seed)
    out = op(dict(ex), np.random.default_rng(seed))
    np.testing.assert_array_equal(out['image'], _mmseg_photometric(ex['image'], np.random.default_rng(seed)))
    np.testing.assert_array_equal(out['segmentation'], ex['segmentation'])
    changed += not np.array_equal(out['image'], ex['image'])
  assert changed >= 8
  with pytest.raises(UserError, match='needs the uint8 image'):
    op({'image': np.zeros((2, 2, 3), np.float32)}, np.random.default_rng(0))


def test_the_ade20k_train_pipeline_gives_crops_of_the_crop_size():
  specs = [
      'seg_random_resize_ratio(scale=(128, 32), ratio_range=(0.5, 2.0))',
      'seg_random_crop_cat(size=(32, 32), cat_max_ratio=0.75)',
      'seg_flip',
      'photometric_distortion',
      'imagenet_normalize',
      'seg_pad(size=(32, 32))',
  ]
  op = ops.build_transforms(specs)
  for seed in range(4):
    out = op(_example(30 + 7 * seed, 50), np.random.default_rng(seed))
    assert out['image'].shape == (32, 32, 3) and out['image'].dtype == np.float32
    assert out['segmentation'].shape == (32, 32)
