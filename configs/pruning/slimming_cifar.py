"""Network Slimming (Liu et al. 2017) on CIFAR-10/100: VGG-19, PreResNet-164, DenseNet-40, 5 seeds each.

Command:  python -m pruning_jax.main --config=configs/pruning/slimming_cifar.py:vgg19_c10_70 --workdir=/ckpt/slim_vgg19
          (ARG: MODEL_DATA_PERCENT, one of vgg19_c10_70, vgg19_c100_50, preresnet164_c10_40, preresnet164_c10_60,
          preresnet164_c100_40, preresnet164_c100_60, densenet40_c10_40, densenet40_c10_60, densenet40_c100_40,
          densenet40_c100_60; TFDS cifar10 / cifar100 prepared as array_record)
Expected: the paper's Table (top-1 %, mean of 5 runs; as quoted in shared/reference/pruning.md section 6.4,
          medium confidence, not yet checked against the arXiv PDF), in `experiment.paper` and the table:
            C10  VGG-19 93.53 | 70%: FT 93.60 E 93.30 B 93.81     C100 VGG-19 72.63 | 50%: 72.32 71.94 73.08
            C10  PreResNet-164 95.04 | 40%: 94.77 94.70 94.90 | 60%: 94.23 94.58 94.71
            C100 PreResNet-164 76.80 | 40%: 76.22 76.36 76.68 | 60%: 74.17 75.05 75.73
            C10  DenseNet-40 94.10 | 40%: 94.00 93.68 94.06 | 60%: 93.87 93.58 93.85
            C100 DenseNet-40 73.82 | 40%: 73.35 73.24 73.19 | 60%: 72.46 72.62 72.91
          The pruned cfgs depend on the trained BN scales, so params / MACs vary per seed (printed per run).
Time:     not measured: no accelerator was available to this work. Per seed 160 (sparsity training) + 40 + 160
          + Scratch-B epochs of 781 steps at batch 64; MACs per image VGG-19 398M, PreResNet-164 247.6M.

Recipe: the CIFAR protocol (SGD 0.9, wd 1e-4, batch 64, 160 epochs, lr 0.1 / 10 at 50% and 75%, pad-4 crop +
flip) with sparsity training s * sign(gamma) on every scored BN scale before weight decay (s = 1e-4 for VGG-19,
1e-5 for PreResNet-164 and DenseNet-40); one global |gamma| threshold at int(total * percent), channels strictly
above kept (a layer that would lose all keeps its strongest channel and the run says so); fine-tune 40 epochs at
0.001; Scratch-E 160; Scratch-B int(160 x MACs ratio), no cap.
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

MODELS = {'vgg19': ('vgg19', 1e-4), 'preresnet164': ('preresnet164', 1e-5), 'densenet40': ('densenet40', 1e-5)}
DATA = {'c10': 'cifar10', 'c100': 'cifar100'}
PAPER = {  # (model, data, percent): (unpruned, fine-tuned, Scratch-E, Scratch-B)
    ('vgg19', 'c10', 70): (93.53, 93.60, 93.30, 93.81),
    ('vgg19', 'c100', 50): (72.63, 72.32, 71.94, 73.08),
    ('preresnet164', 'c10', 40): (95.04, 94.77, 94.70, 94.90),
    ('preresnet164', 'c10', 60): (95.04, 94.23, 94.58, 94.71),
    ('preresnet164', 'c100', 40): (76.80, 76.22, 76.36, 76.68),
    ('preresnet164', 'c100', 60): (76.80, 74.17, 75.05, 75.73),
    ('densenet40', 'c10', 40): (94.10, 94.00, 93.68, 94.06),
    ('densenet40', 'c10', 60): (94.10, 93.87, 93.58, 93.85),
    ('densenet40', 'c100', 40): (73.82, 73.35, 73.24, 73.19),
    ('densenet40', 'c100', 60): (73.82, 72.46, 72.62, 72.91),
}
NAMES = {'vgg19': 'VGG-19', 'preresnet164': 'PreResNet-164', 'densenet40': 'DenseNet-40'}


def _parse(arg: str):
  parts = arg.split('_')
  if (
      len(parts) != 3
      or parts[0] not in MODELS
      or parts[1] not in DATA
      or not parts[2].isdigit()
      or (parts[0], parts[1], int(parts[2])) not in PAPER
  ):
    known = ', '.join(f'{m}_{d}_{p}' for m, d, p in PAPER)
    raise ValueError(f'experiment {arg!r}: expected one of {known}')
  return parts[0], parts[1], int(parts[2])


def get_config(arg: str = 'vgg19_c10_70'):
  model, data, percent = _parse(arg)
  name, s = MODELS[model]
  c = recipes.cifar_recipe(recipes.experiment_config(), DATA[data])
  c.model.name = name
  c.sparsity.s = s
  c.prune.update(dict(method='slimming', percent=percent / 100))
  unpruned, ft, e, b = PAPER[(model, data, percent)]
  c.experiment.update(
      dict(
          title=f'{NAMES[model]}, Network Slimming {percent}% ({DATA[data].upper()})',
          seeds=(0, 1, 2, 3, 4),
          paper=dict(large=unpruned, finetune=ft, scratch_e=e, scratch_b=b),
      )
  )
  return c
