"""Segmentation ops: pure `f(example, rng)` on `image` (H, W, C) and its `segmentation` label map together.

The train augmentation of HRNet-Semantic-Segmentation (which ADP-C uses), step for step:

  seg_random_scale(factors=CITYSCAPES_SCALE_FACTORS, base_size=None)
      s = factors[uniform index]; the long side becomes int(base * s + 0.5) (base = base_size, or the image's own
      long side when None: 2048 on Cityscapes), the short side int(short * long_new / long + 0.5). The image is
      resized as OpenCV's INTER_LINEAR does (half-pixel centres, no antialiasing, clamped borders; uint8 in its
      11-bit fixed point), the label map as INTER_NEAREST (top-left: src = floor(dst * in / out)).
  seg_pad(size=(h, w))           pad bottom/right up to `size`: image 0, label IGNORE_LABEL (255)
  seg_random_crop(size=(h, w))   pad as seg_pad if smaller, then a uniform crop; x is drawn before y
  seg_random_scale_crop(size=(h, w), factors=..., base_size=None)
                                 seg_random_scale then seg_random_crop, equal bit for bit (same draws), but only
                                 the crop window is resized (a 2.1x Cityscapes image is 2151x4301)
  seg_flip(p=0.5)                horizontal flip of both
  normalize / imagenet_normalize (core_jax.data.transforms) then touch the image only

so a Cityscapes train pipeline is
  ['seg_random_scale_crop(size=(512, 1024))', 'seg_flip', 'imagenet_normalize']
and eval is full resolution: ['imagenet_normalize']. (The reference normalizes after padding, so padded pixels are
0 before normalization there as here; it reads BGR and converts to RGB, and TFDS images are RGB already.)
"""

import numpy as np

from core_jax.data import primitives
from core_jax.data.registry import IGNORE_LABEL, LABEL_MAP_KEY, Example, Transform, register
from core_jax.errors import UserError

# HRNet's `0.5 + random.randint(0, 16) / 10` on Cityscapes: 0.5, 0.6, ..., 2.1.
CITYSCAPES_SCALE_FACTORS = tuple(0.5 + i / 10.0 for i in range(17))

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def _linear_taps(in_size: int, out_size: int, start: int, stop: int, clamp_weight: bool):
  """(i0, i1, f) for outputs start..stop-1: out[d] = in[i0] * (1 - f) + in[i1] * f, as OpenCV's INTER_LINEAR.

  src = (d + 0.5) * in / out - 0.5 in float32 as OpenCV computes it. Source indices are clamped to the image;
  along x (`clamp_weight`) OpenCV also zeroes the weight of a clamped tap, along y it keeps the weights.
  """
  scale = 1.0 / (out_size / in_size)
  src = ((np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  i0 = np.floor(src).astype(np.int64)
  f = (src - i0.astype(np.float32)).astype(np.float32)
  if clamp_weight:
    f = np.where((i0 < 0) | (i0 >= in_size - 1), np.float32(0), f)
  return np.clip(i0, 0, in_size - 1), np.clip(i0 + 1, 0, in_size - 1), f


def _fixed_point(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV's uint8 coefficients: each weight rounded to 1/2048 on its own (round half to even, as cvRound)."""
  w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
  w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
  return w0, w1


def resize_bilinear(x: np.ndarray, h: int, w: int, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """(H, W[, C]) -> (h, w[, C]) as OpenCV's INTER_LINEAR; only `window` = (top, left, height, width) if given.

  uint8 follows OpenCV's fixed point bit for bit (11-bit weights; rows combined as
  ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2), floats are computed in float32. A window of the
  output equals that window of the full resize, so a random crop after a random scale need not resize it all.
  """
  x = np.asarray(x)
  in_h, in_w = x.shape[:2]
  top, left, wh, ww = (0, 0, h, w) if window is None else window
  y0, y1, fy = _linear_taps(in_h, h, top, top + wh, clamp_weight=False)
  x0, x1, fx = _linear_taps(in_w, w, left, left + ww, clamp_weight=True)
  extra = (1,) * (x.ndim - 2)
  rows = np.unique(np.concatenate([y0, y1]))  # only the source rows some output row reads
  r0, r1 = np.searchsorted(rows, y0), np.searchsorted(rows, y1)
  if x.dtype == np.uint8:
    a0, a1 = _fixed_point(fx)
    b0, b1 = _fixed_point(fy)
    src = x[rows].astype(np.int32)
    horiz = src[:, x0] * a0.reshape((1, -1) + extra) + src[:, x1] * a1.reshape((1, -1) + extra)
    horiz >>= 4
    out = (horiz[r0] * b0.reshape((-1, 1) + extra)) >> 16
    out += (horiz[r1] * b1.reshape((-1, 1) + extra)) >> 16
    out += 2
    out >>= 2
    return out.clip(0, 255).astype(np.uint8)
  src = x[rows].astype(np.float32)
  fx = fx.reshape((1, -1) + extra)
  horiz = src[:, x0] * (np.float32(1) - fx) + src[:, x1] * fx
  fy = fy.reshape((-1, 1) + extra)
  out = horiz[r0] * (np.float32(1) - fy) + horiz[r1] * fy
  return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


def _nearest_index(in_size: int, out_size: int, start: int, stop: int) -> np.ndarray:
  scale = 1.0 / (out_size / in_size)  # OpenCV: ifx = 1 / inv_scale_x, in double
  return np.minimum(np.floor(np.arange(start, stop) * scale).astype(np.int64), in_size - 1)


def resize_nearest(x: np.ndarray, h: int, w: int, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """(H, W[, C]) -> (h, w[, C]) as OpenCV's INTER_NEAREST: out[d] = in[floor(d * in / out)] (top-left)."""
  x = np.asarray(x)
  top, left, wh, ww = (0, 0, h, w) if window is None else window
  return x[_nearest_index(x.shape[0], h, top, top + wh)][:, _nearest_index(x.shape[1], w, left, left + ww)]


def _label_map(ex: Example) -> np.ndarray | None:
  return None if LABEL_MAP_KEY not in ex else np.asarray(ex[LABEL_MAP_KEY])


def scaled_size(h: int, w: int, factor: float, base_size: int | None = None) -> tuple[int, int]:
  """HRNet's multi_scale_aug size: long side int(base * factor + 0.5), short side scaled to keep the aspect."""
  base = max(h, w) if base_size is None else int(base_size)
  long_size = int(base * factor + 0.5)
  if h > w:
    return long_size, int(w * long_size / h + 0.5)
  return int(h * long_size / w + 0.5), long_size


def _resize_pair(ex: Example, h: int, w: int) -> Example:
  """Image bilinear, label map nearest (OpenCV's, as mmcv.imrescale) to (h, w)."""
  image = np.asarray(ex['image'])
  label = _label_map(ex)
  if label is not None and label.shape[:2] != image.shape[:2]:
    raise UserError(f'{LABEL_MAP_KEY} {label.shape[:2]} and image {image.shape[:2]} differ in size')
  ex['image'] = resize_bilinear(image, h, w)
  if label is not None:
    ex[LABEL_MAP_KEY] = resize_nearest(label, h, w)
  return ex


@register('seg_random_scale')
def seg_random_scale(factors=CITYSCAPES_SCALE_FACTORS, base_size: int | None = None) -> Transform:
  """Resize image (bilinear) and label map (nearest) by a factor drawn uniformly from `factors`."""
  factors = tuple(float(f) for f in factors)
  if not factors or min(factors) <= 0:
    raise UserError(f'seg_random_scale: factors must be positive, got {factors}')

  def op(ex, rng):
    factor = factors[int(rng.integers(0, len(factors)))]
    image = np.asarray(ex['image'])
    return _resize_pair(ex, *scaled_size(image.shape[0], image.shape[1], factor, base_size))

  return op


def _pad_bottom_right(ex: Example, ch: int, cw: int) -> Example:
  image = np.asarray(ex['image'])
  ph, pw = max(ch - image.shape[0], 0), max(cw - image.shape[1], 0)
  if ph or pw:
    ex['image'] = primitives.pad_hw(image, 0, ph, 0, pw, 0)
    label = _label_map(ex)
    if label is not None:
      ex[LABEL_MAP_KEY] = primitives.pad_hw(label, 0, ph, 0, pw, IGNORE_LABEL)
  return ex


@register('seg_pad')
def seg_pad(size) -> Transform:
  """Pad bottom and right up to `size` (h, w): image with 0, label map with 255; larger sides stay."""
  ch, cw = primitives.hw(size)

  def op(ex, rng):
    del rng
    return _pad_bottom_right(ex, ch, cw)

  return op


@register('seg_random_crop')
def seg_random_crop(size) -> Transform:
  """A uniform (h, w) crop of image and label map (padded as seg_pad first when smaller)."""
  ch, cw = primitives.hw(size)

  def op(ex, rng):
    ex = _pad_bottom_right(ex, ch, cw)
    h, w = np.asarray(ex['image']).shape[:2]
    x = int(rng.integers(0, w - cw + 1))  # HRNet draws x first
    y = int(rng.integers(0, h - ch + 1))
    ex['image'] = np.asarray(ex['image'])[y : y + ch, x : x + cw]
    label = _label_map(ex)
    if label is not None:
      if label.shape[:2] != (h, w):
        raise UserError(f'{LABEL_MAP_KEY} {label.shape[:2]} and image {(h, w)} differ in size')
      ex[LABEL_MAP_KEY] = label[y : y + ch, x : x + cw]
    return ex

  return op


@register('seg_random_scale_crop')
def seg_random_scale_crop(size, factors=CITYSCAPES_SCALE_FACTORS, base_size: int | None = None) -> Transform:
  """`seg_random_scale(factors, base_size)` then `seg_random_crop(size)`, resizing only the crop window."""
  ch, cw = primitives.hw(size)
  factors = tuple(float(f) for f in factors)
  if not factors or min(factors) <= 0:
    raise UserError(f'seg_random_scale_crop: factors must be positive, got {factors}')

  def op(ex, rng):
    factor = factors[int(rng.integers(0, len(factors)))]
    image = np.asarray(ex['image'])
    sh, sw = scaled_size(image.shape[0], image.shape[1], factor, base_size)
    x = int(rng.integers(0, max(sw, cw) - cw + 1))  # the draws of seg_random_crop on the padded scaled image
    y = int(rng.integers(0, max(sh, ch) - ch + 1))
    window = (y, x, min(ch, sh - y), min(cw, sw - x))  # the part of the crop inside the scaled image
    out = np.zeros((ch, cw) + image.shape[2:], image.dtype)
    out[: window[2], : window[3]] = resize_bilinear(image, sh, sw, window)
    ex['image'] = out
    label = _label_map(ex)
    if label is not None:
      if label.shape[:2] != image.shape[:2]:
        raise UserError(f'{LABEL_MAP_KEY} {label.shape[:2]} and image {image.shape[:2]} differ in size')
      out = np.full((ch, cw) + label.shape[2:], IGNORE_LABEL, label.dtype)
      out[: window[2], : window[3]] = resize_nearest(label, sh, sw, window)
      ex[LABEL_MAP_KEY] = out
    return ex

  return op


@register('seg_flip')
def seg_flip(p: float = 0.5) -> Transform:
  """Horizontal flip of image and label map with probability p (one draw per example, always made)."""

  def op(ex, rng):
    if rng.random() < p:
      ex['image'] = np.ascontiguousarray(np.asarray(ex['image'])[:, ::-1])
      label = _label_map(ex)
      if label is not None:
        ex[LABEL_MAP_KEY] = np.ascontiguousarray(label[:, ::-1])
    return ex

  return op


# ------------------------------------------------------------------------------------------------ mmseg's pipeline
# mmsegmentation 0.x (what the ConvNeXt / BEiT segmentation code runs), configs/_base_/datasets/ade20k.py:
#   Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)) -> RandomCrop(crop_size, cat_max_ratio=0.75)
#   -> RandomFlip(0.5) -> PhotoMetricDistortion -> Normalize -> Pad(crop_size, pad_val=0, seg_pad_val=255)
# here 'seg_random_resize_ratio(scale=(2048, 512), ratio_range=(0.5, 2.0))', 'seg_random_crop_cat(size=(512, 512),
# cat_max_ratio=0.75)', 'seg_flip', 'photometric_distortion', 'imagenet_normalize', 'seg_pad(size=(512, 512))'.
# Unlike HRNet's crop (seg_random_crop) mmseg's does not pad first and draws y before x; Pad comes last.


def keep_ratio_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
  """mmcv.rescale_size with keep_ratio: the largest (h', w') of the image's aspect with long side <= max(scale) and
  short side <= min(scale): factor = min(max(scale) / long, min(scale) / short), sides int(side * factor + 0.5)."""
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return int(h * factor + 0.5), int(w * factor + 0.5)


@register('seg_random_resize_ratio')
def seg_random_resize_ratio(scale=(2048, 512), ratio_range=(0.5, 2.0)) -> Transform:
  """mmseg's Resize(img_scale=scale, ratio_range, keep_ratio=True): ratio ~ U[lo, hi), the target scale
  (int(scale[0] * ratio), int(scale[1] * ratio)), the image resized to `keep_ratio_size` of it."""
  lo, hi = (float(r) for r in ratio_range)
  if not 0 < lo <= hi:
    raise UserError(f'seg_random_resize_ratio: ratio_range must be 0 < lo <= hi, got {ratio_range}')

  def op(ex, rng):
    ratio = rng.random() * (hi - lo) + lo
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return _resize_pair(ex, *keep_ratio_size(*np.asarray(ex['image']).shape[:2], target))

  return op


@register('seg_random_crop_cat')
def seg_random_crop_cat(size, cat_max_ratio: float = 1.0, tries: int = 10) -> Transform:
  """mmseg's RandomCrop(crop_size, cat_max_ratio): offsets y then x uniform in [0, max(side - crop, 0)]; with
  cat_max_ratio < 1 a window is redrawn (up to `tries` times, the last draw kept unchecked) until it holds more than
  one non-ignored class and none covers `cat_max_ratio` or more of its labelled pixels. No padding: a side smaller
  than the crop stays (mmseg pads after the photometric distortion and normalization, seg_pad)."""
  ch, cw = primitives.hw(size)

  def op(ex, rng):
    image = np.asarray(ex['image'])
    label = _label_map(ex)
    h, w = image.shape[:2]
    if label is not None and label.shape[:2] != (h, w):
      raise UserError(f'{LABEL_MAP_KEY} {label.shape[:2]} and image {(h, w)} differ in size')

    def draw():
      return int(rng.integers(0, max(h - ch, 0) + 1)), int(rng.integers(0, max(w - cw, 0) + 1))

    y, x = draw()
    if cat_max_ratio < 1.0 and label is not None:
      for _ in range(tries):
        ids, counts = np.unique(label[y : y + ch, x : x + cw], return_counts=True)
        counts = counts[ids != IGNORE_LABEL]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
          break
        y, x = draw()
    ex['image'] = image[y : y + ch, x : x + cw]
    if label is not None:
      ex[LABEL_MAP_KEY] = label[y : y + ch, x : x + cw]
    return ex

  return op


_HSV_SHIFT = 12


def _hsv_tables() -> tuple[np.ndarray, np.ndarray]:
  i = np.arange(256, dtype=np.float64)
  with np.errstate(divide='ignore'):
    sdiv = np.where(i > 0, np.rint((255 << _HSV_SHIFT) / i), 0).astype(np.int64)
    hdiv = np.where(i > 0, np.rint((180 << _HSV_SHIFT) / (6.0 * i)), 0).astype(np.int64)
  return sdiv, hdiv


_SDIV, _HDIV180 = _hsv_tables()


def rgb_to_hsv_u8(rgb: np.ndarray) -> np.ndarray:
  """OpenCV's cvtColor(RGB2HSV) of uint8 (H in 0..179, S and V in 0..255), its integer tables bit for bit."""
  rgb = np.asarray(rgb).astype(np.int64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = np.maximum(np.maximum(r, g), b)
  diff = v - np.minimum(np.minimum(r, g), b)
  half = 1 << (_HSV_SHIFT - 1)
  s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
  h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
  h = (h * _HDIV180[diff] + half) >> _HSV_SHIFT
  h = np.where(h < 0, h + 180, h)
  return np.stack([h, s, v], axis=-1).clip(0, 255).astype(np.uint8)


# OpenCV's HSV2RGB sector table: (r, g, b) = tab[...] with tab = (v, v(1 - s), v(1 - s f), v(1 - s(1 - f))).
_SECTORS = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def hsv_to_rgb_u8(hsv: np.ndarray) -> np.ndarray:
  """OpenCV's cvtColor(HSV2RGB) of uint8 (H 0..179) as its vectorized loop computes it on x86-64 (AVX2/FMA
  builds): s and v scaled by 1/255 in float32, the sector's 1 - s*f fused (one rounding), x 255 truncated. (The
  scalar tail of each row, its last width mod 32 or 64 pixels, rounds instead; one level apart at most.)"""
  hsv = np.asarray(hsv)
  f32, one = np.float32, np.float32(1)
  h = hsv[..., 0].astype(f32) * (f32(6) / f32(180))
  s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
  v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
  sector = np.floor(h).astype(np.int64)
  f = h - sector.astype(f32)
  s64 = s.astype(np.float64)
  fused_2 = (1.0 - s64 * f).astype(f32)  # fnmadd: s * f exact in float64, one rounding to float32
  fused_3 = (1.0 - s64 * (one - f)).astype(f32)
  tab = np.stack([v, v * (one - s), v * fused_2, v * fused_3], axis=-1)
  rgb = np.take_along_axis(tab, _SECTORS[sector % 6], axis=-1) * f32(255)
  return np.floor(rgb).clip(0, 255).astype(np.uint8)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """mmseg's `convert`: float32 x * alpha + beta, clipped to 0..255, truncated to uint8."""
  return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


@register('photometric_distortion')
def photometric_distortion(
    brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18
) -> Transform:
  """mmseg's PhotoMetricDistortion on the uint8 image, its order and draws: brightness (p 0.5, + U(-32, 32));
  mode = randint(2); contrast first when mode is 1 (p 0.5, x U(0.5, 1.5)); saturation in HSV (p 0.5, S x U(0.5,
  1.5)); hue (p 0.5, H + randint(-18, 18) mod 180); contrast last when mode is 0. Each step truncates to uint8."""
  c_lo, c_hi = (float(x) for x in contrast_range)
  s_lo, s_hi = (float(x) for x in saturation_range)

  def op(ex, rng):
    img = np.asarray(ex['image'])
    if img.dtype != np.uint8:
      raise UserError(f'photometric_distortion needs the uint8 image (before normalize), got {img.dtype}')

    def contrast(img):
      return _convert(img, alpha=rng.uniform(c_lo, c_hi)) if rng.integers(2) else img

    if rng.integers(2):
      img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = int(rng.integers(2))
    if mode == 1:
      img = contrast(img)
    if rng.integers(2):
      hsv = rgb_to_hsv_u8(img)
      hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(s_lo, s_hi))
      img = hsv_to_rgb_u8(hsv)
    if rng.integers(2):
      hsv = rgb_to_hsv_u8(img)
      hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-hue_delta, hue_delta))) % 180
      img = hsv_to_rgb_u8(hsv)
    if mode == 0:
      img = contrast(img)
    ex['image'] = img
    return ex

  return op
