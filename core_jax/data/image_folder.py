"""`image_folder:<root>`: a TFDS builder over an image-folder tree (ImageNet-22K style), as array_record.

Layout (torchvision `ImageFolder`): one folder per class, images inside (any depth below the class
folder). Either the root itself is the class tree (-> one split, 'train'), or the root holds split
folders that are each a class tree (e.g. `train/`, `val/` -> splits 'train', 'val').

Classes are the sorted class-folder names of the first split (torchvision order; the official
ConvNeXt 22K head uses exactly this order), label = index in that list; every split must use the same
class names. Files are stored as their encoded bytes (JPEG, PNG, ... unchanged, no re-encoding), so the
train/eval transforms must start with `decode_jpeg` (PIL; any format, converted to RGB).

Each distinct root gets its own TFDS config `<basename>_<sha1(abs root)[:8]>` under
`<data_dir>/image_folder/`, prepared once (first `load_source`) and reused afterwards. Use through
`core_jax.data.sources.load_source('image_folder:/path/to/root', split, data_dir)`, i.e. a config's
`data.name = 'image_folder:/path/to/root'`. Splits support TFDS slicing (e.g. 'train[:10000]').
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp', '.jpe')


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def _has_direct_images(path: str) -> bool:
  return any(e.is_file() and _is_image(e.name) for e in os.scandir(path))


def find_splits(root: str) -> dict[str, str]:
  """{split name: class-tree dir}. A root whose sub-folders hold sub-folders of images is a split root."""
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f'image folder {root} does not exist')
  subs = _subdirs(root)
  if not subs:
    raise ValueError(f'image folder {root} has no class folders')
  # Split layout: no sub-folder holds images directly, and each holds folders.
  if all(not _has_direct_images(os.path.join(root, s)) and _subdirs(os.path.join(root, s)) for s in subs):
    return {s: os.path.join(root, s) for s in subs}
  return {'train': root}


def list_images(class_root: str, classes: list[str]) -> list[tuple[str, int]]:
  """Sorted (path, label) pairs under each class folder (recursively)."""
  out = []
  for label, cls in enumerate(classes):
    cdir = os.path.join(class_root, cls)
    if not os.path.isdir(cdir):
      continue
    for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
      dirnames.sort()
      for f in sorted(filenames):
        if _is_image(f):
          out.append((os.path.join(dirpath, f), label))
  return out


def config_name(root: str) -> str:
  root = os.path.abspath(os.path.expanduser(root))
  base = re.sub(r'[^A-Za-z0-9_]+', '_', os.path.basename(root.rstrip('/')) or 'root').strip('_') or 'root'
  return f'{base[:40]}_{hashlib.sha1(root.encode()).hexdigest()[:8]}'


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Encoded image bytes + integer label from a class-per-folder tree; see the module docstring."""

  name = 'image_folder'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def __init__(self, *, root: str, **kwargs):
    self._root = os.path.abspath(os.path.expanduser(root))
    self._splits = find_splits(self._root)
    first = 'train' if 'train' in self._splits else next(iter(self._splits))
    self._classes = _subdirs(self._splits[first])
    config = tfds.core.BuilderConfig(name=config_name(self._root), description=f'image folder {self._root}')
    super().__init__(config=config, **kwargs)

  @property
  def classes(self) -> list[str]:
    return list(self._classes)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=f'Image-folder tree at {self._root} (encoded image bytes, sorted class folders).',
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes, not decoded
                'label': tfds.features.ClassLabel(names=self._classes),
            }
        ),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    for split, path in self._splits.items():
      extra = sorted(set(_subdirs(path)) - set(self._classes))
      if extra:
        raise ValueError(f'split {split!r} of {self._root} has class folders not in the first split: {extra[:5]}')
    return {split: self._generate_examples(path) for split, path in self._splits.items()}

  def _generate_examples(self, class_root):
    for path, label in list_images(class_root, self._classes):
      with open(path, 'rb') as f:
        data = f.read()
      yield os.path.relpath(path, class_root), {'image': data, 'label': label}
