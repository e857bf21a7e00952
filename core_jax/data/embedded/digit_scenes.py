"""`digit_scenes`: 64x128 canvases of pasted sklearn digits with per-pixel labels (segmentation)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from core_jax.data.embedded import digits

HEIGHT, WIDTH = 64, 128
NUM_CLASSES = 11  # 0 = background, 1..10 = digit + 1
IGNORE = 255
SPLIT_SIZES = {'train': 1000, 'validation': 200}
# Glyph pool per split, so validation scenes only contain held-out handwriting.
GLYPH_SPLIT = {'train': 'train', 'validation': 'test'}
SPLIT_SEEDS = {'train': 1, 'validation': 2}
# Resized glyph intensity a in [0, 1]: a > HI is the digit, LO < a <= HI is an anti-aliased
# border whose class is ambiguous, so it is labelled IGNORE.
LO, HI = 0.2, 0.5


def render_scene(rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray):
  """One canvas: uint8 image (H, W, 3) and uint8 segmentation (H, W)."""
  image = rng.uniform(0, 40, size=(HEIGHT, WIDTH, 3)).astype(np.float32)  # mild noise
  seg = np.zeros((HEIGHT, WIDTH), np.uint8)
  for _ in range(int(rng.integers(1, 5))):
    k = int(rng.integers(len(labels)))
    size = int(rng.integers(16, 41))
    y = int(rng.integers(0, HEIGHT - size + 1))
    x = int(rng.integers(0, WIDTH - size + 1))
    color = rng.uniform(120, 255, size=3).astype(np.float32)
    a = digits.resize_gray(glyphs[k], size, size)
    win = (slice(y, y + size), slice(x, x + size))
    image[win] = image[win] * (1 - a[..., None]) + color * a[..., None]
    # Later digits occlude earlier ones wherever they have visible ink.
    seg_win = seg[win]
    seg_win[a > LO] = IGNORE
    seg_win[a > HI] = labels[k] + 1
  return np.clip(np.round(image), 0, 255).astype(np.uint8), seg


class DigitScenes(tfds.core.GeneratorBasedBuilder):
  """Synthetic multi-digit scenes for semantic segmentation."""

  name = 'digit_scenes'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='1-4 sklearn digits pasted on a noisy 64x128 canvas; labels 0=bg, 1..10=digit+1, 255=ignore.',
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(HEIGHT, WIDTH, 3), dtype=np.uint8),
                'segmentation': tfds.features.Tensor(shape=(HEIGHT, WIDTH), dtype=np.uint8),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    glyphs, labels = digits.load_glyphs(GLYPH_SPLIT[split])
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    for i in range(SPLIT_SIZES[split]):
      image, seg = render_scene(rng, glyphs, labels)
      yield i, {'image': digits.png(image), 'segmentation': seg}
