"""ConvNeXt + UperNet on ADE20K (the paper's Table 4): one recipe, six rows, each with single- and multi-scale eval.

Command:  python -m convnext_jax.main --config=configs/convnext/upernet_ade20k.py:tiny --workdir=/ckpt/upernet_t \
            --config.init_from=/weights/convnext_tiny_1k_224.pth --config.data.data_dir=/data
          ARG (the paper's row):  tiny, small, base (ImageNet-1K weights, 512 crops), base_22k, large_22k,
          xlarge_22k (ImageNet-22K weights, 640 crops); ARG:ms evaluates with multi-scale + flip instead, e.g.
            ... --config=configs/convnext/upernet_ade20k.py:tiny:ms --config.eval_only=True \
                --config.init_from=/ckpt/upernet_t    (or an official mmseg UperNet .pth)
          init_from: ImageNet ConvNeXt weights (official or timm .pth/.safetensors) initialize the backbone; the
          heads start fresh. Data: the release folder ADEChallengeData2016 in data.data_dir (core_jax.data.ade20k;
          TFDS scene_parse150 holds instance annotations and is refused).
Expected (the paper's Table 4, ADE20K val mIoU single-scale / multi-scale; measured here: not measured):
          tiny         46.0 / 46.7   (60M params, 939 GFLOPs at 2048x512)
          small        48.7 / 49.6   (82M, 1027G)
          base         49.1 / 49.9   (122M, 1170G)
          base_22k     52.6 / 53.1   (122M, 1170G at 2048x512; 640 crops)
          large_22k    53.2 / 53.7   (235M, 2458G at 2560x640)
          xlarge_22k   53.6 / 54.0   (391M, 3335G at 2560x640)
Time:     not measured (no accelerator was available to this build). Estimate from the MAC count (3 x forward x 2
          FLOPs per MAC x 16 crops x 160k iterations): T 3.6e18, S 3.9e18, B 4.5e18 FLOPs at 512 crops, B-22K 7.0e18,
          L 9.4e18, XL 12.8e18 at 640: about 1.3 / 1.5 / 1.7 / 2.6 / 3.5 / 4.7 h on 8x A100 at 30% of the bf16 peak,
          before data loading (the official runs used 8 GPUs x 2 images).
Recipe (reference sheet convnext.md 11.1; the official semantic_segmentation configs): AdamW lr 1e-4 (8e-5 for
XL), betas (0.9, 0.999), wd 0.05 not on 1-D params, stage-wise lr decay 0.9 with num_layers 6 (T) / 12 (S-XL),
linear warm-up over 1500 iterations from 1e-6 of the lr, poly power 1.0 to 0 over 160k iterations, batch 16,
mixed precision (bfloat16 here for the official fp16 AMP; L ran without AMP: float32), drop path 0.4 (T, B, L, XL)
/ 0.3 (S), the auxiliary FCN head's loss weighted 0.4. Train data: mmseg's ADE20K pipeline (resize into 2048x512 x
U(0.5, 2.0) keeping the aspect, random crop with cat_max_ratio 0.75, flip, photometric distortion, normalize, pad
to the crop; 2560x640 for the 640 crops). Eval: single-scale resizes into 2048x512 (2560x640) keeping the aspect
and slides 512 windows with stride 341 (640 / 426); multi-scale + flip (the official _ms configs) averages the
softmax over ratios 0.5-1.75 of that size and the mirror image, whole-image inference; labels at full size.
Limitation: eval takes one image per batch (ADE20K's sizes differ; XLA compiles once per size), and the eval batch
must split over the devices, so these configs run on one device (an 80 GB GPU holds batch 16 of T at 512); with
more, train with a larger eval_batch_size only after adding size-bucketed eval (not done).
Known deviation: mmcv's poly decays over all 160k iterations and the warm-up scales it, here poly starts after the
warm-up (lr at iteration 1500: 1e-4 here, 0.99e-4 there).
"""

import os

import ml_collections

from core_jax.config import base_config

ITERATIONS = 160_000
WARMUP_ITERATIONS = 1500
BATCH = 16
TRAIN_IMAGES = 20_210  # ADEChallengeData2016 images/training
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

VARIANTS = {  # ARG: (size, crop, lr, layer-decay num_layers, drop path, compute dtype, paper ss / ms mIoU)
    'tiny': ('tiny', 512, 1e-4, 6, 0.4, 'bfloat16', (46.0, 46.7)),
    'small': ('small', 512, 1e-4, 12, 0.3, 'bfloat16', (48.7, 49.6)),
    'base': ('base', 512, 1e-4, 12, 0.4, 'bfloat16', (49.1, 49.9)),
    'base_22k': ('base', 640, 1e-4, 12, 0.4, 'bfloat16', (52.6, 53.1)),
    'large_22k': ('large', 640, 1e-4, 12, 0.4, 'float32', (53.2, 53.7)),
    'xlarge_22k': ('xlarge', 640, 8e-5, 12, 0.4, 'bfloat16', (53.6, 54.0)),
}


def train_transforms(crop: int, scale: tuple[int, int]) -> tuple[str, ...]:
  """mmseg's ADE20K train pipeline (configs/_base_/datasets/ade20k.py, ade20k_640x640.py) as data ops."""
  return (
      f'seg_random_resize_ratio(scale={scale}, ratio_range=(0.5, 2.0))',
      f'seg_random_crop_cat(size=({crop}, {crop}), cat_max_ratio=0.75)',
      'seg_flip(p=0.5)',
      'photometric_distortion',
      'imagenet_normalize',
      f'seg_pad(size=({crop}, {crop}))',
  )


def official_optimizer(lr: float, num_layers: int, warmup_epochs: float) -> dict:
  """The official AdamW + stage-wise decay + warm-up + poly recipe's optimizer fields (also the digit_scenes demo's)."""
  return dict(
      name='adamw',
      lr=lr,
      b1=0.9,
      b2=0.999,
      weight_decay=0.05,
      wd_exclude_1d=True,
      schedule='poly',
      poly_power=1.0,
      min_lr=0.0,
      warmup_epochs=warmup_epochs,
      warmup_init_lr=lr * 1e-6,  # mmcv's warmup_ratio 1e-6
      layer_decay=0.9,
      layer_decay_num_layers=num_layers,
  )


def ade20k_config(size, crop, lr, num_layers, drop_path, compute_dtype, paper, multi_scale=False):
  del paper  # in the header and VARIANTS, for the reader and the tests
  c = base_config()
  scale = (2048, 512) if crop == 512 else (2560, 640)
  stride = {512: 341, 640: 426}[crop]
  c.model.update(dict(name=f'upernet_convnext_{size}', drop_path_rate=drop_path))
  c.loss = dict(aux_weight=0.4)
  c.data.update(
      dict(
          name='ade20k',
          data_dir=os.environ.get('TFDS_DATA_DIR', ''),
          train_split='training',
          eval_split='validation',
          worker_count=8,
          train_transforms=train_transforms(crop, scale),
          eval_transforms=('imagenet_normalize',),  # resized in the eval step (eval_resize), labels at full size
      )
  )
  c.eval_resize = scale
  if multi_scale:  # the official _ms configs: whole-image inference at each ratio and its mirror
    c.eval_scales, c.eval_flip, c.slide_window = MS_RATIOS, True, ()
  else:
    c.eval_scales, c.eval_flip, c.slide_window = (1.0,), False, (crop, stride)
  c.compute_dtype = compute_dtype
  c.batch_size = BATCH
  c.eval_batch_size = 1  # ADE20K's images differ in size (mmseg evaluates one at a time too)
  steps_per_epoch = TRAIN_IMAGES // BATCH
  c.num_train_steps = ITERATIONS
  c.num_epochs = ITERATIONS / steps_per_epoch
  c.eval_every_epochs = 16_000 / steps_per_epoch  # the official evaluation interval
  c.log_every_steps = 50
  c.checkpoint.update(dict(every_steps=16_000, keep=2, keep_best=True))
  c.optimizer.update(official_optimizer(lr, num_layers, WARMUP_ITERATIONS / steps_per_epoch))
  return c


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  variant, _, mode = arg.partition(':')
  if variant not in VARIANTS or mode not in ('', 'ms'):
    raise ValueError(f'upernet_ade20k variant {arg!r}: expected one of {", ".join(VARIANTS)}, optionally :ms')
  return ade20k_config(*VARIANTS[variant], multi_scale=mode == 'ms')
