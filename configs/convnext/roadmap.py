"""ConvNeXt paper Sec. 2 "modernizing a ResNet" roadmap on ImageNet-1K, one config per step.

Command (the part after ':' selects the step; default: separate_downsampling = ConvNeXt-T):
  python -m convnext_jax.main --config=configs/convnext/roadmap.py:patchify_stem --workdir=/tmp/roadmap_patchify
Steps (model `roadmap_<step>` from convnext_jax.roadmap; expected = paper Appendix Table 10, ResNet-50 regime,
ImageNet-1K val top-1, mean of 3 seeds; GMACs computed / paper GFLOPs):
  resnet50 76.13 (torchvision 90-ep SGD recipe) | enhanced_recipe 78.82 | stage_ratio 79.36 | patchify_stem 79.51
  depthwise_conv 78.28 | width_96 80.50 | inverted_bottleneck 80.64 | move_up_dwconv 79.92 | kernel_5 80.35
  kernel_7 80.57 | kernel_9 80.57 | kernel_11 80.47 | gelu 80.62 | fewer_activations 81.27 | fewer_norms 81.41
  layer_norm 81.47 | separate_downsampling 81.97 (= ConvNeXt-T without EMA)
Recipe (paper Table 5 / fact sheet Sec. 2.1; roadmap runs use it WITHOUT EMA, which hurts BN models): AdamW
lr 4e-3 at batch 4096, betas (0.9, 0.999), wd 0.05 (not on 1-D params), 300 epochs, 20 warmup, cosine to
1e-6, RandAugment m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, label smoothing 0.1, random erasing 0.25,
stochastic depth 0.1.  The `resnet50` step is the original baseline (torchvision: SGD 0.1 @256, momentum 0.9,
wd 1e-4, 90 epochs, lr x0.1 at 30/60, crop + flip only).
Time: not measured here; a 300-epoch ImageNet-1K run of a ~4.1-4.5 GMAC model is on the order of a few
days on 8 modern GPUs (the paper used 4096-image batches on 32 V100s).  Needs `imagenet2012` (tfds, manual
download).  Every step's model builds (tests/convnext/test_roadmap.py).
"""
import ml_collections

from core_jax.config import base_config
from convnext_jax import roadmap as _roadmap

DEFAULT_STEP = 'separate_downsampling'

_TRAIN_TF = ('decode_jpeg', 'random_resized_crop_timm(size=224)', 'flip_lr', 'randaugment',
             'imagenet_normalize', 'random_erasing(prob=0.25)')
_EVAL_TF = ('decode_jpeg', 'resize_shorter_and_center_crop(size=224)', 'imagenet_normalize')
_BASELINE_TRAIN_TF = ('decode_jpeg', "random_resized_crop_timm(size=224, interpolation='bilinear')", 'flip_lr',
                      'imagenet_normalize')
_BASELINE_EVAL_TF = ('decode_jpeg', "resize_shorter_and_center_crop(size=224, interpolation='bilinear')",
                     'imagenet_normalize')


def get_config(step: str = DEFAULT_STEP):
  step = step or DEFAULT_STEP
  if step not in _roadmap.step_names():
    raise ValueError(f'unknown roadmap step {step!r}; choose one of {_roadmap.step_names()}')
  _roadmap.register_roadmap_models()  # makes model.name = 'roadmap_<step>' resolvable by create_model
  baseline = step == 'resnet50'
  gflops, top1 = _roadmap.PAPER_RESULTS[step]
  c = base_config()
  c.seed = 0
  c.step = step
  c.expected_top1 = top1  # paper Appendix Table 10 (R50 regime, mean of 3 seeds)
  c.paper_gflops = gflops
  c.data.update(dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation', worker_count=16,
      train_transforms=_BASELINE_TRAIN_TF if baseline else _TRAIN_TF,
      eval_transforms=_BASELINE_EVAL_TF if baseline else _EVAL_TF,
  ))
  # Batch-level Mixup/CutMix (core_jax.data.mixing), label smoothing folded into the soft targets.
  c.mixup = ml_collections.ConfigDict(dict(
      enabled=not baseline, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'))
  c.model.update(dict(name=f'roadmap_{step}', drop_path_rate=0.0 if baseline else 0.1, overrides={}))
  c.compute_dtype = 'float32'
  c.batch_size = 256 if baseline else 4096
  c.eval_batch_size = 384 if baseline else 6144  # 1.5x train batch, as the official code
  c.num_epochs = 90 if baseline else 300
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.label_smoothing = 0.0 if baseline else 0.1
  if baseline:
    c.optimizer.update(dict(
        name='sgd', lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, wd_exclude_1d=False,
        schedule='step', decay_epochs=(30, 60), decay_factor=0.1, warmup_epochs=0, grad_clip_norm=0.0,
        ema_decay=0.0, accumulate_steps=1,
    ))
  else:
    c.optimizer.update(dict(
        name='adamw', lr=4e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, wd_exclude_1d=True,
        schedule='cosine', warmup_epochs=20, warmup_init_lr=0.0, min_lr=1e-6, grad_clip_norm=0.0,
        ema_decay=0.0,  # no EMA for the roadmap (paper Sec. 2.1 / A.1)
        accumulate_steps=1,
    ))
  c.log_every_steps = 100
  c.eval_every_epochs = 5
  c.checkpoint.update(dict(every_steps=2000, keep=3, keep_best=True, asynchronous=True))
  return c
