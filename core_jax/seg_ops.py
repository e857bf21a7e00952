"""Semantic segmentation's jittable pieces, shared by the lines' segmentation Tasks (ADP-C's HRNet, ConvNeXt's
UperNet): PyTorch's bilinear resize, the cross-entropy with an ignore label, pixel accuracy.
(The data side, transforms on numpy examples, is core_jax/data/segmentation.py; the metric is
core_jax.metrics.confusion_matrix_metric.)"""

import jax
import jax.numpy as jnp

from core_jax.data.registry import IGNORE_LABEL
from core_jax.errors import UserError


def resize_bilinear(x: jax.Array, h: int, w: int) -> jax.Array:
  """PyTorch ``F.interpolate(x, (h, w), mode='bilinear', align_corners=False)`` of NHWC ``x``: half-pixel centres
  without antialiasing (``jax.image.resize`` antialiases when it shrinks unless told not to)."""
  if x.shape[1:3] == (h, w):
    return x
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), 'bilinear', antialias=False)


def check_class_weights(values, num_classes: int, what: str) -> tuple[float, ...] | None:
  """`weighted_cross_entropy`'s class weights from the config field named `what`: None when unset (uniform); one
  per class, each >= 0 and not all 0 (the loss would be 0 everywhere), else a one-line UserError."""
  weights = tuple(float(w) for w in values or ())
  if not weights:
    return None
  if len(weights) != num_classes:
    raise UserError(f'{what} has {len(weights)} entries; the dataset has {num_classes} classes')
  if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
    raise UserError(f'{what} must be >= 0 with one > 0, got {weights}')
  return weights


def weighted_cross_entropy(logits, labels, class_weights=None, ignore_label: int = IGNORE_LABEL):
  """PyTorch `CrossEntropyLoss(weight, ignore_index)` with 'mean': sum w_y nll / sum w_y over valid pixels.

  logits (B, h, w, K) at any resolution are bilinearly upsampled to the labels' (B, H, W) first."""
  logits = resize_bilinear(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), *labels.shape[1:3])
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), safe[..., None], axis=-1)[..., 0]
  # the weights in the loss's dtype: a float32 sum of 0.1s rounds by reduction order, which float64 runs would see
  w = valid.astype(nll.dtype)
  if class_weights is not None:
    w = w * jnp.asarray(class_weights, nll.dtype)[safe]
  return (w * nll).sum() / jnp.maximum(w.sum(), 1e-12)


def pixel_accuracy(logits, labels, ignore_label: int = IGNORE_LABEL):
  """Fraction of the non-ignored pixels whose argmax (after resizing the logits to the labels) is right."""
  pred = jnp.argmax(resize_bilinear(logits.astype(jnp.float32), *labels.shape[1:3]), axis=-1)
  valid = labels != ignore_label
  return ((pred == labels) & valid).sum() / jnp.maximum(valid.sum(), 1)


def slide_windows(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
  """mmseg's ``slide_inference`` windows (y1, y2, x1, x2) over an h x w image: a grid of
  max(size - crop + stride - 1, 0) // stride + 1 windows per axis, the last ones moved back to end at the border,
  a window as large as the image where the image is smaller than the crop."""
  (ch, cw), (sh, sw) = crop, stride
  rows = max(h - ch + sh - 1, 0) // sh + 1
  cols = max(w - cw + sw - 1, 0) // sw + 1
  out = []
  for i in range(rows):
    for j in range(cols):
      y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
      out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
  return out


def slide_inference(logits_fn, image: jax.Array, crop: tuple[int, int], stride: tuple[int, int]) -> jax.Array:
  """Sliding-window logits of NHWC ``image`` at its full size (mmseg's slide mode, as the paper's single-scale
  ADE20K eval: 512 windows, stride 341): `logits_fn(window)` at any resolution is resized to its window, the
  windows' logits are summed and divided by how many windows cover each pixel. Static windows (jit-friendly)."""
  n, h, w, _ = image.shape
  total, count = None, jnp.zeros((1, h, w, 1), jnp.float32)
  for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
    logits = resize_bilinear(logits_fn(image[:, y1:y2, x1:x2]).astype(jnp.float32), y2 - y1, x2 - x1)
    if total is None:
      total = jnp.zeros((n, h, w, logits.shape[-1]), jnp.float32)
    total = total.at[:, y1:y2, x1:x2].add(logits)
    count = count.at[:, y1:y2, x1:x2].add(1.0)
  return total / count


def aug_test_probs(
    logits_fn,
    image: jax.Array,
    out_hw: tuple[int, int],
    scale: tuple[int, int] | None = None,
    ratios: tuple[float, ...] = (1.0,),
    flip: bool = False,
    slide: tuple[int, int] | None = None,
) -> jax.Array:
  """mmseg's test-time inference of NHWC `image` (0.x `EncoderDecoder.simple_test` / `aug_test` under
  `MultiScaleFlipAug`): per ratio r the image resized keeping its aspect into (int(scale[0] r), int(scale[1] r))
  (`keep_ratio_size`; `scale` None: as given), per flip the mirrored image; `logits_fn(x)` on the whole of it or by
  sliding `slide` = (crop, stride) windows, resized to `out_hw` (the labels' size), softmaxed, mirrored back;
  returns the mean of those probabilities (B, *out_hw, K). Shapes are static: each (ratio, flip) is traced once.

  The image arrives normalized and is resized here (bilinear, PyTorch's align_corners=False), where mmseg resizes
  the uint8 image and then normalizes: the two differ by the uint8 rounding of the resized pixels only."""
  from core_jax.data.segmentation import keep_ratio_size  # pylint: disable=import-outside-toplevel

  total, count = None, 0
  h, w = image.shape[1:3]
  for ratio in ratios:
    size = (h, w) if scale is None else keep_ratio_size(h, w, (int(scale[0] * ratio), int(scale[1] * ratio)))
    x = resize_bilinear(image, *size)
    for mirrored in (False, True) if flip else (False,):
      xin = x[:, :, ::-1] if mirrored else x
      if slide:
        logits = slide_inference(logits_fn, xin, (slide[0], slide[0]), (slide[1], slide[1]))
      else:
        logits = logits_fn(xin)
      probs = jax.nn.softmax(resize_bilinear(logits.astype(jnp.float32), *out_hw), axis=-1)
      probs = probs[:, :, ::-1] if mirrored else probs
      total = probs if total is None else total + probs
      count += 1
  return total / count
