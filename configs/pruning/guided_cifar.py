"""Guided and transferred guided pruning (the paper's section 5) on CIFAR: VGG-16 / CIFAR-10, VGG-19 / CIFAR-100.

Command:  python -m pruning_jax.main --config=configs/pruning/guided_cifar.py:vgg16_c10_60
            --workdir=/ckpt/guided_vgg16_c10_60
          python -m pruning_jax.main --config=configs/pruning/guided_cifar.py:vgg19_c100_60_transferred
            --workdir=/ckpt/guided_vgg19_c100_60 [--config.guided.pattern_from=/ckpt/guided_vgg16_c10_60]
          (ARG: vgg16_c10_P, vgg19_c100_P (guided from the experiment's own Network Slimming runs at P%) or
          vgg19_c100_P_transferred (the same, plus VGG-16 / CIFAR-10's pattern at P% transferred: its
          guided.pattern_from defaults to /ckpt/guided_vgg16_c10_P, the workdir of the first command), P a whole
          percent in 10-90; --config.guided.runs_from="('/ckpt/slim_vgg19',)" adds the seed*/prune runs of
          finished slimming_cifar.py experiments to the average; TFDS cifar10 / cifar100 as array_record)
Expected: the paper's figures, not tables (reference sheet section 7, [unverified: check the paper], qualitative;
          no numbers there, so `experiment.paper` is empty): Network Slimming's VGG architectures trained from
          scratch reach the accuracy of uniformly pruned ones (every layer cut by the same ratio) with far fewer
          parameters (about 5x at equal accuracy, VGG-16 / CIFAR-10); the guided architecture (per-stage ratios
          averaged over the 5 runs) matches the pruned ones and beats uniform at the same params; the pattern of
          VGG-16 / CIFAR-10 transferred to VGG-19 / CIFAR-100 stays close to VGG-19's own and above uniform. The
          table prints each architecture's params, MACs, Scratch-E and Scratch-B, and whether guided (and
          transferred) >= uniform within the seeds' spread. The per-layer VGG-16 60% pattern of the paper's table
          (conv1 ~40 of 64, conv2-7 almost untouched, conv8-13 cut hardest) is printed as stage ratios.
Time:     not measured: no accelerator was available to this work. Per seed: 160 epochs of sparsity training,
          Scratch-E (160) and Scratch-B (160 x MACs ratio) of the run's own architecture and of each of the 2-3
          built ones, 781 steps an epoch at batch 64; VGG-16 313.5M / VGG-19 398M MACs per image unpruned.

Unstructured (guided sparsification, ARG with _unstructured after P; the paper's section 5 for magnitude pruning):
          python -m pruning_jax.main --config=configs/pruning/guided_cifar.py:vgg16_c10_80_unstructured
            --workdir=/ckpt/guided_vgg16_c10_80_unstructured
          python -m pruning_jax.main --config=configs/pruning/guided_cifar.py:vgg19_c100_80_unstructured_transferred
            --workdir=/ckpt/guided_vgg19_c100_80_unstructured  (pattern_from: the first one's workdir)
          5 seeds of VGG trained normally (s = 0), P% of the conv weights pruned by one global magnitude threshold;
          per stage (one feature-map size) the kept fraction and the average 3x3 keep-probability map over the 5
          runs (printed with their std over runs: the paper's figure shows them stable and consistent across runs,
          qualitatively, reference sheet section 7 [unverified: check the paper]); guided: a mask drawn
          with those densities and maps, trained from scratch; uniform: P% of every conv at the same non-zeros;
          transferred: VGG-16 / CIFAR-10's maps and densities on VGG-19 / CIFAR-100, stage k -> stage k. The
          paper shows guided and transferred guided sparsification as efficient as the pruned sparse models and
          better than uniform (figures, no table: not measured here, no accelerator was available to this work).

Recipe: the CIFAR protocol of slimming_cifar.py (SGD 0.9, wd 1e-4, batch 64, 160 epochs, lr / 10 at 50% and 75%,
pad-4 crop + flip), s = 1e-4 for both VGGs (the paper's VGG value), 5 seeds; the slimming VGG (one Linear head).
Stages map by position (the k-th group of convs sharing a feature-map size): VGG-16's 5 stages onto VGG-19's,
whose extra conv in stages 3-5 takes its stage's ratio (pruning_jax.methods.guided).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

NETWORKS = {'vgg16_c10': ('vgg16_slimming', 'cifar10', 'VGG-16'), 'vgg19_c100': ('vgg19', 'cifar100', 'VGG-19')}


def _parse(arg: str):
  rest = arg.removesuffix('_transferred')
  transferred = rest != arg
  unstructured = rest.endswith('_unstructured')
  network, _, percent = rest.removesuffix('_unstructured').rpartition('_')
  if (
      network not in NETWORKS
      or not percent.isdigit()
      or not 10 <= int(percent) <= 90
      or (transferred and network != 'vgg19_c100')
  ):
    raise ValueError(
        f'experiment {arg!r}: expected vgg16_c10_P, vgg19_c100_P or vgg19_c100_P_transferred, each optionally with '
        '_unstructured after P (P: a percent in 10-90)'
    )
  return network, int(percent), transferred, unstructured


def get_config(arg: str = 'vgg16_c10_60'):
  network, percent, transferred, unstructured = _parse(arg)
  model, data, name = NETWORKS[network]
  c = recipes.cifar_recipe(recipes.experiment_config(), data)
  c.model.name = model
  c.sparsity.s = 1e-4
  c.prune.update(dict(method='guided', percent=percent / 100))
  c.experiment.phases = ('large', 'prune', 'scratch_e', 'scratch_b')
  title = f'{name}, guided pruning from 5 Network Slimming {percent}% runs vs uniform ({data.upper()})'
  if unstructured:  # guided sparsification: magnitude runs of normally trained networks (no sparsity training)
    c.guided.structure = 'unstructured'
    c.sparsity.s = 0.0
    title = f'{name}, guided sparsification from 5 magnitude {percent}% runs vs uniform ({data.upper()})'
  if transferred:
    kind = 'sparsification' if unstructured else 'pruning'
    c.guided.pattern_from = f'/ckpt/guided_vgg16_c10_{percent}{"_unstructured" if unstructured else ""}'
    title = f'{name}, guided and transferred guided (VGG-16 / CIFAR10 {percent}%) {kind} vs uniform ({data.upper()})'
  c.experiment.update(dict(title=title, seeds=(0, 1, 2, 3, 4)))
  return c
