"""Semantic segmentation's jittable pieces, shared by the lines' segmentation Tasks (ADP-C's HRNet, ConvNeXt's
UperNet): PyTorch's bilinear resize, the cross-entropy with an ignore label, pixel accuracy.
(The data side, transforms on numpy examples, is core_jax/data/segmentation.py; the metric is
core_jax.metrics.confusion_matrix_metric.)"""

import jax
import jax.numpy as jnp

from core_jax.data.registry import IGNORE_LABEL


def resize_bilinear(x: jax.Array, h: int, w: int) -> jax.Array:
  """PyTorch ``F.interpolate(x, (h, w), mode='bilinear', align_corners=False)`` of NHWC ``x``: half-pixel centres
  without antialiasing (``jax.image.resize`` antialiases when it shrinks unless told not to)."""
  if x.shape[1:3] == (h, w):
    return x
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), 'bilinear', antialias=False)


def weighted_cross_entropy(logits, labels, class_weights=None, ignore_label: int = IGNORE_LABEL):
  """PyTorch `CrossEntropyLoss(weight, ignore_index)` with 'mean': sum w_y nll / sum w_y over valid pixels.

  logits (B, h, w, K) at any resolution are bilinearly upsampled to the labels' (B, H, W) first."""
  logits = resize_bilinear(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), *labels.shape[1:3])
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), safe[..., None], axis=-1)[..., 0]
  w = valid.astype(jnp.float32)
  if class_weights is not None:
    w = w * jnp.asarray(class_weights, jnp.float32)[safe]
  return (w * nll).sum() / jnp.maximum(w.sum(), 1e-12)


def pixel_accuracy(logits, labels, ignore_label: int = IGNORE_LABEL):
  """Fraction of the non-ignored pixels whose argmax (after resizing the logits to the labels) is right."""
  pred = jnp.argmax(resize_bilinear(logits.astype(jnp.float32), *labels.shape[1:3]), axis=-1)
  valid = labels != ignore_label
  return ((pred == labels) & valid).sum() / jnp.maximum(valid.sum(), 1)
