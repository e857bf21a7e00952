"""Pillow's resize and affine transform for uint8 L/RGB images in C++ (image_kernels.cc), with the
flip and the normalize table lookup the pipeline applies next.

The training transforms follow timm, which calls Pillow; these kernels give Pillow's result bit for bit
(tests/core/test_image_kernels.py compares them over many sizes, crops and matrices) in a fraction of
its time (benchmarks/input_pipeline.py --ops prints the ratios). They read a Pillow image in place
through its Arrow export (RGB; no copy), or a numpy array, and return numpy arrays. Each function returns
None when it cannot take a case (no C++ compiler, CORE_JAX_NATIVE_KERNELS=0, another filter or mode);
the caller then calls Pillow, so results never depend on whether the kernels are there.
"""

from __future__ import annotations

import ctypes
import logging
import math
import operator
import os
import threading

import numpy as np
from PIL import Image

from core_jax import native_kernels

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'image_kernels.cc')
# Pillow rounds every product and sum on its own; a fused multiply-add would round once.
_FLAGS = ('-ffp-contract=off',)
AFFINE_FILTERS = {Image.BILINEAR: 2, Image.BICUBIC: 3}
RESIZE_FILTERS = {**AFFINE_FILTERS, Image.BOX: 4}
_UNSET = object()
_lib = _UNSET
_init_lock = threading.Lock()
_resize_order = None  # the installed Pillow's pass order (image_kernels.cc PassOrder); None: no resize
_affine_ok = False


def _library():
  global _lib, _resize_order, _affine_ok
  if _lib is _UNSET:
    with _init_lock:  # Grain calls transforms from several threads; calibrate once, publish at the end
      if _lib is _UNSET:
        lib = native_kernels.library(_SOURCE, _FLAGS, fallback='Pillow')
        if lib is not None:
          ptr, i32, ssize = ctypes.c_void_p, ctypes.c_int, ctypes.c_ssize_t
          lib.core_jax_resize_u8.argtypes = [ptr, ssize, i32, i32, i32, i32, ptr, i32, i32, i32, i32]
          lib.core_jax_affine_u8.argtypes = [
              ptr,
              ssize,
              i32,
              i32,
              i32,
              i32,
              ctypes.POINTER(ctypes.c_double),
              ptr,
              ptr,
              i32,
              i32,
              i32,
          ]
          lib.core_jax_flip_lr_u8.argtypes = [ptr, ssize, i32, i32, i32, i32, ptr]
          lib.core_jax_lookup_u8_f32.argtypes = [ptr, ssize, i32, i32, i32, i32, ptr, ptr]
          for fn in (
              lib.core_jax_resize_u8,
              lib.core_jax_affine_u8,
              lib.core_jax_flip_lr_u8,
              lib.core_jax_lookup_u8_f32,
          ):
            fn.restype = i32
          _resize_order, _affine_ok = _calibrate(lib)
        _lib = lib
  return _lib


def _calibrate(lib):
  """(resize pass order or None, affine usable): the kernels checked against the installed Pillow on
  small probes, once per process. Which pass Pillow's resize runs first changed in Pillow 13
  (image_kernels.cc PassOrder), and a Pillow that computes differently in any other way must not be
  silently disagreed with: an op whose probe no variant matches is left to Pillow, with a warning."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (84, 24, 3), dtype=np.uint8)
  # Shapes where the two orders give different pixels: inside Pillow 13's vertical-first region, and
  # on both sides of its edge (84 - 76 == 2 * (24 - 20): horizontal first; one row fewer: vertical).
  probes = [
      ((32, 33), Image.BICUBIC),
      ((40, 20), Image.BILINEAR),
      ((50, 30), Image.BICUBIC),
      ((76, 20), Image.BICUBIC),
      ((75, 20), Image.BICUBIC),
  ]
  wants = [np.asarray(Image.fromarray(x).resize((w, h), f)) for (h, w), f in probes]
  resize_order = None
  for order in (1, 0):
    got = []
    for (h, w), f in probes:
      out = np.empty((h, w, 3), np.uint8)
      lib.core_jax_resize_u8(x.ctypes.data, x.strides[0], 3, 84, 24, 3, out.ctypes.data, h, w, RESIZE_FILTERS[f], order)
      got.append(out)
    if all(np.array_equal(a, b) for a, b in zip(got, wants)):
      resize_order = order
      break
  matrix = (ctypes.c_double * 6)(0.9, 0.21, -3.3, -0.17, 1.1, 2.6)
  fill = np.array([1, 2, 3], np.uint8)
  affine_ok = True
  for f in AFFINE_FILTERS:
    want = np.asarray(
        Image.fromarray(x).transform((24, 84), Image.AFFINE, tuple(matrix), resample=f, fillcolor=(1, 2, 3))
    )
    out = np.empty_like(x)
    lib.core_jax_affine_u8(
        x.ctypes.data, x.strides[0], 3, 84, 24, 3, matrix, fill.ctypes.data, out.ctypes.data, 84, 24, AFFINE_FILTERS[f]
    )
    affine_ok &= bool(np.array_equal(out, want))
  for name, ok in (('resize', resize_order is not None), ('affine transform', affine_ok)):
    if not ok:
      logging.warning(
          'image kernels: the C++ %s differs from Pillow %s here; using Pillow for it',
          name,
          getattr(Image, '__version__', '?'),
      )
  return resize_order, affine_ok


def available() -> bool:
  return _library() is not None


# ------------------------------------------------------------------------ reading the pixels


class _ArrowSchema(ctypes.Structure):
  pass


_ArrowSchema._fields_ = [
    ('format', ctypes.c_char_p),
    ('name', ctypes.c_char_p),
    ('metadata', ctypes.c_char_p),
    ('flags', ctypes.c_int64),
    ('n_children', ctypes.c_int64),
    ('children', ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    ('dictionary', ctypes.POINTER(_ArrowSchema)),
    ('release', ctypes.c_void_p),
    ('private_data', ctypes.c_void_p),
]


class _ArrowArray(ctypes.Structure):
  pass


_ArrowArray._fields_ = [
    ('length', ctypes.c_int64),
    ('null_count', ctypes.c_int64),
    ('offset', ctypes.c_int64),
    ('n_buffers', ctypes.c_int64),
    ('n_children', ctypes.c_int64),
    ('buffers', ctypes.POINTER(ctypes.c_void_p)),
    ('children', ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ('dictionary', ctypes.POINTER(_ArrowArray)),
    ('release', ctypes.c_void_p),
    ('private_data', ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _pil_pixels(img: Image.Image):
  """(address, capsules to keep alive) of a Pillow 'RGB' image's own storage (4-byte RGBX pixels),
  through the Arrow C data interface (Pillow >= 11.2). None if Pillow cannot export it (older Pillow,
  an image stored in several blocks). Only RGB: Pillow 11 and 12 crash exporting 'L' images."""
  if img.mode != 'RGB' or getattr(Image.core, 'get_alignment', lambda: 1)() != 1:
    return None  # with row alignment, rows may be padded apart (Pillow 13 refuses the export then)
  try:
    schema_capsule, array_capsule = img.__arrow_c_array__()
    schema = ctypes.cast(_capsule_pointer(schema_capsule, b'arrow_schema'), ctypes.POINTER(_ArrowSchema)).contents
    array = ctypes.cast(_capsule_pointer(array_capsule, b'arrow_array'), ctypes.POINTER(_ArrowArray)).contents
  except (AttributeError, ValueError, TypeError):
    return None
  w, h = img.size
  if (
      array.offset != 0
      or array.length != w * h
      or schema.format != b'+w:4'
      or array.n_children != 1
      or schema.children[0].contents.format != b'C'
  ):
    return None
  child = array.children[0].contents
  if child.offset != 0 or child.n_buffers != 2 or not child.buffers[1]:
    return None
  return child.buffers[1], (schema_capsule, array_capsule)


def _source(x, box=None):
  """(address, row stride, pixel stride, h, w, channel axis (() or (C,)), keep-alive) of the uint8
  L/RGB pixels of a numpy H x W or H x W x {1,3} array or a Pillow 'L'/'RGB' image, optionally of its
  (left, top, right, bottom) `box` (in place). None for anything else."""
  if isinstance(x, Image.Image):
    if x.mode not in ('RGB', 'L') or 0 in x.size:
      return None
    c = 3 if x.mode == 'RGB' else 1
    found = _pil_pixels(x)
    if found is None:  # 'L', an older Pillow: one packed copy
      return _source(np.asarray(x), box)
    (address, keep), pixel = found, 4
    w, h = x.size
    row = w * pixel
    left, top, right, bottom = box or (0, 0, w, h)
    return address + top * row + left * pixel, row, pixel, bottom - top, right - left, (c,) if c == 3 else (), keep
  if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim not in (2, 3):
    return None
  if box is not None:
    left, top, right, bottom = box
    x = x[top:bottom, left:right]
  c = 1 if x.ndim == 2 else x.shape[2]
  if c not in (1, 3) or 0 in x.shape:
    return None
  if abs(x.strides[1]) != c or (x.ndim == 3 and x.strides[2] != 1):
    x = np.ascontiguousarray(x)  # pixels packed (a flipped view is fine); 4-byte pixels mean Pillow's RGBX
  return x.ctypes.data, x.strides[0], x.strides[1], x.shape[0], x.shape[1], x.shape[2:], x


def _box(x, box):
  """`box` as (left, top, right, bottom) ints inside the image, None for the whole image, or False if
  it is not such a box (Pillow's crop would pad or round: leave it to Pillow)."""
  if box is None:
    return None
  try:
    left, top, right, bottom = (operator.index(v) for v in box)
  except (TypeError, ValueError):
    return False
  if isinstance(x, Image.Image):
    w, h = x.size
  elif isinstance(x, np.ndarray) and x.ndim >= 2:
    h, w = x.shape[:2]
  else:
    return False
  return (left, top, right, bottom) if 0 <= left < right <= w and 0 <= top < bottom <= h else False


# --------------------------------------------------------------------------------- operations


def resize(x, out_h: int, out_w: int, resample, box=None) -> np.ndarray | None:
  """Pillow `img.crop(box).resize((out_w, out_h), resample)` (no crop without `box`) as an H x W (x 3)
  uint8 array, for a Pillow image or numpy array; None where the kernels do not apply (use Pillow).
  The box must lie inside the image, as it does for random-resized crops."""
  lib = _library()
  box = _box(x, box)
  if lib is None or _resize_order is None or resample not in RESIZE_FILTERS or out_h <= 0 or out_w <= 0 or box is False:
    return None
  src = _source(x, box)
  if src is None:
    return None
  address, row, pixel, h, w, channel_axis, keep = src
  out = np.empty((out_h, out_w) + channel_axis, np.uint8)
  c = channel_axis[0] if channel_axis else 1
  rc = lib.core_jax_resize_u8(
      address, row, pixel, h, w, c, out.ctypes.data, out_h, out_w, RESIZE_FILTERS[resample], _resize_order
  )
  del keep
  return out if rc == 0 else None


def affine(x, matrix, resample, fillcolor) -> np.ndarray | None:
  """Pillow `img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=fillcolor)` as an array,
  for a Pillow image or numpy array; None where the kernels do not apply (use Pillow). `matrix` maps
  output pixel centres to input coordinates, as in Pillow."""
  lib = _library()
  matrix = tuple(matrix)
  if (
      lib is None
      or not _affine_ok
      or resample not in AFFINE_FILTERS
      or len(matrix) < 6
      or not all(isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in matrix[:6])
  ):
    return None  # Pillow raises for a short matrix; non-finite coordinates are left to it too
  src = _source(x)
  if src is None:
    return None
  address, row, pixel, h, w, channel_axis, keep = src
  out = np.empty((h, w) + channel_axis, np.uint8)
  c = channel_axis[0] if channel_axis else 1
  fill = np.asarray((0,) * c if fillcolor is None else fillcolor).reshape(-1)
  if fill.size != c or fill.dtype.kind not in 'iu' or fill.min() < 0 or fill.max() > 255:
    return None  # Pillow's own conversion (an int is a packed colour in RGB) or error
  fill = fill.astype(np.uint8)
  a = (ctypes.c_double * 6)(*(float(v) for v in matrix[:6]))
  rc = lib.core_jax_affine_u8(
      address, row, pixel, h, w, c, a, fill.ctypes.data, out.ctypes.data, h, w, AFFINE_FILTERS[resample]
  )
  del keep
  return out if rc == 0 else None


def flip_lr(x) -> np.ndarray | None:
  """`x[:, ::-1]` of a uint8 L/RGB array or Pillow image, as a packed array; None: use numpy/Pillow."""
  lib = _library()
  src = None if lib is None else _source(x)
  if src is None:
    return None
  address, row, pixel, h, w, channel_axis, keep = src
  out = np.empty((h, w) + channel_axis, np.uint8)
  rc = lib.core_jax_flip_lr_u8(address, row, pixel, h, w, channel_axis[0] if channel_axis else 1, out.ctypes.data)
  del keep
  return out if rc == 0 else None


def lookup(x, table: np.ndarray) -> np.ndarray | None:
  """float32 `table[c, x[..., c]]` of a uint8 L/RGB array or Pillow image (`table`: (C, 256) float32),
  packed; None: use numpy."""
  lib = _library()
  src = None if lib is None else _source(x)
  if src is None:
    return None
  address, row, pixel, h, w, channel_axis, keep = src
  c = channel_axis[0] if channel_axis else 1
  table = np.ascontiguousarray(table, np.float32)
  if table.shape != (c, 256):
    return None
  out = np.empty((h, w) + channel_axis, np.float32)
  rc = lib.core_jax_lookup_u8_f32(address, row, pixel, h, w, c, table.ctypes.data, out.ctypes.data)
  del keep
  return out if rc == 0 else None


def rotate_matrix(width: int, height: int, degrees: float):
  """The affine matrix of Pillow's `Image.rotate(degrees)` (about the centre, no translate or expand),
  computed as Pillow computes it; None where Pillow takes a pixel-permuting fast path instead (0/180
  degrees, 90/270 on a square image), which callers leave to Pillow."""
  angle = degrees % 360.0
  if angle in (0, 180) or (angle in (90, 270) and width == height):
    return None
  cx, cy = width / 2, height / 2
  angle = -math.radians(angle)
  m = [
      round(math.cos(angle), 15),
      round(math.sin(angle), 15),
      0.0,
      round(-math.sin(angle), 15),
      round(math.cos(angle), 15),
      0.0,
  ]
  # Pillow: (m[2], m[5]) = m applied to (-cx, -cy), then + (cx, cy); in the same order of operations.
  m[2], m[5] = m[0] * -cx + m[1] * -cy + m[2] + cx, m[3] * -cx + m[4] * -cy + m[5] + cy
  return m
