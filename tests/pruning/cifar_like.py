"""Tiny stand-ins for TFDS `cifar10` / `cifar100`, prepared into a test-only data dir.

`prepare(data_dir, name, num_train, num_test)` writes DATA_DIR/<name>/3.0.2 in array_record format with the real
builders' exact feature layout (id Text, image uint8 32x32x3, label ClassLabel(10 | 100), cifar100 also
coarse_label ClassLabel(20)), so `core_jax.data.sources.load_source('cifar10', 'train', data_dir)` -- and with it
the real cifar configs' code paths -- reads them through the registered TFDS builder like the real data. The
images are class-dependent colour blobs plus noise, so a few steps of training move the accuracy.
"""

import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar

_SIZES = {'cifar10': 10, 'cifar100': 100}


def _examples(name: str, split: str, count: int):
  num_classes = _SIZES[name]
  rng = np.random.default_rng((0 if split == 'train' else 1) + 7 * num_classes)
  palette = np.random.default_rng(123).integers(30, 226, size=(num_classes, 3))
  yy, xx = np.mgrid[0:32, 0:32]
  for i in range(count):
    label = int(i % num_classes)
    cy, cx = (label * 7) % 20 + 6, (label * 11) % 20 + 6
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < 49)[..., None]
    image = np.where(blob, palette[label], 255 - palette[label]) + rng.normal(0, 20, (32, 32, 3))
    example = {'id': f'{split}_{i:05d}', 'image': np.clip(image, 0, 255).astype(np.uint8), 'label': label}
    if name == 'cifar100':
      example['coarse_label'] = label // 5
    yield i, example


def _builder_class(name: str):
  base = cifar.Cifar10 if name == 'cifar10' else cifar.Cifar100

  with tfds.core.registered.skip_registration():

    class Tiny(base):  # same name, version and features as the real builder; generated examples
      counts = {'train': 0, 'test': 0}

      def _split_generators(self, dl_manager):
        del dl_manager
        return {split: _examples(name, split, n) for split, n in self.counts.items()}

      def _generate_examples(self, *args, **kwargs):  # not reached: the splits above are generators
        raise NotImplementedError

    Tiny.name = name
  return Tiny


def prepare(data_dir: str, name: str = 'cifar10', num_train: int = 128, num_test: int = 64) -> str:
  """Prepares the tiny `name` ('cifar10' | 'cifar100') into data_dir (once); returns data_dir."""
  if os.path.isfile(os.path.join(data_dir, name, cifar.Cifar10.VERSION.__str__(), 'dataset_info.json')):
    return data_dir
  cls = _builder_class(name)
  cls.counts = {'train': num_train, 'test': num_test}
  builder = cls(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
  )
  return data_dir
