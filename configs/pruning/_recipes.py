"""The pruning experiments' shared config pieces: the experiment groups and the paper's CIFAR / ImageNet recipes.

Not a config itself (the leading underscore keeps it out of `--help`'s list): the configs of this folder load it
with `core_jax.config.load_sibling(__file__, '_recipes.py')` and build on `experiment_config()`:

  recipes = load_sibling(__file__, '_recipes.py')
  c = recipes.cifar_recipe(recipes.experiment_config(), 'cifar10')
"""

import ml_collections

from core_jax import config as core_config
from pruning_jax import job

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def experiment_config():
  """core_jax.config.base_config plus the pruning groups, with neutral defaults (the configs set them)."""
  c = core_config.base_config()
  c.model.update(dict(name='', cfg=None, selections=None, num_classes=None, widths=None, block_scale=False))
  c.sparsity = ml_collections.ConfigDict(dict(s=0.0))
  c.mask = ml_collections.ConfigDict(dict(path=''))
  c.prune = ml_collections.ConfigDict(
      dict(
          method='l1_norm',
          scheme=None,
          percent=0.0,
          mode='physical',
          on_empty_layer='keep_strongest',
          ratio=0.5,  # graph: the fraction of each traced channel group removed
          criterion='l1',  # graph: l1 | l2 | bn_scale (pruning_jax.structured)
          scope='layer',  # graph: layer | global
          min_width=1,
          # thinet / regression (pruning_jax.methods.reconstruction): each channel set read by a conv (or those
          # named in layers) keeps floor(width * keep_ratio), or the widths of the fixed architecture `target`;
          # sampled from sample_images training images (eval transform) at sample_locations positions each
          keep_ratio=0.5,
          layers=(),
          target='',
          sample_images=100,
          sample_locations=10,
          alternations=1,  # regression: rounds of LASSO / least squares
          finetune_between=0.0,  # epochs of fine-tuning (finetune.lr) after each pruned layer; 0: none
      )
  )
  c.finetune = ml_collections.ConfigDict(dict(num_epochs=40, lr=0.001))
  # prune.method='lottery' (pruning_jax.methods.lottery): 'unstructured' (rounds of prune.percent of the remaining
  # conv weights) or 'l1' (prune.scheme, once); every phase runs at each of lrs
  c.lottery = ml_collections.ConfigDict(dict(structure='unstructured', rounds=1, lrs=(0.1, 0.01)))
  # prune.method='guided' (pruning_jax.methods.guided): Network Slimming source runs at prune.percent (this
  # experiment's seeds, and the seed*/prune phases of the workdirs in runs_from) averaged per stage or layer; a
  # pattern.json (or a guided experiment's workdir) in pattern_from is transferred; uniform: the same params;
  # structure 'unstructured': guided sparsification from magnitude runs at prune.percent (conv weight densities
  # and, with kernel_maps, each stage's keep probability at every kernel position; pattern_from: an unstructured
  # pattern transferred stage k -> stage k)
  c.guided = ml_collections.ConfigDict(
      dict(granularity='stage', runs_from=(), pattern_from='', uniform=True, structure='structured', kernel_maps=True)
  )
  # prune.method='sss' (pruning_jax.methods.sss): the factors' sparsity penalty and momentum of the proximal step;
  # architecture: '' (the blocks the trained factors remove) or a fixed one of the paper (resnet41/32/26)
  c.sss = ml_collections.ConfigDict(dict(gamma=0.0, momentum=0.9, architecture=''))
  # prune.method='sfp' (pruning_jax.methods.sfp): the fraction of each conv's filters kept after every epoch
  c.sfp = ml_collections.ConfigDict(dict(keep_rate=0.7))
  # equal_decay_steps: Scratch-B's lr decays every int(f1 x E) epochs (MXNet's recipe, SSS) instead of at int(f x E);
  # init (unstructured only): 'sparse_he' re-draws each conv at the sparse He std (the paper's cifar_E.py), 'model'
  # keeps the model's own init under the mask; base_epochs > 0: Scratch-B's base instead of num_epochs (SFP: 400,
  # the baseline's and the SFP run's epochs together)
  c.scratch = ml_collections.ConfigDict(dict(budget_cap=0.0, equal_decay_steps=False, init='sparse_he', base_epochs=0))
  c.experiment = ml_collections.ConfigDict(
      dict(title='', seeds=(0,), phases=job.PHASES, paper={}, compilation_cache=True)
  )
  c.checkpoint.keep_best = False  # every phase hands on its final weights; the best epoch is not used
  return c


def _paper_sgd(decay_fractions) -> dict:
  """The paper's optimizer on both datasets: SGD 0.9, wd 1e-4 on every parameter, lr 0.1 / 10 at the given fractions
  of the run (fractions, so a Scratch-B budget scales the decays with the epochs)."""
  return dict(
      name='sgd',
      lr=0.1,
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,
      wd_exclude_1d=False,
      schedule='step',
      decay_fractions=decay_fractions,
      decay_epochs=(),
      decay_factor=0.1,
      warmup_epochs=0.0,
  )


def cifar_recipe(c, dataset: str = 'cifar10'):
  """The paper's CIFAR protocol: SGD 0.9 (not Nesterov), wd 1e-4 on every parameter, batch 64 (test 256),
  160 epochs, lr 0.1 / 10 at 50% and 75%, zero-pad 4 + random 32x32 crop + horizontal flip, CIFAR mean / std."""
  c.data.update(
      dict(
          name=dataset,
          train_split='train',
          eval_split='test',
          worker_count=0,
          train_transforms=(
              'keep(keys=("image", "label"))',
              'random_crop(size=32, padding=4)',
              'flip_lr',
              f'normalize(mean={CIFAR_MEAN}, std={CIFAR_STD})',
          ),
          eval_transforms=('keep(keys=("image", "label"))', f'normalize(mean={CIFAR_MEAN}, std={CIFAR_STD})'),
      )
  )
  c.batch_size, c.eval_batch_size, c.num_epochs = 64, 256, 160
  c.optimizer.update(_paper_sgd(decay_fractions=(0.5, 0.75)))
  c.finetune.update(dict(num_epochs=40, lr=0.001))
  c.scratch.budget_cap = 0.0
  c.log_every_steps = 200
  c.eval_every_epochs = 10.0
  c.checkpoint.every_steps = 2000
  return c


def imagenet_recipe(c):
  """pytorch/examples 0.3.1: SGD 0.9, wd 1e-4, batch 256, 90 epochs, lr 0.1 / 10 every 30 epochs;
  RandomResizedCrop 224 + flip, eval Resize(256) + CenterCrop(224) (torchvision, bilinear), ImageNet mean / std."""
  c.data.update(
      dict(
          name='imagenet2012',
          train_split='train',
          eval_split='validation',
          worker_count=16,
          train_transforms=(
              'keep(keys=("image", "label"))',
              'decode_jpeg',
              'random_resized_crop(size=224)',
              'flip_lr',
              f'normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})',
          ),
          eval_transforms=(
              'keep(keys=("image", "label"))',
              'decode_jpeg',
              'resize_shorter_and_center_crop(size=224, crop_pct=0.875, interpolation="bilinear")',  # Resize(256)
              f'normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})',
          ),
      )
  )
  c.batch_size, c.eval_batch_size, c.num_epochs = 256, 500, 90
  c.optimizer.update(_paper_sgd(decay_fractions=(1 / 3, 2 / 3)))
  c.log_every_steps = 500
  c.eval_every_epochs = 1.0
  c.checkpoint.every_steps = 5000
  return c
