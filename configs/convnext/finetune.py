"""ConvNeXt fine-tuning (paper Table 6 / A.2; official TRAINING.md): 22K->1K at 224 and 384, 1K 224->384.

Args: `<variant>:<size>`
  22k_to_1k_224:{tiny,small,base,large,xlarge}   init from 22K 224 weights, head dropped and re-initialized
  22k_to_1k_384:{tiny,small,base,large,xlarge}   same, trained and evaluated at 384 (squash resize, no crop)
  1k_224_to_384:{base,large}                     init from IN-1K 224 weights (same head), 384

Command:  python -m convnext_jax.main --config=configs/convnext/finetune.py:22k_to_1k_224:base \
            --workdir=/ckpt/convnext_b_22k_1k_224 --config.init_from=/weights/convnext_base_22k_224.pth \
            [--config.optimizer.accumulate_steps=K]
          init_from takes official .pth, timm .pth/.safetensors or our flax .msgpack (convnext_jax.convert).
          1k_224_to_384: B starts from the final (non-EMA) IN-1K weights; L from its EMA weights
          (init_from_ema=True, official .pth 'model_ema'). Evaluate any weights file without training:
            ... --config.init_from=FILE --config.eval_only=True
Expected: ImageNet-1K val top-1 (paper): 22K->1K 224: T 82.9, S 84.6, B 85.8, L 86.6, XL 87.0;
          22K->1K 384: T 84.1, S 85.8, B 86.8, L 87.5, XL 87.8; 1K 224->384: B 85.1, L 85.5.
Time:     not measured here. 30 epochs = 38M images; with training at ~1/3 of the paper's A100 inference
          throughput: at 224 about T 2, B 4, L 6.5, XL 9.5 h on 8x A100; at 384 roughly 3x that.

Recipe: AdamW lr 5e-5 at batch 512 (linear scaling), wd 1e-8, 30 epochs, no warmup, cosine (min lr 1e-6,
official default), layer-wise lr decay 0.8 (22K->1K) / 0.7 (1K 224->384), no Mixup/CutMix, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, label smoothing 0.1, head_init_scale 0.001, drop path
22K->1K T/S/B/L/XL 0.0/0.1/0.2/0.3/0.4 and 1K->384 B/L 0.8/0.95, EMA only for XL 22K->1K (0.9999).
"""

from core_jax.config import load_sibling

in1k = load_sibling(__file__, 'in1k.py')

VARIANTS = {
    # variant: (resolution, layer decay, drop path per size)
    '22k_to_1k_224': (224, 0.8, {'tiny': 0.0, 'small': 0.1, 'base': 0.2, 'large': 0.3, 'xlarge': 0.4}),
    '22k_to_1k_384': (384, 0.8, {'tiny': 0.0, 'small': 0.1, 'base': 0.2, 'large': 0.3, 'xlarge': 0.4}),
    '1k_224_to_384': (384, 0.7, {'base': 0.8, 'large': 0.95}),
}
PAPER_TOP1 = {
    '22k_to_1k_224': {'tiny': 82.9, 'small': 84.6, 'base': 85.8, 'large': 86.6, 'xlarge': 87.0},
    '22k_to_1k_384': {'tiny': 84.1, 'small': 85.8, 'base': 86.8, 'large': 87.5, 'xlarge': 87.8},
    '1k_224_to_384': {'base': 85.1, 'large': 85.5},
}
_SHORT = {'tiny': 'tiny', 'small': 'small', 'base': 'base', 'large': 'large', 'xlarge': 'xlarge'}


def get_config(arg: str = '22k_to_1k_224:base'):
  variant, _, size = arg.partition(':')
  if variant not in VARIANTS:
    raise ValueError(f'fine-tuning variant {variant!r}: expected one of {", ".join(VARIANTS)} (as VARIANT:SIZE)')
  res, layer_decay, drop = VARIANTS[variant]
  size = in1k._size(size or 'base', tuple(drop))  # pylint: disable=protected-access
  c = in1k.base_config(size)
  c.data.train_transforms = in1k.TRAIN_TRANSFORMS(res)
  c.data.eval_transforms = in1k.EVAL_224 if res == 224 else in1k.EVAL_384
  c.model.drop_path_rate = drop[size]
  c.model.head_init_scale = 0.001
  c.batch_size = 512
  c.eval_batch_size = 768
  c.num_epochs = 30
  c.mixup = None  # no Mixup / CutMix: plain label-smoothing cross-entropy
  c.label_smoothing = 0.1
  c.optimizer.update(
      dict(
          lr=5e-5,
          base_batch_size=512,
          weight_decay=1e-8,
          warmup_epochs=0,
          min_lr=1e-6,
          layer_decay=layer_decay,
          ema_decay=0.9999 if (variant.startswith('22k') and size == 'xlarge') else 0.0,
      )
  )
  if variant.startswith('22k'):
    c.init_from = f'convnext_{_SHORT[size]}_22k_224.pth'  # official file name; point it at your copy
    c.init_reinit_head = True  # 21841-class head dropped (no class mapping), fresh 1000-class head
  else:
    c.init_from = f'convnext_{_SHORT[size]}_1k_224.pth'  # final weights of the in1k.py run (exported)
    c.init_reinit_head = False  # same 1000-class head: loaded, so head_init_scale has no effect
    c.init_from_ema = size == 'large'
  c.eval_every_epochs = 1
  c.checkpoint.every_steps = 500
  c.expected_top1 = PAPER_TOP1[variant][size]
  return c
