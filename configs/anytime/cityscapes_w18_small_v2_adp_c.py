"""ADP-C on HRNet-W18-Small-v2 (the ADP-C code's "w18"; RH exits with 64 inter channels, tau 0.998), Cityscapes.

Command:  python -m anytime_jax.main --config=configs/anytime/cityscapes_w18_small_v2_adp_c.py \
            --workdir=/ckpt/w18s2_adp_c \
            --config.init_from=/weights/hrnet_w18_small_v2.safetensors --config.data.data_dir=/data/tfds
          init_from: the ImageNet backbone (timm `hrnet_w18_small_v2.ms_in1k`, .safetensors or .pth; exits and head stay
          randomly initialized), as the reference loads HRNet-Image-Classification weights. Evaluate imported
          official ADP-C weights or a checkpoint: ... --config.eval_only=True [--config.init_from=FILE.pth].
          Data: TFDS cityscapes/semantic_segmentation built from the manual zips (core_jax.data.cityscapes).
Expected (README): mIoU 40.83 / 48.19 / 68.26 / 77.02 (mean 58.57); the README gives no FLOPs for it
          (base W18-Small-v2: 76.2 mIoU at 71.6 GFLOPs).
Time:     not measured (no accelerator was available to this build). Estimate from the FLOP count: about
          1.6e17 FLOPs for the whole schedule (3 x forward MACs x 2 per 512x1024 crop x 12 x 119,548 steps), i.e.
          roughly 15 min of compute on 4x A100 at 30% of fp32/TF32 peak; data loading will dominate.
Recipe (reference sheet 3.1): SGD lr 0.01 momentum 0.9 wd 5e-4 on all params, poly 0.9 per step, batch 12
(SyncBN: BN statistics over the global batch under jit), 484 epochs = 119,548 steps, class-weighted CE summed
over the exits, train crops 512x1024 of images rescaled by 0.5..2.1 + flip, eval at 1024x2048.
"""

from core_jax.config import load_sibling

_base = load_sibling(__file__, '_base.py')


def get_config():
  return _base.cityscapes_config(
      'w18_small_v2', exits=(1, 2, 3, 4), exit_type='rh', confidence_adaptive=True, reference='cityscapes_w18_small_v2'
  )
