"""Soft filter pruning on CIFAR-10 (the paper's appendix): ResNet-20 / 32 / 56 / 110, 30% of every conv's filters.

Command:  python -m pruning_jax.main --config=configs/pruning/sfp_cifar.py:resnet56 --workdir=/ckpt/sfp_r56 \
            [--config.init_from=BASELINE --config.optimizer.lr=0.001]
          (ARG: resnet20, resnet32, resnet56, resnet110. The README of the paper's code runs SFP from a trained
          baseline at base lr 0.001: pass the baseline as init_from and that lr, and the large phase trains SFP from it;
          without it SFP trains from scratch at base lr 0.01, the SFP paper's own setting.)
Expected: the appendix's table (reference sheet section 6.7: take the numbers from the paper; not copied here, as
          they are unverified there). Scratch-B int(400 x MACs ratio) epochs.
Time:     not measured: no accelerator was available to this work. Per run 200 (SFP) + 200 (Scratch-E) +
          int(400 x ratio) (Scratch-B) epochs of 391 steps at batch 128.

Recipe (`cifar/soft-filter-pruning`, from he-y/soft-filter-pruning): Nesterov SGD 0.9, wd 5e-4, batch 128, 200 epochs;
lr 0.01 x 10 at epoch 1, then x 0.2 at epochs 60, 120 and 160 (`--schedule 1 60 120 160 --gammas 10 0.2 0.2 0.2`);
after every epoch each conv keeps its 70% largest-L2 filters (`--rate 0.7 --epoch_prune 1`), the rest zeroed and
still trained; hard pruning at the end (pruning_jax.methods.sfp). Scratch-E 200 epochs; Scratch-B int(400 x MACs
ratio) with the milestones at the same fractions. No fine-tune phase: the SFP run is the pruned model's training.
The original's scratch runs mask the zero filters in the large shape; here the hard-pruned model trains (the zero
filters on the residual stream, which the surgery cannot cut, train as ordinary filters).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

DEPTHS = ('resnet20', 'resnet32', 'resnet56', 'resnet110')


def sfp_recipe(c):
  """SFP's CIFAR schedule on the paper's CIFAR recipe: batch 128, Nesterov, wd 5e-4, lr 0.01 / x10 / x0.2 x3."""
  c.batch_size, c.num_epochs = 128, 200
  c.optimizer.update(
      dict(lr=0.01, nesterov=True, weight_decay=5e-4, decay_fractions=(), decay_epochs=(1, 60, 120, 160))
  )
  c.optimizer.decay_factors = (10.0, 0.2, 0.2, 0.2)
  c.prune.method = 'sfp'
  c.sfp.keep_rate = 0.7
  c.scratch.base_epochs = 400
  c.experiment.phases = ('large', 'prune', 'scratch_e', 'scratch_b')
  return c


def get_config(arg: str = 'resnet56'):
  if arg not in DEPTHS:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(DEPTHS)}')
  c = sfp_recipe(recipes.cifar_recipe(recipes.experiment_config(), 'cifar10'))
  c.model.name = arg
  c.experiment.title = f'ResNet-{arg[6:]} -> soft filter pruning, 70% of every conv kept (CIFAR-10)'
  c.experiment.seeds = (0, 1, 2, 3, 4)  # CIFAR: the mean of 5 runs
  return c
