"""Unstructured magnitude pruning (Han et al. 2015) on CIFAR-10/100, the paper's Table 6 rows, 5 seeds each.

Command:  python -m pruning_jax.main --config=configs/pruning/magnitude_cifar.py:vgg19_c10_80 --workdir=/ckpt/mag_vgg19
          (ARG: MODEL_DATA_PERCENT: MODEL vgg19 | preresnet164 | densenet40, DATA c10 | c100, PERCENT of the conv
          weights pruned, one of 30, 40, 50, 60, 70, 80, 90, 95; TFDS cifar10 / cifar100 prepared as array_record)
Expected: the paper's Table 6 uses 30% and 80% on CIFAR-10, 30% and 50% on CIFAR-100 (reference sheet section
          4.7; [unverified: check the paper]). Its CIFAR numbers are not in the reference sheet (take them from
          Table 6 of arXiv v2), so `experiment.paper` is empty: the table's paper row shows '-'. The paper's
          headline: on CIFAR Scratch-E / Scratch-B about match fine-tuning, Scratch-B sometimes better.
Time:     not measured: no accelerator was available to this work. Per seed 160 + 40 (fine-tune) + 160 +
          Scratch-B epochs of 781 steps at batch 64; Scratch-B = int(160 x dense MACs / non-zero MACs), e.g. about
          5x (800 epochs) at 80%: the paper's budget rule, uncapped as in cifar_B.py.

Models: the paper's weight-level models are bearpaw's vgg19_bn (conv bias, He fan-in init, BN gamma 1),
PreResNet-110 (bottleneck, 12 blocks a stage) and DenseNet-BC-100; this zoo has not got them yet, so these
configs run the nearest zoo models -- the slimming VGG-19, PreResNet-164 and DenseNet-40 -- and the numbers are
not the paper's rows until those models are added (say so when comparing).

Recipe: the CIFAR protocol (SGD 0.9, wd 1e-4, batch 64, 160 epochs, lr 0.1 / 10 at 50% and 75%); one global
|w| threshold over every conv weight (Linear, BN, biases kept) at int(total x percent), weights strictly above
kept; the mask held exactly through fine-tuning (40 epochs at 0.001) and the scratch runs (updates multiplied by
the mask; its state is checkpointed); Scratch-E / Scratch-B re-draw each conv as Normal(0, sqrt(2 / n)) with
n = nnz / in_channels, masked. The Scratch-B budget counts the non-zero conv weights of the pruned model, after
its mask is applied: the original cifar_B.py computes the ratio before loading the pruned checkpoint (ratio 1,
so its Scratch-B ran Scratch-E's 160 epochs).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

MODELS = {
    'vgg19': ('vgg19', 'VGG-19'),
    'preresnet164': ('preresnet164', 'PreResNet-164'),
    'densenet40': ('densenet40', 'DenseNet-40'),
}
DATA = {'c10': 'cifar10', 'c100': 'cifar100'}
PERCENTS = (30, 40, 50, 60, 70, 80, 90, 95)


def get_config(arg: str = 'vgg19_c10_80'):
  parts = arg.split('_')
  if (
      len(parts) != 3
      or parts[0] not in MODELS
      or parts[1] not in DATA
      or not parts[2].isdigit()
      or int(parts[2]) not in PERCENTS
  ):
    raise ValueError(
        f'experiment {arg!r}: expected MODEL_DATA_PERCENT with MODEL in {", ".join(MODELS)}, DATA c10 | c100, '
        f'PERCENT in {", ".join(map(str, PERCENTS))}'
    )
  model, name = MODELS[parts[0]]
  percent = int(parts[2])
  c = recipes.cifar_recipe(recipes.experiment_config(), DATA[parts[1]])
  c.model.name = model
  c.prune.update(dict(method='magnitude', percent=percent / 100))
  c.experiment.update(
      dict(
          title=f'{name}, unstructured magnitude pruning {percent}% ({DATA[parts[1]].upper()})',
          seeds=(0, 1, 2, 3, 4),
      )
  )
  return c
