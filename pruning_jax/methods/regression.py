"""Regression-based feature reconstruction (He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural
Networks", ICCV 2017): LASSO channel selection, then least-squares reconstruction.

For the channel set of layer i and its consumer (layer i + 1, kernel W), the consumer's output at a sampled
position is Y = sum_c Z_c with Z_c = X_c W_c (X_c: channel c's input patch). The target Y is the *unpruned*
model's output while X comes from the model pruned so far (the paper's choice: later layers also absorb the
error of earlier ones). Channel selection solves
  min_beta (1 / 2N) ||Y - sum_c beta_c Z_c||_F^2 + lambda ||beta||_1
by coordinate descent on its Gram form (G_cd = <Z_c, Z_d> / N, g_c = <Z_c, Y> / N, never forming Z), and the
penalty lambda is found by bisection between 0 and max|g| until exactly C' coefficients are non-zero. The kept
channels' consumer weights are then the least-squares fit W' = argmin ||Y - X_S W'||^2.

`alternations` > 1 runs the paper's alternating scheme: rounds of (LASSO to the round's width, least squares for
the kept weights), the widths going geometrically from C down to C', each round's LASSO on the previous
round's refitted weights; 1 (the default) is one LASSO then one least squares, as the paper's practical
setting does.

A LASSO cannot keep a channel whose Z_c is zero on every sample (it never lowers the error): asking for more
channels than the non-zero ones is a one-line error. When the count jumps over C' at one lambda (ties), the
largest |beta| of the denser solution decide, and the report says so.

  lasso(gram, rhs, penalty, start=None)    coordinate descent; the coefficients
  select(gram, rhs, num_keep, name)        (kept positions, beta, penalty, tie_broken)
  choose(samples, num_keep, alternations=1) (kept positions, consumer kernel, report) of one layer
  prune(model_name_or_family, cfg, variables, images, keep_ratio, ...)  -> methods.PruneResult
"""

from collections.abc import Mapping

import numpy as np

from core_jax.errors import UserError
from pruning_jax.methods import reconstruction

ACTIVE_TOLERANCE = 1e-10  # a channel whose |Z_c|^2 is below this fraction of the largest contributes nothing
BISECTION_STEPS = 60


def contribution_gram(samples: reconstruction.LayerSamples) -> tuple[np.ndarray, np.ndarray]:
  """(G, g): G_cd = sum_{n, o} Z_nco Z_ndo / N and g_c = sum_{n, o} Z_nco Y_no / N, Z_nco = sum_k P_nkc W_kco,
  over chunks of samples whose Z stays near 2**24 entries (VGG-16's 512 x 512 layers: 64 samples at a time)."""
  w = samples.flat_kernel()
  c = samples.num_channels
  chunk = max(1, 2**24 // (c * w.shape[-1]))
  gram, rhs = np.zeros((c, c)), np.zeros(c)
  n = samples.patches.shape[0]
  for s in range(0, n, chunk):
    z = np.einsum('nkc,kco->nco', samples.patches[s : s + chunk], w, optimize=True).astype(np.float64)
    gram += np.einsum('nco,ndo->cd', z, z, optimize=True)
    rhs += np.einsum('nco,no->c', z, samples.target[s : s + chunk], optimize=True)
  return gram / n, rhs / n


def lasso(gram: np.ndarray, rhs: np.ndarray, penalty: float, start=None, max_sweeps: int = 500, tol: float = 1e-7):
  """argmin_beta 0.5 beta^T G beta - g^T beta + penalty ||beta||_1 by cyclic coordinate descent."""
  c = gram.shape[0]
  beta = np.ones(c) if start is None else np.array(start, np.float64)
  diag = np.diag(gram)
  for _ in range(max_sweeps):
    biggest = 0.0
    for j in range(c):
      if diag[j] <= 0.0:
        beta[j] = 0.0
        continue
      rho = rhs[j] - gram[j] @ beta + diag[j] * beta[j]
      new = np.sign(rho) * max(abs(rho) - penalty, 0.0) / diag[j]
      biggest = max(biggest, abs(new - beta[j]))
      beta[j] = new
    if biggest <= tol * max(1.0, float(np.max(np.abs(beta)))):
      break
  return beta


def select(gram: np.ndarray, rhs: np.ndarray, num_keep: int, name: str = 'this layer'):
  """(kept positions, beta, penalty, tie_broken): the LASSO with exactly num_keep non-zero coefficients."""
  diag = np.diag(gram)
  active = int(np.sum(diag > ACTIVE_TOLERANCE * max(float(diag.max()), 1e-300)))
  if num_keep > active:
    raise UserError(
        f'LASSO cannot keep {num_keep} channels of {name}: only {active} of {len(diag)} contribute to its '
        f"consumer's output on the sampled activations (ask for at most {active})"
    )
  lo, hi = 0.0, float(np.max(np.abs(rhs)))  # at hi every coefficient is 0
  beta_lo = lasso(gram, rhs, lo)
  beta, penalty = beta_lo, lo
  for _ in range(BISECTION_STEPS if np.count_nonzero(beta_lo) > num_keep else 0):
    mid = 0.5 * (lo + hi)
    b = lasso(gram, rhs, mid, start=beta_lo)
    nnz = int(np.count_nonzero(b))
    if nnz == num_keep:
      beta, penalty = b, mid
      break
    if nnz > num_keep:
      lo, beta_lo = mid, b
    else:
      hi = mid
  else:  # no penalty gives exactly num_keep (or none was needed): the densest solution above it
    beta, penalty = beta_lo, lo
  tie_broken = int(np.count_nonzero(beta)) != num_keep
  keep = sorted(np.argsort(-np.abs(beta), kind='stable')[:num_keep].tolist())
  return keep, beta, penalty, tie_broken


def _round_widths(width: int, num_keep: int, alternations: int) -> list[int]:
  ws = [int(round(width * (num_keep / width) ** ((r + 1) / alternations))) for r in range(alternations)]
  ws[-1] = num_keep
  return [max(w, num_keep) for w in ws]


def choose(
    samples: reconstruction.LayerSamples, num_keep: int, alternations: int = 1
) -> tuple[list[int], np.ndarray, dict]:
  if alternations < 1:
    raise UserError(f'LASSO / least-squares alternations must be >= 1, got {alternations}')
  keep = list(range(samples.num_channels))
  current = samples
  penalties, ties = [], False
  for width in _round_widths(samples.num_channels, num_keep, alternations):
    gram, rhs = contribution_gram(current)
    chosen, beta, penalty, tie = select(gram, rhs, width, samples.set_name)
    penalties.append(penalty)
    ties |= tie
    keep = [keep[i] for i in chosen]
    kernel = reconstruction.refit_kernel(samples, keep)
    current = reconstruction.LayerSamples(
        samples.set_name, samples.consumer, samples.patches[:, :, keep], kernel, samples.target, samples.out_channel
    )
  lasso_kernel = samples.kernel[:, :, keep] * beta[np.asarray(chosen)].astype(np.float32)[None, None, :, None]
  report = {
      'penalty': penalties[-1],
      'penalties': penalties,
      'tie_broken': ties,
      'error_selected': reconstruction.output_error(samples, keep),
      'error_lasso': reconstruction.output_error(samples, keep, lasso_kernel) if alternations == 1 else None,
      'error_reconstructed': reconstruction.output_error(samples, keep, kernel),
  }
  return keep, kernel, report


def prune(
    model_name_or_family,
    cfg,
    variables: Mapping,
    images: np.ndarray,
    keep_ratio: float = 0.5,
    alternations=1,
    **options,
):
  """Regression-based pruning of `variables` with sampling `images` (NHWC, the eval transform applied),
  reconstructing the unpruned model's consumer outputs -> methods.PruneResult. options (reconstruction.prune):
  layers (default: every set read by a conv), keep_widths, per_image, seed, between, num_classes."""
  if isinstance(alternations, bool) or not isinstance(alternations, int) or alternations < 1:
    raise UserError(f'LASSO / least-squares alternations must be an int >= 1, got {alternations!r}')
  return reconstruction.prune(
      'regression',
      lambda samples, n: choose(samples, n, alternations),
      model_name_or_family,
      cfg,
      variables,
      images,
      keep_ratio,
      target_from_reference=True,
      report={'alternations': alternations},
      **options,
  )
