"""Lottery tickets (Frankle & Carbin 2019) as the paper's section 6 tests them, on CIFAR-10, 5 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/lottery_cifar.py:vgg16_unstructured --workdir=/ckpt/lt
          (ARG: vgg16_unstructured, resnet56_unstructured -- iterative magnitude pruning, 5 rounds of 20% of the
          remaining conv weights (67.2% in all); vgg16_a, resnet56_a, resnet56_b, resnet110_a, resnet110_b -- the
          structured L1-norm schemes in mask mode; TFDS cifar10 prepared as array_record)
Expected: the paper's finding (reference sheet section 4.8, [unverified: check the paper], qualitative; its numbers
          are not in the reference sheet, so `experiment.paper` is empty): at lr 0.1 the winning ticket is no
          better than the random init and both beat the lr-0.01 runs; at lr 0.01 the ticket beats the random init
          (Frankle & Carbin's setting) but stays below lr 0.1; for structured L1 pruning the ticket brings no gain
          at either lr. The table prints both lrs' unpruned / winning ticket / random init and the ticket's lead.
Time:     not measured: no accelerator was available to this work. Per seed and lr: 160 epochs (large) + 160 per
          retraining between rounds (4 for the unstructured runs) + 2 x 160 (ticket, random init), of 781 steps
          at batch 64; x 2 lrs. The structured runs: 3 x 160 epochs per lr.

Models: the unstructured runs in the paper use bearpaw's vgg16_bn and a 6n+2 BasicBlock "ResNet-50" (n = 8, 1x1
projection shortcuts); this zoo has not got those, so these configs use the zoo's L1-norm VGG-16 and ResNet-56
(option-A shortcuts) -- say so when comparing. The structured runs are the paper's models and schemes.
Recipe: the CIFAR protocol (SGD 0.9, wd 1e-4, batch 64, 160 epochs, lr / 10 at 50% and 75%) at initial lr 0.1
and 0.01; the init saved before the large model trains; masks held exactly by the update mask.
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

UNSTRUCTURED = {'vgg16_unstructured': ('vgg16', 'VGG-16'), 'resnet56_unstructured': ('resnet56', 'ResNet-56')}
STRUCTURED = {
    'vgg16_a': ('vgg16', 'VGG-16 -> VGG-16-A'),
    'resnet56_a': ('resnet56', 'ResNet-56 -> ResNet-56-A'),
    'resnet56_b': ('resnet56', 'ResNet-56 -> ResNet-56-B'),
    'resnet110_a': ('resnet110', 'ResNet-110 -> ResNet-110-A'),
    'resnet110_b': ('resnet110', 'ResNet-110 -> ResNet-110-B'),
}


def get_config(arg: str = 'vgg16_unstructured'):
  if arg not in UNSTRUCTURED and arg not in STRUCTURED:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join([*UNSTRUCTURED, *STRUCTURED])}')
  c = recipes.cifar_recipe(recipes.experiment_config(), 'cifar10')
  if arg in UNSTRUCTURED:
    model, name = UNSTRUCTURED[arg]
    c.prune.update(dict(method='lottery', percent=0.2))
    c.lottery.update(dict(structure='unstructured', rounds=5, lrs=(0.1, 0.01)))
    title = f'{name}, lottery tickets: 5 rounds of 20% magnitude pruning (CIFAR-10)'
  else:
    model, name = STRUCTURED[arg]
    c.prune.update(dict(method='lottery', scheme=arg))
    c.lottery.update(dict(structure='l1', rounds=1, lrs=(0.1, 0.01)))
    title = f'{name}, lottery tickets: L1-norm, mask (CIFAR-10)'
  c.model.name = model
  c.experiment.update(dict(title=title, seeds=(0, 1, 2, 3, 4)))
  return c
