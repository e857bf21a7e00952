"""The Scratch-E / Scratch-B training budgets, in one place.

Scratch-E trains the pruned architecture for the large model's epochs. Scratch-B trains it for the same total
computation: epochs = int(base_epochs * MACs_large / MACs_pruned) (the paper's code: `main_B.py`), with the lr
decay points at the same fractions of the run (CIFAR: int(0.5 E), int(0.75 E); ImageNet: every E / 3). On
ImageNet the L1-norm, ThiNet and regression-pruning scripts cap the extension at 2x (180 epochs, step 60):
pass cap=2.0 there (the ImageNet slimming and weight-level scripts have no cap). MACs are conv + Linear
multiply-accumulates of one image (`core_jax.counting`); for unstructured pruning pass non-zero-weight MACs.
"""

import dataclasses

from core_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Budget:
  epochs: int
  ratio: float  # MACs_large / MACs_pruned
  capped: bool


def scratch_b(base_epochs: int, macs_large: int, macs_pruned: int, cap: float | None = None) -> Budget:
  """Scratch-B epochs for a pruned model: int(base * ratio), or int(base * cap) when ratio >= cap."""
  if macs_pruned <= 0 or macs_large <= 0:
    raise UserError(f'MACs must be positive to scale the budget (large {macs_large}, pruned {macs_pruned})')
  ratio = macs_large / macs_pruned
  if cap is not None and ratio >= cap:
    return Budget(int(base_epochs * cap), ratio, True)
  return Budget(int(base_epochs * ratio), ratio, False)


def scratch_e(base_epochs: int) -> Budget:
  return Budget(int(base_epochs), 1.0, False)


def scratch_b_epochs(base_epochs: int, macs_large: int, macs_pruned: int, cap: float | None = None) -> int:
  return scratch_b(base_epochs, macs_large, macs_pruned, cap).epochs


def scratch_b_of_experiment(config, prune_results: dict) -> Budget:
  """Scratch-B of a pruning experiment's config (num_epochs, scratch.budget_cap; a cap <= 0 is none) and its prune
  phase's results (macs_large, macs); the base is scratch.base_epochs when > 0, else num_epochs."""
  cap = float(config.scratch.get('budget_cap', 0.0) or 0.0)
  base = int(config.scratch.get('base_epochs', 0) or 0) or int(config.num_epochs)  # SFP: 400 (baseline + SFP run)
  return scratch_b(base, int(prune_results['macs_large']), int(prune_results['macs']), cap=cap if cap > 0 else None)
