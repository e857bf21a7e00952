"""ImageNet-style augmentations with timm semantics, registered into `core_jax.data.registry`: decoding and
random erasing here, RandAugment in `core_jax.data.randaugment`, the crops, resizes and normalize in
`core_jax.data.transforms` (built from `core_jax.data.primitives`).

Every op is numpy/PIL only and deterministic given the per-record `np.random.Generator`; the
random draws happen in the same order and with the same distributions as timm's python-`random`
draws, so the sampled parameters follow timm's distributions exactly (tests check this with a
generator shim that replays timm's RNG streams).

Registered ops (spec strings for configs):

  decode_jpeg                              bytes (any PIL format) -> uint8 RGB HWC; no-op on arrays
  random_erasing(prob=0.25, mode='pixel', min_area=0.02, max_area=1/3, min_aspect=0.3,
                 max_aspect=None, min_count=1, max_count=None)     (after normalize: float image)

ConvNeXt train pipeline (timm `create_transform(is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1)`):
  ['decode_jpeg', 'random_resized_crop_timm(size=224)', 'flip_lr', 'randaugment',
   'imagenet_normalize', 'random_erasing(prob=0.25)']
then batch-level Mixup/CutMix from `core_jax.data.mixing`. Eval (crop_pct 0.875 at 224; squash at >=384):
  ['decode_jpeg', 'resize_shorter_and_center_crop(size=224)', 'imagenet_normalize']
  ['decode_jpeg', 'squash_resize(size=384)', 'imagenet_normalize']

Speed: resizes and RandAugment's geometric ops run in C++ kernels equal to Pillow bit for bit
(core_jax.data.image_kernels; Pillow whenever they cannot take a case), which read Pillow images in
place and hand numpy arrays on; the colour ops stay Pillow calls.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from core_jax.data import primitives
from core_jax.data.registry import Transform, register
from core_jax.errors import UserError

# ---------------------------------------------------------------------------------- decode


@register('decode_jpeg')
def decode_jpeg() -> Transform:
  """Decodes encoded image bytes (JPEG/PNG/...) with PIL to uint8 RGB HWC; arrays pass through."""

  def op(ex, rng):
    del rng
    x = ex['image']
    if isinstance(x, np.ndarray) and x.dtype == object and x.ndim == 0:
      x = x.item()
    if isinstance(x, np.bytes_):
      x = bytes(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
      img = Image.open(io.BytesIO(bytes(x)))
      img.load()
      # convert() to the same mode copies the image; most JPEGs are RGB already.
      # Stays a PIL image while PIL ops follow (crop, resize, RandAugment): each PIL <-> numpy
      # round trip is a full copy. `build_transforms` hands out numpy arrays in the end.
      ex['image'] = img if img.mode == 'RGB' else img.convert('RGB')
    return ex

  return op


# --------------------------------------------------------------------------- random erasing


def erase_boxes(
    img_h: int,
    img_w: int,
    rng: np.random.Generator,
    *,
    prob=0.25,
    min_area=0.02,
    max_area=1 / 3,
    min_aspect=0.3,
    max_aspect=None,
    min_count=1,
    max_count=None,
):
  """timm RandomErasing box sampling -> list of (top, left, h, w) (empty if not erasing)."""
  if rng.random() > prob:
    return []
  max_aspect = max_aspect or 1 / min_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))
  max_count = max_count or min_count
  count = min_count if min_count == max_count else int(rng.integers(min_count, max_count + 1))
  area = img_h * img_w
  boxes = []
  for _ in range(count):
    for _ in range(10):
      target_area = rng.uniform(min_area, max_area) * area / count
      aspect = math.exp(rng.uniform(log_aspect[0], log_aspect[1]))
      h = int(round(math.sqrt(target_area * aspect)))
      w = int(round(math.sqrt(target_area / aspect)))
      if w < img_w and h < img_h:
        top = int(rng.integers(0, img_h - h + 1))
        left = int(rng.integers(0, img_w - w + 1))
        boxes.append((top, left, h, w))
        break
  return boxes


@register('random_erasing')
def random_erasing(
    prob: float = 0.25,
    mode: str = 'pixel',
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    max_aspect=None,
    min_count: int = 1,
    max_count=None,
) -> Transform:
  """timm RandomErasing on the *normalized* float HWC image (timm applies it to the normalized CHW
  tensor): mode 'pixel' = per-pixel N(0, 1) noise, 'rand' = per-box per-channel N(0, 1), 'const' = 0."""
  mode = (mode or 'const').lower()
  if mode not in ('pixel', 'rand', 'const'):
    raise UserError(f"random_erasing: mode must be 'pixel', 'rand' or 'const', got {mode!r}")
  kw = dict(
      prob=prob,
      min_area=min_area,
      max_area=max_area,
      min_aspect=min_aspect,
      max_aspect=max_aspect,
      min_count=min_count,
      max_count=max_count,
  )

  def op(ex, rng):
    primitives.check_no_segmentation(ex, 'random_erasing')
    x = np.asarray(ex['image'])
    if not np.issubdtype(x.dtype, np.floating):
      raise UserError('random_erasing works on the normalized float image: put it after normalize')
    h, w = x.shape[:2]
    boxes = erase_boxes(h, w, rng, **kw)
    if not boxes:
      return ex
    x = np.array(x, copy=True)
    chan = x.shape[2] if x.ndim == 3 else None
    for top, left, bh, bw in boxes:
      if mode == 'pixel':
        shape = (bh, bw) if chan is None else (bh, bw, chan)
        fill = rng.standard_normal(shape, dtype=np.float32)
      elif mode == 'rand':
        fill = rng.standard_normal(() if chan is None else (chan,), dtype=np.float32)
      else:
        fill = 0.0
      x[top : top + bh, left : left + bw] = fill
    ex['image'] = x
    return ex

  return op
