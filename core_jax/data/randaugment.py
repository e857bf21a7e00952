"""timm RandAugment (`rand_augment_transform`) on uint8 RGB images, registered as `randaugment`.

  randaugment(config_str='rand-m9-mstd0.5-inc1', mean=IMAGENET_DEFAULT_MEAN, interpolation='bicubic',
              translate_pct=0.45)

The ops are timm.data.auto_augment's PIL calls, their magnitudes drawn as timm draws them (same order, same
distributions, from the per-record `np.random.Generator`). The fill colour of the geometric ops is the mean on
the 0-255 scale, `round(255 * mean)` = (124, 116, 104) for ImageNet, as timm's `transforms_imagenet_train`
passes it (`img_mean` hparam). The geometric ops run in the C++ kernels of `core_jax.data.image_kernels` (equal
to Pillow bit for bit) where they apply, else in Pillow.

Interpolation: timm's RandAugment picks bilinear/bicubic at random per geometric op only when the train
`interpolation` is 'random'; with the ConvNeXt recipe (`--train_interpolation bicubic`) `create_transform`
passes `interpolation=bicubic` into the RandAugment hparams, so every geometric op is bicubic. Both are
available here via `interpolation='bicubic' | 'bilinear' | 'random'`.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from core_jax.data import image_kernels, primitives
from core_jax.data.primitives import IMAGENET_DEFAULT_MEAN, as_pil
from core_jax.data.registry import Transform, register
from core_jax.errors import UserError

# Op implementations: the same PIL calls as timm.data.auto_augment; `resample`/`fillcolor` only
# matter for the geometric ops.

_LEVEL_DENOM = 10.0


def _size(img) -> tuple:
  """(width, height), as PIL's `img.size`, of a PIL image or an array."""
  return img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])


# The geometric ops take a PIL image or a uint8 array and may return either: the C++ kernels (equal
# to Pillow bit for bit) give arrays; Pillow serves whatever they do not take.
def _affine(img, matrix, resample, fillcolor):
  out = image_kernels.affine(img, matrix, resample, fillcolor)
  if out is not None:
    return out
  img = as_pil(img)
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
  return as_pil(img).rotate(degrees, resample=resample, fillcolor=fillcolor)


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
  return (_negate((level / _LEVEL_DENOM) * 30.0, rng),)


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
  level = (level / _LEVEL_DENOM) * 0.9
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


RAND_TRANSFORMS = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'Posterize',
    'Solarize',
    'SolarizeAdd',
    'Color',
    'Contrast',
    'Brightness',
    'Sharpness',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'PosterizeIncreasing',
    'SolarizeIncreasing',
    'SolarizeAdd',
    'ColorIncreasing',
    'ContrastIncreasing',
    'BrightnessIncreasing',
    'SharpnessIncreasing',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)


def apply_rand_op(
    img: Image.Image,
    name: str,
    magnitude: float,
    rng: np.random.Generator,
    *,
    resample,
    fillcolor,
    translate_pct: float = 0.45,
) -> Image.Image:
  """One timm AugmentOp body at a given (already noised/clipped) magnitude: level->args (which may
  draw the sign), then the interpolation choice for geometric ops, then the PIL op."""
  geometric, level_fn, fn = _op_table(translate_pct)[name]
  args = level_fn(magnitude, rng)
  if geometric:
    return fn(img, *args, resample=primitives.choose_interpolation(resample, rng), fillcolor=fillcolor)
  return fn(as_pil(img), *args)


def parse_rand_config(config_str: str) -> dict:
  """timm `rand_augment_transform` config: 'rand-m9-n2-p0.5-mstd0.5-mmax10-inc1'."""
  parts = config_str.split('-')
  if parts[0] != 'rand':
    raise UserError(f'randaugment config must start with "rand": {config_str!r}')
  cfg = dict(magnitude=_LEVEL_DENOM, num_layers=2, prob=0.5, magnitude_std=0.0, magnitude_max=None, increasing=False)
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
def randaugment(
    config_str: str = 'rand-m9-mstd0.5-inc1',
    mean=IMAGENET_DEFAULT_MEAN,
    interpolation: str = 'bicubic',
    translate_pct: float = 0.45,
) -> Transform:
  """timm RandAugment on a uint8 RGB image.

  Per image: `num_layers` ops drawn uniformly with replacement; each applied with prob `p`; its
  magnitude ~ N(m, mstd) (U(0, m) if mstd > 100) clipped to [0, mmax or 10]; signed ops negate with
  prob 0.5; geometric ops fill with round(255 * mean) and use `interpolation` ('random' = timm's
  per-op bilinear/bicubic choice).
  """
  cfg = parse_rand_config(config_str)
  names = RAND_INCREASING_TRANSFORMS if cfg['increasing'] else RAND_TRANSFORMS
  fill = tuple(min(255, round(255 * x)) for x in mean)
  resample = primitives.interpolation(interpolation)
  table = _op_table(translate_pct)
  ops = [table[n] for n in names]
  prob, m, mstd = cfg['prob'], cfg['magnitude'], cfg['magnitude_std']
  upper = cfg['magnitude_max'] or _LEVEL_DENOM

  def op(ex, rng):
    primitives.check_no_segmentation(ex, 'randaugment')
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
      mag = max(0.0, min(mag, upper))
      args = level_fn(mag, rng)
      if geometric:
        img = fn(img, *args, resample=primitives.choose_interpolation(resample, rng), fillcolor=fill)
      else:
        img = fn(as_pil(img), *args)
    ex['image'] = img  # PIL or array; normalize or the end of the pipeline converts it once
    return ex

  return op
