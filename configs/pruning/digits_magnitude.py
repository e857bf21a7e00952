"""Unstructured magnitude pruning of a small CIFAR-style ResNet on the embedded `digits` (32x32), 2 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_magnitude.py --workdir=/tmp/pruning_digits_mag
Printed:  not yet measured (the table lands in WORKDIR/results.md; the README "Pruning" has it once measured)
Time:     not yet measured

ResNet-8 of digits_l1.py (option-A shortcuts, one BasicBlock per stage, widths 16/32/64) trained 5 epochs with
the scaled-down CIFAR recipe; one global magnitude threshold over every conv weight at 80% (Linear, BN and
biases kept), the mask held exactly through fine-tuning (2 epochs at 0.001) and the scratch runs; Scratch-E /
Scratch-B re-draw each conv as Normal(0, sqrt(2 / n)), n = nnz / in_channels, under the mask; Scratch-B 5 x the
ratio of dense to non-zero MACs (about 4.3 here), capped at 2x (10 epochs) so the demo stays short.
"""

from core_jax.config import load_sibling

digits_l1 = load_sibling(__file__, 'digits_l1.py')


def get_config():
  c = digits_l1.digits_recipe(digits_l1.recipes.experiment_config())
  c.model.update(dict(name='resnet_cifar', cfg=(16, 32, 64)))
  c.prune.update(dict(method='magnitude', percent=0.8))
  c.scratch.budget_cap = 2.0
  c.experiment.title = 'ResNet-8 -> unstructured magnitude pruning 80% of the conv weights (digits)'
  return c
