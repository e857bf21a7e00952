"""Soft filter pruning of a small CIFAR-style ResNet on the embedded `digits` (32x32), 2 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_sfp.py --workdir=/tmp/pruning_digits_sfp
Printed:  (not measured yet)

ResNet-8 of digits_l1.py (option-A shortcuts, one BasicBlock per stage, widths 16/32/64) trained 5 epochs with
SFP's epoch hook (each conv's 30% smallest-L2 filters zeroed after every epoch, still trained) on the scaled-down
CIFAR recipe of digits_l1.py; the prune phase hard-prunes the blocks' inner zero filters; fine-tune 2 epochs at 0.001;
Scratch-E 5 epochs; Scratch-B int(10 x MACs ratio) epochs (SFP's base of 400 is twice its 200 epochs: 2 x 5 here).
"""

from core_jax.config import load_sibling

digits_l1 = load_sibling(__file__, 'digits_l1.py')


def get_config():
  c = digits_l1.digits_recipe(digits_l1.recipes.experiment_config())
  c.model.update(dict(name='resnet_cifar', cfg=(16, 32, 64)))
  c.prune.method = 'sfp'
  c.sfp.keep_rate = 0.7
  c.scratch.base_epochs = 10
  c.experiment.title = 'ResNet-8 -> soft filter pruning, 70% of every conv kept (digits)'
  return c
