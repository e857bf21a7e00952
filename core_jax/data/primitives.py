"""Pieces several op modules share: sizes, interpolation names, Pillow-exact resizes and crops, normalize.

A leaf of core_jax.data: it registers no op and imports no op module (only `image_kernels` and `registry`), so
every op module may import it and none needs another op module. The ops built from these pieces are
registered in `transforms` (crops, resizes, normalize), `augment` and `randaugment`.

Resizes follow Pillow (what timm and torchvision call): the C++ kernels of `image_kernels` where they apply,
equal to Pillow bit for bit, else Pillow itself. A `segmentation` label map moves with the image, resized with
nearest and padded with IGNORE_LABEL.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from core_jax.data import image_kernels
from core_jax.data.registry import IGNORE_LABEL
from core_jax.errors import UserError

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # 0-1 scale (normalize divides uint8 by 255 first)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    'nearest': Image.NEAREST,
    'bilinear': Image.BILINEAR,
    'bicubic': Image.BICUBIC,
    'lanczos': Image.LANCZOS,
    'box': Image.BOX,
    'hamming': Image.HAMMING,
}
RANDOM_INTERPOLATIONS = (Image.BILINEAR, Image.BICUBIC)  # timm's order for 'random'


def hw(size) -> tuple[int, int]:
  """An int (square) or (h, w) -> (h, w)."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def interpolation(name: str, allow_random: bool = True):
  """The Pillow filter of `name`, or the tuple of filters to choose from for 'random'."""
  if name == 'random' and allow_random:
    return RANDOM_INTERPOLATIONS
  if name not in INTERPOLATIONS:
    raise UserError(
        f'unknown interpolation {name!r}; known: {sorted(INTERPOLATIONS)}' + (" and 'random'" if allow_random else '')
    )
  return INTERPOLATIONS[name]


def choose_interpolation(interp, rng: np.random.Generator):
  """timm `random.choice(interpolations)` (one uniform index draw) or the fixed filter (no draw)."""
  if isinstance(interp, tuple):
    return interp[int(rng.integers(0, len(interp)))]
  return interp


def check_no_segmentation(ex: dict, name: str):
  if 'segmentation' in ex:
    raise UserError(f'{name} is a classification-only augmentation; the example has a segmentation')


# ------------------------------------------------------------------------------ images: numpy or PIL


def image_hw(x) -> tuple:
  """(height, width) of a numpy image or a PIL image, without converting it."""
  if isinstance(x, Image.Image):
    return x.height, x.width
  return np.shape(x)[:2]


def as_pil(img) -> Image.Image:
  return img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))


def to_pil(x) -> Image.Image:
  """A uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array (or a PIL image) as a PIL image."""
  if isinstance(x, Image.Image):
    return x
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise UserError(f'expected a uint8 image here, got {x.dtype} (put this op before normalize)')
  if x.ndim == 3 and x.shape[2] == 1:
    x = x[..., 0]
  if x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (3, 4)):
    return Image.fromarray(np.ascontiguousarray(x))
  raise UserError(f'expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {x.shape}')


def _from_pil(img: Image.Image, like: np.ndarray) -> np.ndarray:
  out = np.asarray(img)
  if like.ndim == 3 and out.ndim == 2:
    out = out[..., None]
  return out


def resize_any(x, h: int, w: int, resample) -> np.ndarray:
  """Pillow resize of an array or PIL image to (h, w): uint8 images directly (timm/torchvision path; the
  C++ kernels where they apply, reading a PIL image in place), else per channel in 'F'."""
  out = image_kernels.resize(x, h, w, resample)
  if out is not None:
    return out
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return _from_pil(to_pil(x).resize((w, h), resample), x)
  chans = x[..., None] if x.ndim == 2 else x
  out = np.stack(
      [
          np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], np.float32)).resize((w, h), resample))
          for c in range(chans.shape[-1])
      ],
      -1,
  )
  return (out[..., 0] if x.ndim == 2 else out).astype(x.dtype)


def resize_example(ex: dict, h: int, w: int, resample) -> dict:
  """The image resized to (h, w) with `resample`, `segmentation` with nearest; untouched at the same size, as
  torchvision returns it."""
  if image_hw(ex['image']) == (h, w):
    return ex
  ex['image'] = resize_any(ex['image'], h, w, resample)
  if 'segmentation' in ex:
    ex['segmentation'] = resize_any(np.asarray(ex['segmentation']), h, w, Image.NEAREST)
  return ex


def resized_crop(ex: dict, top: int, left: int, h: int, w: int, out_h: int, out_w: int, resample) -> dict:
  """torchvision F.resized_crop on PIL: crop box then resize; segmentation uses nearest."""
  if isinstance(ex['image'], Image.Image):  # decoded JPEG: read in place, or crop and resize in PIL
    box = (left, top, left + w, top + h)
    out = image_kernels.resize(ex['image'], out_h, out_w, resample, box=box)
    ex['image'] = out if out is not None else ex['image'].crop(box).resize((out_w, out_h), resample)
  else:
    img = np.asarray(ex['image'])[top : top + h, left : left + w]
    ex['image'] = resize_any(img, out_h, out_w, resample)
  if 'segmentation' in ex:
    seg = np.asarray(ex['segmentation'])[top : top + h, left : left + w]
    ex['segmentation'] = resize_any(seg, out_h, out_w, Image.NEAREST)
  return ex


def rrc_params(img_h: int, img_w: int, scale, ratio, rng: np.random.Generator, attempts: int = 10):
  """timm `RandomResizedCropAndInterpolation.get_params` -> (top, left, h, w), in timm's draw order.

  `attempts` tries of area ~ U(scale) * H * W and log-uniform aspect w/h; the first box that fits is placed
  uniformly (top drawn before left); otherwise a central crop with the aspect clamped to `ratio`.
  """
  area = img_w * img_h
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = rng.uniform(scale[0], scale[1]) * area
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    tw = int(round(math.sqrt(target_area * aspect)))
    th = int(round(math.sqrt(target_area / aspect)))
    if tw <= img_w and th <= img_h:
      # timm has no `> 0` check; an empty box (only on images of a few pixels) would crash PIL,
      # so it is clamped to 1 pixel here, after the same draws.
      top = int(rng.integers(0, img_h - th + 1))
      left = int(rng.integers(0, img_w - tw + 1))
      return top, left, max(th, 1), max(tw, 1)
  in_ratio = img_w / img_h
  if in_ratio < min(ratio):
    tw = img_w
    th = int(round(tw / min(ratio)))
  elif in_ratio > max(ratio):
    th = img_h
    tw = int(round(th * max(ratio)))
  else:
    tw, th = img_w, img_h
  return (img_h - th) // 2, (img_w - tw) // 2, th, tw


def pad_hw(x: np.ndarray, top: int, bottom: int, left: int, right: int, value) -> np.ndarray:
  """`x` (H, W, ...) padded with `value` by the given rows and columns: np.pad's constant padding, in a tenth of
  its time for a small image (a filled array and one copy; np.pad costs ~20 us per call, a record of the digits
  demos ~110 us in all)."""
  if min(top, bottom, left, right) < 0:
    raise ValueError(f'negative padding {(top, bottom, left, right)}')
  h, w = x.shape[:2]
  out = np.full((top + h + bottom, left + w + right) + x.shape[2:], value, dtype=x.dtype)
  out[top : top + h, left : left + w] = x
  return out


def center_crop_example(ex: dict, ch: int, cw: int) -> dict:
  """torchvision CenterCrop of image and segmentation: zero-pad (labels IGNORE_LABEL) where smaller, top and
  left offsets int(round((H - ch) / 2)) (half to even)."""
  for key, fill in (('image', 0), ('segmentation', IGNORE_LABEL)):
    if key not in ex:
      continue
    x = np.asarray(ex[key])
    h, w = x.shape[:2]
    if ch > h or cw > w:
      pt = (ch - h) // 2 if ch > h else 0
      pb = (ch - h + 1) // 2 if ch > h else 0
      pl = (cw - w) // 2 if cw > w else 0
      pr = (cw - w + 1) // 2 if cw > w else 0
      x = pad_hw(x, pt, pb, pl, pr, fill)
      h, w = x.shape[:2]
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    ex[key] = x[top : top + ch, left : left + cw]
  return ex


# --------------------------------------------------------------------------------------- normalize


def normalize(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
  """The op float32 image = (image / 255 - mean) / std for uint8 images (mean/std in [0, 1] units); float
  images are taken as they are: (image - mean) / std."""
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
