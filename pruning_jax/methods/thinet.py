"""ThiNet (Luo, Wu and Lin, ICCV 2017): prune layer i by what layer i + 1 needs, greedily, then rescale.

For the channel set of layer i, its consumer (layer i + 1) computes at each output position and output channel o
  y = sum_c x_c,   x_c = sum_{kh, kw} input[kh, kw, c] * W[kh, kw, c, o]   (bias aside)
ThiNet samples scalars: `per_image` random output positions per image, each with one random output channel
(the paper: 10 locations per image), giving the vectors x_hat_n in R^C. Channel selection is the greedy
minimization of the reconstruction error of what is removed,
  T = argmin_{|T| = C - C'} sum_n (sum_{c in T} x_hat_nc)^2,
adding to T one channel at a time the channel that raises that error least (the paper's Algorithm 1; with
G = X_hat^T X_hat the error of T is 1_T^T G 1_T, so each step is O(C)). The kept channels S are then rescaled by
least squares, w = argmin ||y_hat - X_hat_S w||^2 (y_hat = X_hat 1: the sample's full output), and w_c multiplies
every weight of input channel c in layer i + 1. The filters of layer i (and its BN, bias) and the matching
inputs of layer i + 1 are removed by pruning_jax.surgery; layer by layer in forward order, each layer sampled
from the model pruned (and, with `between`, fine-tuned) so far.

  greedy_remove(gram, num_remove)    channel positions removed, in the order chosen
  choose(samples, num_keep)          (kept positions, rescaled consumer kernel, report) of one layer
  prune(model_name_or_family, cfg, variables, images, keep_ratio, ...)  -> methods.PruneResult

The report gives per layer the sampled reconstruction error of the selection with the consumer's own weights
(`error_selected`) and after the least-squares rescaling (`error_rescaled`), both as mean squared error of the
consumer's full output over the sampled positions.
"""

from collections.abc import Mapping

import numpy as np

from pruning_jax.methods import reconstruction


def sampled_contributions(samples: reconstruction.LayerSamples) -> np.ndarray:
  """(N, C) x_hat: each input channel's contribution to the sample's one random output channel."""
  w = samples.flat_kernel()[:, :, samples.out_channel]  # (kh*kw, C, N)
  return np.einsum('nkc,kcn->nc', samples.patches, w, optimize=True)


def greedy_remove(gram: np.ndarray, num_remove: int) -> list[int]:
  """ThiNet's greedy: repeatedly remove the channel that adds least to sum_n (sum_{c removed} x_hat_nc)^2."""
  gram = np.asarray(gram, np.float64)
  c = gram.shape[0]
  removed: list[int] = []
  cross = np.zeros(c)  # sum over removed channels r of gram[r, j]
  available = np.ones(c, bool)
  for _ in range(num_remove):
    cost = np.where(available, 2.0 * cross + np.diag(gram), np.inf)
    j = int(np.argmin(cost))
    removed.append(j)
    available[j] = False
    cross += gram[j]
  return removed


def choose(samples: reconstruction.LayerSamples, num_keep: int) -> tuple[list[int], np.ndarray, dict]:
  x_hat = sampled_contributions(samples).astype(np.float64)
  gram = x_hat.T @ x_hat
  removed = set(greedy_remove(gram, samples.num_channels - num_keep))
  keep = [c for c in range(samples.num_channels) if c not in removed]
  y_hat = x_hat.sum(axis=1)
  scale = reconstruction.solve_least_squares(gram[np.ix_(keep, keep)], x_hat[:, keep].T @ y_hat)
  kernel = samples.kernel[:, :, keep] * scale.astype(np.float32)[None, None, :, None]
  report = {
      'error_selected': reconstruction.output_error(samples, keep),
      'error_rescaled': reconstruction.output_error(samples, keep, kernel),
      'scale_range': [float(scale.min()), float(scale.max())],
  }
  return keep, kernel, report


def prune(model_name_or_family, cfg, variables: Mapping, images: np.ndarray, keep_ratio: float = 0.5, **options):
  """ThiNet on `variables` with sampling `images` (NHWC, the eval transform applied) -> methods.PruneResult.
  options (reconstruction.prune): layers (default: every set read by a conv), keep_widths, per_image, seed,
  between(model, variables, set, index) run after each layer (ThiNet fine-tunes there), num_classes."""
  return reconstruction.prune('thinet', choose, model_name_or_family, cfg, variables, images, keep_ratio, **options)
