"""L1-norm pruning of a small CIFAR-style ResNet on the embedded `digits` (32x32), 2 seeds: the whole pipeline.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_l1.py --workdir=/tmp/pruning_digits_l1
Printed:  accuracy (%) unpruned 93.06 +- 0.39 | pruned 9.31 +- 2.16 | Fine-tuned 89.44 +- 0.39 |
          Scratch-E 86.81 +- 8.05 | Scratch-B 96.11 +- 1.96 (360 test digits; the README "Pruning" has the table)
Time:     9.1 min wall on 2 CPU cores shared at load 6-7 (other engineers' jobs); 3.7 min user CPU

ResNet-8 (option-A shortcuts, one BasicBlock per stage, widths 16/32/64) trained 5 epochs with the CIFAR
recipe scaled down (SGD 0.9, wd 1e-4, batch 64, lr 0.1 / 10 at 50% and 75%, pad-2 crop); L1-norm pruning of the
blocks' inner widths by half (per-stage ratios 0.5, no skipped layer); fine-tune 2 epochs at 0.001 (the
paper's 40 of 160 epochs, scaled); Scratch-E 5 epochs; Scratch-B 5 x MACs ratio (9). Each phase evaluates once,
at its end; the second seed loads the first one's compiled steps from WORKDIR/xla_cache (same shapes).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

DIGITS_MEAN, DIGITS_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def digits_recipe(c, epochs: int = 5):
  """The CIFAR recipe on `digits`, scaled to a few CPU minutes (shared with digits_slimming.py)."""
  c = recipes.cifar_recipe(c, 'digits')
  c.data.train_transforms = ('random_crop(size=32, padding=2)', f'normalize(mean={DIGITS_MEAN}, std={DIGITS_STD})')
  c.data.eval_transforms = (f'normalize(mean={DIGITS_MEAN}, std={DIGITS_STD})',)
  c.eval_batch_size = 120
  c.num_epochs = epochs
  c.finetune.num_epochs = 2
  c.log_every_steps = 50
  c.eval_every_epochs = 1000.0  # longer than any phase: each phase evaluates once, at its end
  c.checkpoint.every_steps = 1000
  c.experiment.seeds = (0, 1)
  return c


def get_config():
  c = digits_recipe(recipes.experiment_config())
  c.model.update(dict(name='resnet_cifar', cfg=(16, 32, 64)))
  c.prune.update(dict(method='l1_norm', scheme=dict(skip=(), ratios=(0.5, 0.5, 0.5))))
  c.experiment.title = 'ResNet-8 -> L1-norm 50% of each block (digits)'
  return c
