"""ADE20K (SceneParse150, the 150-class benchmark mmseg trains UperNet on) from its release folder.

Layout (ADEChallengeData2016.zip, http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip):
    ADEChallengeData2016/images/training/ADE_train_00000001.jpg ...       20,210 images
    ADEChallengeData2016/images/validation/ADE_val_00000001.jpg ...       2,000 images
    ADEChallengeData2016/annotations/{training,validation}/<same stem>.png   uint8 class maps, 0 = other, 1..150
A config names it `data.name = 'ade20k'` (the folder `ADEChallengeData2016` in `data.data_dir`, or in
$TFDS_DATA_DIR / ~/tensorflow_datasets when that is empty) or `'ade20k:/path/to/ADEChallengeData2016'`;
splits 'train' / 'training' and 'validation' / 'val'. Records come out as {'image': (H, W, 3) uint8 RGB,
'segmentation': (H, W) uint8}, the labels reduced as mmseg's `reduce_zero_label=True`: 0 -> 255 (ignore),
1..150 -> 0..149. A label above 150 (other than 255, already ignore) is not an ADE20K class map: UserError.

Why not TFDS `scene_parse150`: its builder (tensorflow_datasets/datasets/scene_parse150) reads the Places
Challenge 2017 `annotations_instance` PNGs, whose red channel is the category of the 100-class instance task and
green the instance id (CSAILVision/placeschallenge instancesegmentation/README.md), not the 150-class maps the
paper's mIoU is over; `load_source('scene_parse150', ...)` says so in one line and where to put the release folder.
"""

from __future__ import annotations

import os

import numpy as np

from core_jax.data.registry import IGNORE_LABEL, LABEL_MAP_KEY
from core_jax.errors import UserError

NUM_CLASSES = 150
FOLDER = 'ADEChallengeData2016'
URL = 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'
SPLITS = {'train': 'training', 'training': 'training', 'validation': 'validation', 'val': 'validation'}


def _tables() -> np.ndarray:
  lut = np.full(256, IGNORE_LABEL, np.uint8)
  lut[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES, dtype=np.uint8)
  lut.setflags(write=False)
  return lut


REDUCE_ZERO_LABEL_LUT = _tables()


def reduce_zero_label(label: np.ndarray, where: str = 'ADE20K label map') -> np.ndarray:
  """uint8 ADE20K classes (0 = other, 1..150) -> 0..149 with 0 -> 255, as mmseg's reduce_zero_label; 255 stays
  ignore. UserError naming `where` and the values when any is outside 0..150 and not 255."""
  x = np.asarray(label)
  if x.ndim == 3:
    x = x[..., 0]
  if x.dtype != np.uint8:
    x = x.astype(np.int64)
  bad = ((x > NUM_CLASSES) & (x != IGNORE_LABEL)) | (x < 0)
  if bad.any():
    raise UserError(
        f'{where} has values {np.unique(x[bad])[:8].tolist()} outside the ADE20K classes 0..150 '
        f'(expected the 150-class annotations of {FOLDER})'
    )
  return REDUCE_ZERO_LABEL_LUT[x.astype(np.uint8)]


def default_root(data_dir: str) -> str:
  return os.path.join(data_dir, FOLDER)


def _where_to_put(root: str) -> str:
  return (
      f'put {FOLDER} (images/ and annotations/, each with training/ and validation/; {URL}) at {root}, '
      f"or name the folder as data.name='ade20k:/path/to/{FOLDER}'"
  )


class ReleaseFolderSource:
  """Random-access source of one split of the release folder: the images' sorted file stems, each read and
  decoded on access (picklable for grain's workers). A missing folder, split or annotation is a UserError when the
  source is made, saying where the dataset goes."""

  def __init__(self, root: str, split: str):
    self.root = os.path.abspath(os.path.expanduser(root))
    if split not in SPLITS:
      raise UserError(f'ADE20K has no split {split!r} (splits: training, validation; also train, val)')
    sub = SPLITS[split]
    self.image_dir = os.path.join(self.root, 'images', sub)
    self.label_dir = os.path.join(self.root, 'annotations', sub)
    for d in (self.image_dir, self.label_dir):
      if not os.path.isdir(d):
        raise UserError(f'ADE20K: no folder {d}; {_where_to_put(self.root)}')
    stems = sorted(f[:-4] for f in os.listdir(self.image_dir) if f.lower().endswith('.jpg') and not f.startswith('.'))
    if not stems:
      raise UserError(f'ADE20K: no .jpg images in {self.image_dir}; {_where_to_put(self.root)}')
    labels = {f[:-4] for f in os.listdir(self.label_dir) if f.lower().endswith('.png')}
    missing = [s for s in stems if s not in labels]
    if missing:
      raise UserError(
          f'ADE20K: {len(missing)} of the {len(stems)} images in {self.image_dir} have no annotation '
          f'{missing[0]}.png in {self.label_dir}; {_where_to_put(self.root)}'
      )
    self.stems = tuple(stems)

  def __len__(self) -> int:
    return len(self.stems)

  def __getitem__(self, index: int) -> dict:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    stem = self.stems[index]
    with Image.open(os.path.join(self.image_dir, stem + '.jpg')) as im:
      image = np.asarray(im.convert('RGB'))
    label_path = os.path.join(self.label_dir, stem + '.png')
    with Image.open(label_path) as im:
      label = np.asarray(im)
    return {'image': image, LABEL_MAP_KEY: reduce_zero_label(label, label_path)}


def scene_parse150_error(data_dir: str) -> UserError:
  return UserError(
      "TFDS 'scene_parse150' holds the 2017 instance annotations (100 categories in the red channel), not ADE20K's "
      f"150-class maps: use data.name='ade20k' and {_where_to_put(default_root(data_dir))}"
  )


def split_sizes(root: str) -> dict[str, int]:
  """{split: number of images} of the release folder's splits that exist."""
  out = {}
  for split in ('training', 'validation'):
    d = os.path.join(root, 'images', split)
    if os.path.isdir(d):
      out[split] = sum(1 for f in os.listdir(d) if f.lower().endswith('.jpg') and not f.startswith('.'))
  return out
