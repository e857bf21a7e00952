"""Guided pruning (paper section 5) of the small VGG of digits_slimming.py on the embedded `digits`, 2 seeds.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_guided.py --workdir=/tmp/pruning_digits_guided
          (transfer: python -m pruning_jax.main --config=configs/pruning/digits_guided.py:transfer
          --workdir=/tmp/pruning_digits_guided_t --config.guided.pattern_from=/tmp/pruning_digits_guided: the first
          run's pattern applied to a deeper VGG, 7 convs in the same 5 stages)
Printed:  not measured yet
Time:     not measured yet

Per seed the source run of digits_slimming.py (5 epochs with sparsity s = 0.02, one global |gamma| threshold at
50% of the channels: the same large models and pruned cfgs), its pruned architecture trained from scratch; then
the kept width ratio of each of the 5 stages averaged over both runs, applied to the unpruned cfg (guided), and
every width cut by one ratio solved to give the guided model's params (uniform). Each architecture trains from
scratch per seed: Scratch-E 5 epochs, Scratch-B 5 x MACs ratio capped at 2x (10), as digits_slimming.py.
"""

from core_jax.config import load_sibling

digits_slimming = load_sibling(__file__, 'digits_slimming.py')

TRANSFER_CFG = (16, 16, 'M', 32, 32, 'M', 64, 'M', 64, 'M', 128)  # a deeper VGG: stages 1 and 2 get two convs


def get_config(arg: str = 'guided'):
  if arg not in ('guided', 'transfer'):
    raise ValueError(f'experiment {arg!r}: expected guided or transfer')
  c = digits_slimming.get_config()
  c.prune.method = 'guided'
  c.experiment.phases = ('large', 'prune', 'scratch_e', 'scratch_b')
  if arg == 'guided':
    c.experiment.title = 'VGG (5 conv), guided pruning from 2 Network Slimming 50% runs vs uniform (digits)'
  else:
    # no source runs of its own: the pattern of the guided run, transferred, and uniform at its params
    c.model.cfg = TRANSFER_CFG
    c.guided.pattern_from = '/tmp/pruning_digits_guided'
    c.experiment.phases = ('scratch_e', 'scratch_b')
    c.experiment.title = 'VGG (7 conv), transferred guided pruning from the 5-conv VGG vs uniform (digits)'
  return c
