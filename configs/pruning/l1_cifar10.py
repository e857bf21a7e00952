"""L1-norm filter pruning (Li et al. 2017) on CIFAR-10: VGG-16-A, ResNet-56-A/B, ResNet-110-A/B, 5 seeds each.

Command:  python -m pruning_jax.main --config=configs/pruning/l1_cifar10.py:resnet56_b --workdir=/ckpt/l1_resnet56_b
          (ARG: vgg16_a, resnet56_a, resnet56_b, resnet110_a, resnet110_b; TFDS cifar10 prepared as array_record,
          --config.data.data_dir=DIR if not in ~/tensorflow_datasets; --config.experiment.seeds=(0,) for one run)
Expected: the paper's Table (CIFAR-10 top-1 %, mean +- std over 5 runs; as quoted in shared/reference/pruning.md
          section 6.1, not yet checked against the arXiv PDF), in `experiment.paper` and the printed table:
            VGG-16      93.63 +- 0.16 | VGG-16-A     FT 93.41 +- 0.12  E 93.62 +- 0.11  B 93.78 +- 0.15
            ResNet-56   93.14 +- 0.12 | ResNet-56-A  FT 92.97 +- 0.17  E 92.96 +- 0.26  B 93.09 +- 0.14
                                      | ResNet-56-B  FT 92.67 +- 0.14  E 92.54 +- 0.19  B 93.05 +- 0.18
            ResNet-110  93.14 +- 0.24 | ResNet-110-A FT 93.14 +- 0.16  E 93.25 +- 0.29  B 93.22 +- 0.22
                                      | ResNet-110-B FT 92.69 +- 0.09  E 92.89 +- 0.43  B 93.60 +- 0.25
          params / MACs pruned: VGG-16-A 64.0% / 34.2%, ResNet-56-A 9.3% / 10.4%, -B 13.8% / 27.6%,
          ResNet-110-A 2.3% / 15.9%, -B 32.4% / 38.7%; Scratch-B epochs 243, 178, 220, 190, 260.
Time:     not measured: no accelerator was available to this work. Per seed the run is 160 (large) + 40
          (fine-tune) + 160 (Scratch-E) + Scratch-B epochs of 781 steps at batch 64, i.e. 4.4-4.9x one baseline
          training; the cost of an epoch scales with the model's MACs (VGG-16 313.5M, ResNet-56 125.5M,
          ResNet-110 252.9M per image).

Recipe (reference sheet section 5): SGD momentum 0.9, wd 1e-4 on every parameter, batch 64, 160 epochs at lr 0.1
divided by 10 at epochs 80 and 120; pad-4 crop + flip; fine-tune 40 epochs at a constant 0.001; Scratch-E 160
epochs, Scratch-B int(160 x MACs ratio) with the decays at int(0.5 E), int(0.75 E). Our epochs have 781 steps
(the last partial batch of 16 is dropped; the original runs 782).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

EXPERIMENTS = {
    # arg: (large model, L1 scheme, title, paper numbers)
    'vgg16_a': (
        'vgg16',
        'vgg16_a',
        'VGG-16 -> VGG-16-A (L1-norm, CIFAR-10)',
        dict(large='93.63 ± 0.16', finetune='93.41 ± 0.12', scratch_e='93.62 ± 0.11', scratch_b='93.78 ± 0.15'),
    ),
    'resnet56_a': (
        'resnet56',
        'resnet56_a',
        'ResNet-56 -> ResNet-56-A (L1-norm, CIFAR-10)',
        dict(large='93.14 ± 0.12', finetune='92.97 ± 0.17', scratch_e='92.96 ± 0.26', scratch_b='93.09 ± 0.14'),
    ),
    'resnet56_b': (
        'resnet56',
        'resnet56_b',
        'ResNet-56 -> ResNet-56-B (L1-norm, CIFAR-10)',
        dict(large='93.14 ± 0.12', finetune='92.67 ± 0.14', scratch_e='92.54 ± 0.19', scratch_b='93.05 ± 0.18'),
    ),
    'resnet110_a': (
        'resnet110',
        'resnet110_a',
        'ResNet-110 -> ResNet-110-A (L1-norm, CIFAR-10)',
        dict(large='93.14 ± 0.24', finetune='93.14 ± 0.16', scratch_e='93.25 ± 0.29', scratch_b='93.22 ± 0.22'),
    ),
    'resnet110_b': (
        'resnet110',
        'resnet110_b',
        'ResNet-110 -> ResNet-110-B (L1-norm, CIFAR-10)',
        dict(large='93.14 ± 0.24', finetune='92.69 ± 0.09', scratch_e='92.89 ± 0.43', scratch_b='93.60 ± 0.25'),
    ),
}


def get_config(arg: str = 'vgg16_a'):
  if arg not in EXPERIMENTS:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(EXPERIMENTS)}')
  model, scheme, title, paper = EXPERIMENTS[arg]
  c = recipes.cifar_recipe(recipes.experiment_config(), 'cifar10')
  c.model.name = model
  c.prune.update(dict(method='l1_norm', scheme=scheme))
  c.experiment.update(dict(title=title, seeds=(0, 1, 2, 3, 4), paper=paper))
  return c
