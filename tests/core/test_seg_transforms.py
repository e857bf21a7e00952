"""Segmentation ops: OpenCV-exact resizes, the HRNet/ADP-C scale set, pad values, image/label alignment, rng."""

import numpy as np
import pytest

from core_jax.data import ops, segmentation
from core_jax.errors import UserError

BLOCK = 8
# Random, nonzero colours: no blend of two or four tile colours lands exactly on a third (evenly spaced ones do).
COLOURS = np.random.default_rng(42).integers(1, 256, (12, 3)).astype(np.uint8)


def _blocks_example(h=48, w=80, seed=0):
  """Constant BLOCK x BLOCK tiles; label = tile class and image = COLOURS[label]: label is a function of image."""
  rng = np.random.default_rng(seed)
  classes = rng.integers(0, len(COLOURS), (h // BLOCK, w // BLOCK))
  label = np.kron(classes, np.ones((BLOCK, BLOCK), np.int64)).astype(np.uint8)
  return {'image': COLOURS[label], 'segmentation': label}


def _check_aligned(ex, min_fraction):
  """Where the (bilinear) image shows a tile colour exactly, the (nearest) label is that tile's class."""
  image, label = ex['image'], ex['segmentation']
  assert image.shape[:2] == label.shape and label.dtype == np.uint8
  match = (image[:, :, None, :] == COLOURS[None, None]).all(-1)  # (H, W, classes)
  has = match.any(-1)
  cls = match.argmax(-1)
  real = label != 255
  # Interior pixels of a tile: the colour is exact and the label must be that class.
  assert np.all(label[has & real] == cls[has & real])
  assert (has & real).mean() >= min_fraction
  # Padding: label 255 exactly where the image is the pad value 0 in every channel.
  np.testing.assert_array_equal(~real, (image == 0).all(-1))


def test_bilinear_and_nearest_are_opencv_bit_for_bit():
  cv2 = pytest.importorskip('cv2')
  rng = np.random.default_rng(0)
  for trial in range(40):
    h, w = (int(v) for v in rng.integers(1, 60, 2))
    oh, ow = (int(v) for v in rng.integers(1, 130, 2))
    x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        segmentation.resize_bilinear(x, oh, ow),
        cv2.resize(x, (ow, oh), interpolation=cv2.INTER_LINEAR),
        err_msg=str(trial),
    )
    label = rng.integers(0, 256, (h, w), dtype=np.uint8)
    np.testing.assert_array_equal(
        segmentation.resize_nearest(label, oh, ow), cv2.resize(label, (ow, oh), interpolation=cv2.INTER_NEAREST)
    )
    xf = x.astype(np.float32) / 3
    np.testing.assert_allclose(
        segmentation.resize_bilinear(xf, oh, ow), cv2.resize(xf, (ow, oh), interpolation=cv2.INTER_LINEAR), atol=1e-3
    )
  # Every reference scale of a Cityscapes-shaped image (1/4 size: 256 x 512).
  x = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)
  for s in segmentation.CITYSCAPES_SCALE_FACTORS:
    oh, ow = segmentation.scaled_size(256, 512, s)
    np.testing.assert_array_equal(
        segmentation.resize_bilinear(x, oh, ow), cv2.resize(x, (ow, oh), interpolation=cv2.INTER_LINEAR), err_msg=str(s)
    )


def test_resize_windows_equal_windows_of_the_full_resize():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  label = rng.integers(0, 19, (37, 53), dtype=np.uint8)
  full, full_label = segmentation.resize_bilinear(x, 80, 113), segmentation.resize_nearest(label, 80, 113)
  for window in [(0, 0, 80, 113), (3, 7, 20, 30), (60, 100, 20, 13)]:
    top, left, h, w = window
    want = full[top : top + h, left : left + w]
    np.testing.assert_array_equal(segmentation.resize_bilinear(x, 80, 113, window), want)
    want_label = full_label[top : top + h, left : left + w]
    np.testing.assert_array_equal(segmentation.resize_nearest(label, 80, 113, window), want_label)


def test_scale_factor_set_and_sizes_are_the_references():
  assert np.allclose(segmentation.CITYSCAPES_SCALE_FACTORS, [0.5 + i / 10 for i in range(17)])
  # long side int(2048 s + 0.5), short side int(1024 * long / 2048 + 0.5) (HRNet multi_scale_aug)
  assert segmentation.scaled_size(1024, 2048, 0.5) == (512, 1024)
  assert segmentation.scaled_size(1024, 2048, 2.1) == (2151, 4301)  # int(1024 * 4301 / 2048 + 0.5)
  assert segmentation.scaled_size(1024, 2048, 0.7) == (717, 1434)
  assert segmentation.scaled_size(2048, 1024, 0.7) == (1434, 717)  # portrait: the height is the long side
  assert segmentation.scaled_size(64, 128, 1.5, base_size=2048) == (1536, 3072)
  # Draws are uniform over the factor list: all 17 appear, sizes follow the drawn factor.
  op = ops.build_transforms('seg_random_scale')
  seen = set()
  for seed in range(300):
    out = op({'image': np.zeros((10, 20, 3), np.uint8)}, np.random.default_rng(seed))
    seen.add(out['image'].shape[1])
  assert seen == {int(20 * s + 0.5) for s in segmentation.CITYSCAPES_SCALE_FACTORS}


def test_pad_fills_image_0_and_label_255_bottom_right():
  ex = _blocks_example(16, 24)
  out = ops.build_transforms('seg_pad(size=(20, 30))')(dict(ex), np.random.default_rng(0))
  assert out['image'].shape == (20, 30, 3) and out['segmentation'].shape == (20, 30)
  np.testing.assert_array_equal(out['image'][:16, :24], ex['image'])
  np.testing.assert_array_equal(out['segmentation'][:16, :24], ex['segmentation'])
  assert np.all(out['image'][16:] == 0) and np.all(out['image'][:, 24:] == 0)
  assert np.all(out['segmentation'][16:] == 255) and np.all(out['segmentation'][:, 24:] == 255)
  # Larger sides stay as they are.
  same = ops.build_transforms('seg_pad(size=(8, 8))')(dict(ex), np.random.default_rng(0))
  np.testing.assert_array_equal(same['image'], ex['image'])


TRAIN = ['seg_random_scale(factors=(0.5, 1.0, 1.3, 2.1))', 'seg_random_crop(size=(40, 64))', 'seg_flip']
FUSED = ['seg_random_scale_crop(size=(40, 64), factors=(0.5, 1.0, 1.3, 2.1))', 'seg_flip']


def test_train_ops_keep_label_aligned_with_image_and_pad_with_ignore():
  ex = _blocks_example()
  composed, fused = ops.build_transforms(TRAIN), ops.build_transforms(FUSED)
  padded = 0
  for seed in range(24):
    a = composed(ex, np.random.default_rng(seed))
    b = fused(ex, np.random.default_rng(seed))
    assert a['image'].shape == (40, 64, 3) and a['segmentation'].shape == (40, 64)
    _check_aligned(a, min_fraction=0.2)
    # The fused op is the composition, bit for bit, with the same draws.
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['segmentation'], b['segmentation'])
    padded += bool((a['segmentation'] == 255).any())
  assert padded > 0  # the 0.5 scale (24 x 40 < crop) pads


def test_flip_mirrors_image_and_label_together():
  ex = _blocks_example()
  out = ops.build_transforms('seg_flip(p=1.0)')(dict(ex), np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], ex['image'][:, ::-1])
  np.testing.assert_array_equal(out['segmentation'], ex['segmentation'][:, ::-1])
  kept = ops.build_transforms('seg_flip(p=0.0)')(dict(ex), np.random.default_rng(0))
  np.testing.assert_array_equal(kept['segmentation'], ex['segmentation'])
  outcomes = {
      bool(
          (
              ops.build_transforms('seg_flip')(dict(ex), np.random.default_rng(s))['segmentation'] != ex['segmentation']
          ).any()
      )
      for s in range(20)
  }
  assert outcomes == {True, False}


def test_same_rng_same_output_and_different_rngs_differ():
  ex = _blocks_example()
  op = ops.build_transforms(FUSED + ['imagenet_normalize'])
  a, b = op(ex, np.random.default_rng(5)), op(ex, np.random.default_rng(5))
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['segmentation'], b['segmentation'])
  others = [op(ex, np.random.default_rng(s))['segmentation'] for s in range(6, 12)]
  assert any(not np.array_equal(o, a['segmentation']) for o in others)
  assert ex['image'].dtype == np.uint8 and ex['image'].shape == (48, 80, 3)  # the input is not modified


def test_normalize_touches_the_image_only_and_eval_keeps_full_resolution():
  rng = np.random.default_rng(0)
  ex = {
      'image': rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8),
      'segmentation': rng.integers(0, 19, (1024, 2048), dtype=np.uint8),
  }
  out = ops.build_transforms(['imagenet_normalize'])(dict(ex), np.random.default_rng(0))
  assert out['image'].shape == (1024, 2048, 3) and out['image'].dtype == np.float32
  assert out['segmentation'] is ex['segmentation']
  mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
  np.testing.assert_allclose(out['image'][3, 5], (ex['image'][3, 5] / np.float32(255) - mean) / std, rtol=1e-6)


def test_bad_inputs_are_user_errors():
  with pytest.raises(UserError, match='factors'):
    ops.build_transforms('seg_random_scale(factors=(0.5, 0))')
  bad = {'image': np.zeros((8, 8, 3), np.uint8), 'segmentation': np.zeros((4, 8), np.uint8)}
  with pytest.raises(UserError, match='differ in size'):
    ops.build_transforms('seg_random_scale')(dict(bad), np.random.default_rng(0))
  with pytest.raises(UserError, match='differ in size'):
    ops.build_transforms('seg_random_scale_crop(size=4)')(dict(bad), np.random.default_rng(0))


@pytest.mark.slow  # 6-16 s on 2 cores: out of make test-fast (5-minute budget), still in make test
def test_digit_scenes_train_and_eval_batches(tfds_dir):
  """The ops in the grain pipelines on the embedded segmentation dataset: fixed-size train crops, full-size eval."""
  import grain

  from core_jax.data import pipeline, sources

  train, info = sources.load_source('digit_scenes', 'train', tfds_dir)
  assert info.num_classes == 11
  specs = [
      'seg_random_scale_crop(size=(48, 96), factors=(0.5, 1.0, 1.5))',
      'seg_flip',
      'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))',
  ]
  it = pipeline.make_train_iterator(
      train,
      transforms=specs,
      global_batch_size=4,
      seed=0,
      process_index=0,
      process_count=1,
      read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=4),
  )
  batch = next(it)
  assert batch['image'].shape == (4, 48, 96, 3) and batch['image'].dtype == np.float32
  assert batch['segmentation'].shape == (4, 48, 96) and batch['segmentation'].dtype == np.uint8
  assert set(np.unique(batch['segmentation']).tolist()) <= set(range(11)) | {255}
  val, _ = sources.load_source('digit_scenes', 'validation', tfds_dir)
  first = next(
      iter(
          pipeline.make_eval_batches(val, transforms=specs[-1:], global_batch_size=3, process_index=0, process_count=1)
      )
  )
  assert first['image'].shape == (3, 64, 128, 3)
  np.testing.assert_array_equal(first['segmentation'][0], val[0]['segmentation'])
