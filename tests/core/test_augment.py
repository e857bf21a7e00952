"""ImageNet augmentations (core_jax.data.augment) and Mixup/CutMix (core_jax.data.mixing) vs timm.

Exactness trick: our ops draw only through `rng.random / uniform / integers / normal / beta`, in the
same order as timm's python-`random` / `np.random` draws. The shims below forward those calls to the
global RNGs timm uses, so after re-seeding, our op replays timm's stream and must give the identical
output (same boxes, same ops, same pixels).
"""

import io
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from core_jax.data import augment, mixing, ops, primitives, randaugment, registry, transforms
from core_jax.errors import UserError

try:  # the reference implementation (test extra); only the comparisons need it
  import timm.data.auto_augment as timm_aa
  import torch
  from timm.data import mixup as timm_mixup
  from timm.data.random_erasing import RandomErasing
  from timm.data.transforms import RandomResizedCropAndInterpolation
  from timm.data.transforms_factory import transforms_imagenet_eval

  HAVE_TIMM = True
except ImportError:  # pragma: no cover
  HAVE_TIMM = False
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason='timm/torch/torchvision not installed')

FILL = tuple(min(255, round(255 * x)) for x in primitives.IMAGENET_DEFAULT_MEAN)


class PyRandomShim:
  """np.random.Generator look-alike replaying python `random` (+ np.random for sized draws)."""

  def random(self):
    return random.random()

  def uniform(self, a, b):
    return random.uniform(a, b)

  def integers(self, lo, hi, size=None):
    if size is None:
      return random.randint(lo, hi - 1)
    return np.random.randint(lo, hi, size=size)  # RandAugment's np.random.choice(ops, n)

  def normal(self, loc, scale):
    return random.gauss(loc, scale)


class NpRandomShim:
  """np.random.Generator look-alike replaying the legacy global np.random (timm Mixup)."""

  def random(self):
    return np.random.rand()

  def beta(self, a, b):
    return np.random.beta(a, b)

  def integers(self, lo, hi):
    return np.random.randint(lo, hi)


class FixedRandom:
  """rng whose random() is constant: 0.9 -> timm `_randomly_negate` negates, 0.1 -> keeps sign."""

  def __init__(self, value):
    self.value = value

  def random(self):
    return self.value


def _seed(s):
  random.seed(s)
  np.random.seed(s)


def _image(h, w, seed=0):
  """Smooth-ish RGB image with structure (so geometric ops / equalize are non-trivial)."""
  r = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 64 * 4], -1)
  return np.clip(base + r.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- registry


def test_ops_registered_and_build():
  names = set(registry.registered())
  assert {
      'decode_jpeg',
      'random_resized_crop_timm',
      'inception_crop',
      'randaugment',
      'random_erasing',
      'resize_shorter_and_center_crop',
      'squash_resize',
      'imagenet_normalize',
  } <= names
  train = ops.build_transforms(
      [
          'decode_jpeg',
          'random_resized_crop_timm(size=24)',
          'flip_lr',
          "randaugment(config_str='rand-m9-mstd0.5-inc1')",
          'imagenet_normalize',
          'random_erasing(prob=1.0)',
      ]
  )
  buf = io.BytesIO()
  Image.fromarray(_image(40, 30)).save(buf, format='JPEG')
  out = train({'image': buf.getvalue(), 'label': 3}, np.random.default_rng(0))
  assert out['image'].shape == (24, 24, 3) and out['image'].dtype == np.float32
  assert out['label'] == 3
  again = train({'image': buf.getvalue(), 'label': 3}, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], again['image'])  # deterministic given the rng
  ev = ops.build_transforms(['resize_shorter_and_center_crop(size=16)', 'imagenet_normalize'])
  assert ev({'image': _image(40, 30)}, np.random.default_rng(0))['image'].shape == (16, 16, 3)
  with pytest.raises(UserError):
    ops.build_transforms(['random_erasing'])({'image': _image(8, 8)}, np.random.default_rng(0))


def test_imagenet_normalize_matches_normalize_op():
  img = _image(9, 7)
  a = registry.get_transform('imagenet_normalize')({'image': img}, None)['image']
  b = registry.get_transform('normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))')({'image': img}, None)[
      'image'
  ]
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('channels,stats', [(3, 3), (1, 1), (3, 1), (4, 4)])
def test_normalize_table_lookup_equals_arithmetic(channels, stats):
  """uint8 images take the (channel, value) lookup table; it must equal the float arithmetic bit for
  bit (every byte value in every channel, one mean/std broadcast over channels too), as timm's
  ToTensor + Normalize computes it."""
  img = np.stack([np.roll(np.arange(256, dtype=np.uint8), 17 * c) for c in range(channels)], -1).reshape(
      16, 16, channels
  )
  mean, std = (0.485, 0.456, 0.406, 0.5)[:stats], (0.229, 0.224, 0.225, 0.25)[:stats]
  op = registry.get_transform(f'normalize(mean={mean}, std={std})')
  whole = op({'image': img}, None)['image']
  for crop in (np.s_[:5, :9], np.s_[3:, 1:]):  # other shapes: the channel offsets are cached per shape
    np.testing.assert_array_equal(op({'image': img[crop]}, None)['image'], whole[crop])
  got = op({'image': img}, None)['image']
  want = (img.astype(np.float32) / np.float32(255.0) - np.float32(mean)) * (1.0 / np.float32(std))
  assert got.dtype == np.float32 and got.shape == img.shape
  np.testing.assert_array_equal(got, want)
  scaled = img.astype(np.float32) / np.float32(255.0)  # float images are taken as already in [0, 1]
  np.testing.assert_array_equal(op({'image': scaled}, None)['image'], want)
  torch = pytest.importorskip('torch')
  from torchvision.transforms import functional as F  # pylint: disable=import-outside-toplevel

  ref = F.normalize(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0, mean, std).permute(1, 2, 0).numpy()
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------- random resized crop


@needs_timm
@pytest.mark.parametrize(
    'spec,interp',
    [
        ("random_resized_crop_timm(size=(20, 17), interpolation='bicubic')", 'bicubic'),
        ("random_resized_crop_timm(size=(20, 17), interpolation='random')", 'random'),
        ('inception_crop(size=(20, 17))', 'bicubic'),
        ('random_resized_crop(size=(20, 17))', 'bilinear'),  # torchvision's default, the pruning recipes'
    ],
)
def test_rrc_matches_timm_exactly(spec, interp):
  """Same seeds -> same box, same filter and pixel-identical PIL output as timm, under each registered name."""
  ours = registry.get_transform(spec)
  theirs = RandomResizedCropAndInterpolation((20, 17), interpolation=interp)
  shim = PyRandomShim()
  for s, (h, w) in enumerate([(37, 53), (53, 37), (16, 90), (90, 16), (25, 25)] * 8):
    img = _image(h, w, s)
    _seed(s)
    want = np.asarray(theirs(Image.fromarray(img)))
    _seed(s)
    got = ours({'image': img}, shim)['image']
    np.testing.assert_array_equal(got, want)


@needs_timm
def test_rrc_params_incl_fallback_match_timm():
  shim = PyRandomShim()
  for s in range(300):
    h, w = [(300, 200), (40, 400), (400, 40), (10, 11)][s % 4]  # thin images hit the fallback
    _seed(s)
    want = RandomResizedCropAndInterpolation.get_params(Image.new('RGB', (w, h)), (0.08, 1.0), (3 / 4, 4 / 3))
    _seed(s)
    assert primitives.rrc_params(h, w, (0.08, 1.0), (3 / 4, 4 / 3), shim) == tuple(want)


@needs_timm
def test_rrc_box_statistics_match_timm():
  n, h, w = 2000, 300, 400
  rng = np.random.default_rng(0)
  ours = np.array([primitives.rrc_params(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(n)])
  random.seed(0)
  img = Image.new('RGB', (w, h))
  theirs = np.array([RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)])
  for boxes in (ours, theirs):
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= h).all()
  area = lambda b: (b[:, 2] * b[:, 3] / (h * w))  # noqa: E731
  log_aspect = lambda b: np.log(b[:, 3] / b[:, 2])  # noqa: E731
  # std of the mean over 2000 draws: area ~0.006, log-aspect ~0.004.
  assert abs(area(ours).mean() - area(theirs).mean()) < 0.03
  assert abs(area(ours).std() - area(theirs).std()) < 0.03
  assert abs(log_aspect(ours).mean() - log_aspect(theirs).mean()) < 0.02
  assert abs(log_aspect(ours).std() - log_aspect(theirs).std()) < 0.02


# -------------------------------------------------------------------------------- RandAugment

_HPARAMS = dict(translate_const=100, img_mean=FILL)


@needs_timm
@pytest.mark.parametrize('name', sorted(set(randaugment.RAND_INCREASING_TRANSFORMS) | set(randaugment.RAND_TRANSFORMS)))
def test_rand_op_matches_timm(name, monkeypatch):
  img = Image.fromarray(_image(23, 31, 7))
  for sign_draw, negate in ((0.1, False), (0.9, True)):
    monkeypatch.setattr(timm_aa, '_randomly_negate', (lambda v: -v) if negate else (lambda v: v))
    for mag in (0.0, 2.5, 9.0, 9.73, 10.0):
      for resample in (Image.BICUBIC, Image.BILINEAR):
        level_fn = timm_aa.LEVEL_TO_ARG[name]
        args = level_fn(mag, _HPARAMS) if level_fn is not None else ()
        try:
          want = timm_aa.NAME_TO_OP[name](img, *args, fillcolor=FILL, resample=resample)
        except ValueError:  # new Pillow rejects posterize(bits=0); old Pillow gave black
          assert name.startswith('Posterize') and args == (0,)
          want = np.zeros_like(np.asarray(img))
        got = randaugment.apply_rand_op(img, name, mag, FixedRandom(sign_draw), resample=resample, fillcolor=FILL)
        np.testing.assert_array_equal(
            np.asarray(got), np.asarray(want), err_msg=f'{name} m={mag} negate={negate} {resample}'
        )


@pytest.mark.parametrize(
    'config,interp',
    [('rand-m9-mstd0.5-inc1', 'random'), ('rand-m9-mstd0.5-inc1', 'bicubic'), ('rand-m7-n3-p0.8-mstd101', 'bilinear')],
)
@needs_timm
def test_randaugment_pipeline_matches_timm(config, interp, monkeypatch):
  # timm's posterize(bits=0) raises on Pillow >= 10.x; give it the old-Pillow result (black).
  posterize = ImageOps.posterize
  monkeypatch.setattr(
      ImageOps,
      'posterize',
      lambda img, bits: posterize(img, bits) if bits >= 1 else img.point([0] * 256 * len(img.getbands())),
  )
  hp = dict(_HPARAMS)
  if interp != 'random':
    hp['interpolation'] = primitives.INTERPOLATIONS[interp]
  theirs = timm_aa.rand_augment_transform(config, hp)
  ours = randaugment.randaugment(config_str=config, interpolation=interp)
  shim = PyRandomShim()
  for s in range(40):
    img = _image(19, 26, s)
    _seed(s)
    want = np.asarray(theirs(Image.fromarray(img)))
    _seed(s)
    got = ours({'image': img}, shim)['image']
    np.testing.assert_array_equal(got, want, err_msg=f'seed {s}')


def test_randaugment_statistics(monkeypatch):
  """With a real Generator: ops uniform over the 15 'increasing' ops, each applied w.p. 0.5,
  magnitudes ~ N(9, 0.5) clipped to [0, 10]."""
  calls, mags = [], []
  table = randaugment._op_table

  def spy_table(translate_pct):
    out = {}
    for name, (geo, level_fn, fn) in table(translate_pct).items():

      def lvl(level, rng, _n=name, _f=level_fn):
        calls.append(_n)
        mags.append(level)
        return _f(level, rng)

      out[name] = (geo, lvl, fn)
    return out

  monkeypatch.setattr(randaugment, '_op_table', spy_table)
  op = randaugment.randaugment()
  rng = np.random.default_rng(0)
  img = _image(8, 8)
  n = 1500
  for _ in range(n):
    op({'image': img}, rng)
  k = len(randaugment.RAND_INCREASING_TRANSFORMS)
  assert abs(len(calls) / (2 * n) - 0.5) < 0.03  # each of the 2 layers applied w.p. 0.5
  counts = np.array([calls.count(name) for name in randaugment.RAND_INCREASING_TRANSFORMS])
  expected = len(calls) / k
  assert (np.abs(counts - expected) < 5 * math.sqrt(expected)).all(), counts
  mags = np.array(mags)
  assert mags.min() >= 0 and mags.max() <= 10
  assert abs(mags.mean() - 9.0) < 0.05 and abs(mags.std() - 0.5) < 0.05


# ----------------------------------------------------------------------------- random erasing


@needs_timm
@pytest.mark.parametrize('max_count', [None, 3])
def test_random_erasing_boxes_match_timm(max_count):
  """'const' mode on an all-ones image: the erased (zero) mask must equal timm's exactly."""
  h, w = 21, 34
  theirs = RandomErasing(0.6, mode='const', max_count=max_count, device='cpu')
  ours = augment.random_erasing(prob=0.6, mode='const', max_count=max_count)
  shim = PyRandomShim()
  for s in range(150):
    _seed(s)
    want = theirs(torch.ones(3, h, w)).numpy().transpose(1, 2, 0)
    _seed(s)
    got = ours({'image': np.ones((h, w, 3), np.float32)}, shim)['image']
    np.testing.assert_array_equal(got, want, err_msg=f'seed {s}')


@needs_timm
def test_random_erasing_pixel_statistics_vs_timm():
  n, h, w = 2000, 32, 32
  ours = augment.random_erasing(prob=0.25, mode='pixel', max_count=1)
  rng = np.random.default_rng(0)
  base = np.full((h, w, 3), 7.0, np.float32)  # far from N(0, 1) noise: erased pixels != 7
  our_fracs, noise = [], []
  for _ in range(n):
    out = ours({'image': base}, rng)['image']
    erased = (out != 7.0).any(-1)
    our_fracs.append(erased.mean())
    noise.append(out[erased])
  random.seed(0)
  torch.manual_seed(0)
  theirs = RandomErasing(0.25, mode='pixel', max_count=1, device='cpu')
  their_fracs = [(theirs(torch.full((3, h, w), 7.0)) != 7.0).any(0).float().mean().item() for _ in range(n)]
  our_fracs, their_fracs = np.array(our_fracs), np.array(their_fracs)
  # fraction of erased images ~ 0.25 (std of the estimate ~0.01)
  assert abs((our_fracs > 0).mean() - 0.25) < 0.04
  assert abs((our_fracs > 0).mean() - (their_fracs > 0).mean()) < 0.05
  # erased-area fraction of the erased images: U(0.02, 1/3) in expectation (~0.18)
  ea, eb = our_fracs[our_fracs > 0], their_fracs[their_fracs > 0]
  assert abs(ea.mean() - eb.mean()) < 0.03 and abs(ea.std() - eb.std()) < 0.03
  assert 0.01 < ea.min() and ea.max() < 0.4
  noise = np.concatenate(noise)
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02


# ------------------------------------------------------------------------------------- eval


@needs_timm
@pytest.mark.parametrize('hw', [(41, 57), (57, 41), (36, 50), (20, 29), (333, 257)])
def test_resize_shorter_and_center_crop_matches_timm(hw):
  size = 224 if hw == (333, 257) else 32
  img = _image(*hw, seed=hw[0])
  theirs = transforms_imagenet_eval(img_size=size, crop_pct=0.875, interpolation='bicubic', normalize=False)
  want = theirs(Image.fromarray(img)).numpy().transpose(1, 2, 0)
  op = registry.get_transform(f'resize_shorter_and_center_crop(size={size})')
  got = op({'image': img}, None)['image']
  np.testing.assert_array_equal(got, want)
  # With timm's normalization too (float ulp differences only).
  theirs_n = transforms_imagenet_eval(img_size=size, crop_pct=0.875, interpolation='bicubic')
  want_n = theirs_n(Image.fromarray(img)).numpy().transpose(1, 2, 0)
  got_n = ops.build_transforms([f'resize_shorter_and_center_crop(size={size})', 'imagenet_normalize'])(
      {'image': img}, None
  )['image']
  np.testing.assert_allclose(got_n, want_n, atol=1e-5)


@needs_timm
@pytest.mark.parametrize('hw', [(301, 263), (263, 301), (256, 256), (200, 180)])
def test_pruning_imagenet_eval_is_torchvision_resize_and_center_crop(hw):
  """The pruning recipes' eval (pytorch/examples: Resize(256), CenterCrop(224), bilinear) through the one
  resize-and-center-crop op, pixel for pixel; the smallest image is padded by CenterCrop."""
  from torchvision import transforms as tv  # pylint: disable=import-outside-toplevel

  from configs.pruning import _recipes  # pylint: disable=import-outside-toplevel

  c = _recipes.imagenet_recipe(_recipes.experiment_config())
  spec = [s for s in c.data.eval_transforms if s.startswith('resize_shorter_and_center_crop')]
  assert len(spec) == 1
  img = _image(*hw, seed=hw[0])
  want = np.asarray(tv.Compose([tv.Resize(256), tv.CenterCrop(224)])(Image.fromarray(img)))
  got = ops.build_transforms(spec)({'image': img}, None)['image']
  np.testing.assert_array_equal(got, want)


@needs_timm
@pytest.mark.parametrize('hw,size', [((37, 40), 30), ((40, 37), (33, 30)), ((20, 23), (24, 26)), ((9, 8), 4)])
def test_center_crop_matches_torchvision(hw, size):
  """`center_crop` is torchvision's CenterCrop: offsets round half to even (odd margins 3 and 7 differ from
  floor), zero padding where the crop is larger; a label map is cropped alike and padded with 255."""
  from torchvision import transforms as tv  # pylint: disable=import-outside-toplevel

  img = np.maximum(_image(*hw, seed=3), 1)  # never 0, so the padding is visible
  want = np.asarray(tv.CenterCrop(size)(Image.fromarray(img)))
  seg = img[..., 0].copy()
  spec = f'center_crop(size={size})'
  out = registry.get_transform(spec)({'image': img, 'segmentation': seg}, None)
  np.testing.assert_array_equal(out['image'], want)
  inside = want.any(-1)
  np.testing.assert_array_equal(out['segmentation'][inside], want[..., 0][inside])
  assert np.all(out['segmentation'][~inside] == 255)


@needs_timm
@pytest.mark.parametrize('hw,size,crop_pct', [((300, 451), 384, 1.0), ((45, 31), 24, 1.0), ((45, 31), 24, 0.9)])
def test_squash_resize_matches_timm(hw, size, crop_pct):
  img = _image(*hw, seed=1)
  theirs = transforms_imagenet_eval(
      img_size=size, crop_pct=crop_pct, crop_mode='squash', interpolation='bicubic', normalize=False
  )
  want = theirs(Image.fromarray(img)).numpy().transpose(1, 2, 0)
  got = transforms.squash_resize(size=size, crop_pct=crop_pct)({'image': img}, None)['image']
  np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------- mixing

_MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1)


def _batch(b=6, h=11, w=13, k=10, seed=0):
  r = np.random.default_rng(seed)
  return {'image': r.normal(size=(b, h, w, 3)).astype(np.float32), 'label': r.integers(0, k, size=b).astype(np.int32)}


@needs_timm
@pytest.mark.parametrize(
    'kw', [_MIX, dict(_MIX, prob=0.5), dict(_MIX, mixup_alpha=0.0), dict(_MIX, cutmix_alpha=0.0, label_smoothing=0.0)]
)
def test_mixup_cutmix_np_matches_timm(kw):
  k = 10
  theirs = timm_mixup.Mixup(mode='batch', num_classes=k, correct_lam=True, **kw)
  shim = NpRandomShim()
  kinds = set()
  for s in range(30):
    batch = _batch(seed=s, k=k)
    x = torch.from_numpy(batch['image'].transpose(0, 3, 1, 2).copy())
    _seed(s)
    xt, yt = theirs(x, torch.from_numpy(batch['label']).long())
    _seed(s)
    lam, use_cutmix, _ = mixing.sample_mix_params_np(
        shim, 11, 13, **{n: v for n, v in kw.items() if n != 'label_smoothing'}
    )
    kinds.add('none' if lam == 1.0 else 'cutmix' if use_cutmix else 'mixup')
    _seed(s)
    out = mixing.mixup_cutmix_np(batch, shim, num_classes=k, **kw)
    np.testing.assert_allclose(out['image'], xt.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out['label'], yt.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(out['label'].sum(1), 1.0, atol=1e-6)
  if kw['prob'] == 1.0 and kw['mixup_alpha'] > 0 and kw['cutmix_alpha'] > 0:
    assert kinds == {'mixup', 'cutmix'}


@needs_timm
def test_forced_lambda_and_box_match_timm_helpers():
  k, b, h, w = 7, 4, 9, 12
  batch = _batch(b, h, w, k, seed=3)
  x = torch.from_numpy(batch['image'].transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(batch['label']).long()
  # Mixup with lam = 0.3.
  out = mixing.apply_mix_np(batch, 0.3, False, None, num_classes=k, label_smoothing=0.1)
  want_x = x * 0.3 + x.flip(0) * (1 - 0.3)
  np.testing.assert_allclose(out['image'], want_x.numpy().transpose(0, 2, 3, 1), atol=1e-6)
  np.testing.assert_allclose(out['label'], timm_mixup.mixup_target(y, k, 0.3, 0.1).numpy(), atol=1e-7)
  # CutMix: box from timm's rand_bbox (seeded) == our cutmix_box with the same centre.
  for s, lam in enumerate([0.05, 0.37, 0.5, 0.81, 0.999]):
    np.random.seed(s)
    (yl, yh, xl, xh), lam_c = timm_mixup.cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
    np.random.seed(s)
    cy, cx = np.random.randint(0, h), np.random.randint(0, w)
    box = mixing.cutmix_box(lam, h, w, cy, cx)
    assert box == (int(yl), int(yh), int(xl), int(xh))
    out = mixing.apply_mix_np(batch, lam, True, box, num_classes=k, label_smoothing=0.1)
    xt = x.clone()
    xt[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
    np.testing.assert_array_equal(out['image'], xt.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(out['label'], timm_mixup.mixup_target(y, k, lam_c, 0.1).numpy(), atol=1e-7)


def test_np_and_jax_agree_for_same_params():
  jax = pytest.importorskip('jax')
  jnp = jax.numpy
  k, b, h, w = 5, 6, 10, 14
  batch = _batch(b, h, w, k, seed=1)
  apply_jax = jax.jit(
      lambda bt, lam, cut, box: mixing.apply_mix_jax(bt, lam, cut, box, num_classes=k, label_smoothing=0.1)
  )
  r = np.random.default_rng(0)
  for lam in [1.0, 0.9, 0.5, 0.123, 0.02]:
    lam = float(np.float32(lam))
    for use_cutmix in (False, True):
      cy, cx = int(r.integers(0, h)), int(r.integers(0, w))
      box = mixing.cutmix_box(lam, h, w, cy, cx)
      box_j = tuple(int(v) for v in mixing.cutmix_box_jax(lam, h, w, jnp.int32(cy), jnp.int32(cx)))
      assert box_j == box
      want = mixing.apply_mix_np(batch, lam, use_cutmix, box, num_classes=k, label_smoothing=0.1)
      got = apply_jax(batch, jnp.float32(lam), jnp.bool_(use_cutmix), tuple(map(jnp.int32, box)))
      np.testing.assert_allclose(np.asarray(got['image']), want['image'], atol=1e-6)
      np.testing.assert_allclose(np.asarray(got['label']), want['label'], atol=1e-6)
  # Box helpers agree over many (lam, centre) draws.
  lams = r.random(300).astype(np.float32)
  cys, cxs = r.integers(0, h, 300), r.integers(0, w, 300)
  boxes_j = jax.vmap(lambda l, a, c: jnp.stack(mixing.cutmix_box_jax(l, h, w, a, c)))(
      jnp.asarray(lams), jnp.asarray(cys, jnp.int32), jnp.asarray(cxs, jnp.int32)
  )
  boxes_n = np.array([mixing.cutmix_box(float(l), h, w, int(a), int(c)) for l, a, c in zip(lams, cys, cxs)])
  np.testing.assert_array_equal(np.asarray(boxes_j), boxes_n)


@pytest.mark.slow
def test_jax_mixup_cutmix_in_jit_and_sampling_statistics():
  jax = pytest.importorskip('jax')
  k, b, h, w = 8, 4, 12, 12
  batch = _batch(b, h, w, k, seed=2)

  @jax.jit
  def step(bt, key):
    return mixing.mixup_cutmix(bt, key, num_classes=k, **_MIX)

  for i in range(4):
    out = step(batch, jax.random.key(i))
    lab = np.asarray(out['label'])
    assert lab.shape == (b, k) and lab.dtype == np.float32
    np.testing.assert_allclose(lab.sum(1), 1.0, atol=1e-6)
    # The image is consistent with the target's lam: the weight on the own class (pairs have
    # different labels) equals the mixup weight / the unpasted-area fraction.
    lam = (lab[0, batch['label'][0]] - 0.1 / k) / (1 - 0.1) if batch['label'][0] != batch['label'][-1] else None
    x, xo, xf = np.asarray(out['image']), batch['image'], batch['image'][::-1]
    if lam is not None:
      from_own = np.isclose(x, xo).all(-1)
      blended = np.allclose(x, xo * lam + xf * (1 - lam), atol=1e-5)
      assert blended or abs(from_own[0].mean() - lam) < 1e-5
  # Sampling: P(cutmix) = 0.5 and E[lam] = 0.5 for both Beta(0.8, 0.8) and Beta(1, 1).
  sample = jax.jit(jax.vmap(lambda key: mixing.sample_mix_params_jax(key, h, w, mixup_alpha=0.8, cutmix_alpha=1.0)[:2]))
  lams, cuts = map(np.asarray, sample(jax.random.split(jax.random.key(0), 4000)))
  assert abs(cuts.mean() - 0.5) < 0.04 and abs(lams.mean() - 0.5) < 0.03
  assert abs(lams[~cuts].var() - 0.25 / (2 * 0.8 + 1)) < 0.015  # Beta(a, a) var = 1/(4(2a+1))
  assert abs(lams[cuts].var() - 1 / 12) < 0.015
  np_rng = np.random.default_rng(0)
  np_lams = np.array([mixing.sample_mix_params_np(np_rng, h, w)[0] for _ in range(4000)])
  assert abs(np_lams.mean() - lams.mean()) < 0.03 and abs(np_lams.var() - lams.var()) < 0.015
  # prob=0: nothing mixed, labels are the smoothed one-hot.
  out = jax.jit(lambda bt, key: mixing.mixup_cutmix(bt, key, num_classes=k, **dict(_MIX, prob=0.0)))(
      batch, jax.random.key(1)
  )
  np.testing.assert_array_equal(np.asarray(out['image']), batch['image'])
  np.testing.assert_allclose(np.asarray(out['label']), mixing.smooth_one_hot_np(batch['label'], k, 0.1), atol=1e-7)


@pytest.mark.parametrize(
    'specs',
    [
        (
            'decode_jpeg',
            'random_resized_crop_timm(size=64)',
            'flip_lr(p=1.0)',
            "randaugment(config_str='rand-m9-mstd0.5-inc1')",
            'imagenet_normalize',
            'random_erasing(prob=1.0)',
        ),
        ('decode_jpeg', 'resize_shorter_and_center_crop(size=48)', 'flip_lr(p=1.0)'),
    ],
)
def test_pil_images_between_pil_ops_match_numpy_path(specs):
  """decode_jpeg keeps a PIL image while PIL ops follow; the output must equal the all-numpy path
  (same ops on the pre-decoded array) bit for bit, and always leave as a numpy array."""
  rs = np.random.RandomState(0)
  img = Image.fromarray(rs.randint(0, 256, (50, 70, 3), dtype=np.uint8)).resize((140, 100), Image.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=90)
  decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  tf = ops.build_transforms(list(specs))
  for seed in range(6):
    from_bytes = tf({'image': buf.getvalue(), 'label': 1}, np.random.default_rng(seed))
    from_array = tf({'image': decoded.copy(), 'label': 1}, np.random.default_rng(seed))
    assert isinstance(from_bytes['image'], np.ndarray)
    assert from_bytes['image'].dtype == from_array['image'].dtype
    np.testing.assert_array_equal(from_bytes['image'], from_array['image'])


@pytest.mark.parametrize('mode,fmt', [('RGB', 'JPEG'), ('L', 'JPEG'), ('P', 'PNG'), ('RGBA', 'PNG')])
def test_decode_gives_rgb_uint8_like_pil_convert(mode, fmt):
  """RGB JPEGs skip PIL's convert (a copy); every other mode is converted to RGB as timm's loader does."""
  rs = np.random.RandomState(1)
  img = Image.fromarray(rs.randint(0, 256, (12, 20, 3), dtype=np.uint8)).convert(mode)
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  got = ops.build_transforms(['decode_jpeg'])({'image': buf.getvalue()}, np.random.default_rng(0))['image']
  want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  assert got.dtype == np.uint8 and got.shape == (12, 20, 3)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    'shape, dtype, value', [((5, 7, 3), np.uint8, 0), ((5, 7), np.uint8, 255), ((4, 6, 2), np.float32, -1.5)]
)
def test_pad_hw_is_np_pad(shape, dtype, value):
  x = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
  for pads in ((2, 2, 2, 2), (0, 3, 0, 1), (1, 0, 0, 0), (0, 0, 0, 0)):
    want = np.pad(x, [pads[:2], pads[2:]] + [(0, 0)] * (x.ndim - 2), constant_values=value)
    got = primitives.pad_hw(x, *pads, value)
    assert got.dtype == want.dtype and np.array_equal(got, want)
  with pytest.raises(ValueError, match='negative padding'):
    primitives.pad_hw(x, -1, 0, 0, 0, 0)
