"""ADP-C end to end on the embedded digit_scenes (a tiny HRNet on CPU): EE+RH vs ADP-C at several thresholds.

Command:  python -m anytime_jax.main --config=configs/anytime/digit_scenes.py --workdir=/tmp/anytime_digits
Phases (sub-workdirs of WORKDIR, core_jax.experiment: a rerun skips finished phases and resumes a killed one):
  ee_rh              the RH exits without confidence adaptivity (the paper's EE+RH row)
  adp_c              the same with CA (EE+RH+CA) at model.tau, trained with the masks as in the reference
  adp_c_tau<t>       eval-only runs of the adp_c weights at each of anytime.eval_taus (no retraining)
Writes WORKDIR/anytime.json (per run and exit: mIoU, GFLOPs, fraction computed) and WORKDIR/anytime.png
(the anytime curve), and prints the table. Model: 'w8_tiny' (widths 8/16/32/64, one module per stage, one
block per branch, RH inter channels 16; not from the paper), 11 classes, train on 32x64 crops of the
64x128 scenes rescaled by 0.75-1.25, + flip, eval on the 200 validation scenes at full size.
Recipe: the Cityscapes one scaled down (SGD momentum 0.9, wd 5e-4 on all params, poly 0.9 per step), lr 0.1
          with 1 epoch of linear warmup (the N(0, 0.001) conv init trains from scratch here, not from ImageNet).
Time:     22 min for the 5 phases on the 2-core CPU shared with five other jobs (load ~12). At 3 epochs the
          tiny HRNet lowers the loss below the class prior but every pixel's argmax is still background
          (mIoU 8.4 = the background IoU / 11 at every exit); the FLOP, fraction and threshold machinery is what
          this length shows. A longer schedule (--config.num_epochs=20, not yet measured) is needed for digit mIoU.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location('_anytime_base', os.path.join(os.path.dirname(__file__), '_base.py'))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

NORMALIZE = 'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))'


def get_config():
  c = _base.anytime_config()
  c.model.update(dict(arch='w8_tiny', exits=(1, 2, 3, 4), exit_type='rh', confidence_adaptive=True, tau=0.998))
  c.anytime.update(dict(eval_taus=(0.9, 0.99, 1.0), baseline_exit_type='rh'))
  c.data.update(
      dict(
          name='digit_scenes',
          data_dir=os.environ.get('TFDS_DATA_DIR', ''),
          train_split='train',
          eval_split='validation',
          train_transforms=('seg_random_scale_crop(size=(32, 64), factors=(0.75, 1.0, 1.25))', 'seg_flip', NORMALIZE),
          eval_transforms=(NORMALIZE,),
      )
  )
  c.batch_size = 16  # 62 steps per epoch
  c.eval_batch_size = 50
  c.num_epochs = 3.0
  c.eval_every_epochs = 1000.0  # once, at the end
  c.log_every_steps = 31
  c.checkpoint.update(dict(every_steps=186, keep=1, keep_best=False))
  c.optimizer.update(
      dict(
          name='sgd',
          lr=0.1,
          momentum=0.9,
          nesterov=False,
          weight_decay=5e-4,
          wd_exclude_1d=False,
          schedule='poly',
          poly_power=0.9,
          warmup_epochs=1.0,
      )
  )
  return c
