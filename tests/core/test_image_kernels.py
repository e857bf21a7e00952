"""core_jax.data.image_kernels: C++ resize/affine must equal Pillow bit for bit, on every layout."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core_jax import native_kernels
from core_jax.data import image_kernels, ops, primitives, registry

needs_kernels = pytest.mark.skipif(native_kernels._compiler() is None, reason='no C++ compiler')
FILL = (124, 116, 104)


def _image(rng, h, w, c, smooth):
  shape = (h, w) if c == 1 else (h, w, c)
  x = rng.integers(0, 256, shape, dtype=np.uint8)
  if smooth:  # also natural-looking gradients, where rounding ties are more frequent
    x = (np.cumsum(x.astype(np.int64), 0) // 7 % 256).astype(np.uint8)
  return x


def _pil_resize(x, out_h, out_w, resample, box=None):
  img = Image.fromarray(x) if isinstance(x, np.ndarray) else x
  if box is not None:
    img = img.crop(box)
  return np.asarray(img.resize((out_w, out_h), resample))


@needs_kernels
def test_kernels_compile():
  assert image_kernels.available()


@needs_kernels
@pytest.mark.parametrize('resample', [Image.BILINEAR, Image.BICUBIC, Image.BOX])
def test_resize_equals_pillow(resample):
  """Random sizes (1 pixel up to 5x up- and down-scaling, one axis unchanged), L and RGB, from numpy
  arrays and from Pillow images read in place (RGBX storage), whole images and crop boxes."""
  rng = np.random.default_rng(int(resample))
  orders = set()
  for trial in range(120):
    h, w = (int(v) for v in rng.integers(1, 70, 2))
    c = 1 if trial % 5 == 0 else 3
    x = _image(rng, h, w, c, smooth=trial % 2 == 1)
    out_h, out_w = (int(v) for v in rng.integers(1, 100, 2))
    if trial % 7 == 0:
      out_h = h
    if trial % 11 == 0:
      out_w = w
    box = None
    if trial % 3 == 0 and h > 1 and w > 1:
      left, top = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
      box = (left, top, int(rng.integers(left + 1, w + 1)), int(rng.integers(top + 1, h + 1)))
    bh, bw = (box[3] - box[1], box[2] - box[0]) if box else (h, w)
    orders.add(out_h < bh and (bh - out_h) > 2 * (bw - out_w))
    want = _pil_resize(x, out_h, out_w, resample, box)
    for source in (x, Image.fromarray(x)):
      got = image_kernels.resize(source, out_h, out_w, resample, box=box)
      assert got is not None
      np.testing.assert_array_equal(got, want, err_msg=f'{x.shape} box={box} -> {(out_h, out_w)} {type(source)}')
  assert orders == {True, False}  # Pillow's vertical-first and horizontal-first orders both covered


@needs_kernels
@pytest.mark.parametrize('resample', [Image.BILINEAR, Image.BICUBIC])
def test_random_resized_crop_sizes_equal_pillow(resample):
  """ImageNet-size sources, random-resized-crop boxes, 224 output: the case the pipeline runs."""
  rng = np.random.default_rng(7)
  img = Image.fromarray(_image(rng, 375, 500, 3, smooth=True))
  for _ in range(6):
    top, left, h, w = primitives.rrc_params(375, 500, (0.08, 1.0), (3 / 4, 4 / 3), rng)
    box = (left, top, left + w, top + h)
    got = image_kernels.resize(img, 224, 224, resample, box=box)
    np.testing.assert_array_equal(got, _pil_resize(img, 224, 224, resample, box), err_msg=str(box))


def _matrices(rng, w, h):
  yield (1, float(rng.uniform(-0.3, 0.3)), 0, 0, 1, 0)  # ShearX
  yield (1, 0, 0, float(rng.uniform(-0.3, 0.3)), 1, 0)  # ShearY
  yield (1, 0, float(rng.uniform(-0.45, 0.45)) * w, 0, 1, float(rng.uniform(-0.45, 0.45)) * h)  # translate
  yield tuple(float(v) for v in rng.uniform(-2, 2, 6))  # anything, mostly mapping outside
  yield (1, 0, 3 * w, 0, 1, 0)  # entirely outside: all fill


@needs_kernels
@pytest.mark.parametrize('resample', [Image.BILINEAR, Image.BICUBIC])
def test_affine_equals_pillow(resample):
  rng = np.random.default_rng(int(resample) + 10)
  for trial in range(40):
    h, w = (int(v) for v in rng.integers(1, 60, 2))
    c = 1 if trial % 4 == 0 else 3
    x = _image(rng, h, w, c, smooth=trial % 2 == 1)
    fill = FILL if c == 3 else 77
    for m in _matrices(rng, w, h):
      want = np.asarray(Image.fromarray(x).transform((w, h), Image.AFFINE, m, resample=resample, fillcolor=fill))
      for source in (x, Image.fromarray(x), np.ascontiguousarray(x[:, ::-1])[:, ::-1]):  # also a negative stride
        got = image_kernels.affine(source, m, resample, fill)
        np.testing.assert_array_equal(got, want, err_msg=f'{x.shape} {m}')


@needs_kernels
def test_rotate_matrix_equals_pillow_rotate():
  rng = np.random.default_rng(3)
  x = _image(rng, 37, 52, 3, smooth=True)
  for degrees in (*rng.uniform(-30, 30, 8), 45.0, -90.0, 270.0, 360.0 + 12.5):
    matrix = image_kernels.rotate_matrix(52, 37, degrees)
    want = np.asarray(Image.fromarray(x).rotate(degrees, resample=Image.BICUBIC, fillcolor=FILL))
    np.testing.assert_array_equal(image_kernels.affine(x, matrix, Image.BICUBIC, FILL), want, err_msg=str(degrees))
  for degrees in (0.0, 180.0, -180.0, 360.0):  # Pillow's pixel-permuting fast paths stay Pillow's
    assert image_kernels.rotate_matrix(52, 37, degrees) is None
  assert image_kernels.rotate_matrix(40, 40, 90.0) is None
  assert image_kernels.rotate_matrix(52, 37, 90.0) is not None  # not square: Pillow's affine path


@needs_kernels
def test_unsupported_cases_return_none():
  x = np.zeros((8, 9, 3), np.uint8)
  assert image_kernels.resize(x, 4, 4, Image.LANCZOS) is None
  assert image_kernels.resize(x, 4, 4, Image.NEAREST) is None
  assert image_kernels.affine(x, (1, 0, 0, 0, 1, 0), Image.NEAREST, None) is None
  assert image_kernels.resize(Image.new('RGBA', (9, 8)), 4, 4, Image.BICUBIC) is None  # Pillow premultiplies
  assert image_kernels.resize(np.zeros((8, 9, 4), np.uint8), 4, 4, Image.BICUBIC) is None
  assert image_kernels.resize(np.zeros((8, 9), np.float32), 4, 4, Image.BICUBIC) is None
  assert image_kernels.resize(x, 4, 4, Image.BICUBIC, box=(0, 0, 10, 8)) is None  # box outside the image
  assert image_kernels.affine(x, (1, 0, 0, 0, 1, 0), Image.BICUBIC, 128) is None  # Pillow: a packed RGB int
  assert image_kernels.affine(x, (1, 0, 0, 0, 1, 0), Image.BICUBIC, (1, 2)) is None


@needs_kernels
def test_pillow_image_in_several_blocks_is_copied_once():
  """Pillow cannot export an image split over several memory blocks; the kernels then read a copy."""
  block = Image.core.get_block_size()
  try:
    Image.core.set_block_size(4096)
    img = Image.fromarray(_image(np.random.default_rng(0), 90, 80, 3, smooth=True))
    assert image_kernels._pil_pixels(img) is None
    np.testing.assert_array_equal(
        image_kernels.resize(img, 33, 41, Image.BICUBIC), _pil_resize(img, 33, 41, Image.BICUBIC)
    )
  finally:
    Image.core.set_block_size(block)


def _jpeg_examples(n=6):
  import io  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(5)
  out = []
  for i in range(n):
    buf = io.BytesIO()
    Image.fromarray(_image(rng, 90 + 7 * i, 120 - 5 * i, 3, smooth=True)).save(buf, format='JPEG', quality=90)
    out.append({'image': buf.getvalue(), 'label': i})
  return out


@needs_kernels
@pytest.mark.parametrize(
    'specs',
    [
        (
            'decode_jpeg',
            'random_resized_crop_timm(size=64)',
            'flip_lr',
            "randaugment(config_str='rand-m9-n4-p1.0-mstd0.5')",
        ),
        ('decode_jpeg', 'resize_shorter_and_center_crop(size=56)'),
        ('decode_jpeg', 'squash_resize(size=48)'),
    ],
)
def test_pipeline_equal_with_and_without_kernels(specs, monkeypatch):
  """The training/eval transforms give the same arrays through the kernels and through Pillow alone."""
  tf = ops.build_transforms(specs)
  examples = _jpeg_examples()
  used = []
  for name in ('resize', 'affine'):

    def counted(*args, _fn=getattr(image_kernels, name), _name=name, **kwargs):
      out = _fn(*args, **kwargs)
      used.append((_name, out is not None))
      return out

    monkeypatch.setattr(image_kernels, name, counted)
  fast = [tf(ex, np.random.default_rng(i))['image'] for i, ex in enumerate(examples)]
  assert ('resize', True) in used and ('randaugment' not in specs[-1] or ('affine', True) in used)
  monkeypatch.setattr(image_kernels, '_lib', None)
  slow = [tf(ex, np.random.default_rng(i))['image'] for i, ex in enumerate(examples)]
  for a, b in zip(fast, slow):
    assert a.dtype == b.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_disabled_kernels_fall_back_to_pillow():
  code = (
      'from core_jax.data import image_kernels, primitives; import numpy as np; from PIL import Image; '
      'print(image_kernels.available(), image_kernels.resize(np.zeros((4, 4, 3), np.uint8), 2, 2, Image.BICUBIC), '
      'primitives.resize_any(np.zeros((4, 4, 3), np.uint8), 2, 2, Image.BICUBIC).shape)'
  )
  out = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      check=True,
      env=dict(os.environ, CORE_JAX_NATIVE_KERNELS='0'),
  )
  assert out.stdout.split() == ['False', 'None', '(2,', '2,', '3)']


@needs_kernels
def test_flip_and_normalize_kernels_equal_numpy():
  """flip_lr gives numpy's x[:, ::-1] packed; the normalize op's C++ table lookup equals the numpy path
  (kernels off), for RGB and L arrays, flipped views and Pillow images read in place."""
  rng = np.random.default_rng(11)
  flip = registry.get_transform('flip_lr(p=1.0)')
  norm = registry.get_transform('imagenet_normalize')
  gray = registry.get_transform('normalize(mean=(0.5,), std=(0.25,))')
  for x in (_image(rng, 17, 23, 3, True), _image(rng, 5, 1, 3, False), _image(rng, 9, 12, 1, True)):
    flipped = flip({'image': x}, np.random.default_rng(0))['image']
    assert flipped.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(flipped, x[:, ::-1])
    np.testing.assert_array_equal(image_kernels.flip_lr(Image.fromarray(x)), x[:, ::-1])
    op = norm if x.ndim == 3 else gray
    for source in (x, x[:, ::-1], x[::-1], Image.fromarray(x)):
      got = op({'image': source}, None)['image']
      lib = image_kernels._lib
      try:
        image_kernels._lib = None  # the numpy table path
        want = op({'image': np.ascontiguousarray(np.asarray(source))}, None)['image']
      finally:
        image_kernels._lib = lib
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, want)


@needs_kernels
def test_flipped_views_equal_their_packed_copies():
  """A horizontally flipped view (negative pixel stride) resizes (packed in C++ first) and transforms (read
  in place) like its packed copy."""
  rng = np.random.default_rng(12)
  for h, w in ((31, 40), (1, 5), (6, 1)):
    x = _image(rng, h, w, 3, True)
    view = x[:, ::-1]
    packed = np.ascontiguousarray(view)
    for out_hw in ((13, 29), (h, 2 * w + 1), (3 * h, w)):
      np.testing.assert_array_equal(
          image_kernels.resize(view, *out_hw, Image.BICUBIC), _pil_resize(packed, *out_hw, Image.BICUBIC)
      )
    m = (1, 0.2, -3, 0.1, 1, 2)
    np.testing.assert_array_equal(
        image_kernels.affine(view, m, Image.BICUBIC, FILL),
        np.asarray(Image.fromarray(packed).transform((w, h), Image.AFFINE, m, resample=Image.BICUBIC, fillcolor=FILL)),
    )


@needs_kernels
def test_calibration_follows_the_installed_pillow(monkeypatch):
  """The resize pass order is probed from Pillow (it changed in Pillow 13); an op that matches no
  variant of the installed Pillow is left to Pillow, never run with different results."""
  lib = image_kernels._library()
  major = int(Image.__version__.split('.')[0])
  assert image_kernels._calibrate(lib) == (1 if major >= 13 else 0, True)
  assert (image_kernels._resize_order, image_kernels._affine_ok) == (1 if major >= 13 else 0, True)
  original_resize, original_transform = Image.Image.resize, Image.Image.transform
  with monkeypatch.context() as m:  # a Pillow that computes something else
    m.setattr(Image.Image, 'resize', lambda self, *a, **k: original_resize(self, *a, **k).rotate(180))
    m.setattr(Image.Image, 'transform', lambda self, *a, **k: original_transform(self, *a, **k).rotate(180))
    assert image_kernels._calibrate(lib) == (None, False)
  monkeypatch.setattr(image_kernels, '_resize_order', None)
  monkeypatch.setattr(image_kernels, '_affine_ok', False)
  x = np.zeros((8, 9, 3), np.uint8)
  assert image_kernels.resize(x, 4, 4, Image.BICUBIC) is None
  assert image_kernels.affine(x, (1, 0, 0, 0, 1, 0), Image.BICUBIC, None) is None


_GUARD_SCRIPT = r"""
import ctypes, mmap, sys
import numpy as np
from PIL import Image
from core_jax.data import image_kernels as ik
assert ik.available()
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
keep = []

def guarded(x):
    # A copy of x whose bytes end exactly at an unreadable page, and start right after another.
    n = x.nbytes
    pages = -(-n // PAGE)
    buf = mmap.mmap(-1, (pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    for p in (base, base + (pages + 1) * PAGE):
        assert libc.mprotect(p, PAGE, 0) == 0
    start = PAGE + pages * PAGE - n
    y = np.frombuffer(buf, np.uint8, n, start).reshape(x.shape)
    y[...] = x
    keep.append(buf)
    return y

rng = np.random.default_rng(0)
fill = (124, 116, 104)
count = 0
for h, w in ((9, 7), (1, 1), (1, 6), (5, 1), (40, 13)):
    rgba = guarded(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    rgb = guarded(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    gray = guarded(rng.integers(0, 256, (h, 4 * w), dtype=np.uint8))
    views = [rgb, rgb[:, ::-1], rgb[::-1], rgb[::-1, ::-1], rgba[..., :3], rgba[..., 1:], rgba[::-1, :, 1:],
             rgba[..., 3], gray[:, ::4], gray[:, 3::4], gray[::-1, ::-1]]
    for v in views:
        packed = np.ascontiguousarray(v)
        for order in (0, 1):
            ik._resize_order = order
            for oh, ow in ((3, 11), (2 * h + 1, w), (h, 3 * w), (max(1, h // 3), w + 1)):
                got = ik.resize(v, oh, ow, Image.BICUBIC)
                assert got is not None and got.shape[:2] == (oh, ow), (v.shape, v.strides)
                count += 1
        m = (1, 0.3, -1, 0.1, 1, 0.5)
        c = 1 if v.ndim == 2 else 3
        f = fill if c == 3 else 9
        want = np.asarray(Image.fromarray(packed).transform((v.shape[1], v.shape[0]), Image.AFFINE, m,
                                                           resample=Image.BICUBIC, fillcolor=f))
        assert np.array_equal(ik.affine(v, m, Image.BICUBIC, f), want)
        assert np.array_equal(ik.flip_lr(v), packed[:, ::-1])
        table = np.tile(np.arange(256, dtype=np.float32), (c, 1))
        assert np.array_equal(ik.lookup(v, table), packed.astype(np.float32))
print('ok', count)
"""


@needs_kernels
def test_no_reads_outside_any_numpy_layout():
  """Every view the kernels accept (flipped rows or columns, channels cut out of RGBA, strided gray),
  placed right before and after unreadable pages: any read past the pixels would crash the process."""
  out = subprocess.run([sys.executable, '-c', _GUARD_SCRIPT], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.startswith('ok'), out.stderr[-2000:]


@needs_kernels
def test_bad_arguments_fall_back_instead_of_failing():
  x = _image(np.random.default_rng(1), 12, 10, 3, True)
  for bad in ((1, 0, float('nan'), 0, 1, 0), (1, 0, 0, 0, float('inf'), 0), (1, 0, 0)):
    assert image_kernels.affine(x, bad, Image.BICUBIC, FILL) is None
  box = tuple(np.int64(v) for v in (1, 2, 9, 11))
  np.testing.assert_array_equal(
      image_kernels.resize(Image.fromarray(x), 5, 6, Image.BICUBIC, box=box),
      _pil_resize(x, 5, 6, Image.BICUBIC, box=(1, 2, 9, 11)),
  )
  assert image_kernels.resize(x, 5, 6, Image.BICUBIC, box=(1.5, 2, 9, 11)) is None  # Pillow rounds: its call
  assert image_kernels.resize(np.zeros(5, np.uint8), 2, 2, Image.BICUBIC, box=(0, 0, 1, 1)) is None


@needs_kernels
def test_pass_order_rule_is_pillows():
  """Independently of the kernels: Pillow's result for a two-axis resize equals one of its two
  single-axis sequences; which one must be the calibrated rule's choice, ties at its edge included."""
  image_kernels._library()
  rng = np.random.default_rng(4)
  checked = 0
  for trial in range(160):
    h, w = (int(v) for v in rng.integers(3, 90, 2))
    out_w = int(rng.integers(2, 90))
    out_h = h - 2 * (w - out_w) + int(rng.integers(-1, 2)) if trial % 2 else int(rng.integers(2, 90))
    if out_h < 1 or out_h == h or out_w == w:
      continue
    img = Image.fromarray(_image(rng, h, w, 3, False))
    full = np.asarray(img.resize((out_w, out_h), Image.BICUBIC))
    two_steps = lambda mid: np.asarray(img.resize(mid, Image.BICUBIC).resize((out_w, out_h), Image.BICUBIC))
    h_first = np.array_equal(full, two_steps((out_w, h)))
    v_first = np.array_equal(full, two_steps((w, out_h)))
    if h_first == v_first:
      continue  # both sequences give the same pixels here
    rule = image_kernels._resize_order == 1 and out_h < h and (h - out_h) > 2 * (w - out_w)
    assert v_first == rule, (h, w, out_h, out_w)
    checked += 1
  assert checked > 60


@needs_kernels
def test_first_use_from_many_threads_calibrates_once(monkeypatch):
  import threading  # pylint: disable=import-outside-toplevel

  calls = []
  original = image_kernels._calibrate
  monkeypatch.setattr(image_kernels, '_calibrate', lambda lib: calls.append(1) or original(lib))
  monkeypatch.setattr(image_kernels, '_lib', image_kernels._UNSET)
  x = _image(np.random.default_rng(2), 30, 20, 3, True)
  want = _pil_resize(x, 11, 13, Image.BICUBIC)
  results = []
  threads = [
      threading.Thread(target=lambda: results.append(image_kernels.resize(x, 11, 13, Image.BICUBIC))) for _ in range(8)
  ]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and len(results) == 8
  for r in results:
    np.testing.assert_array_equal(r, want)
