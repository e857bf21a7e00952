"""The sparse masked conv (compute.masked_conv='sparse') against the masked-dense reference: hand-built masks on
single convs (every branch, loops of 0 to 32 chunks, the dense fallbacks, per-example masks), a whole tiny HRNet at
several thresholds, the digit_scenes demo's model after a short training at several thresholds, and the policy
plumbing (training stays masked-dense; the choice is a hashable field)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anytime_jax import confidence, exits, flops, hrnet
from anytime_jax import task as task_lib
from anytime_jax.confidence import Conv, MaskSet, PixelSet
from core_jax import cli, counting
from core_jax.compute import Compute
from core_jax.data import sources
from core_jax.errors import UserError

LAMS = (1.7, 3.0)  # below SHORT_LAMBDA2 (the whole 7 x 7 fill, dense) and above (the short fill, tiled); 3.0: init
AUTO_REST = {f: v for f, v in confidence.for_backend().__dict__.items() if f != 'masked_conv'}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H = 32  # conv outputs 32 x 32, batch 2: 2048 pixels


def _hand_masks(h, rng):
  """name -> (2, h, h) float mask, of 2048 pixels (chunks of 64): all, none, single (one pixel per example),
  centred, checkerboard (half: the per-pixel maximum of a 1 x 1 conv), blob, band (62 %), per_example (one example
  all kept, the other none), overflow (~95 % kept: above every per-pixel maximum, ~5 % skipped: the near-dense fill
  in 2 chunks), scattered and few (a few kept pixels spread over the image: the scattered fill), holes (5 skipped
  pixels on the borders and in a row), tenth (~10 %: the k x k conv per pixel in 4 chunks)."""
  checker = np.indices((h, h)).sum(0) % 2
  single = np.zeros((h, h))
  single[h // 3, h // 2] = 1
  centred = np.zeros((h, h))
  centred[12, 12] = 1
  band = np.zeros((h, h))
  band[:20] = 1
  holes = np.zeros((2, h, h))
  holes[0, 0, 0] = holes[0, 5, h - 1] = holes[1, h - 1, h - 1] = 1
  holes[1, 10, 10:12] = 1
  return {
      'all': np.ones((2, h, h)),
      'none': np.zeros((2, h, h)),
      'single': np.stack([single, single.T]),
      'centred': np.stack([centred, centred[::-1, ::-1]]),
      'checkerboard': np.stack([checker, 1 - checker]),
      'blob': np.stack([np.add.outer(np.arange(h), np.arange(h)) < h // 2] * 2),
      'band': np.stack([band, band]),
      'per_example': np.stack([np.ones((h, h)), np.zeros((h, h))]),
      'overflow': rng.rand(2, h, h) < 0.95,
      'scattered': rng.rand(2, h, h) < 0.05,  # ~102 kept pixels of 2048
      'few': rng.rand(2, h, h) < 0.02,  # ~41 kept pixels
      'holes': 1 - holes,  # 5 skipped pixels, on the borders and in a row: the near-dense fill
      'tenth': rng.rand(2, h, h) < 0.1,  # ~205 kept pixels: below a k x k conv's per-pixel maximum (1 / 8)
  }


def _conv_params(rng, k: int, cin: int, cout: int, bias: bool):
  """(kernel, bias or None, PyTorch's padding) of a k x k conv cin -> cout drawn from `rng`."""
  kernel = jnp.asarray(rng.randn(k, k, cin, cout).astype(np.float32) / k)
  b = jnp.asarray(rng.randn(cout).astype(np.float32)) if bias else None
  return kernel, b, ((k // 2, k // 2), (k // 2, k // 2))


@pytest.mark.parametrize('k,stride,bias', [(3, 1, False), (3, 2, False), (1, 1, True)])
def test_sparse_equals_masked_dense_on_hand_built_masks(k, stride, bias):
  rng = np.random.RandomState(k + stride)
  cin, cout = 6, 5
  x = jnp.asarray(rng.randn(2, H * stride, H * stride, cin).astype(np.float32))
  kernel, b, pad = _conv_params(rng, k, cin, cout, bias)
  compute = Compute()

  @jax.jit
  def both(x, mask, lam):
    dense = confidence.masked_dense(compute, x, kernel, b, mask, lam, (stride, stride), pad)
    sparse = confidence.masked_sparse(compute, x, kernel, b, mask, lam, (stride, stride), pad)
    return dense, sparse, confidence.masked_sparse(compute, x, kernel, b, mask, lam, (stride, stride), pad, fill=False)

  per_pixel_max = confidence.per_pixel_max(compute, kernel.shape, stride) * 2 * H * H
  taken = set()
  for name, m in _hand_masks(H, rng).items():
    mask = jnp.asarray(m, jnp.float32)
    pixels = PixelSet(mask)
    assert pixels.chunk == 64  # 1 / 32 of 2048: the loops run 0 (none kept) to 32 chunks
    for lam in LAMS:
      dense, sparse, unfilled = both(x, mask, jnp.float32(lam))
      np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=1e-5, rtol=0, err_msg=f'{name} {lam}')
      # fill=False: the same at kept pixels, 0 at skipped ones
      kept_only = np.asarray(dense) * np.asarray(mask)[..., None]
      np.testing.assert_allclose(np.asarray(unfilled), kept_only, atol=1e-5, rtol=0, err_msg=f'{name} {lam} no fill')
      branch = int(confidence.sparse_branch(pixels, lam**2 >= confidence.SHORT_LAMBDA2))
      # the filled branch's conv: at the kept pixels (chunks) or dense (above the per-pixel maximum: 'overflow')
      taken.add((branch, bool(pixels.count <= per_pixel_max)) if branch == 1 else branch)
      if branch == 0:
        assert int(pixels.count) > 0 or name == 'none'
  # a few kept (scattered fill, 0 to 2 chunks), and the filled branch with the conv per pixel and dense (every pixel
  # kept among them: a segment takes the plain convs then, `segment_kind`, but the sparse conv stays exact)
  assert taken == {0, (1, True), (1, False)}, taken


def test_patch_max_by_channels_chooses_by_the_output_channels():
  """`Compute.patch_max_by_channels`: the last step whose channel count the conv's outputs reach (static, from the
  kernel shape); 1 x 1 convs of stride 1 keep PIXEL_MAX. The plain policy keeps main's single bound (1/8); the
  anytime line's 'auto' is PATCH_MAX_BY_CHANNELS, whose steps are these (a shifted table fails here)."""
  auto = confidence.for_backend(dict(masked_conv='sparse'))
  assert auto.patch_max_by_channels == confidence.PATCH_MAX_BY_CHANNELS == ((0, 0.25), (48, 0.35), (96, 0.5))
  widths = (1, 18, 36, 47, 48, 72, 95, 96, 144, 384)
  assert [auto.patch_max(c) for c in widths] == [0.25] * 4 + [0.35] * 3 + [0.5] * 3
  assert [Compute().patch_max(c) for c in widths] == [0.125] * len(widths)
  assert confidence.per_pixel_max(auto, (3, 3, 8, 96), 1) == 0.5
  assert confidence.per_pixel_max(auto, (3, 3, 96, 18), 2) == 0.25  # strided: by its outputs
  assert confidence.per_pixel_max(auto, (1, 1, 8, 96), 2) == 0.5  # a strided 1 x 1 conv gathers like a k x k one
  assert confidence.per_pixel_max(auto, (1, 1, 8, 18), 1) == confidence.PIXEL_MAX
  mine = confidence.for_backend(dict(masked_conv='sparse', patch_max_by_channels=[[0, 0.1], [64, 0.6]]))
  assert mine.patch_max_by_channels == ((0, 0.1), (64, 0.6)) and [mine.patch_max(c) for c in (63, 64)] == [0.1, 0.6]
  assert hash(mine) == hash(
      confidence.for_backend(dict(masked_conv='sparse', patch_max_by_channels=((0, 0.1), (64, 0.6))))
  )
  assert mine != auto
  # the job's config check (no backend) takes and refuses the same tables
  confidence.check_policy(dict(patch_max_by_channels=((0, 0.3),)))


@pytest.mark.parametrize(
    'bad',
    [
        (),
        0.25,
        ((0, 0.25, 1),),
        ((8, 0.25),),
        ((0, 0.25), (0, 0.5)),
        ((0, 0.25), (96, 0.5), (48, 0.4)),
        ((0, 1.5),),
        ((0, -0.1),),
        ((0, 'x'),),
        ((0.0, 0.25),),
        ((True, 0.25),),
        ((0, None),),
    ],
)
def test_patch_max_by_channels_bad_tables_are_one_line(bad):
  for check in (confidence.for_backend, confidence.check_policy):
    with pytest.raises(UserError, match=r'compute.patch_max_by_channels must be \(min_out_channels') as e:
      check(dict(masked_conv='sparse', patch_max_by_channels=bad))
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('cout,kept', [(6, 0.2), (96, 0.45)])
def test_per_pixel_between_main_bound_and_the_table_equals_masked_dense(cout, kept):
  """A 3 x 3 conv whose kept fraction lies between main's bound (1/8) and the 'auto' table's (narrow: 6 outputs,
  1/4; wide: 96 outputs, 1/2): per pixel under the table, dense times the mask under main's bound, both equal to
  masked-dense (fp32, 1e-4); also strided."""
  auto = confidence.for_backend(dict(masked_conv='sparse'))
  main_bound = confidence.for_backend(dict(masked_conv='sparse', patch_max_by_channels=((0, 0.125),)))
  rng = np.random.RandomState(cout)
  cin = 8
  for stride in (1, 2):
    x = jnp.asarray(rng.randn(2, H * stride, H * stride, cin).astype(np.float32))
    kernel = jnp.asarray(rng.randn(3, 3, cin, cout).astype(np.float32) / np.sqrt(9 * cin))
    b = jnp.asarray(rng.randn(cout).astype(np.float32))
    mask = jnp.asarray((rng.rand(2, H, H) < kept).astype(np.float32))
    fraction = float(mask.mean())
    assert 0.125 < fraction <= auto.patch_max(cout) and fraction > confidence.SCATTER_FILL_MAX
    assert fraction <= confidence.per_pixel_max(auto, kernel.shape, stride)
    assert fraction > confidence.per_pixel_max(main_bound, kernel.shape, stride)
    strides, pad = (stride, stride), ((1, 1), (1, 1))
    run = jax.jit(
        lambda m, lam, policy: confidence.masked_sparse(policy, x, kernel, b, m, lam, strides, pad), static_argnums=2
    )
    for lam in LAMS:
      want = np.asarray(confidence.masked_dense(Compute(), x, kernel, b, mask, jnp.float32(lam), strides, pad))
      for policy in (auto, main_bound):
        got = np.asarray(run(mask, jnp.float32(lam), policy))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f'{cout} {stride} {lam} {policy}')


def test_fill_over_the_map_on_sides_above_band_max():
  """The filled branch on a map with a side above confidence.BAND_MAX (the hand-built masks' 32 x 32 take one banded
  body for both fills): the short fill and the reference's 7 x 7 fill, chosen by lambda, each the separable slices."""
  rng = np.random.RandomState(1)
  h, w = confidence.BAND_MAX + 8, 24
  x = jnp.asarray(rng.randn(2, h, w, 4).astype(np.float32))
  kernel = jnp.asarray(rng.randn(3, 3, 4, 3).astype(np.float32) / 3)
  compute, pad = Compute(), ((1, 1), (1, 1))
  both = jax.jit(
      lambda mask, lam: [
          f(compute, x, kernel, None, mask, lam, (1, 1), pad)
          for f in (confidence.masked_dense, confidence.masked_sparse)
      ]
  )
  for fraction in (0.3, 0.6):
    mask = jnp.asarray((rng.rand(2, h, w) < fraction).astype(np.float32))
    for lam in LAMS:
      assert int(confidence.sparse_branch(PixelSet(mask), lam**2 >= confidence.SHORT_LAMBDA2)) == 1
      dense, sparse = both(mask, jnp.float32(lam))
      np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=1e-5, rtol=0, err_msg=f'{fraction} {lam}')


def test_original_exit_at_kept_pixels_equals_masked_dense_exit():
  """The sparse path's original exit (`OriginalExit.kept_pixels_head`: its input formed, both 1 x 1 convs and the
  BN run at the kept pixels only) against the masked-dense exit on `exit_input`'s concat: the same logits at kept
  pixels, 0 at skipped ones, the same MACs counted and sown, in every branch (no kept pixel, each pixel capacity,
  every pixel). Branch sizes include odd ones (bilinear ratios that are not powers of 2)."""
  rng = np.random.RandomState(0)
  shapes = ((2, 12, 15, 4), (2, 6, 8, 6), (2, 3, 4, 8))
  branches = [jnp.asarray(rng.randn(*s).astype(np.float32)) for s in shapes]
  rows = jnp.asarray(rng.permutation(2 * 12 * 15)[:50].astype(np.int32))
  np.testing.assert_allclose(
      np.asarray(exits.exit_input_rows(branches, rows)),
      np.asarray(exits.exit_input(branches).reshape(-1, 18)[rows]),
      atol=1e-5,
  )
  policy = lambda kind: confidence.for_backend(dict(masked_conv=kind))
  dense_exit, sparse_exit = (exits.OriginalExit(5, exit_index=4, compute=policy(kind)) for kind in ('dense', 'sparse'))
  v = dense_exit.init(jax.random.PRNGKey(0), exits.exit_input(branches), False, MaskSet(jnp.ones((2, 12, 15))))
  v = jax.tree.map(lambda a: jnp.asarray(rng.rand(*a.shape) + 0.5, jnp.float32), v)  # BN not the identity

  @jax.jit
  def both(mask):
    want, w_macs = dense_exit.apply(v, exits.exit_input(branches), False, MaskSet(mask), mutable=['macs'])
    got, g_macs = sparse_exit.apply(v, branches, False, MaskSet(mask), mutable=['macs'])
    count = MaskSet(mask).pixels(12, 15).count
    return (
        want,
        got,
        count,
        [counting.sum_macs(m, f'{kind}_exit4') for m in (w_macs, g_macs) for kind in ('actual', 'dense')],
    )

  taken = set()
  for fraction in (0.0, 0.04, 0.2, 0.45, 0.8, 1.0):  # none, 1 chunk of 64 (of 360 pixels), 2, 3, above 1 / 2, all
    mask = jnp.asarray((rng.rand(2, 12, 15) < fraction).astype(np.float32))
    want, got, count, macs = both(mask)
    m = np.asarray(mask)[..., None]
    np.testing.assert_allclose(np.asarray(got) * m, np.asarray(want) * m, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got) * (1 - m), 0 * np.asarray(got))
    np.testing.assert_allclose(np.asarray(macs[2:]), np.asarray(macs[:2]), rtol=1e-6)
    taken.add(-(-int(count) // 64) if count <= confidence.PIXEL_MAX * mask.size else 'every')
  assert taken == {0, 1, 2, 3, 'every'}, taken  # chunks of the loop, or every pixel


def test_pixel_set_order_and_chunks():
  m = np.zeros((2, 3, 8), np.float32)
  m[0, 1, 2] = m[1, 2, 7] = m[1, 0, 0] = 1
  p = PixelSet(jnp.asarray(m))
  assert int(p.count) == 3 and p.chunk == m.size < confidence.MIN_CHUNK  # the chunk is at most every pixel
  np.testing.assert_array_equal(np.asarray(p.order)[:3], [10, 24, 47])  # kept first, raster order, then skipped
  np.testing.assert_array_equal(np.sort(np.asarray(p.order)), np.arange(48))
  np.testing.assert_array_equal(np.asarray(p.order)[3:], np.setdiff1d(np.arange(48), [10, 24, 47]))  # raster order
  seen = lambda kept: np.asarray(p.loop(lambda rows, acc: acc.at[rows].add(1), jnp.zeros(48, jnp.int32), kept))
  np.testing.assert_array_equal(seen(True), np.ones(48))  # one chunk: the 3 kept pixels and the 45 skipped ones
  np.testing.assert_array_equal(seen(False), np.ones(48))
  big = PixelSet(jnp.asarray(np.arange(2 * 40 * 50).reshape(2, 40, 50) % 7 == 0, jnp.float32))
  assert big.chunk == 125 and int(big.count) == 572  # 1 / 32 of 4000; 5 chunks, the last runs into skipped ones
  visits = np.asarray(big.loop(lambda rows, acc: acc.at[rows].add(1), jnp.zeros(4000, jnp.int32)))
  assert visits[np.asarray(big.order)[:572]].tolist() == [1] * 572 and visits.sum() == 5 * 125
  # kept_map: the values at the kept pixels (each row's own id here), 0 at the skipped ones the last chunk runs into
  got = np.asarray(big.kept_map(lambda rows: jnp.stack([rows, -rows], -1).astype(jnp.float32), 2, jnp.float32))
  ids = np.arange(4000, dtype=np.float32).reshape(2, 40, 50) * np.asarray(big.mask)
  np.testing.assert_array_equal(got, np.stack([ids, -ids], -1))


@pytest.mark.parametrize('k,stride,bias', [(3, 1, False), (3, 2, True), (1, 1, True)])
def test_plain_kind_fills_the_skipped_pixels_like_masked_dense(k, stride, bias):
  """`masked_plain` (a segment that keeps all but PLAIN_SKIPPED_MAX of its pixels or fewer): the conv, and the RBF
  fill at the skipped pixels alone, equal to masked-dense's on hand-built masks (every pixel kept, a single skipped
  pixel in a corner, the holes on the borders and in a row, ~1 % and ~5 % skipped at random: 0 to 2 chunks of the
  loop, and every pixel of one example skipped, whose fill is 0), at both lambdas (the 7 x 7 taps whatever lambda
  is), and on maps narrower than the 7 x 7 window (4 x 5 and 1 x 9: windows clamped to the map)."""
  rng = np.random.RandomState(10 * k + stride)
  cin, cout = 4, 3
  kernel, b, pad = _conv_params(rng, k, cin, cout, bias)
  compute = Compute()

  @jax.jit
  def both(x, mask, lam):
    args = (compute, x, kernel, b, mask, lam, (stride, stride), pad)
    return confidence.masked_dense(*args), confidence.masked_plain(*args), confidence.masked_plain(*args, fill=False)

  corner = np.ones((2, H, H))
  corner[1, H - 1, 0] = 0
  one_example = np.ones((2, H, H))
  one_example[0] = 0
  masks = {
      'all': np.ones((2, H, H)),
      'corner': corner,
      'holes': _hand_masks(H, rng)['holes'],
      'one_percent': rng.rand(2, H, H) >= 0.01,
      'five_percent': rng.rand(2, H, H) >= 0.05,  # ~102 skipped of 2048: 2 chunks of 64
      'one_example_skipped': one_example,
      'narrow': np.arange(2 * 4 * 5).reshape(2, 4, 5) % 3 > 0,
      'one_row': np.arange(3 * 1 * 9).reshape(3, 1, 9) % 4 > 0,
  }
  chunks = set()
  for name, m in masks.items():
    mask = jnp.asarray(m, jnp.float32)
    bsz, h, w = mask.shape
    x = jnp.asarray(rng.randn(bsz, h * stride, w * stride, cin).astype(np.float32))
    skipped = confidence.SkippedPixels(mask)
    assert int(skipped.count) == int((m == 0).sum()), name
    chunks.add(-(-int(skipped.count) // skipped.chunk))
    for lam in LAMS:
      dense, plain, unfilled = both(x, mask, jnp.float32(lam))
      np.testing.assert_allclose(np.asarray(plain), np.asarray(dense), atol=1e-5, rtol=0, err_msg=f'{name} {lam}')
      kept = np.asarray(mask)[..., None] > 0.5  # fill=False: the conv, whose kept pixels are masked-dense's
      np.testing.assert_allclose(
          np.where(kept, np.asarray(unfilled), 0), np.where(kept, np.asarray(dense), 0), atol=1e-5
      )
  assert {0, 1, 2} <= chunks, chunks


def test_skipped_pixels_loop_visits_each_skipped_pixel_once():
  """`SkippedPixels.loop` over the skipped pixels in raster order, `chunk` ids at a time: each skipped pixel once,
  no kept one, ids past the last skipped pixel out of bounds (B * h * w); ceil(count / chunk) chunks, none when
  every pixel is kept; the chunk is SKIPPED_CHUNK_FRACTION of the positions, at least MIN_CHUNK, at most all."""
  m = np.ones((2, 3, 8), np.float32)
  m[0, 1, 2] = m[1, 2, 7] = m[1, 0, 0] = 0
  skipped = confidence.SkippedPixels(jnp.asarray(m))
  assert int(skipped.count) == 3 and skipped.chunk == m.size < confidence.MIN_CHUNK
  collect = lambda s: s.loop(
      lambda rows, acc: (acc[0].at[acc[1]].set(rows), acc[1] + 1), (jnp.zeros((4, s.chunk), jnp.int32) - 1, 0)
  )
  rows, trips = collect(skipped)
  assert int(trips) == 1
  np.testing.assert_array_equal(np.asarray(rows)[0], [10, 24, 47] + [48] * 45)
  assert int(collect(confidence.SkippedPixels(jnp.ones((2, 3, 8))))[1]) == 0  # every pixel kept: no chunk
  n = 8 * 128 * 256
  big = np.ones(n, np.float32)
  big[np.arange(0, n, 97)] = 0  # 21,620 skipped
  s = confidence.SkippedPixels(jnp.asarray(big.reshape(8, 128, 256)))
  assert s.chunk == round(n * confidence.SKIPPED_CHUNK_FRACTION) == 512
  visits = np.asarray(s.loop(lambda rows, acc: acc.at[rows].add(1, mode='drop'), jnp.zeros(n, jnp.int32)))
  np.testing.assert_array_equal(visits, 1 - big)


def assert_exits_equal(want_logits, got_logits, tau) -> None:
  """The sparse model's logits (`got_logits`, one array per exit) equal masked-dense's to 1e-4, and so does the
  argmax except at (near-)ties."""
  for k, (a, b) in enumerate(zip(want_logits, got_logits)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=0, err_msg=f'tau={tau} exit {k + 1}')
    top2 = np.sort(a, -1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-4  # argmax may differ only at (near-)ties
    np.testing.assert_array_equal(b.argmax(-1)[decided], a.argmax(-1)[decided], err_msg=f'tau={tau} exit {k + 1}')


def tiny_hrnets(x, rng):
  """The w8_tiny EE model with CA as masked-dense and as sparse, and random variables for input `x` drawn from
  `rng`: BN identity, rbf_lambda 3 (the init: the short fill), other weights N(0, 1 / fan_in), so that logits vary
  between pixels."""

  def build(masked_conv):
    policy = confidence.for_backend(dict(masked_conv=masked_conv))
    return hrnet.build('w8_tiny', exit_type='ee', tau=0.9, num_classes=4, compute=policy)

  dense, sparse = build('dense'), build('sparse')
  abstract = jax.eval_shape(dense.init, jax.random.PRNGKey(0), x)

  def fill(path, s):
    name = path[-1].key
    if name in ('var', 'scale', 'mean', 'rbf_lambda'):
      return np.full(s.shape, {'var': 1.0, 'scale': 1.0, 'mean': 0.0, 'rbf_lambda': 3.0}[name], s.dtype)
    return (rng.randn(*s.shape) / np.sqrt(max(1, np.prod(s.shape[:-1])))).astype(s.dtype)

  variables = jax.tree_util.tree_map_with_path(
      fill, {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
  )
  return dense, sparse, variables


@pytest.mark.slow  # 2 tiny-HRNet compiles: 110 s on the shared 2-core machine under load (~20 s idle, unmeasured)
def test_sparse_hrnet_equals_masked_dense_at_several_thresholds():
  """A tiny HRNet (weights N(0, 1 / fan_in): confidences differ between pixels) as masked-dense and sparse, at
  thresholds splitting exit 1's pixels 10 / 50 / 90 % and at 1.0 (nothing skipped); one compiled program each."""
  rng = np.random.RandomState(0)
  image = rng.randn(1, 32, 32, 3).astype(np.float32)
  x = jnp.asarray(np.concatenate([image, image[:, ::-1]]))  # the same confidences per example, masks differ

  dense, sparse, variables = tiny_hrnets(x, rng)
  run = jax.jit(lambda model, v, x: model.apply(v, x), static_argnums=0)
  conf1 = jax.nn.softmax(run(dense, {**variables, 'constants': {'tau': jnp.float32(1.0)}}, x)['logits'][0]).max(-1)
  taus = [float(jnp.quantile(conf1, q)) for q in (0.1, 0.5, 0.9)] + [1.0]
  fractions = []
  for tau in taus:
    v = {**variables, 'constants': {'tau': jnp.float32(tau)}}
    want, got = run(dense, v, x), run(sparse, v, x)
    assert_exits_equal(want['logits'], got['logits'], tau)
    np.testing.assert_array_equal(np.asarray(got['fractions']), np.asarray(want['fractions']))
    fractions.append(np.asarray(want['fractions'][1]))
  assert np.all(0 < fractions[1]) and np.all(fractions[1] < 1) and np.all(fractions[-1] == 1)  # masks were mixed


def test_segment_kind_from_the_batch_kept_fraction():
  """`segment_kind` on hand-built masks of known kinds, batch 2 of 10 x 10 pixels (the batch's kept fraction
  decides; examples may differ): every pixel kept, or all but PLAIN_SKIPPED_MAX of them (here 3 of 200) -> plain, more
  than `dense_above` (the segment's `Compute.masked_dense_above`) -> masked-dense, `dense_above` exactly or fewer ->
  sparse."""
  kept = lambda *counts: jnp.asarray(np.stack([np.arange(100) < c for c in counts]).reshape(len(counts), 10, 10))
  expected = {
      (100, 100): 'plain',
      (100, 99): 'plain',  # 1 skipped
      (99, 98): 'plain',  # 3 skipped: 1.5 %, at most PLAIN_SKIPPED_MAX
      (98, 98): 'dense',  # 4 skipped: 2 %
      (60, 60): 'dense',
      (51, 51): 'dense',
      (100, 1): 'dense',  # 0.505: one example all kept, the other one pixel
      (50, 50): 'sparse',  # 0.5 exactly
      (100, 0): 'sparse',  # 0.5: one example all kept, the other none
      (49, 49): 'sparse',
      (30, 30): 'sparse',
      (0, 0): 'sparse',
  }
  got = {counts: confidence.SEGMENT_KINDS[int(confidence.segment_kind(kept(*counts), 0.5))] for counts in expected}
  assert got == expected
  kind = lambda counts, above: confidence.SEGMENT_KINDS[int(confidence.segment_kind(kept(*counts), above))]
  assert kind((60, 60), 0.7) == 'sparse' and kind((71, 71), 0.7) == 'dense' and kind((100, 100), 0.7) == 'plain'
  assert kind((100, 96), 1.0) == 'sparse'  # 1.0: sparse whenever more than PLAIN_SKIPPED_MAX are skipped
  assert kind((1, 0), 0.0) == 'dense' and kind((0, 0), 0.0) == 'sparse'  # 0.0: masked-dense unless none is kept


def known_kind(batch_fraction: float, dense_above: float) -> str | None:
  """The kind of a segment whose batch keeps `batch_fraction` of its pixels, where it is known without the rule
  (test_segment_kind: at most half PLAIN_SKIPPED_MAX skipped -> plain, 0.1 or more above the segment's crossover
  `dense_above` -> dense, 0.1 or more below -> sparse); None near either boundary."""
  skipped = 1 - batch_fraction
  if skipped <= confidence.PLAIN_SKIPPED_MAX / 2:
    return 'plain'
  if skipped <= 2 * confidence.PLAIN_SKIPPED_MAX:
    return None
  return 'dense' if batch_fraction >= dense_above + 0.1 else 'sparse' if batch_fraction <= dense_above - 0.1 else None


def test_each_segment_chooses_with_its_own_crossover(monkeypatch):
  """The sparse HRNet's segments 2, 3, 4 each ask `segment_kind` with their own entry of the policy's
  `masked_dense_above` (a static, hashable field: two tables, two programs); the line's 'auto' is
  SEGMENT_DENSE_MIN; a bad table is a one-line error."""
  assert confidence.for_backend(dict(masked_conv='sparse')).masked_dense_above == confidence.SEGMENT_DENSE_MIN
  policy = confidence.for_backend(dict(masked_conv='sparse', masked_dense_above=[0.25, 0.5, 0.75]))
  assert policy.masked_dense_above == (0.25, 0.5, 0.75) and hash(policy) == hash(
      confidence.for_backend(dict(masked_conv='sparse', masked_dense_above=(0.25, 0.5, 0.75)))
  )
  assert policy != confidence.for_backend(dict(masked_conv='sparse', masked_dense_above=(0.75, 0.5, 0.25)))
  for bad in ((0.5, 0.5), (0.5, 0.5, 1.5), (0.5, 0.5, 'x'), 0.5):
    with pytest.raises(UserError, match='compute.masked_dense_above must be 3 kept fractions'):
      confidence.for_backend(dict(masked_conv='sparse', masked_dense_above=bad))
  asked = []
  real = confidence.segment_kind
  monkeypatch.setattr(confidence, 'segment_kind', lambda mask, above: asked.append(above) or real(mask, above))
  model = hrnet.build('w8_tiny', exits=(1, 2, 3, 4), tau=0.5, compute=policy)
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  jax.eval_shape(lambda v: model.apply(v, x), {**variables, 'constants': {'tau': jnp.float32(0.5)}})
  assert asked == [0.25, 0.5, 0.75]


def _convs_outside_conditionals(jaxpr) -> int:
  """The conv_general_dilated ops of `jaxpr` that no conditional or loop holds (sub-jaxprs of other ops, such as
  pjit's, counted)."""
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      count += 1
    elif eqn.primitive.name not in ('cond', 'while'):
      for sub in jax.core.jaxprs_in_params(eqn.params):
        count += _convs_outside_conditionals(sub)
  return count


def test_entry_convs_are_computed_before_each_segment_switch():
  """With `Compute.dense_entry` for a segment, its entry convs (`hrnet.entry_convs`: every 3 x 3 conv that reads
  the segment's input branches) are computed outside any conditional, before the switch on the segment's kind
  (whose index waits for the previous exit's head), and inside it otherwise; each is a conv of the model's
  params."""
  x = jnp.zeros((1, 32, 32, 3))
  arch = hrnet.get_arch('w8_tiny')
  entries = {s: hrnet.entry_convs(arch, s) for s in (2, 3, 4)}
  assert [path for path, _, _ in entries[2]] == ['transition1_0/conv', 'transition1_1_0/conv']
  assert [path for path, _, _ in entries[3]] == [
      'stage3_0/branch0_0/conv1',
      'stage3_0/branch1_0/conv1',
      'transition2_2_0/conv',
  ]
  counts = {}
  for dense_entry in ((False, False, False), (True, False, True), (True, True, True)):
    policy = confidence.for_backend(dict(masked_conv='sparse', dense_entry=dense_entry))
    model = hrnet.build('w8_tiny', tau=0.5, compute=policy)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    for path, _, stride in (conv for convs in entries.values() for conv in convs):
      conv = variables['params']
      for name in path.split('/'):
        conv = conv[name]
      assert conv['kernel'].shape[:2] == (3, 3) and stride in (1, 2), path
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))({**variables, 'constants': {'tau': jnp.float32(0.5)}})
    counts[dense_entry] = _convs_outside_conditionals(jaxpr.jaxpr)
  hoisted = lambda on: sum(len(entries[s]) for s, flag in zip((2, 3, 4), on) if flag)
  assert hoisted((True, True, True)) == 9
  for dense_entry, count in counts.items():
    assert count - counts[(False, False, False)] == hoisted(dense_entry), (dense_entry, counts)
  for bad in ((True, True), (1, 1, 1), True):
    with pytest.raises(UserError, match='compute.dense_entry must be 3 booleans'):
      confidence.for_backend(dict(masked_conv='sparse', dense_entry=bad))


def test_dense_output_ahead_only_for_a_segment_that_chose_its_kind():
  x = jnp.ones((1, 4, 4, 2))
  conv = Conv(3, 3, exit_index=2, compute=confidence.for_backend(dict(masked_conv='sparse')))
  v = conv.init(jax.random.PRNGKey(0), x, MaskSet(jnp.ones((1, 4, 4))))
  with pytest.raises(ValueError, match='a dense output computed ahead is only for a segment that chose its kind'):
    conv.apply(v, x, MaskSet(jnp.ones((1, 4, 4))), jnp.ones((1, 4, 4, 3)))


# two tiny-HRNet compiles with the sown MACs: 24 s of CPU cold, the heaviest not-slow test; the sparse kernels stay
# in the quick set (test_original_exit_at_kept_pixels_equals_masked_dense_exit, test_segment_kind_*)
@pytest.mark.slow
def test_sparse_hrnet_segment_choice_takes_each_kind_with_examples_that_differ():
  """A tiny HRNet, batch 3: example 0 an image, examples 1 and 2 the image flipped and scaled by 20 (larger logits:
  more confident), so one threshold keeps nearly every pixel of example 0 and few of examples 1 and 2. Thresholds
  put the batch's kept fraction after exit 1 above and below SEGMENT_DENSE_MIN, at 99.5 % (plain with the fill at
  the few skipped pixels) and at 1.0 (every pixel kept): each segment's kind (plain, masked-dense, sparse, known
  from the per-example fractions away from the boundaries) is
  taken, and the sparse model's logits equal the masked-dense model's at every exit, with its entry convs ahead
  of the switches as the policy chooses (`Compute.dense_entry`), ahead of all of them, and of none."""
  rng = np.random.RandomState(3)
  image = rng.randn(1, 32, 32, 3).astype(np.float32)
  x = jnp.asarray(np.concatenate([image, 20 * image[:, ::-1], 20 * image[:, :, ::-1]]))

  dense, sparse, variables = tiny_hrnets(x, rng)
  # the line's auto (entry convs ahead of the switches of segments 2 and 3), with them ahead of every switch, and
  # without them
  assert sparse.compute.dense_entry == confidence.SEGMENT_DENSE_ENTRY == (True, True, False)
  entry_everywhere = sparse.clone(compute=dataclasses.replace(sparse.compute, dense_entry=(True, True, True)))
  without_entry = sparse.clone(compute=dataclasses.replace(sparse.compute, dense_entry=(False, False, False)))
  # the sown MACs too (the switch needs one sown tree for every kind): the same per exit as masked-dense's
  run = jax.jit(lambda model, v, x: flops.apply_with_macs(model, v, x), static_argnums=0)
  at_one = run(dense, {**variables, 'constants': {'tau': jnp.float32(1.0)}}, x)[0]
  conf1 = np.asarray(jax.nn.softmax(at_one['logits'][0]).max(-1))
  kinds, differing, plain_skipping = set(), False, False
  for q in (0.995, 0.35, 0.75, None):  # the batch keeps about 99.5 % / 35 % / 75 % after exit 1, or every pixel
    tau = 1.0 if q is None else float(np.quantile(conf1, q))
    v = {**variables, 'constants': {'tau': jnp.float32(tau)}}
    (want, want_macs), (got, got_macs) = run(dense, v, x), run(sparse, v, x)
    assert_exits_equal(want['logits'], got['logits'], tau)
    for other in (entry_everywhere, without_entry):
      assert_exits_equal(want['logits'], run(other, v, x)[0]['logits'], tau)
    np.testing.assert_array_equal(np.asarray(got['fractions']), np.asarray(want['fractions']))
    assert set(got_macs) == set(want_macs)
    for name in want_macs:
      np.testing.assert_allclose(np.asarray(got_macs[name]), np.asarray(want_macs[name]), rtol=1e-6, err_msg=name)
    for s, per_example in enumerate(want['fractions'][1:]):  # segments 2..4's masks: each example's kept fraction
      per_example = np.asarray(per_example)
      batch_fraction = per_example.mean()
      kinds.add(known_kind(batch_fraction, confidence.SEGMENT_DENSE_MIN[s]))
      differing |= bool(per_example[0] > 0.9 and per_example[1:].max() < 0.3)
      plain_skipping |= known_kind(batch_fraction, confidence.SEGMENT_DENSE_MIN[s]) == 'plain' and batch_fraction < 1
  assert kinds - {None} == set(confidence.SEGMENT_KINDS), kinds
  assert plain_skipping  # a plain segment with skipped pixels to fill
  assert differing  # one example nearly all kept, the others mostly skipped, in one segment at least


def test_policy_is_a_hashable_build_time_choice_and_training_stays_dense(monkeypatch):
  sparse_policy = confidence.for_backend(dict(masked_conv='sparse'))
  assert sparse_policy != Compute() and hash(sparse_policy) == hash(Compute(masked_conv='sparse', **AUTO_REST))
  calls = []
  for name in ('dense', 'sparse'):
    monkeypatch.setitem(confidence.MASKED_CONVS, name, lambda *a, name=name: calls.append(name) or a[1])
  x = jnp.ones((1, 4, 4, 2))
  conv = Conv(3, 3, exit_index=2, compute=sparse_policy)
  v = conv.init(jax.random.PRNGKey(0), x, MaskSet(jnp.ones((1, 4, 4))))
  conv.apply(v, x, MaskSet(jnp.ones((1, 4, 4)), train=True))
  conv.apply(v, x, MaskSet(jnp.ones((1, 4, 4))))
  assert calls == ['sparse', 'dense', 'sparse']  # init (not training), training, evaluation


def _compile_cheaply(fn, *args):
  """fn compiled for args at XLA:CPU's optimization level 0 (a third of the compile time; these programs run a few
  dozen times on small batches, so their slower steps cost less than the compile they save)."""
  lowered = jax.jit(fn).lower(*args)
  if jax.default_backend() == 'cpu':
    return lowered.compile({'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})
  return lowered.compile()


def _digit_config(**model):
  c = cli.load_config_file(os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py'))
  c.model.update(model)
  return c


class _SceneInfo:
  num_classes = 11


TRAIN_STEPS = 30


@pytest.fixture(scope='module')
def trained_digit_scenes(tfds_dir):
  """The demo's model (configs/anytime/digit_scenes.py: w8_nano, RH exits, He kernels, BN momentum 0.9, AdamW)
  fitted for TRAIN_STEPS steps of 2 training scenes, without CA (the same variables but the rbf_lambdas; its train
  step compiles in half the time), so that its exits' confidences vary between pixels as a trained model's do. The
  masked convs get lambda 1.5 (the whole 7 x 7 fill) and 3.0 (the init: the short fill) in turn. Returns the CA
  task (tau from the eval step's constants), its variables and 4 validation scenes."""
  config = _digit_config()
  plain = task_lib.AnytimeSegTask(_digit_config(confidence_adaptive=False), _SceneInfo())
  model = plain.build_model()
  train, _ = sources.load_source('digit_scenes', 'train', str(tfds_dir))
  val, _ = sources.load_source('digit_scenes', 'validation', str(tfds_dir))

  def batch(source, idx):  # the config's normalize(mean=0.5, std=0.5)
    images = np.stack([np.asarray(source[i]['image']) for i in idx]).astype(np.float32) / 255.0
    labels = np.stack([np.asarray(source[i]['segmentation']) for i in idx])
    return jnp.asarray((images - 0.5) / 0.5), jnp.asarray(labels)

  opt = optax.adamw(config.optimizer.lr, weight_decay=config.optimizer.weight_decay)
  variables = jax.tree.map(jnp.asarray, hrnet.random_variables(model, 64, 128))
  params, stats = variables['params'], variables['batch_stats']

  def step(params, stats, opt_state, image, labels):
    def loss(p):
      total, (_, new_vars) = plain.train_loss(
          model, {'params': p, 'batch_stats': stats}, {'image': image, 'segmentation': labels}, None
      )
      return total, new_vars['batch_stats']

    (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  opt_state = opt.init(params)
  compiled = _compile_cheaply(step, params, stats, opt_state, *batch(train, range(2)))
  for s in range(TRAIN_STEPS):
    params, stats, opt_state = compiled(params, stats, opt_state, *batch(train, range(2 * s, 2 * s + 2)))

  ca = task_lib.AnytimeSegTask(_digit_config(confidence_adaptive=True), _SceneInfo())
  ca_abstract = jax.eval_shape(ca.build_model().init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 128, 3)))
  lambdas = iter([1.5, 3.0] * 100)

  def ca_params(path, _):  # the trained value, or (the rbf_lambdas) a fixed one
    node = params
    for p in path:
      if p.key not in node:
        return jnp.float32(next(lambdas))
      node = node[p.key]
    return node

  ca_vars = {'params': jax.tree_util.tree_map_with_path(ca_params, ca_abstract['params']), 'batch_stats': stats}
  return ca, ca_vars, batch(val, range(4))[0]


@pytest.mark.slow  # trains (one compile) and evaluates (two): 72 s at load 9 on the shared 2-core machine, 42 s CPU
def test_sparse_equals_masked_dense_on_trained_digit_scenes_model(trained_digit_scenes):
  """The issue's 'Done when': the demo's model after a short training, evaluated masked-dense and sparse on
  validation scenes at thresholds splitting exit 1's pixels 25 / 75 % and at 0.998 (the demo's) and 1.0 (nothing
  skipped), one compiled program each (tau an argument): every exit's logits within 1e-4, the same argmax except
  at near-ties, the same computed fractions, and masks mixed (some pixels kept, some skipped) below tau 1."""
  ca, variables, images = trained_digit_scenes

  def program(masked_conv):
    ca.config.compute.masked_conv = masked_conv
    model = ca.build_model()
    v = {**variables, 'constants': {'tau': jnp.float32(1.0)}}
    return _compile_cheaply(lambda v, x: model.apply(v, x), v, images)

  dense, sparse = program('dense'), program('sparse')
  at_one = dense({**variables, 'constants': {'tau': jnp.float32(1.0)}}, images)
  conf1 = np.asarray(jax.nn.softmax(at_one['logits'][0]).max(-1))
  taus = [float(np.quantile(conf1, q)) for q in (0.25, 0.75)] + [0.998, 1.0]
  mixed = []
  for tau in taus:
    v = {**variables, 'constants': {'tau': jnp.float32(tau)}}
    want, got = dense(v, images), sparse(v, images)
    assert_exits_equal(want['logits'], got['logits'], tau)
    fractions = np.asarray(want['fractions'])  # (exits, batch): the fraction each exit computed
    np.testing.assert_array_equal(np.asarray(got['fractions']), fractions)
    mixed.append(0 < fractions[1:].mean() < 1)
  assert mixed[:2] == [True, True] and np.all(fractions == 1)  # the quantile thresholds skip some, tau 1 none


def test_auto_masked_conv_is_sparse_on_cpu_dense_elsewhere(monkeypatch):
  """'auto' picks the sparse masked conv where it was measured faster (CPU), masked-dense on GPU / TPU; the
  digit_scenes demo pins masked-dense (its eval program compiles several times longer sparse)."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert confidence.for_backend().masked_conv == 'sparse'
  assert confidence.for_backend(dict(masked_conv='dense')).masked_conv == 'dense'
  for backend in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda backend=backend: backend)
    assert confidence.for_backend().masked_conv == 'dense'
  assert _digit_config().compute.masked_conv == 'dense'
