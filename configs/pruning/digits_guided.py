"""Guided pruning (paper section 5) of the small VGG of digits_slimming.py on the embedded `digits`, 2 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_guided.py --workdir=/tmp/pruning_digits_guided
          (transfer: python -m pruning_jax.main --config=configs/pruning/digits_guided.py:transfer
          --workdir=/tmp/pruning_digits_guided_t --config.guided.pattern_from=/tmp/pruning_digits_guided: the first
          run's pattern applied to a deeper VGG, 7 convs in the same 5 stages)
Printed:  (Scratch-E | Scratch-B, %, 2 seeds, 360 test digits)
            unpruned 136.0K params 94.72 +- 1.57
            Network Slimming (each run) 30.3K (28.6K-32.0K), 1.42M MACs  98.19 +- 0.98 | 99.03 +- 0.20
            guided (stage ratios 0.688 0.672 0.508 0.383 0.480) 31.3K, 1.46M MACs  98.61 +- 0.79 | 99.58 +- 0.20
            uniform (x0.477, at guided's params) 30.8K, 953.0K MACs  98.75 +- 0.20 | 99.31 +- 0.20
          and: the paper's claim, guided >= uniform at the same params within the seeds' spread: holds (Scratch-E
          -0.14, spread 0.98; Scratch-B +0.28, spread 0.39). The source runs are digits_slimming.py's: its unpruned,
          pruned-cfg and scratch numbers came out the same to the digit.
Time:     8 min 2 s CPU time (49.6 min wall while other jobs kept the load at 20-46; 17 phases, 5 of them compiling
          a new architecture)
Transfer: (:transfer, after the run above) transferred guided 36.8K params, 3.69M MACs 99.17 +- 0.39 | 99.17 +-
          0.39; uniform (x0.494, at its params) 37.2K, 2.21M MACs 99.03 +- 0.20 | 99.31 +- 0.20; the claim holds
          (Scratch-E +0.14, Scratch-B -0.14, spread 0.59); 5 min 23 s CPU time (30.2 min wall at load 24-28)

Unstructured: python -m pruning_jax.main --config=configs/pruning/digits_guided.py:unstructured
          --workdir=/tmp/pruning_digits_guided_u (guided sparsification: each stage's density and 3x3 keep-probability
          map) printed (Scratch-E | Scratch-B, %, 2 seeds):
            unpruned 136.0K params 99.17 +- 0.39
            magnitude pruning 80% (each run) 28.7K non-zero, 1.34M MACs  98.89 +- 1.18 | 99.17 +- 0.39
            guided (stage densities 0.630 0.443 0.288 0.273 0.124, and maps) 28.7K, 1.34M MACs  98.89 +- 0.39 | 99.31
            +- 0.20
            uniform (0.200 of every conv, the same 26,813 conv weights) 28.7K, 738.2K MACs  98.89 +- 0.39 | 99.17 +-
            0.39; the claim holds (Scratch-E +0.00, spread 0.79; Scratch-B +0.14, spread 0.59); 5 min 28 s CPU time
            (10 min 58 s wall at load 4-10, 17 phases). The maps (mean of the 2 runs, rows top to bottom; max std over
            the runs; DIR/kernel_maps.png):
              stage1 (32x32, 3 x 16 channel pairs) 0.67 0.55 0.68 / 0.65 0.59 0.52 / 0.62 0.73 0.66  std 0.103
              stage2 0.45 0.44 0.43 / 0.46 0.43 0.48 / 0.45 0.44 0.42  std 0.058
              stage3 0.30 0.30 0.29 / 0.29 0.28 0.27 / 0.29 0.29 0.29  std 0.028
              stage4 0.27 0.28 0.27 / 0.27 0.27 0.27 / 0.28 0.27 0.27  std 0.011
              stage5 0.11 0.13 0.12 / 0.12 0.15 0.13 / 0.12 0.13 0.11  std 0.008
            nearly flat on digits (no position kept clearly more), stable across the runs where a stage has many
            channel pairs (std 0.01-0.03 from stage 3 on). :unstructured_densities (guided.kernel_maps=False,
            positions uniform) printed before the maps existed: guided 98.89 +- 0.79 | 99.31 +- 0.20, the other rows
            the same; 4 min 59 s CPU time (6 min 5 s wall at load 7-9).
Unstructured transfer: (:unstructured_transfer, after the :unstructured run) its densities and maps on the 7-conv VGG,
          stage k -> stage k (stage 1 and 2 with two convs each): transferred 34.3K non-zero, 3.87M MACs  99.03 +-
          0.20 | 99.31 +- 0.59; uniform (0.222 of every conv, the same 32,349 conv weights) 34.3K, 1.87M MACs  99.17
          +- 0.39 | 99.44 +- 0.00; the claim holds within the spread (Scratch-E -0.14, Scratch-B -0.14, spread
          0.59); the drawn mask's maps equal the source's to 0.01; 4 min 52 s CPU time (9 min 43 s wall at load 5-12)

Per seed the source run of digits_slimming.py (5 epochs with sparsity s = 0.02, one global |gamma| threshold at
50% of the channels: the same large models and pruned cfgs), its pruned architecture trained from scratch; then
the kept width ratio of each of the 5 stages averaged over both runs, applied to the unpruned cfg (guided), and
every width cut by one ratio solved to give the guided model's params (uniform). Each architecture trains from
scratch per seed: Scratch-E 5 epochs, Scratch-B 5 x MACs ratio capped at 2x (10), as digits_slimming.py.
"""

from core_jax.config import load_sibling

digits_slimming = load_sibling(__file__, 'digits_slimming.py')

TRANSFER_CFG = (16, 16, 'M', 32, 32, 'M', 64, 'M', 64, 'M', 128)  # a deeper VGG: stages 1 and 2 get two convs


EXPERIMENTS = ('guided', 'transfer', 'unstructured', 'unstructured_densities', 'unstructured_transfer')


def get_config(arg: str = 'guided'):
  if arg not in EXPERIMENTS:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(EXPERIMENTS)}')
  c = digits_slimming.recipe()
  c.prune.method = 'guided'
  c.experiment.phases = ('large', 'prune', 'scratch_e', 'scratch_b')
  if arg.startswith('unstructured'):
    # guided sparsification: 2 magnitude runs at 80% of the conv weights (the paper's CIFAR-10 ratio), no sparsity
    # training; their per-stage kept fractions and 3x3 keep-probability maps drawn into a new mask (densities only:
    # positions uniform) vs one density everywhere at the same non-zeros
    c.guided.structure = 'unstructured'
    c.sparsity.s = 0.0
    c.prune.percent = 0.8
    c.experiment.title = 'VGG (5 conv), guided sparsification from 2 magnitude 80% runs vs uniform (digits)'
    if arg == 'unstructured_densities':
      c.guided.kernel_maps = False
      c.experiment.title = 'VGG (5 conv), guided sparsification (densities only) from 2 magnitude 80% runs vs uniform'
    elif arg == 'unstructured_transfer':  # the :unstructured run's pattern on the 7-conv VGG, stage k -> stage k
      c.model.cfg = TRANSFER_CFG
      c.guided.pattern_from = '/tmp/pruning_digits_guided_u'
      c.experiment.phases = ('scratch_e', 'scratch_b')
      c.experiment.title = 'VGG (7 conv), transferred guided sparsification from the 5-conv VGG vs uniform (digits)'
  elif arg == 'guided':
    c.experiment.title = 'VGG (5 conv), guided pruning from 2 Network Slimming 50% runs vs uniform (digits)'
  else:
    # no source runs of its own: the pattern of the guided run, transferred, and uniform at its params
    c.model.cfg = TRANSFER_CFG
    c.guided.pattern_from = '/tmp/pruning_digits_guided'
    c.experiment.phases = ('scratch_e', 'scratch_b')
    c.experiment.title = 'VGG (7 conv), transferred guided pruning from the 5-conv VGG vs uniform (digits)'
  return c
