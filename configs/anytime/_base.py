"""Shared pieces of the anytime configs (not a config itself: the leading '_' keeps it out of `--help`).

`anytime_config()` is core_jax.config.base_config() plus the anytime groups (defaults = ADP-C on W48):
  model     name 'hrnet', arch, exits, exit_type ('ee' | 'rh'), inter_channels (0: arch default 128 / 64),
            confidence_adaptive, tau (threshold in (0, 1]), masked_stages (2..4), bn_momentum (0.99, the
            reference's PyTorch 0.01), conv_init ('normal': the reference's N(0, 0.001); 'he': N(0, 2 / fan_in))
  loss      exit_weights (one per exit), class_weights (one per class; () = uniform)
  anytime   reference: the paper's curve drawn beside ours ('cityscapes_w48', 'cityscapes_w18_small_v2', '');
            label: the run's name in the table and curve ('' = from the model options);
            eval_taus: thresholds evaluated without retraining after training (digit_scenes job);
            baseline_exit_type: also train this exit type without CA as the baseline line ('' = none)
`cityscapes_config(...)` is the reference recipe (§3.1 of the reference sheet) for one row of the paper.
"""

import ml_collections

# The reference's 19 Cityscapes trainId weights (lib/datasets/cityscapes.py): one table, in anytime_jax.convert.
from anytime_jax.convert import CITYSCAPES_CLASS_WEIGHTS
from core_jax.config import base_config

CITYSCAPES_TRAIN_IMAGES = 2975


def anytime_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model = ml_collections.ConfigDict(
      dict(
          name='hrnet',
          arch='w48',
          exits=(1, 2, 3, 4),
          exit_type='rh',
          inter_channels=0,
          confidence_adaptive=True,
          tau=0.998,
          masked_stages=(2, 3, 4),
          bn_momentum=0.99,
          conv_init='normal',
      )
  )
  c.loss = ml_collections.ConfigDict(dict(exit_weights=(1.0, 1.0, 1.0, 1.0), class_weights=()))
  c.anytime = ml_collections.ConfigDict(
      dict(reference='', label='', eval_taus=(), baseline_exit_type='', compilation_cache=True)
  )
  return c


def cityscapes_config(
    arch: str,
    exits=(1, 2, 3, 4),
    exit_type: str = 'rh',
    confidence_adaptive: bool = True,
    reference: str = 'cityscapes_w48',
) -> ml_collections.ConfigDict:
  """The ADP-C Cityscapes recipe: SGD lr 0.01 momentum 0.9 wd 5e-4 on all params, poly 0.9 per step, batch 12
  with synchronized BN (jit over the batch-sharded mesh), 484 epochs, ImageNet backbone via init_from, class
  weights, 512x1024 crops of the 0.5..2.1 rescaled images + flip, eval at 1024x2048 with batch 1 per device."""
  c = anytime_config()
  c.model.update(dict(arch=arch, exits=tuple(exits), exit_type=exit_type, confidence_adaptive=confidence_adaptive))
  c.loss.update(dict(exit_weights=(1.0,) * len(exits), class_weights=CITYSCAPES_CLASS_WEIGHTS))
  c.anytime.reference = reference
  c.data.update(
      dict(
          name='cityscapes',
          train_split='train',
          eval_split='validation',
          worker_count=8,
          train_transforms=('seg_random_scale_crop(size=(512, 1024))', 'seg_flip', 'imagenet_normalize'),
          eval_transforms=('imagenet_normalize',),
      )
  )
  c.batch_size = 12
  c.eval_batch_size = 4  # full 1024x2048 images; the metrics do not depend on it (counts are summed)
  c.num_epochs = 484.0  # int(2975 / 12) = 247 steps per epoch: 119,548 steps
  c.eval_every_epochs = 484.0  # the reference evaluates once, at the end
  c.log_every_steps = 50
  c.checkpoint.update(dict(every_steps=2000, keep=2, keep_best=False))
  c.optimizer.update(
      dict(
          name='sgd',
          lr=0.01,
          momentum=0.9,
          nesterov=False,
          weight_decay=5e-4,
          wd_exclude_1d=False,
          schedule='poly',
          poly_power=0.9,
          warmup_epochs=0.0,
      )
  )
  return c
