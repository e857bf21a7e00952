"""Cityscapes semantic segmentation: the labelIds -> trainIds mapping and the record format the pipelines see.

TFDS `cityscapes/semantic_segmentation` (manual download: leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
in the manual dir) yields {'image_id', 'image_left' (1024, 2048, 3) uint8, 'segmentation_label' (1024, 2048, 1)
uint8 raw labelIds}. `core_jax.data.sources.load_source` wraps it so records are
{'image': (H, W, 3) uint8, 'segmentation': (H, W) uint8 trainIds (0..18, 255 = ignore)}, like digit_scenes.

Mapping (cityscapesScripts labels.py): the 19 evaluated classes get trainIds 0..18 by a 256-entry lookup; every
other labelId in 0..33 and the license plate (-1, stored as 255 in a uint8 map) become 255. A label map holding an
id in 34..254, outside the labelIds, is not a Cityscapes label image: UserError naming the ids.
"""

import numpy as np

from core_jax.data.registry import IGNORE_LABEL, LABEL_MAP_KEY, Transform, register
from core_jax.errors import UserError

NUM_CLASSES = 19
# (labelId, name) of trainIds 0..18, in trainId order.
TRAIN_CLASSES = (
    (7, 'road'), (8, 'sidewalk'), (11, 'building'), (12, 'wall'), (13, 'fence'), (17, 'pole'),
    (19, 'traffic light'), (20, 'traffic sign'), (21, 'vegetation'), (22, 'terrain'), (23, 'sky'),
    (24, 'person'), (25, 'rider'), (26, 'car'), (27, 'truck'), (28, 'bus'), (31, 'train'),
    (32, 'motorcycle'), (33, 'bicycle'),
)
CLASS_NAMES = tuple(name for _, name in TRAIN_CLASSES)
NUM_LABEL_IDS = 34  # labelIds 0..33; -1 (license plate) is 255 as uint8


def _tables() -> tuple[np.ndarray, np.ndarray]:
  lut = np.full(256, IGNORE_LABEL, np.uint8)
  for train_id, (label_id, _) in enumerate(TRAIN_CLASSES):
    lut[label_id] = train_id
  known = np.zeros(256, bool)
  known[:NUM_LABEL_IDS] = True
  known[255] = True  # -1, license plate
  lut.setflags(write=False)
  known.setflags(write=False)
  return lut, known


TRAIN_ID_LUT, _KNOWN_LABEL_IDS = _tables()


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
  """uint8 labelIds (any shape) -> uint8 trainIds through `TRAIN_ID_LUT`; UserError for ids outside labelIds."""
  x = np.asarray(label_ids)
  if x.dtype != np.uint8:
    if x.size and (x.min() < -1 or x.max() > 255):
      raise UserError(f'cityscapes label map has values outside -1..255 (dtype {x.dtype})')
    x = x.astype(np.int64) % 256  # -1 -> 255
    x = x.astype(np.uint8)
  if not _KNOWN_LABEL_IDS[x].all():
    bad = np.unique(x[~_KNOWN_LABEL_IDS[x]])
    raise UserError(f'cityscapes label map has ids {bad[:8].tolist()} outside the labelIds 0..33 and -1 '
                    '(expected *_gtFine_labelIds.png)')
  return TRAIN_ID_LUT[x]


def to_example(record: dict) -> dict:
  """A TFDS cityscapes/semantic_segmentation record -> {'image', 'segmentation' (trainIds)}."""
  label = np.asarray(record['segmentation_label'])
  if label.ndim == 3:
    label = label[..., 0]
  return {'image': np.asarray(record['image_left']), LABEL_MAP_KEY: to_train_ids(label)}


@register('cityscapes_train_ids')
def cityscapes_train_ids() -> Transform:
  """Maps the example's `segmentation` from labelIds to trainIds (for records not already mapped by the source)."""

  def op(ex, rng):
    del rng
    label = np.asarray(ex[LABEL_MAP_KEY])
    ex[LABEL_MAP_KEY] = to_train_ids(label[..., 0] if label.ndim == 3 else label)
    return ex

  return op


class TrainIdSource:
  """Random-access source of `to_example` records over a TFDS cityscapes data source (picklable for grain)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    return to_example(self.source[index])
