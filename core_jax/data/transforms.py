"""Basic ops on `image` and, where spatial, `segmentation` together: crops, flips, resizes, normalize, keys.

Registered into `core_jax.data.registry` (listed in `core_jax.data.ops.OP_MODULES`):

  random_crop(size, padding=0)   center_crop(size)   flip_lr(p=0.5)   resize(size)   resize_small(size)
  random_resized_crop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3), attempts=10)
  normalize(mean=(0, 0, 0), std=(1, 1, 1))   keep(keys)   rename(old='new', ...)

Padding fills the image with 0 and `segmentation` with IGNORE_LABEL (255). `build_transforms` is kept here as
the name the train loop calls; it is `core_jax.data.ops.build_transforms`.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from core_jax.data import image_kernels
from core_jax.data.registry import IGNORE_LABEL, Example, Transform, get_transform, parse_spec, register, registered

__all__ = [
    'IGNORE_LABEL',
    'Example',
    'Transform',
    'build_transforms',
    'get_transform',
    'parse_spec',
    'register',
    'registered',
]


def build_transforms(specs: Sequence[str] | str) -> Transform:
  """`core_jax.data.ops.build_transforms` under its older name (imports every op module, then composes)."""
  from core_jax.data import ops  # deferred: ops imports this module to register its ops

  return ops.build_transforms(specs)


# ------------------------------------------------------------------------------- helpers


def _hw(size) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


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
    x = np.asarray(example[key])
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (x.ndim - 2)
    example[key] = np.pad(x, widths, constant_values=value)
  return example


def _crop(example: Example, y: int, x: int, h: int, w: int) -> Example:
  for key, _ in _spatial_keys(example):
    example[key] = np.asarray(example[key])[y : y + h, x : x + w]
  return example


def _resize_array(x: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
  """PIL resize; bilinear for images (uint8 or float), nearest for label maps."""
  resample = Image.NEAREST if nearest else Image.BILINEAR
  if x.ndim == 2 and (x.dtype == np.uint8 or nearest):
    return np.asarray(Image.fromarray(x).resize((w, h), resample))
  if x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] in (3, 4):
    return np.asarray(Image.fromarray(x).resize((w, h), resample))
  # Generic path: per-channel float32 ('F' mode).
  chans = x[..., None] if x.ndim == 2 else x
  out = np.stack(
      [
          np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], np.float32)).resize((w, h), resample))
          for c in range(chans.shape[-1])
      ],
      -1,
  )
  out = out[..., 0] if x.ndim == 2 else out
  if x.dtype == np.uint8:
    out = np.clip(np.round(out), 0, 255)
  return out.astype(x.dtype)


def _resize(example: Example, h: int, w: int) -> Example:
  example['image'] = _resize_array(np.asarray(example['image']), h, w, nearest=False)
  if 'segmentation' in example:
    example['segmentation'] = _resize_array(np.asarray(example['segmentation']), h, w, nearest=True)
  return example


# ----------------------------------------------------------------------------------- ops


@register('random_crop')
def random_crop(size, padding: int = 0) -> Transform:
  """Zero-pad by `padding` (labels with 255), pad up to `size` if smaller, random crop."""
  ch, cw = _hw(size)

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
  ch, cw = _hw(size)

  def op(ex, rng):
    del rng
    h, w = np.asarray(ex['image']).shape[:2]
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    ex = _pad_to(ex, (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2))
    h, w = max(h, ch), max(w, cw)
    return _crop(ex, (h - ch) // 2, (w - cw) // 2, ch, cw)

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
def resize(size) -> Transform:
  """Bilinear resize to `size` (int -> square); segmentation uses nearest."""
  h, w = _hw(size)

  def op(ex, rng):
    del rng
    return _resize(ex, h, w)

  return op


@register('resize_small')
def resize_small(size: int) -> Transform:
  """Resize so the shorter side is `size`, keeping the aspect ratio (eval: then center_crop)."""

  def op(ex, rng):
    del rng
    h, w = np.asarray(ex['image']).shape[:2]
    s = size / min(h, w)
    return _resize(ex, max(1, round(h * s)), max(1, round(w * s)))

  return op


@register('random_resized_crop')
def random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10) -> Transform:
  """Inception-style crop: random area fraction and aspect ratio, resized to `size`."""
  oh, ow = _hw(size)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

  def op(ex, rng):
    h, w = np.asarray(ex['image']).shape[:2]
    for _ in range(attempts):
      area = h * w * rng.uniform(*scale)
      aspect = math.exp(rng.uniform(*log_ratio))
      cw = int(round(math.sqrt(area * aspect)))
      ch = int(round(math.sqrt(area / aspect)))
      if 0 < cw <= w and 0 < ch <= h:
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        break
    else:  # fall back to a central crop with the ratio clamped
      aspect = min(max(w / h, ratio[0]), ratio[1])
      cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
      cw, ch = min(cw, w), min(ch, h)
      y, x = (h - ch) // 2, (w - cw) // 2
    return _resize(_crop(ex, y, x, ch, cw), oh, ow)

  return op


@register('normalize')
def normalize(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> Transform:
  """float32 image = (image / 255 - mean) / std for uint8 images (mean/std in [0, 1] units)."""
  mean = np.asarray(mean, np.float32)
  inv_std = 1.0 / np.asarray(std, np.float32)
  # uint8 HWC images: one lookup in a (channel, value) table, several times faster than the arithmetic below
  # (benchmarks/ANALYSIS.md, design measurements).
  # The table holds exactly what the arithmetic gives (same float32 ops, same order), so results
  # are equal bit for bit. One `take` over the interleaved pixels, indexed by value + 256 * channel,
  # beats a strided `take` per channel; the channel offsets are cached per image shape.
  table = (np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - mean) * inv_std  # (256, C)
  flat_table = {
      c: np.ascontiguousarray(np.broadcast_to(table, (256, c)).T).reshape(-1)
      for c in (1, 2, 3, 4)
      if table.shape[1] in (1, c)
  }
  offsets: dict[tuple, np.ndarray] = {}

  def channel_offsets(shape):
    off = offsets.get(shape)
    if off is None:
      off = np.broadcast_to(np.arange(shape[-1], dtype=np.uint16) * 256, shape).copy()
      if len(offsets) >= 8:  # a stream of varied shapes (eval at native size): don't grow forever
        offsets.clear()
      offsets[shape] = off
    return off

  def op(ex, rng):
    del rng
    image = ex['image']
    # The same table through C++: any strides (a flipped view), Pillow images read in place, faster than the take.
    if isinstance(image, Image.Image):
      channels = {'RGB': 3, 'L': 1}.get(image.mode)
    else:
      channels = image.shape[2] if getattr(image, 'ndim', 0) == 3 else None
    if channels in flat_table:
      out = image_kernels.lookup(image, flat_table[channels].reshape(channels, 256))
      if out is not None:
        ex['image'] = out
        return ex
    x = np.asarray(image)
    if x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] in flat_table:
      index = np.add(x, channel_offsets(x.shape), dtype=np.uint16)
      ex['image'] = np.take(flat_table[x.shape[2]], index, mode='clip')  # index < 256 * C always
      return ex
    y = x.astype(np.float32)  # a fresh buffer: the rest is in place (same float ops, no temporaries)
    if x.dtype == np.uint8:
      y /= 255.0
    y -= mean
    y *= inv_std
    ex['image'] = y
    return ex

  return op


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
