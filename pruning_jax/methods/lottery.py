"""Lottery tickets (Frankle & Carbin 2019) as the paper's section 6 tests them (`cifar/lottery-ticket/*`).

The large model's random initialization is saved before it trains. Pruning finds a mask on the trained weights:
  unstructured  iterative magnitude pruning: each round removes `percent` of the conv weights still kept, by one
                global |w| threshold over them (pruning_jax.methods.magnitude with the previous round's mask); between
                rounds the ticket (the saved init x the round's mask) trains again and the next round prunes those
                weights. After R rounds the conv sparsity is 1 - (1 - percent)^R.
  l1            structured, one shot: the L1-norm scheme's filters (pruning_jax.methods.l1_norm), as a mask in the
                large shape that zeroes every member of a pruned channel -- the filter, its BatchNorm scale and
                bias, and the next conv's input slice (pruning_jax.surgery.channel_mask). This is what the
                original meant to do: its zeroing indexed the weights with a float 0/1 array (which selects
                filters 0 and 1, not the pruned set) and it never zeroed BN, so a "pruned" channel still emitted
                ReLU(beta) (reference sheet section 4.8).
Then two models train under the mask for the large model's epochs, at the same learning rate:
  winning ticket  the saved init x mask (`winning_ticket`), bit for bit the init the large model started from
  random init     a fresh init with each conv re-drawn as Normal(0, sqrt(2 / n)), n = nnz / in_channels, x mask
                  (`random_init`; the sparsity-adjusted std of the weight-level code)
The paper runs all of it at lr 0.1 and at lr 0.01: the table has the four cells (ticket / random x lr).

  check_rounds(rounds), STRUCTURES
  next_mask(structure, model, variables, percent_or_scheme, mask=None)  -> (mask, report) of one round
  winning_ticket(init, mask)         the saved init's variables with the mask applied to params
  random_init(fresh, mask, seed)     the sparsity-adjusted re-init of `fresh` (another draw of the model's init)
"""

from collections.abc import Mapping

import numpy as np

from core_jax.errors import UserError
from pruning_jax import surgery
from pruning_jax.methods import magnitude

STRUCTURES = ('unstructured', 'l1')


def check_rounds(rounds, structure: str = 'unstructured') -> int:
  if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
    raise UserError(f'lottery.rounds must be a whole number of pruning rounds >= 1, got {rounds!r}')
  if structure not in STRUCTURES:
    raise UserError(f'lottery.structure must be one of {", ".join(STRUCTURES)}, got {structure!r}')
  if structure == 'l1' and rounds != 1:
    raise UserError(f'lottery.rounds={rounds}: the structured (l1) lottery prunes once, by its L1-norm scheme')
  return int(rounds)


def next_mask(structure: str, model, variables: Mapping, how, mask=None):
  """(mask, report) of one pruning round on trained `variables`: `how` is the fraction of the remaining conv
  weights to remove (unstructured) or the L1-norm scheme (l1)."""
  if structure == 'unstructured':
    new, report = magnitude.plan(variables['params'], float(how), mask)
    return new, report
  from pruning_jax.methods import l1_norm  # pylint: disable=import-outside-toplevel

  keep = l1_norm.plan(model, variables, how)
  channel_mask = surgery.channel_mask(model, variables, keep)
  kept = {k: len(v) for k, v in keep.items()}
  return channel_mask, {'method': 'l1_norm', 'scheme': how, 'kept': kept}


def _masked(params, mask):
  return magnitude.apply(params, mask)


def winning_ticket(init: Mapping, mask) -> dict:
  """The saved initialization with every masked weight zeroed (BatchNorm statistics as saved)."""
  return dict(init, params=_masked(init['params'], mask))


def random_init(fresh: Mapping, mask, seed: int) -> dict:
  """`fresh` (a new draw of the model's init) with each masked conv re-drawn at the sparsity-adjusted std, then
  every mask applied (the structured mask also zeroes the pruned channels' BN scale / bias)."""
  params = magnitude.sparse_reinit(fresh['params'], mask, seed)
  return dict(fresh, params=_masked(params, mask))
