"""core_jax.seg_ops' sliding-window inference: mmseg's window grid and the overlap averaging."""

import jax.numpy as jnp
import numpy as np

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
