"""ConvNeXt-T/S/B/L on ImageNet-1K from scratch (paper Sec. 3.1 / Table 5; official main.py defaults).

Command:  python -m convnext_jax.main --config=configs/convnext/in1k.py:base --workdir=/ckpt/convnext_b_in1k \
            [--config.data.data_dir=$TFDS_DATA_DIR] [--config.optimizer.accumulate_steps=K]
          (imagenet2012 prepared as array_record; `accumulate_steps` reaches the reference batch of 4096 on
          fewer devices: batch_size * accumulate_steps = 4096; lr follows batch_size * accumulate_steps / 4096.)
Expected: ImageNet-1K val top-1 (paper, 224): T 82.1, S 83.1, B 83.8, L 84.3 (results.json reports
          `accuracy` and `ema_accuracy`; the released official weights are the EMA ones).
Time:     not measured here. Rough extrapolation, assuming training runs at ~1/3 of the paper's A100
          inference throughput (T/S/B/L 1944/1275/969/612 img/s/GPU): on 8x A100 about T 20 h, S 31 h,
          B 41 h, L 65 h for 300 epochs (384M images); the paper's runs used 32-64 V100s.

Recipe: AdamW (0.9, 0.999, eps 1e-8), lr 4e-3 at batch 4096 (linear scaling to other batches), 300 epochs,
20 warmup epochs from 0, per-step cosine to 1e-6, weight decay 0.05 (none on 1-D params), RandAugment
rand-m9-mstd0.5-inc1, Mixup 0.8 / CutMix 1.0 / switch 0.5 (batch mode, inside the jitted step) with label
smoothing 0.1, random erasing 0.25, bicubic RandomResizedCrop 224 + hflip, drop path T/S/B/L 0.1/0.4/0.5/0.5,
layer scale 1e-6, EMA 0.9999 evaluated alongside; eval resize 256 (bicubic) + center crop 224.
"""
import ml_collections

from core_jax import config as core_config

MODELS = {'tiny': 'convnext_tiny', 'small': 'convnext_small', 'base': 'convnext_base', 'large': 'convnext_large',
          'xlarge': 'convnext_xlarge'}
DROP_PATH = {'tiny': 0.1, 'small': 0.4, 'base': 0.5, 'large': 0.5}
PAPER_TOP1 = {'tiny': 82.1, 'small': 83.1, 'base': 83.8, 'large': 84.3}

TRAIN_TRANSFORMS = lambda size: (
    'decode_jpeg', f'random_resized_crop_timm(size={size}, interpolation="bicubic")', 'flip_lr',
    'randaugment(config_str="rand-m9-mstd0.5-inc1", interpolation="bicubic")', 'imagenet_normalize',
    'random_erasing(prob=0.25, mode="pixel")')
EVAL_224 = ('decode_jpeg', 'resize_shorter_and_center_crop(size=224, crop_pct=0.875, interpolation="bicubic")',
            'imagenet_normalize')
EVAL_384 = ('decode_jpeg', 'squash_resize(size=384, interpolation="bicubic")', 'imagenet_normalize')


def _size(arg, allowed):
  arg = (arg or 'tiny').strip().lower()
  aliases = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large', 'xl': 'xlarge'}
  arg = aliases.get(arg, arg)
  if arg not in allowed:
    raise ValueError(f'model size {arg!r}: expected one of {", ".join(allowed)}')
  return arg


def base_config(size: str) -> ml_collections.ConfigDict:
  """The IN-1K-from-scratch recipe; in22k.py and finetune.py start from it."""
  c = core_config.base_config()
  c.seed = 0
  c.data.update(dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation', worker_count=16,
      train_transforms=TRAIN_TRANSFORMS(224), eval_transforms=EVAL_224,
  ))
  c.model.update(dict(name=MODELS[size], drop_path_rate=DROP_PATH.get(size, 0.0), head_init_scale=1.0,
                      overrides={}))
  c.compute_dtype = 'bfloat16'  # official: optional AMP (fp16); params and logits stay float32
  c.batch_size = 4096
  c.eval_batch_size = 6144  # 1.5x train batch, as the official code
  c.num_epochs = 300
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.label_smoothing = 0.1  # used for integer labels; with mixup it is folded into the soft targets
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                                           label_smoothing=0.1))
  c.optimizer.update(dict(
      name='adamw', lr=4e-3, base_batch_size=4096, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
      wd_exclude_1d=True, schedule='cosine', warmup_epochs=20, warmup_init_lr=0.0, min_lr=1e-6,
      grad_clip_norm=0.0, ema_decay=0.9999, accumulate_steps=1, layer_decay=1.0,
  ))
  c.init_from = ''  # weights file (official/timm .pth/.safetensors, flax .msgpack) loaded on a fresh start
  c.init_reinit_head = False
  c.init_from_ema = False  # load the checkpoint's EMA weights (official .pth 'model_ema')
  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint.update(dict(every_steps=1000, keep=3, keep_best=True, asynchronous=True))
  return c


def get_config(arg: str = 'tiny'):
  size = _size(arg, tuple(DROP_PATH))
  c = base_config(size)
  c.expected_top1 = PAPER_TOP1[size]
  return c
