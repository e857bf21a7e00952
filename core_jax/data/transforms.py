"""Geometric and pixel ops on `image` and, where spatial, `segmentation` together: crops, flips, resizes, normalize.

Registered into `core_jax.data.registry` (listed in `core_jax.data.ops.OP_MODULES`):

  random_crop(size, padding=0)   center_crop(size)   flip_lr(p=0.5)   resize(size, interpolation='bilinear')
  random_resized_crop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3), interpolation='bilinear', attempts=10)
  random_resized_crop_timm(size, ..., interpolation='bicubic')     (also `inception_crop`)
  resize_shorter_and_center_crop(size=224, crop_pct=0.875, interpolation='bicubic')
  squash_resize(size=384, interpolation='bicubic', crop_pct=1.0)
  normalize(mean=(0, 0, 0), std=(1, 1, 1))   imagenet_normalize   keep(keys)   rename(old='new', ...)

Each crop, resize and normalize exists once, in `core_jax.data.primitives`: the resizes and crops follow Pillow
and torchvision (what timm calls), so a torchvision eval `Resize(256), CenterCrop(224)` is
`resize_shorter_and_center_crop(size=224, crop_pct=0.875, interpolation='bilinear')`. Padding fills the image
with 0 and `segmentation` with IGNORE_LABEL (255). Normalization divides uint8 by 255 first, so mean/std are on
the 0-1 scale: ImageNet's are `primitives.IMAGENET_DEFAULT_MEAN` / `IMAGENET_DEFAULT_STD`.
"""

import math
from typing import Any

import numpy as np
from PIL import Image

from core_jax.data import image_kernels, primitives
from core_jax.data.registry import IGNORE_LABEL, Example, Transform, register
from core_jax.errors import UserError

# ------------------------------------------------------------------------------- helpers


def _spatial_keys(example: Example) -> list[tuple[str, Any]]:
  """(key, pad value) of the arrays sharing the image's spatial layout."""
  keys = [('image', 0)]
  if 'segmentation' in example:
    keys.append(('segmentation', IGNORE_LABEL))
  return keys


def _pad_to(example: Example, pad: tuple[int, int, int, int]) -> Example:
  """Pads (top, bottom, left, right) image with 0 and segmentation with IGNORE_LABEL."""
  top, bottom, left, right = pad
  if not any(pad):
    return example
  for key, value in _spatial_keys(example):
    example[key] = primitives.pad_hw(np.asarray(example[key]), top, bottom, left, right, value)
  return example


def _crop(example: Example, y: int, x: int, h: int, w: int) -> Example:
  for key, _ in _spatial_keys(example):
    example[key] = np.asarray(example[key])[y : y + h, x : x + w]
  return example


# ----------------------------------------------------------------------------------- ops


@register('random_crop')
def random_crop(size, padding: int = 0) -> Transform:
  """Zero-pad by `padding` (labels with 255), pad up to `size` if smaller, random crop."""
  ch, cw = primitives.hw(size)

  def op(ex, rng):
    ex = _pad_to(ex, (padding,) * 4)
    h, w = np.asarray(ex['image']).shape[:2]
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    ex = _pad_to(ex, (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2))
    h, w = max(h, ch), max(w, cw)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return _crop(ex, y, x, ch, cw)

  return op


@register('center_crop')
def center_crop(size) -> Transform:
  """torchvision CenterCrop: zero-pad (labels 255) where smaller, then the central (h, w) window."""
  ch, cw = primitives.hw(size)

  def op(ex, rng):
    del rng
    return primitives.center_crop_example(ex, ch, cw)

  return op


@register('flip_lr')
def flip_lr(p: float = 0.5) -> Transform:

  def op(ex, rng):
    # Always draw, so the rng stream does not depend on earlier outcomes.
    if rng.random() < p:
      for key, _ in _spatial_keys(ex):
        x = ex[key]
        if isinstance(x, Image.Image):
          ex[key] = x.transpose(Image.FLIP_LEFT_RIGHT)
          continue
        # A packed copy (C++, far faster than numpy's copy of the flipped view) where the kernels take it, so
        # later ops need not copy a negative-stride view; the view otherwise.
        flipped = image_kernels.flip_lr(x) if key == 'image' else None
        ex[key] = flipped if flipped is not None else np.asarray(x)[:, ::-1]
    return ex

  return op


@register('resize')
def resize(size, interpolation: str = 'bilinear') -> Transform:
  """Resize to `size` (int -> square), ignoring the aspect ratio; segmentation uses nearest."""
  h, w = primitives.hw(size)
  resample = primitives.interpolation(interpolation, allow_random=False)

  def op(ex, rng):
    del rng
    return primitives.resize_example(ex, h, w, resample)

  return op


@register('random_resized_crop')
def random_resized_crop(
    size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = 'bilinear', attempts: int = 10
) -> Transform:
  """Inception-style crop, timm's `RandomResizedCropAndInterpolation`: a random area fraction and aspect ratio
  (`primitives.rrc_params`, timm's draws in timm's order), resized to `size` with `interpolation`
  ('random': timm's per-image bilinear/bicubic choice, drawn after the box)."""
  out_h, out_w = primitives.hw(size)
  interp = primitives.interpolation(interpolation)
  scale, ratio = tuple(scale), tuple(ratio)

  def op(ex, rng):
    h, w = primitives.image_hw(ex['image'])
    top, left, ch, cw = primitives.rrc_params(h, w, scale, ratio, rng, attempts)
    resample = primitives.choose_interpolation(interp, rng)
    return primitives.resized_crop(ex, top, left, ch, cw, out_h, out_w, resample)

  return op


@register('random_resized_crop_timm')
@register('inception_crop')
def random_resized_crop_timm(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = 'bicubic'):
  """`random_resized_crop` with the ConvNeXt recipe's bicubic default."""
  return random_resized_crop(size, scale, ratio, interpolation)


@register('resize_shorter_and_center_crop')
def resize_shorter_and_center_crop(
    size: int = 224, crop_pct: float = 0.875, interpolation: str = 'bicubic'
) -> Transform:
  """timm `transforms_imagenet_eval` (crop_mode 'center'), i.e. torchvision Resize(floor(size / crop_pct)) then
  CenterCrop(size): the shorter side becomes floor(size / crop_pct), the longer int(scale * long / short)."""
  if not isinstance(size, int):
    raise UserError('resize_shorter_and_center_crop: size must be an int (square crop)')
  scale_size = math.floor(size / crop_pct)
  resample = primitives.interpolation(interpolation, allow_random=False)

  def op(ex, rng):
    del rng
    h, w = primitives.image_hw(ex['image'])
    if w <= h:
      nw, nh = scale_size, int(scale_size * h / w)
    else:
      nh, nw = scale_size, int(scale_size * w / h)
    ex = primitives.resize_example(ex, nh, nw, resample)
    return primitives.center_crop_example(ex, size, size)

  return op


@register('squash_resize')
def squash_resize(size: int = 384, interpolation: str = 'bicubic', crop_pct: float = 1.0) -> Transform:
  """timm eval crop_mode 'squash': resize to floor(size / crop_pct) square ignoring the aspect,
  then CenterCrop(size) (a no-op at crop_pct=1.0, the official ConvNeXt >= 384 eval)."""
  if not isinstance(size, int):
    raise UserError('squash_resize: size must be an int')
  scale_size = math.floor(size / crop_pct)
  resample = primitives.interpolation(interpolation, allow_random=False)

  def op(ex, rng):
    del rng
    ex = primitives.resize_example(ex, scale_size, scale_size, resample)
    return primitives.center_crop_example(ex, size, size)

  return op


@register('normalize')
def normalize(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> Transform:
  """float32 image = (image / 255 - mean) / std for uint8 images (mean/std in [0, 1] units)."""
  return primitives.normalize(mean, std)


@register('imagenet_normalize')
def imagenet_normalize() -> Transform:
  """(image / 255 - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD as float32."""
  return primitives.normalize(mean=primitives.IMAGENET_DEFAULT_MEAN, std=primitives.IMAGENET_DEFAULT_STD)


@register('keep')
def keep(keys) -> Transform:
  keys = (keys,) if isinstance(keys, str) else tuple(keys)

  def op(ex, rng):
    del rng
    missing = [k for k in keys if k not in ex]
    if missing:
      raise KeyError(f'keep{keys}: example has no {missing}; it has {sorted(ex)}')
    return {k: ex[k] for k in keys}

  return op


@register('rename')
def rename(**mapping) -> Transform:
  """rename(old='new', ...), e.g. rename(segmentation_label='segmentation') for cityscapes."""

  def op(ex, rng):
    del rng
    return {mapping.get(k, k): v for k, v in ex.items()}

  return op
