"""Regression-based feature reconstruction (He et al. 2017) on a small VGG on the embedded `digits` (32x32), 2 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_regression.py \
            --workdir=/tmp/pruning_digits_regression
Printed:  accuracy (%) unpruned 99.17 +- 0.39 | pruned 99.03 +- 0.59 | Fine-tuned 98.61 +- 0.00 |
          Scratch-E 98.89 +- 0.39 | Scratch-B 99.17 +- 0.39 (360 test digits); params 136.0K -> 53.8K (-60.4%),
          MACs 3.69M -> 1.11M (-70.0%), pruned cfg [8, M, 16, M, 32, M, 32, M, 128]; epochs 5 | 0 | 2 | 5 | 10.
          Scratch-B >= Fine-tuned within the seeds' spread: holds (+0.56, spread 0.39)
          Reconstruction MSE of the next layer's output, seed 0, selected / LASSO-scaled / least squares: conv0
          2.719 / 5.395 / 0.065, conv1 6.396 / 10.75 / 0.199, conv2 14.03 / 25.83 / 0.520, conv3 8.353 / 12.73 / 0.144
Time:     18.9 min wall at load 20-30 (other engineers' jobs on the 2 shared cores), 3 min 36 s CPU time

The 5-conv VGG of digits_thinet.py trained the same way; regression pruning (pruning_jax.methods.regression) keeps
half of each of the four convs read by a conv, layer by layer: 100 training images x 10 random locations each,
the LASSO penalty bisected until exactly half the channels have a non-zero coefficient, then the least-squares
consumer weights that reconstruct the *unpruned* model's outputs (so later layers also absorb earlier layers'
error, the paper's choice); no fine-tuning between layers (the paper fine-tunes once, at the end). Then fine-tune
2 epochs at 0.001; Scratch-E 5 epochs; Scratch-B 5 x MACs ratio, capped at 2x (10 epochs) like the paper's
ImageNet runs.
"""

from core_jax.config import load_sibling

digits_thinet = load_sibling(__file__, 'digits_thinet.py')


def get_config():
  c = digits_thinet.get_config()
  c.prune.update(dict(method='regression', finetune_between=0.0, alternations=1))
  c.experiment.title = 'VGG (5 conv) -> regression-based reconstruction 50% of each conv read by a conv (digits)'
  return c
