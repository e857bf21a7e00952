"""HRNetV2-W48 segmentation baseline on Cityscapes (one exit: the HRNet head), the ADP-C paper's "base" row.

Command:  python -m anytime_jax.main --config=configs/anytime/cityscapes_w48_base.py --workdir=/ckpt/w48_base \
            --config.init_from=/weights/hrnet_w48.safetensors --config.data.data_dir=/data/tfds
          init_from: the ImageNet backbone (timm `hrnet_w48.ms_in1k`, .safetensors or .pth; exits and head stay
          randomly initialized), as the reference loads HRNet-Image-Classification weights. Evaluate imported
          official ADP-C weights or a checkpoint: ... --config.eval_only=True [--config.init_from=FILE.pth].
          Data: TFDS cityscapes/semantic_segmentation built from the manual zips (core_jax.data.cityscapes).
Expected (ADP-C README, Cityscapes val, 1024x2048): exit4 mIoU 80.7 at 696.2 GFLOPs
          (HRNet repo: 81.1).
Time:     not measured (no accelerator was available to this build). Estimate from the FLOP count: about
          1.5e18 FLOPs for the whole schedule (3 x forward MACs x 2 per 512x1024 crop x 12 x 119,548 steps), i.e.
          roughly 2.5 h on 4x A100 at 30% of fp32/TF32 peak (4 GPUs as the reference; batch 12 must split
          evenly over the devices), before any data-loading limit.
Recipe (reference sheet 3.1): SGD lr 0.01 momentum 0.9 wd 5e-4 on all params, poly 0.9 per step, batch 12
(SyncBN: BN statistics over the global batch under jit), 484 epochs = 119,548 steps, class-weighted CE summed
over the exits, train crops 512x1024 of images rescaled by 0.5..2.1 + flip, eval at 1024x2048.
"""

from core_jax.config import load_sibling

_base = load_sibling(__file__, '_base.py')


def get_config():
  return _base.cityscapes_config(
      'w48', exits=(4,), exit_type='rh', confidence_adaptive=False, reference='cityscapes_w48'
  )
