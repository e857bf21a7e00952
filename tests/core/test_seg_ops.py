"""core_jax.seg_ops' sliding-window inference: mmseg's window grid and the overlap averaging."""

import jax.numpy as jnp
import numpy as np
from cheap_init import CHEAP

from core_jax import seg_ops


def test_slide_windows_are_mmsegs_grid():
  # ADE20K's single-scale eval: a 2048x512 keep-ratio resize of a 4:3 image is 512x683; 512 windows, stride 341
  assert seg_ops.slide_windows(512, 683, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 171, 683)]
  # a window larger than the image covers the whole image
  assert seg_ops.slide_windows(300, 400, (512, 512), (341, 341)) == [(0, 300, 0, 400)]
  wins = seg_ops.slide_windows(1024, 1365, (512, 512), (341, 341))
  assert len(wins) == 3 * 4 and wins[-1] == (512, 1024, 853, 1365)
  assert all(y2 - y1 == 512 and x2 - x1 == 512 for y1, y2, x1, x2 in wins)


def test_slide_inference_averages_overlapping_windows():
  image = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 10, 3)).astype(np.float32))
  # a per-pixel function gives the same logits whatever the windows
  same = seg_ops.slide_inference(lambda x: 2.0 * x, image, (6, 6), (6, 4))
  np.testing.assert_allclose(np.asarray(same), 2.0 * np.asarray(image), rtol=1e-6)
  # a window's mean (at 1/2 resolution, resized back): pixels covered twice get the two windows' average
  got = np.asarray(
      seg_ops.slide_inference(
          lambda x: jnp.mean(x, axis=(1, 2), keepdims=True) * jnp.ones_like(x[:, ::2, ::2]), image, (6, 6), (6, 4)
      )
  )
  left, right = np.asarray(image[:, :, 0:6].mean(axis=(1, 2))), np.asarray(image[:, :, 4:10].mean(axis=(1, 2)))
  np.testing.assert_allclose(got[:, 0, 0], left, rtol=1e-5)
  np.testing.assert_allclose(got[:, 0, 9], right, rtol=1e-5)
  np.testing.assert_allclose(got[:, 3, 5], (left + right) / 2, rtol=1e-5)


def test_aug_test_resizes_keeping_the_aspect_flips_back_and_averages_probabilities():
  import jax  # pylint: disable=import-outside-toplevel

  image = jnp.asarray(np.random.default_rng(1).normal(size=(1, 12, 16, 3)).astype(np.float32))
  seen = []

  def logits_fn(x):  # not mirror-symmetric: a ramp along x added to each channel
    seen.append(x.shape[1:3])
    return x + jnp.linspace(0.0, 3.0, x.shape[2])[None, None, :, None]

  def run(image):  # one program, traced once (so `seen` lists each call), compiled cheaply: eager ops take seconds
    plain = seg_ops.aug_test_probs(logits_fn, image, (12, 16))
    # mmseg's MultiScaleFlipAug: scale (32, 8) x ratios 0.5 / 1.5: (16, 4) and (48, 12) keep-ratio targets, i.e.
    # factors min(16 / 16, 4 / 12) and min(48 / 16, 12 / 12): 12x16 -> 4x5 (int(5.33 + 0.5)) and 12x16
    multi = seg_ops.aug_test_probs(logits_fn, image, (12, 16), scale=(32, 8), ratios=(0.5, 1.5), flip=True)
    want = 0
    for h, w in ((4, 5), (12, 16)):
      x = seg_ops.resize_bilinear(image, h, w)
      want += jax.nn.softmax(seg_ops.resize_bilinear(x + jnp.linspace(0.0, 3.0, w)[None, None, :, None], 12, 16), -1)
      mirrored = x[:, :, ::-1] + jnp.linspace(0.0, 3.0, w)[None, None, :, None]
      want += jax.nn.softmax(seg_ops.resize_bilinear(mirrored, 12, 16), -1)[:, :, ::-1]
    seg_ops.aug_test_probs(logits_fn, image, (12, 16), scale=(32, 12), slide=(8, 6))
    return plain, multi, want / 4

  plain, multi, want = jax.jit(run).lower(image).compile(compiler_options=CHEAP)(image)
  assert seen[0] == (12, 16) and seen[1:5] == [(4, 5), (4, 5), (12, 16), (12, 16)]
  assert seen[5:] == [(8, 8)] * 6  # 12x16 stays (keep-ratio into 32x12); windows y 0, 4 x 0, 6, 8 (last moved back)
  ramp = np.linspace(0.0, 3.0, 16, dtype=np.float32)[None, None, :, None]
  np.testing.assert_allclose(np.asarray(plain), np.asarray(jax.nn.softmax(image + ramp, -1)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(multi), np.asarray(want), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(multi).sum(-1), 1.0, rtol=1e-5)
