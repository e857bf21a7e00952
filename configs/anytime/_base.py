"""Shared pieces of the anytime configs (not a config itself: the leading '_' keeps it out of `--help`).

`anytime_config()` is core_jax.config.base_config() plus the anytime groups (defaults = ADP-C on W48):
  model     name 'hrnet', arch, exits, exit_type ('ee' | 'rh'), inter_channels (0: arch default 128 / 64),
            rh_max_depth (RH exit k takes min(4 - k, it) down steps; 3: the paper's, 1..2: for small inputs),
            confidence_adaptive, tau (threshold in (0, 1]), masked_stages (2..4), bn_momentum (0.99, the
            reference's PyTorch 0.01), conv_init ('normal': the reference's N(0, 0.001); 'he': N(0, 2 / fan_in))
  loss      exit_weights (one per exit), class_weights (one per class; () = uniform)
  anytime   reference: the paper's curve drawn beside ours ('cityscapes_w48', 'cityscapes_w18_small_v2', '');
            label: the run's name in the table and curve ('' = from the model options);
            eval_taus: thresholds evaluated without retraining after training (digit_scenes job);
            baseline_exit_type: also train this exit type without CA as the baseline line ('' = none)
The Cityscapes recipe of the paper's rows (§3.1 of the reference sheet) and its class weights: cityscapes.py.
"""

import ml_collections

from core_jax.config import base_config


def anytime_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model = ml_collections.ConfigDict(
      dict(
          name='hrnet',
          arch='w48',
          exits=(1, 2, 3, 4),
          exit_type='rh',
          inter_channels=0,
          rh_max_depth=3,
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
