"""Sparse Structure Selection on a small CIFAR-style ResNet on the embedded `digits` (32x32), 2 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_sss.py --workdir=/tmp/pruning_digits_sss
Printed:  accuracy (%) unpruned 96.94 +- 0.79 | pruned 96.94 +- 0.79 | Fine-tuned 96.94 +- 0.79 |
          Scratch-E 97.50 +- 0.79 | Scratch-B 98.06 +- 0.00; both seeds removed layer1_0 (depth 12; seed 0 had both
          stage-1 factors at 0 and kept layer1_1, its strongest, with a warning): 84.7K of 87.0K params, 11.06M of
          13.42M MACs (-17.6%), Scratch-B 6 epochs (the README "Pruning" has the table)
Time:     5 min 13 s CPU time (about 30 min wall on the 2 shared cores at load 10-30; seed 0's large and prune
          phases ran first, in 6 min 31 s, the rest resumed after them in 23 min 20 s)

ResNet-14 (option-A shortcuts, two BasicBlocks per stage, inner widths 8/8/16/16/32/32) trained 5 epochs with the
scaled-down CIFAR recipe of digits_l1.py, every residual branch scaled by a factor that the proximal gradient
step (pruning_jax.methods.sss: APG with NAG momentum 0.9, soft threshold lr x gamma) drives to exactly 0 when
the block is not needed; the blocks at 0 are removed (their shortcut stays), the other factors folded into the
branches' last BatchNorm; fine-tune 2 epochs at 0.001; Scratch-E 5 epochs; Scratch-B 5 x the MACs ratio.
"""

from core_jax.config import load_sibling

digits_l1 = load_sibling(__file__, 'digits_l1.py')


def get_config():
  c = digits_l1.digits_recipe(digits_l1.recipes.experiment_config())
  c.model.update(dict(name='resnet_cifar', cfg=(8, 8, 16, 16, 32, 32)))
  c.prune.update(dict(method='sss'))
  c.sss.update(dict(gamma=0.05, momentum=0.9))  # 0.02 and 0.035 removed no block of seed 0 in 5 epochs
  c.experiment.title = 'ResNet-14 -> Sparse Structure Selection of residual blocks (digits)'
  return c
