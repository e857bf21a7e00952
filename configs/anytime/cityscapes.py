"""ADP-C's Cityscapes rows (HRNet, the paper's Table 1): one recipe, five variants.

Command:  python -m anytime_jax.main --config=configs/anytime/cityscapes.py:w48_adp_c --workdir=/ckpt/w48_adp_c \
            --config.init_from=/weights/hrnet_w48.safetensors --config.data.data_dir=/data/tfds
          ARG (the paper's row):
            w48_base            HRNetV2-W48 segmentation baseline, one exit (the HRNet head): the "base" row
            w48_ee              W48 with early exits of the original design (EE) after stages 1-3
            w48_ee_rh           W48 with the redesigned encoder-decoder exits (EE+RH), no confidence adaptivity
            w48_adp_c           ADP-C = EE+RH+CA (confidence adaptivity at tau 0.998)
            w18_small_v2_adp_c  ADP-C on HRNet-W18-Small-v2 (the ADP-C code's "w18"; RH exits with 64 inter
                                channels), init_from timm `hrnet_w18_small_v2.ms_in1k`
          init_from: the ImageNet backbone (timm `hrnet_w48.ms_in1k`, .safetensors or .pth; exits and head stay
          randomly initialized), as the reference loads HRNet-Image-Classification weights. Evaluate imported
          official ADP-C weights or a checkpoint: ... --config.eval_only=True [--config.init_from=FILE.pth].
          Data: TFDS cityscapes/semantic_segmentation built from the manual zips (core_jax.data.cityscapes).
Expected (ADP-C README, Cityscapes val, 1024x2048):
          w48_base            exit4 mIoU 80.7 at 696.2 GFLOPs (HRNet repo: 81.1)
          w48_ee              mIoU 34.3 / 59.0 / 76.9 / 80.4 (mean 62.7); GFLOPs per exit by the analytic count
                              48.4 / 113.5 / 388.9 / 722.2 (mean 318.2; the README's 521.6 / 717.9 / 914.2 /
                              1110.5 is an artifact, see the reference sheet 4.1)
          w48_ee_rh           mIoU 44.6 / 60.2 / 76.6 / 79.9 (mean 65.3); GFLOPs 41.9 / 105.6 / 368.0 / 701.3
                              (mean 304.2)
          w48_adp_c           mIoU 44.3 / 60.1 / 76.8 / 81.3 (mean 65.7); GFLOPs 41.9 / 93.9 / 259.3 / 387.1
                              (mean 195.6; -44.4% total vs the 696.2 base). The masked convs run densely (FLOPs
                              saved on paper only), so training costs what EE+RH costs.
          w18_small_v2_adp_c  mIoU 40.83 / 48.19 / 68.26 / 77.02 (mean 58.57); the README gives no FLOPs for it
                              (base W18-Small-v2: 76.2 mIoU at 71.6 GFLOPs)
Other thresholds without retraining (CA variants):  ... --config.eval_only=True --config.model.tau=0.99
          (evaluates WORKDIR's checkpoint into WORKDIR/eval/step<N>-tau0.99).
Time:     not measured (no accelerator was available to this build). Estimate from the FLOP count (3 x forward
          MACs x 2 per 512x1024 crop x 12 x 119,548 steps): W48 variants about 1.5e18 FLOPs (EE 1.6e18) for the
          whole schedule, i.e. roughly 2.5 h on 4x A100 at 30% of fp32/TF32 peak (4 GPUs as the reference; batch
          12 must split evenly over the devices), before any data-loading limit; W18-Small-v2 about 1.6e17, roughly
          15 min of compute on 4x A100, where data loading will dominate.
Recipe (reference sheet 3.1): SGD lr 0.01 momentum 0.9 wd 5e-4 on all params, poly 0.9 per step, batch 12
(SyncBN: BN statistics over the global batch under jit), 484 epochs = 119,548 steps, class-weighted CE summed
over the exits, train crops 512x1024 of images rescaled by 0.5..2.1 + flip, eval at 1024x2048.
"""

import ml_collections

from core_jax.config import load_sibling

_base = load_sibling(__file__, '_base.py')

# The reference's 19 Cityscapes trainId weights (lib/datasets/cityscapes.py), the class-weighted loss of every row.
CLASS_WEIGHTS = (
    0.8373,
    0.918,
    0.866,
    1.0345,
    1.0166,
    0.9969,
    0.9754,
    1.0489,
    0.8786,
    1.0023,
    0.9539,
    0.9843,
    1.1116,
    0.9037,
    1.0865,
    1.0955,
    1.0865,
    1.1529,
    1.0507,
)
TRAIN_IMAGES = 2975

VARIANTS = {  # ARG: (arch, exits, exit type, confidence adaptive, the paper's curve drawn beside ours)
    'w48_base': ('w48', (4,), 'rh', False, 'cityscapes_w48'),
    'w48_ee': ('w48', (1, 2, 3, 4), 'ee', False, 'cityscapes_w48'),
    'w48_ee_rh': ('w48', (1, 2, 3, 4), 'rh', False, 'cityscapes_w48'),
    'w48_adp_c': ('w48', (1, 2, 3, 4), 'rh', True, 'cityscapes_w48'),
    'w18_small_v2_adp_c': ('w18_small_v2', (1, 2, 3, 4), 'rh', True, 'cityscapes_w18_small_v2'),
}


def cityscapes_config(arch: str, exits, exit_type: str, confidence_adaptive: bool, reference: str):
  """The ADP-C Cityscapes recipe: SGD lr 0.01 momentum 0.9 wd 5e-4 on all params, poly 0.9 per step, batch 12
  with synchronized BN (jit over the batch-sharded mesh), 484 epochs, ImageNet backbone via init_from, class
  weights, 512x1024 crops of the 0.5..2.1 rescaled images + flip, eval at 1024x2048 with batch 1 per device."""
  c = _base.anytime_config()
  c.model.update(dict(arch=arch, exits=tuple(exits), exit_type=exit_type, confidence_adaptive=confidence_adaptive))
  c.loss.update(dict(exit_weights=(1.0,) * len(exits), class_weights=CLASS_WEIGHTS))
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


def get_config(arg: str = 'w48_adp_c') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'cityscapes variant {arg!r}: expected one of {", ".join(VARIANTS)}')
  return cityscapes_config(*VARIANTS[arg])
