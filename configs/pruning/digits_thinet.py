"""ThiNet on a small VGG on the embedded `digits` (32x32), 2 seeds: the whole pipeline.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_thinet.py --workdir=/tmp/pruning_digits_thinet
Printed:  accuracy (%) unpruned 99.17 +- 0.39 | pruned 97.08 +- 0.20 | Fine-tuned 98.33 +- 0.39 |
          Scratch-E 98.89 +- 0.39 | Scratch-B 99.17 +- 0.39 (360 test digits); params 136.0K -> 53.8K (-60.4%),
          MACs 3.69M -> 1.11M (-70.0%), pruned cfg [8, M, 16, M, 32, M, 32, M, 128]; epochs 5 | 4 (1 after each
          pruned layer) | 2 | 5 | 10. Scratch-B >= Fine-tuned within the seeds' spread: holds (+0.83, spread 0.79)
          Reconstruction MSE of the next layer's output, seed 0, selected -> rescaled: conv0 2.713 -> 2.174, conv1
          5.669 -> 5.076, conv2 11.97 -> 10.24, conv3 5.942 -> 5.940
Time:     37.5 min wall at load 20-30 (other engineers' jobs on the 2 shared cores), 4 min 46 s user CPU

The 5-conv VGG of digits_slimming.py (cfg 16, M, 32, M, 64, M, 64, M, 128; BN gamma 0.5; one Linear) trained 5
epochs with the scaled-down CIFAR recipe of digits_l1.py, no sparsity. ThiNet (pruning_jax.methods.thinet) keeps
half of each of the four convs read by a conv (the last one feeds the classifier), layer by layer: 100 training
images x 10 random locations each (the paper's sampling), greedy selection, least-squares rescaling, then 1 epoch
of fine-tuning at 0.001 before the next layer (ThiNet fine-tunes between layers; prune.finetune_between). Then
fine-tune 2 epochs at 0.001; Scratch-E 5 epochs; Scratch-B 5 x MACs ratio, capped at 2x (10 epochs) like the
paper's ImageNet ThiNet runs.
"""

from core_jax.config import load_sibling

digits_l1 = load_sibling(__file__, 'digits_l1.py')


def get_config():
  c = digits_l1.digits_recipe(digits_l1.recipes.experiment_config())
  c.model.update(dict(name='vgg_slimming', cfg=(16, 'M', 32, 'M', 64, 'M', 64, 'M', 128)))
  c.prune.update(dict(method='thinet', keep_ratio=0.5, sample_images=100, sample_locations=10, finetune_between=1.0))
  c.scratch.budget_cap = 2.0
  c.experiment.title = 'VGG (5 conv) -> ThiNet 50% of each conv read by a conv (digits)'
  return c
