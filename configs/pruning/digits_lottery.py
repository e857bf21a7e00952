"""Lottery tickets (paper section 6) on a small CIFAR-style ResNet on the embedded `digits` (32x32), 1 seed.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_lottery.py --workdir=/tmp/pruning_digits_lottery
          (ARG: unstructured (default) | l1 -- the structured variant, L1-norm 50% of every block, mask mode)
Printed:  not yet measured (the table lands in WORKDIR/results.md)
Time:     not yet measured

ResNet-8 of digits_l1.py; its random init saved, then at lr 0.1 and at lr 0.01 (the scaled-down CIFAR recipe
otherwise, 5 epochs a run): the large model trained from that init; unstructured: 2 rounds of magnitude pruning,
each removing 50% of the remaining conv weights (75% in all), the ticket retrained 5 epochs between the rounds;
l1: the blocks' inner widths halved by L1 norm, as a mask that zeroes the filters with their BN. Then the winning
ticket (the saved init x mask) and a random init (Normal(0, sqrt(2 / n)), n = nnz / in_channels, x mask) each
trained 5 epochs under the mask: the table's four cells.
"""

from core_jax.config import load_sibling

digits_l1 = load_sibling(__file__, 'digits_l1.py')


def get_config(arg: str = 'unstructured'):
  if arg not in ('unstructured', 'l1'):
    raise ValueError(f'experiment {arg!r}: expected unstructured or l1')
  c = digits_l1.digits_recipe(digits_l1.recipes.experiment_config())
  c.model.update(dict(name='resnet_cifar', cfg=(16, 32, 64)))
  c.experiment.seeds = (0,)
  if arg == 'unstructured':
    c.prune.update(dict(method='lottery', percent=0.5))
    c.lottery.update(dict(structure='unstructured', rounds=2, lrs=(0.1, 0.01)))
    c.experiment.title = 'ResNet-8, lottery tickets: 2 rounds of 50% magnitude pruning (digits)'
  else:
    c.prune.update(dict(method='lottery', scheme=dict(skip=(), ratios=(0.5, 0.5, 0.5))))
    c.lottery.update(dict(structure='l1', rounds=1, lrs=(0.1, 0.01)))
    c.experiment.title = 'ResNet-8, lottery tickets: L1-norm 50% of each block, mask (digits)'
  return c
