"""Batch-level Mixup / CutMix with timm `Mixup(mode='batch')` semantics.

One draw per batch: with prob `prob` the batch is mixed, by CutMix with prob `switch_prob` (when both
alphas > 0) else Mixup; lam ~ Beta(alpha, alpha) of the chosen method. The partner of example i is
example B-1-i (timm's `x.flip(0)`). CutMix pastes the partner's pixels into a `rand_bbox` box
(side sqrt(1 - lam) of the image, centre uniform, clipped at the borders) and, with
`correct_lam=True`, resets lam = 1 - box_area / (H * W). Targets are
`lam * smooth(y) + (1 - lam) * smooth(y[::-1])` with timm's smoothing
(off = smoothing / K, on = 1 - smoothing + off), so rows sum to 1; unmixed batches get smooth(y).

Two implementations of the same semantics:
  * numpy, on the host: `mixup_cutmix(batch, np_rng, ...)` (also `mixup_cutmix_np`).
  * jax.numpy, jit-able inside a train step: `mixup_cutmix(batch, jax_key, ...)` (also
    `mixup_cutmix_jax`); branch-free (`jnp.where`), static shapes.
Both are split into `sample_mix_params_*` (the random draws) and `apply_mix_*` (deterministic given
lam / use_cutmix / box), so they can be checked against each other and against timm.

Images are NHWC (any float dtype; normalized images in the ConvNeXt recipe). Integer (uint8) images
are blended in float32 and rounded back (timm FastCollateMixup behaviour). `batch['label']` must be
integer class ids (B,); the result's 'label' is float32 (B, num_classes). Unlike timm, odd batch
sizes are not rejected (the middle example is its own partner).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core_jax.errors import UserError

Batch = dict[str, Any]


def _check_alphas(mixup_alpha, cutmix_alpha):
  if not (mixup_alpha > 0 or cutmix_alpha > 0):
    raise UserError('mixup_cutmix: one of mixup_alpha > 0 or cutmix_alpha > 0 is required')


def _is_jax_key(x) -> bool:
  if isinstance(x, np.random.Generator) or x is None:
    return False
  try:
    import jax  # pylint: disable=import-outside-toplevel
  except ImportError:  # pragma: no cover
    return False
  return isinstance(x, jax.Array)


def mixup_cutmix(
    batch: Batch,
    rng_or_key,
    *,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.1,
    num_classes: int,
    correct_lam: bool = True,
) -> Batch:
  """Mixes `batch` ('image' NHWC, 'label' int (B,)) -> new batch, 'label' float32 (B, num_classes).

  `rng_or_key`: a `np.random.Generator` (numpy, host) or a jax PRNG key (jnp, jit-able).
  """
  kw = dict(
      mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha,
      prob=prob,
      switch_prob=switch_prob,
      label_smoothing=label_smoothing,
      num_classes=num_classes,
      correct_lam=correct_lam,
  )
  if _is_jax_key(rng_or_key):
    return mixup_cutmix_jax(batch, rng_or_key, **kw)
  if not isinstance(rng_or_key, np.random.Generator):
    raise TypeError(f'mixup_cutmix needs a np.random.Generator or a jax key, got {type(rng_or_key)}')
  return mixup_cutmix_np(batch, rng_or_key, **kw)


# ------------------------------------------------------------------------------------ numpy


def smooth_one_hot_np(labels, num_classes: int, smoothing: float) -> np.ndarray:
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  labels = np.asarray(labels).reshape(-1)
  out = np.full((labels.shape[0], num_classes), off, np.float32)
  out[np.arange(labels.shape[0]), labels] = on
  return out


def mix_targets_np(labels, lam, num_classes: int, smoothing: float) -> np.ndarray:
  """timm `mixup_target`: lam * smooth(y) + (1 - lam) * smooth(y.flip(0))."""
  y1 = smooth_one_hot_np(labels, num_classes, smoothing)
  return y1 * np.float32(lam) + y1[::-1] * np.float32(1.0 - lam)  # scalars cast like torch


def cutmix_box(lam: float, img_h: int, img_w: int, cy: int, cx: int):
  """timm `rand_bbox` given the centre: (yl, yh, xl, xh)."""
  ratio = np.sqrt(1 - lam)
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  yl = int(np.clip(cy - cut_h // 2, 0, img_h))
  yh = int(np.clip(cy + (cut_h + 1) // 2, 0, img_h))
  xl = int(np.clip(cx - cut_w // 2, 0, img_w))
  xh = int(np.clip(cx + (cut_w + 1) // 2, 0, img_w))
  return yl, yh, xl, xh


def sample_mix_params_np(
    rng: np.random.Generator, img_h: int, img_w: int, *, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5
):
  """timm `_params_per_batch` (+ `rand_bbox` centre) -> (lam, use_cutmix, (yl, yh, xl, xh) | None).

  `lam` is the *uncorrected* Beta draw; `apply_mix_np` applies the area correction."""
  _check_alphas(mixup_alpha, cutmix_alpha)
  lam, use_cutmix = 1.0, False
  if rng.random() < prob:
    if mixup_alpha > 0.0 and cutmix_alpha > 0.0:
      use_cutmix = bool(rng.random() < switch_prob)
      lam = rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha)
    elif mixup_alpha > 0.0:
      lam = rng.beta(mixup_alpha, mixup_alpha)
    else:
      use_cutmix = True
      lam = rng.beta(cutmix_alpha, cutmix_alpha)
    lam = float(lam)
  box = None
  if use_cutmix and lam != 1.0:
    cy = int(rng.integers(0, img_h))
    cx = int(rng.integers(0, img_w))
    box = cutmix_box(lam, img_h, img_w, cy, cx)
  return lam, use_cutmix, box


def apply_mix_np(
    batch: Batch,
    lam: float,
    use_cutmix: bool,
    box,
    *,
    num_classes: int,
    label_smoothing: float = 0.1,
    correct_lam: bool = True,
) -> Batch:
  """Deterministic part of timm `Mixup._mix_batch` + `mixup_target` for given lam / box."""
  batch = dict(batch)
  x = np.asarray(batch['image'])
  labels = np.asarray(batch['label'])
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f'mixup_cutmix needs integer labels of shape (B,), got {labels.dtype} {labels.shape}')
  if lam != 1.0:
    if use_cutmix:
      yl, yh, xl, xh = box
      if correct_lam:
        lam = 1.0 - (yh - yl) * (xh - xl) / float(x.shape[1] * x.shape[2])
      x = np.array(x, copy=True)
      x[:, yl:yh, xl:xh] = x[::-1, yl:yh, xl:xh].copy()
    else:
      xf = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
      mixed = xf * np.float32(lam) + xf[::-1] * np.float32(1.0 - lam)
      if not np.issubdtype(x.dtype, np.floating):
        info = np.iinfo(x.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
      x = mixed.astype(x.dtype)
  batch['image'] = x
  batch['label'] = mix_targets_np(labels, lam, num_classes, label_smoothing)
  return batch


def mixup_cutmix_np(
    batch: Batch,
    rng: np.random.Generator,
    *,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    prob=1.0,
    switch_prob=0.5,
    label_smoothing=0.1,
    num_classes: int,
    correct_lam=True,
) -> Batch:
  h, w = np.asarray(batch['image']).shape[1:3]
  lam, use_cutmix, box = sample_mix_params_np(
      rng, h, w, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob
  )
  return apply_mix_np(
      batch, lam, use_cutmix, box, num_classes=num_classes, label_smoothing=label_smoothing, correct_lam=correct_lam
  )


# -------------------------------------------------------------------------------- jax.numpy


def smooth_one_hot_jax(labels, num_classes: int, smoothing: float):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), jnp.float32(on), jnp.float32(off))


def cutmix_box_jax(lam, img_h: int, img_w: int, cy, cx):
  """`cutmix_box` with traced lam / centre -> int32 (yl, yh, xl, xh)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  ratio = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
  cut_h = jnp.floor(img_h * ratio).astype(jnp.int32)
  cut_w = jnp.floor(img_w * ratio).astype(jnp.int32)
  yl = jnp.clip(cy - cut_h // 2, 0, img_h)
  yh = jnp.clip(cy + (cut_h + 1) // 2, 0, img_h)
  xl = jnp.clip(cx - cut_w // 2, 0, img_w)
  xh = jnp.clip(cx + (cut_w + 1) // 2, 0, img_w)
  return yl, yh, xl, xh


def sample_mix_params_jax(key, img_h: int, img_w: int, *, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5):
  """Same distribution as `sample_mix_params_np` -> (lam, use_cutmix, box) as traced scalars.

  When not mixing lam == 1 and use_cutmix is False; box is always computed (ignored then)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  _check_alphas(mixup_alpha, cutmix_alpha)
  k_apply, k_switch, k_lam, k_cy, k_cx = jax.random.split(key, 5)
  apply = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0.0 and cutmix_alpha > 0.0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
    alpha = jnp.where(use_cutmix, jnp.float32(cutmix_alpha), jnp.float32(mixup_alpha))
  elif mixup_alpha > 0.0:
    use_cutmix, alpha = jnp.bool_(False), jnp.float32(mixup_alpha)
  else:
    use_cutmix, alpha = jnp.bool_(True), jnp.float32(cutmix_alpha)
  lam = jnp.where(apply, jax.random.beta(k_lam, alpha, alpha), jnp.float32(1.0))
  use_cutmix = apply & use_cutmix
  cy = jax.random.randint(k_cy, (), 0, img_h)
  cx = jax.random.randint(k_cx, (), 0, img_w)
  return lam, use_cutmix, cutmix_box_jax(lam, img_h, img_w, cy, cx)


def apply_mix_jax(
    batch: Batch,
    lam,
    use_cutmix,
    box,
    *,
    num_classes: int,
    label_smoothing: float = 0.1,
    correct_lam: bool = True,
    input_key: str = 'image',
) -> Batch:
  """Branch-free `apply_mix_np` on batch[input_key]: lam / use_cutmix / box may be traced."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  batch = dict(batch)
  x = jnp.asarray(batch[input_key])
  labels = jnp.asarray(batch['label'])
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise UserError(f'mixup_cutmix needs integer labels of shape (B,), got {labels.dtype} {labels.shape}')
  _, h, w = x.shape[:3]
  lam = jnp.asarray(lam, jnp.float32)
  use_cutmix = jnp.asarray(use_cutmix, jnp.bool_)
  mixing = lam != 1.0
  yl, yh, xl, xh = box
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)  # (H, W)
  inside = inside.reshape((1, h, w) + (1,) * (x.ndim - 3))
  flipped = x[::-1]
  cut = jnp.where(inside, flipped, x)
  floating = jnp.issubdtype(x.dtype, jnp.floating)
  xf = x if floating else x.astype(jnp.float32)
  blend = xf * lam + xf[::-1] * (jnp.float32(1.0) - lam)
  if not floating:
    info = jnp.iinfo(x.dtype)
    blend = jnp.clip(jnp.rint(blend), info.min, info.max)
  blend = blend.astype(x.dtype)
  x_out = jnp.where(mixing & use_cutmix, cut, jnp.where(mixing, blend, x))
  if correct_lam:
    area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
    lam_cut = jnp.float32(1.0) - area / jnp.float32(h * w)
    lam = jnp.where(mixing & use_cutmix, lam_cut, lam)
  y1 = smooth_one_hot_jax(labels, num_classes, label_smoothing)
  batch[input_key] = x_out
  batch['label'] = y1 * lam + y1[::-1] * (jnp.float32(1.0) - lam)
  return batch


def mixup_cutmix_jax(
    batch: Batch,
    key,
    *,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    prob=1.0,
    switch_prob=0.5,
    label_smoothing=0.1,
    num_classes: int,
    correct_lam=True,
    input_key: str = 'image',
) -> Batch:
  """jit-able mixup/cutmix of batch[input_key] (NHWC): call inside the train step with a per-step key."""
  h, w = batch[input_key].shape[1:3]
  lam, use_cutmix, box = sample_mix_params_jax(
      key, h, w, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob
  )
  return apply_mix_jax(
      batch,
      lam,
      use_cutmix,
      box,
      num_classes=num_classes,
      label_smoothing=label_smoothing,
      correct_lam=correct_lam,
      input_key=input_key,
  )
