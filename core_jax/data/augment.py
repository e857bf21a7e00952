"""ImageNet-style augmentations with timm semantics, registered into `core_jax.data.registry`.

Every op is numpy/PIL only and deterministic given the per-record `np.random.Generator`; the
random draws happen in the same order and with the same distributions as timm's python-`random`
draws, so the sampled parameters follow timm's distributions exactly (tests check this with a
generator shim that replays timm's RNG streams).

Registered ops (spec strings for configs):

  decode_jpeg                              bytes (any PIL format) -> uint8 RGB HWC; no-op on arrays
  random_resized_crop_timm(size, scale=(0.08, 1.0), ratio=(3/4, 4/3), interpolation='bicubic')
  inception_crop(...)                      alias of random_resized_crop_timm
  randaugment(config_str='rand-m9-mstd0.5-inc1', mean=IMAGENET_DEFAULT_MEAN,
              interpolation='bicubic', translate_pct=0.45)
  random_erasing(prob=0.25, mode='pixel', min_area=0.02, max_area=1/3, min_aspect=0.3,
                 max_aspect=None, min_count=1, max_count=None)     (after normalize: float image)
  resize_shorter_and_center_crop(size=224, crop_pct=0.875, interpolation='bicubic')
  squash_resize(size=384, interpolation='bicubic', crop_pct=1.0)
  imagenet_normalize                       = normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)

Normalization: `normalize(mean, std)` (transforms.py) divides uint8 by 255 first, so mean/std are on
the 0-1 scale: ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) -- the constants
below. RandAugment's fill colour is the mean on the 0-255 scale, `round(255 * mean)` =
(124, 116, 104), as timm's `transforms_imagenet_train` passes it (`img_mean` hparam).

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

Interpolation note: timm's RandAugment picks bilinear/bicubic at random per geometric op only when
the train `interpolation` is 'random'; with the ConvNeXt recipe (`--train_interpolation bicubic`)
`create_transform` passes `interpolation=bicubic` into the RandAugment hparams, so every geometric op
is bicubic. Both are available here via `interpolation='bicubic' | 'bilinear' | 'random'`.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from core_jax.data import image_kernels
from core_jax.data.registry import Transform, register
from core_jax.data.transforms import normalize
from core_jax.errors import UserError

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # 0-1 scale (normalize divides uint8 by 255 first)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_INTERP = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
           'lanczos': Image.LANCZOS, 'box': Image.BOX, 'hamming': Image.HAMMING}
_RANDOM_INTERP = (Image.BILINEAR, Image.BICUBIC)  # timm's order for 'random'


def _interp(name: str, allow_random: bool = True):
  """PIL filter, or the tuple of filters to choose from for 'random'."""
  if name == 'random' and allow_random:
    return _RANDOM_INTERP
  if name not in _INTERP:
    raise UserError(f'unknown interpolation {name!r}; known: {sorted(_INTERP)}'
                    + (" and 'random'" if allow_random else ''))
  return _INTERP[name]


def _choose_interp(interp, rng: np.random.Generator):
  """timm `random.choice(interpolations)` (one uniform index draw) or the fixed filter."""
  if isinstance(interp, tuple):
    return interp[int(rng.integers(0, len(interp)))]
  return interp


# ----------------------------------------------------------------------------- PIL helpers


def image_hw(x) -> tuple:
  """(height, width) of a numpy image or a PIL image, without converting it."""
  if isinstance(x, Image.Image):
    return x.height, x.width
  return np.shape(x)[:2]


def _to_pil(x: np.ndarray) -> Image.Image:
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


def _resize_any(x, h: int, w: int, resample) -> np.ndarray:
  """PIL resize of an array or PIL image to (h, w): uint8 images directly (timm/torchvision path; the
  C++ kernels where they apply, reading a PIL image in place), else per channel in 'F'."""
  out = image_kernels.resize(x, h, w, resample)
  if out is not None:
    return out
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return _from_pil(_to_pil(x).resize((w, h), resample), x)
  chans = x[..., None] if x.ndim == 2 else x
  out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], np.float32))
                             .resize((w, h), resample)) for c in range(chans.shape[-1])], -1)
  return (out[..., 0] if x.ndim == 2 else out).astype(x.dtype)


def _resized_crop(ex: dict, top: int, left: int, h: int, w: int, out_h: int, out_w: int,
                  resample) -> dict:
  """torchvision F.resized_crop on PIL: crop box then resize; segmentation uses nearest."""
  if isinstance(ex['image'], Image.Image):  # decoded JPEG: read in place, or crop and resize in PIL
    box = (left, top, left + w, top + h)
    out = image_kernels.resize(ex['image'], out_h, out_w, resample, box=box)
    ex['image'] = out if out is not None else ex['image'].crop(box).resize((out_w, out_h), resample)
  else:
    img = np.asarray(ex['image'])[top:top + h, left:left + w]
    ex['image'] = _resize_any(img, out_h, out_w, resample)
  if 'segmentation' in ex:
    seg = np.asarray(ex['segmentation'])[top:top + h, left:left + w]
    ex['segmentation'] = _resize_any(seg, out_h, out_w, Image.NEAREST)
  return ex


def _check_no_segmentation(ex: dict, name: str):
  if 'segmentation' in ex:
    raise UserError(f'{name} is a classification-only augmentation; the example has a segmentation')


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


# ------------------------------------------------------------------- random resized crop


def rrc_params(img_h: int, img_w: int, scale, ratio, rng: np.random.Generator):
  """timm `RandomResizedCropAndInterpolation.get_params` -> (top, left, h, w).

  10 attempts of area ~ U(scale) * H * W and log-uniform aspect w/h; first box that fits is
  placed uniformly; otherwise a central crop with the aspect clamped to `ratio`.
  """
  area = img_w * img_h
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
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


def _rrc_factory(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = 'bicubic') -> Transform:
  """timm RandomResizedCropAndInterpolation (PIL), default bicubic as in the ConvNeXt recipe."""
  out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
  interp = _interp(interpolation)
  scale, ratio = tuple(scale), tuple(ratio)

  def op(ex, rng):
    h, w = image_hw(ex['image'])
    top, left, ch, cw = rrc_params(h, w, scale, ratio, rng)
    resample = _choose_interp(interp, rng)  # timm draws the filter after the box
    return _resized_crop(ex, top, left, ch, cw, out_h, out_w, resample)

  return op


register('random_resized_crop_timm')(_rrc_factory)
register('inception_crop')(_rrc_factory)
random_resized_crop_timm = _rrc_factory


# ------------------------------------------------------------------------------ eval crops


def _center_crop_pil_semantics(ex: dict, ch: int, cw: int) -> dict:
  """torchvision CenterCrop: zero-pad if smaller, offsets int(round((H - ch) / 2)) (half-to-even)."""
  for key, fill in (('image', 0), ('segmentation', 255)):
    if key not in ex:
      continue
    x = np.asarray(ex[key])
    h, w = x.shape[:2]
    if ch > h or cw > w:
      pt = (ch - h) // 2 if ch > h else 0
      pb = (ch - h + 1) // 2 if ch > h else 0
      pl = (cw - w) // 2 if cw > w else 0
      pr = (cw - w + 1) // 2 if cw > w else 0
      x = np.pad(x, [(pt, pb), (pl, pr)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
      h, w = x.shape[:2]
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    ex[key] = x[top:top + ch, left:left + cw]
  return ex


def _resize_example(ex: dict, h: int, w: int, resample) -> dict:
  if image_hw(ex['image']) == (h, w):  # torchvision returns the input untouched at the same size
    return ex
  ex['image'] = _resize_any(ex['image'], h, w, resample)
  if 'segmentation' in ex:
    ex['segmentation'] = _resize_any(np.asarray(ex['segmentation']), h, w, Image.NEAREST)
  return ex


@register('resize_shorter_and_center_crop')
def resize_shorter_and_center_crop(size: int = 224, crop_pct: float = 0.875,
                                   interpolation: str = 'bicubic') -> Transform:
  """timm `transforms_imagenet_eval` (crop_mode 'center'): shorter side -> floor(size / crop_pct)
  (long side int(scale * long / short), torchvision Resize), then CenterCrop(size)."""
  if not isinstance(size, int):
    raise UserError('resize_shorter_and_center_crop: size must be an int (square crop)')
  scale_size = math.floor(size / crop_pct)
  resample = _interp(interpolation, allow_random=False)

  def op(ex, rng):
    del rng
    h, w = image_hw(ex['image'])
    if w <= h:
      nw, nh = scale_size, int(scale_size * h / w)
    else:
      nh, nw = scale_size, int(scale_size * w / h)
    ex = _resize_example(ex, nh, nw, resample)
    return _center_crop_pil_semantics(ex, size, size)

  return op


@register('squash_resize')
def squash_resize(size: int = 384, interpolation: str = 'bicubic',
                  crop_pct: float = 1.0) -> Transform:
  """timm eval crop_mode 'squash': resize to floor(size / crop_pct) square ignoring the aspect,
  then CenterCrop(size) (a no-op at crop_pct=1.0, the official ConvNeXt >= 384 eval)."""
  if not isinstance(size, int):
    raise UserError('squash_resize: size must be an int')
  scale_size = math.floor(size / crop_pct)
  resample = _interp(interpolation, allow_random=False)

  def op(ex, rng):
    del rng
    ex = _resize_example(ex, scale_size, scale_size, resample)
    return _center_crop_pil_semantics(ex, size, size)

  return op


@register('imagenet_normalize')
def imagenet_normalize() -> Transform:
  """(image / 255 - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD as float32."""
  return normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


# ------------------------------------------------------------------------------ RandAugment
# Op implementations: the same PIL calls as timm.data.auto_augment; `resample`/`fillcolor` only
# matter for the geometric ops.

_LEVEL_DENOM = 10.0


def _as_pil(img) -> Image.Image:
  return img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))


def _size(img) -> tuple:
  """(width, height), as PIL's `img.size`, of a PIL image or an array."""
  return img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])


# The geometric ops take a PIL image or a uint8 array and may return either: the C++ kernels (equal
# to Pillow bit for bit) give arrays; Pillow serves whatever they do not take.
def _affine(img, matrix, resample, fillcolor):
  out = image_kernels.affine(img, matrix, resample, fillcolor)
  if out is not None:
    return out
  img = _as_pil(img)
  return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fillcolor)


def _op_shear_x(img, factor, resample, fillcolor):
  return _affine(img, (1, factor, 0, 0, 1, 0), resample, fillcolor)


def _op_shear_y(img, factor, resample, fillcolor):
  return _affine(img, (1, 0, 0, factor, 1, 0), resample, fillcolor)


def _op_translate_x_rel(img, pct, resample, fillcolor):
  return _affine(img, (1, 0, pct * _size(img)[0], 0, 1, 0), resample, fillcolor)


def _op_translate_y_rel(img, pct, resample, fillcolor):
  return _affine(img, (1, 0, 0, 0, 1, pct * _size(img)[1]), resample, fillcolor)


def _op_rotate(img, degrees, resample, fillcolor):
  matrix = image_kernels.rotate_matrix(*_size(img), degrees)
  out = None if matrix is None else image_kernels.affine(img, matrix, resample, fillcolor)
  if out is not None:
    return out
  return _as_pil(img).rotate(degrees, resample=resample, fillcolor=fillcolor)


def _op_solarize_add(img, add, thresh=128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  if img.mode in ('L', 'RGB'):
    return img.point(lut * 3 if img.mode == 'RGB' else lut)
  return img


def _op_posterize(img, bits):
  if bits >= 8:
    return img
  if bits <= 0:
    # 'keep 0 bits' (PosterizeIncreasing at magnitude 10): older Pillow's lut `i & ~255` gives a
    # black image; Pillow >= 10.x raises for bits < 1 (and so would timm here), so emulate it.
    return img.point([0] * 256 * len(img.getbands()))
  return ImageOps.posterize(img, bits)


def _negate(v, rng):
  """timm `_randomly_negate`: -v if random() > 0.5."""
  return -v if rng.random() > 0.5 else v


# name -> (geometric?, level->args (level, rng) -> tuple, apply (img, *args[, resample, fill]))
def _lvl_rotate(level, rng):
  return (_negate((level / _LEVEL_DENOM) * 30., rng),)


def _lvl_shear(level, rng):
  return (_negate((level / _LEVEL_DENOM) * 0.3, rng),)


def _lvl_translate_rel(translate_pct):
  def f(level, rng):
    return (_negate((level / _LEVEL_DENOM) * translate_pct, rng),)
  return f


def _lvl_posterize_increasing(level, rng):
  del rng
  return (4 - int((level / _LEVEL_DENOM) * 4),)


def _lvl_solarize_increasing(level, rng):
  del rng
  return (256 - min(256, int((level / _LEVEL_DENOM) * 256)),)


def _lvl_solarize_add(level, rng):
  del rng
  return (min(128, int((level / _LEVEL_DENOM) * 110)),)


def _lvl_enhance_increasing(level, rng):
  level = (level / _LEVEL_DENOM) * .9
  return (max(0.1, 1.0 + _negate(level, rng)),)


def _lvl_posterize(level, rng):
  del rng
  return (int((level / _LEVEL_DENOM) * 4),)


def _lvl_solarize(level, rng):
  del rng
  return (min(256, int((level / _LEVEL_DENOM) * 256)),)


def _lvl_enhance(level, rng):
  del rng
  return ((level / _LEVEL_DENOM) * 1.8 + 0.1,)


def _none(level, rng):
  del level, rng
  return ()


def _op_table(translate_pct: float) -> dict:
  tr = _lvl_translate_rel(translate_pct)
  enh = {
      'Color': lambda img, f: ImageEnhance.Color(img).enhance(f),
      'Contrast': lambda img, f: ImageEnhance.Contrast(img).enhance(f),
      'Brightness': lambda img, f: ImageEnhance.Brightness(img).enhance(f),
      'Sharpness': lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
  }
  table = {
      'AutoContrast': (False, _none, lambda img: ImageOps.autocontrast(img)),
      'Equalize': (False, _none, lambda img: ImageOps.equalize(img)),
      'Invert': (False, _none, lambda img: ImageOps.invert(img)),
      'Rotate': (True, _lvl_rotate, _op_rotate),
      'Posterize': (False, _lvl_posterize, _op_posterize),
      'PosterizeIncreasing': (False, _lvl_posterize_increasing, _op_posterize),
      'Solarize': (False, _lvl_solarize, lambda img, t: ImageOps.solarize(img, t)),
      'SolarizeIncreasing': (False, _lvl_solarize_increasing, lambda img, t: ImageOps.solarize(img, t)),
      'SolarizeAdd': (False, _lvl_solarize_add, _op_solarize_add),
      'ShearX': (True, _lvl_shear, _op_shear_x),
      'ShearY': (True, _lvl_shear, _op_shear_y),
      'TranslateXRel': (True, tr, _op_translate_x_rel),
      'TranslateYRel': (True, tr, _op_translate_y_rel),
  }
  for name, fn in enh.items():
    table[name] = (False, _lvl_enhance, fn)
    table[name + 'Increasing'] = (False, _lvl_enhance_increasing, fn)
  return table


RAND_TRANSFORMS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                   'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
                   'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                              'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                              'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
                              'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def apply_rand_op(img: Image.Image, name: str, magnitude: float, rng: np.random.Generator, *,
                  resample, fillcolor, translate_pct: float = 0.45) -> Image.Image:
  """One timm AugmentOp body at a given (already noised/clipped) magnitude: level->args (which may
  draw the sign), then the interpolation choice for geometric ops, then the PIL op."""
  geometric, level_fn, fn = _op_table(translate_pct)[name]
  args = level_fn(magnitude, rng)
  if geometric:
    return fn(img, *args, resample=_choose_interp(resample, rng), fillcolor=fillcolor)
  return fn(_as_pil(img), *args)


def parse_rand_config(config_str: str) -> dict:
  """timm `rand_augment_transform` config: 'rand-m9-n2-p0.5-mstd0.5-mmax10-inc1'."""
  parts = config_str.split('-')
  if parts[0] != 'rand':
    raise UserError(f'randaugment config must start with "rand": {config_str!r}')
  cfg = dict(magnitude=_LEVEL_DENOM, num_layers=2, prob=0.5, magnitude_std=0.0,
             magnitude_max=None, increasing=False)
  for c in parts[1:]:
    if c.startswith('t'):
      raise UserError(f'randaugment: weighted/named transform sets ({c!r}) are not supported')
    cs = re.split(r'(\d.*)', c)
    if len(cs) < 2:
      continue
    key, val = cs[:2]
    if key == 'mstd':
      mstd = float(val)
      cfg['magnitude_std'] = float('inf') if mstd > 100 else mstd
    elif key == 'mmax':
      cfg['magnitude_max'] = int(val)
    elif key == 'inc':
      cfg['increasing'] = bool(int(val))
    elif key == 'm':
      cfg['magnitude'] = int(val)
    elif key == 'n':
      cfg['num_layers'] = int(val)
    elif key == 'p':
      cfg['prob'] = float(val)
    else:
      raise UserError(f'randaugment: unknown config section {c!r} in {config_str!r}')
  return cfg


@register('randaugment')
def randaugment(config_str: str = 'rand-m9-mstd0.5-inc1', mean=IMAGENET_DEFAULT_MEAN,
                interpolation: str = 'bicubic', translate_pct: float = 0.45) -> Transform:
  """timm RandAugment on a uint8 RGB image.

  Per image: `num_layers` ops drawn uniformly with replacement; each applied with prob `p`; its
  magnitude ~ N(m, mstd) (U(0, m) if mstd > 100) clipped to [0, mmax or 10]; signed ops negate with
  prob 0.5; geometric ops fill with round(255 * mean) and use `interpolation` ('random' = timm's
  per-op bilinear/bicubic choice).
  """
  cfg = parse_rand_config(config_str)
  names = RAND_INCREASING_TRANSFORMS if cfg['increasing'] else RAND_TRANSFORMS
  fill = tuple(min(255, round(255 * x)) for x in mean)
  resample = _interp(interpolation)
  table = _op_table(translate_pct)
  ops = [table[n] for n in names]
  prob, m, mstd = cfg['prob'], cfg['magnitude'], cfg['magnitude_std']
  upper = cfg['magnitude_max'] or _LEVEL_DENOM

  def op(ex, rng):
    _check_no_segmentation(ex, 'randaugment')
    img = ex['image']  # a PIL image or an array: each op converts only if it needs the other
    if isinstance(img, Image.Image):
      if img.mode != 'RGB':
        raise UserError(f'randaugment needs an RGB image, got PIL mode {img.mode}')
    else:
      img = np.asarray(img)
      if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f'randaugment needs a uint8 RGB (H, W, 3) image, got {img.dtype} {img.shape}')
    for k in rng.integers(0, len(ops), size=cfg['num_layers']):
      geometric, level_fn, fn = ops[int(k)]
      if prob < 1.0 and rng.random() > prob:
        continue
      mag = m
      if mstd == float('inf'):
        mag = rng.uniform(0, mag)
      elif mstd > 0:
        mag = rng.normal(mag, mstd)
      mag = max(0., min(mag, upper))
      args = level_fn(mag, rng)
      if geometric:
        img = fn(img, *args, resample=_choose_interp(resample, rng), fillcolor=fill)
      else:
        img = fn(_as_pil(img), *args)
    ex['image'] = img  # PIL or array; normalize or the end of the pipeline converts it once
    return ex

  return op


# --------------------------------------------------------------------------- random erasing


def erase_boxes(img_h: int, img_w: int, rng: np.random.Generator, *, prob=0.25, min_area=0.02,
                max_area=1 / 3, min_aspect=0.3, max_aspect=None, min_count=1, max_count=None):
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
def random_erasing(prob: float = 0.25, mode: str = 'pixel', min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect=None,
                   min_count: int = 1, max_count=None) -> Transform:
  """timm RandomErasing on the *normalized* float HWC image (timm applies it to the normalized CHW
  tensor): mode 'pixel' = per-pixel N(0, 1) noise, 'rand' = per-box per-channel N(0, 1), 'const' = 0."""
  mode = (mode or 'const').lower()
  if mode not in ('pixel', 'rand', 'const'):
    raise UserError(f"random_erasing: mode must be 'pixel', 'rand' or 'const', got {mode!r}")
  kw = dict(prob=prob, min_area=min_area, max_area=max_area, min_aspect=min_aspect,
            max_aspect=max_aspect, min_count=min_count, max_count=max_count)

  def op(ex, rng):
    _check_no_segmentation(ex, 'random_erasing')
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
      x[top:top + bh, left:left + bw] = fill
    ex['image'] = x
    return ex

  return op
