"""Network Slimming of a small VGG on the embedded `digits` (32x32), 2 seeds: the whole pipeline.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_slimming.py --workdir=/tmp/pruning_digits_slim
Printed:  accuracy (%) unpruned 94.72 +- 1.57 | pruned 84.86 +- 8.05 | Fine-tuned 94.31 +- 0.98 |
          Scratch-E 98.19 +- 0.98 | Scratch-B 99.03 +- 0.20 (360 test digits; the README "Pruning" has the table)
Time:     2 min 34 s wall, 2 min 4 s CPU time in `make demo` on a fresh clone at 3f441db, the idle 2-core CPU shared
          with the demo's two other jobs (side by side); 109 s wall alone on an idle 2-core CPU in an earlier run. At
          75bbebd (fine-tune, Scratch-E and Scratch-B of a seed share one compiled train step: 3 train-step compiles
          instead of 7) 2 min 11 s CPU time in `make demo` at load 9-11, 2 min 31 s before it back to back
Also printed: the paper's claim, Scratch-B >= Fine-tuned within the seeds' spread: holds (+4.72 points, spread 1.18)

A 5-conv VGG with the slimming head (cfg 16, M, 32, M, 64, M, 64, M, 128; BN gamma 0.5; one Linear) trained 5
epochs with sparsity s = 0.02 on every BN scale and the scaled-down CIFAR recipe of digits_l1.py. The paper's
1e-4 (VGG-19) acts over 160 epochs of 782 steps; over this run's 110 steps it would leave the scales near their
0.5 init (measured at 6 epochs: at 1e-3 even a 30% cut takes the model to chance), and 0.04 already leaves the
large model near chance. One global |gamma| threshold at 50% of the channels; fine-tune 2 epochs at 0.001;
Scratch-E 5 epochs; Scratch-B 5 x MACs ratio, capped at 2x (10 epochs) like the paper's ImageNet runs, so the
demo stays short. The pruned cfg depends on the trained scales, so it can differ between the seeds.
"""

from core_jax.config import load_sibling

digits_l1 = load_sibling(__file__, 'digits_l1.py')


def get_config():
  c = digits_l1.digits_recipe(digits_l1.recipes.experiment_config())
  c.model.update(dict(name='vgg_slimming', cfg=(16, 'M', 32, 'M', 64, 'M', 64, 'M', 128)))
  c.sparsity.s = 0.02
  c.prune.update(dict(method='slimming', percent=0.5))
  c.scratch.budget_cap = 2.0
  c.experiment.title = 'VGG (5 conv) -> Network Slimming 50% (digits)'
  return c
