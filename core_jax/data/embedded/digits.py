"""`digits`: scikit-learn's 1,797 real 8x8 handwritten digits as 32x32x3 uint8 images."""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_TRAIN = 1437  # the remaining 360 form the test split
IMAGE_SIZE = 32


def load_glyphs(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Raw glyphs of one fixed split: float32 (N, 8, 8) in [0, 1] and int64 labels (N,)."""
  from sklearn.datasets import load_digits  # lazy: sklearn import is slow-ish

  data = load_digits()
  images = data.images.astype(np.float32) / 16.0
  labels = data.target.astype(np.int64)
  perm = np.random.default_rng(0).permutation(len(labels))
  if split == 'train':
    idx = perm[:NUM_TRAIN]
  elif split == 'test':
    idx = perm[NUM_TRAIN:]
  else:
    raise ValueError(f'unknown digits split {split!r}')
  return images[idx], labels[idx]


def png(image: np.ndarray) -> io.BytesIO:
  """Lossless PNG via PIL: TFDS would otherwise import TensorFlow (seconds) just to encode."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  buf.seek(0)
  return buf


def resize_gray(img01: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a float [0, 1] gray image (PIL, deterministic); returns float32 [0, 1]."""
  out = Image.fromarray(np.ascontiguousarray(img01, dtype=np.float32)).resize((width, height), Image.BILINEAR)
  return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits upscaled to 32x32, gray replicated to RGB."""

  name = 'digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='UCI/sklearn 8x8 handwritten digits, bilinearly upscaled to 32x32x3.',
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
                'label': tfds.features.ClassLabel(num_classes=10),
            }
        ),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is bundled with scikit-learn
    return {'train': self._generate_examples('train'), 'test': self._generate_examples('test')}

  def _generate_examples(self, split):
    images, labels = load_glyphs(split)
    for i, (img, label) in enumerate(zip(images, labels)):
      # Quantise to uint8 first so the stored image is exactly "0..16 rescaled to 0..255", upscaled.
      img8 = np.round(img * 255.0).astype(np.uint8)
      big = Image.fromarray(img8).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
      big = np.asarray(big, dtype=np.uint8)
      yield i, {'image': png(np.repeat(big[:, :, None], 3, axis=2)), 'label': int(label)}
