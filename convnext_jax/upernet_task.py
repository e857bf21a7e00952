"""ConvNeXt + UperNet semantic segmentation as a `core_jax` Task (``convnext_jax.train`` picks it for a
``model.name`` of ``upernet_*``), on the shared segmentation stack: the segmentation transforms of
core_jax/data/segmentation.py, core_jax.seg_ops' loss, the confusion-matrix metric, padded eval.

Config fields read here:
  model.name            a registered UperNet (upernet_convnext_tiny ... xlarge), model.drop_path_rate,
                        model.overrides (any UperNet field: depths, dims, channels, aux_channels, ...)
  loss.aux_weight       the auxiliary FCN head's loss weight (0.4, the official configs)
  loss.class_weight     one weight per class for both heads' cross-entropy (mmseg's CrossEntropyLoss
                        class_weight; the official ADE20K configs leave it unset: () = uniform)
  optimizer.layer_decay the official "stage_wise" lr decay rate (0.9; >= 1 turns it off) and
  optimizer.layer_decay_num_layers  its num_layers (6 for T, 12 for S-XL, as the official configs set it)

Train loss (mmseg): the decode head's 1/4 logits and the auxiliary head's 1/16 logits, each bilinearly resized to
the labels, cross-entropy with ignore label 255 averaged over the valid pixels of the global batch (weighted
by loss.class_weight when set: sum w_y nll / sum w_y, PyTorch's CrossEntropyLoss(weight)); loss = decode +
aux_weight * aux. Eval: whole-image inference at the eval transforms' size, logits resized to the
labels, argmax, confusion matrix over the eval set: 'miou' (primary), 'pixel_accuracy', 'iou/<c>'. With
``slide_window`` = (crop, stride) the logits come from sliding windows instead (``core_jax.seg_ops.
slide_inference``, mmseg's slide mode: the paper's single-scale eval used (512, 341), (640, 426) for 640 crops).
Test-time resizing (mmseg's MultiScaleFlipAug; ``core_jax.seg_ops.aug_test_probs``), config fields:
  eval_resize  (long, short), e.g. (2048, 512): the eval image resized keeping its aspect to fit it, in the graph
               (the eval transforms only normalize; labels stay at the original size, where mIoU is counted)
  eval_scales  ratios of eval_resize, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) for the paper's multi-scale row
  eval_flip    also the mirrored image; the softmax probabilities of every (ratio, flip) are averaged
ADE20K's images differ in size, so their eval runs one image per batch (eval_batch_size 1; XLA compiles the eval
step once per distinct image size, as mmseg evaluates at batch 1).

Stage-wise lr decay (facebookresearch/ConvNeXt semantic_segmentation/mmcv_custom/
layer_decay_optimizer_constructor.py, decay_type 'stage_wise'): with L = num_layers + 2 groups, the stem and
downsampling layers are group 0, stage i's blocks group i + 1, everything else (the stage-output norms norm0..3
and both heads) group L - 1; scale = decay ** (L - 1 - group). Only the lr is scaled, not the weight decay
(core_jax.optim scales the whole AdamW step, whose decay term is lr-scaled as in PyTorch). The scales are printed
at start-up (T: 0.478 / 0.531 ... 0.729 / 1; S-XL: 0.254 / 0.282 ... 0.387 / 1).
"""

import logging
import numbers
import os
import re

import flax
import jax.numpy as jnp
from clu import metrics

from convnext_jax import models, upernet
from core_jax import compute, optim, seg_ops
from core_jax import metrics as metrics_lib
from core_jax import weights as weights_lib
from core_jax.errors import UserError
from core_jax.seg_ops import check_class_weights, pixel_accuracy, resize_bilinear, weighted_cross_entropy
from core_jax.task import Task, apply_model

log = logging.getLogger(__name__)

LABEL_KEY = 'segmentation'
AUX_WEIGHT = 0.4


def stage_wise_group(path, num_layers: int) -> int:
  """The official stage_wise layer id of a parameter path (names tuple) for num_layers (see the module doc)."""
  names = tuple(path)
  if names[:1] == ('backbone',) and len(names) > 1:
    if re.fullmatch(r'stem_\w+|downsample_\d+', names[1]):
      return 0
    m = re.fullmatch(r'stages_(\d+)_block_\d+', names[1])
    if m:
      return int(m.group(1)) + 1
  return num_layers + 1


def stage_wise_scale_fn(decay: float, num_layers: int):
  """`lr_scale_fn(path, leaf)` = decay ** (num_layers + 1 - group): the official scale with L = num_layers + 2."""
  return optim.layerwise_lr_decay_scale(num_layers, decay, lambda p: stage_wise_group(p, num_layers))


def describe_scales(decay: float, num_layers: int) -> str:
  """One line naming each group's lr scale, e.g. for the start-up log."""
  fn = stage_wise_scale_fn(decay, num_layers)
  groups = [('stem+downsample', ('backbone', 'stem_conv'))]
  groups += [(f'stage{i}', ('backbone', f'stages_{i}_block_0')) for i in range(4)]
  groups += [('norms+heads', ('decode_head',))]
  parts = ', '.join(f'{name} {fn(path, None):.3f}' for name, path in groups)
  return f'stage-wise lr decay {decay} (num_layers {num_layers}): lr scale {parts}'


_CROP_OPS = ('seg_random_crop_cat', 'seg_random_crop', 'seg_random_scale_crop')


def check_crop_fits_padding(specs: tuple[str, ...]) -> None:
  """The train crop must fit the padded size, so every example of a batch has one shape: UserError when a crop
  is larger than the `seg_pad` after it (crops up to it are padded), or when mmseg's crop (which keeps a side
  smaller than the crop as it is) has no `seg_pad` to the crop size after it."""
  from core_jax.data import primitives, registry  # pylint: disable=import-outside-toplevel

  def size_of(args, kwargs):
    return primitives.hw(kwargs['size'] if 'size' in kwargs else args[0])

  crop, crop_op = None, None
  for spec in specs:
    name, args, kwargs = registry.parse_spec(spec)
    if name in _CROP_OPS and (args or 'size' in kwargs):
      crop, crop_op = size_of(args, kwargs), name
    elif name == 'seg_pad' and crop is not None:
      pad = size_of(args, kwargs)
      if crop[0] > pad[0] or crop[1] > pad[1]:
        raise UserError(
            f'train crop {crop} ({crop_op}) is larger than the padded image {pad} (seg_pad): pad to the crop size'
        )
      crop_op = None
  if crop_op == 'seg_random_crop_cat':
    raise UserError(f'train crop {crop} (seg_random_crop_cat) has no seg_pad(size={crop}) after it')


def check_eval_options(config) -> None:
  """The test-time options (module doc) as UserErrors at start-up: a window or stride of 0 was a
  ZeroDivisionError traceback at the first evaluation, after the training; a stride larger than the window leaves
  pixels no window covers (mmseg asserts on it), a ratio of 0 or below an image of no pixels."""

  def positive_ints(key, value, count):
    if len(value) != count or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in value):
      raise UserError(f'{key} must be {count} positive integers, got {value!r}')

  slide = tuple(config.get('slide_window', ()) or ())
  if slide:
    positive_ints('slide_window', slide, 2)
    if slide[1] > slide[0]:
      raise UserError(
          f'slide_window (crop, stride) = {slide!r}: a stride above the crop leaves pixels no window covers'
      )
  resize = tuple(config.get('eval_resize', ()) or ())
  if resize:
    positive_ints('eval_resize', resize, 2)
  ratios = tuple(config.get('eval_scales', ()) or ())
  if any(isinstance(r, bool) or not isinstance(r, numbers.Real) or not r > 0 for r in ratios):
    raise UserError(f'eval_scales must be ratios above 0, got {ratios!r}')


def eval_metrics_class(num_classes: int) -> type[metrics.Collection]:
  confusion = metrics_lib.confusion_matrix_metric(num_classes)

  @flax.struct.dataclass
  class SegEvalMetrics(metrics.Collection):
    seg: confusion

    def compute(self):
      return metrics.Collection.compute(self)['seg']

  return SegEvalMetrics


@flax.struct.dataclass
class SegTrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  decode_loss: metrics.Average.from_output('decode_loss')
  aux_loss: metrics.Average.from_output('aux_loss')
  accuracy: metrics.Average.from_output('accuracy')


class UperNetSegTask(Task):
  primary_metric = 'miou'
  train_metrics = SegTrainMetrics
  progress_metrics = ('loss', 'accuracy')

  def __init__(self, config, dataset_info):
    super().__init__(config, dataset_info)
    name = str(config.model.name)
    if not isinstance(models.create_model(name), upernet.UperNet):
      raise UserError(f'model.name {name!r} is not an UperNet segmentor ({", ".join(upernet.UPERNET_MODELS)})')
    self.num_classes = int(dataset_info.num_classes) if dataset_info is not None else 150
    check_crop_fits_padding(tuple((config.get('data', None) or {}).get('train_transforms', ()) or ()))
    lcfg = config.get('loss', None) or {}
    self.aux_weight = float(lcfg.get('aux_weight', AUX_WEIGHT))
    self.class_weight = check_class_weights(lcfg.get('class_weight', ()), self.num_classes, 'loss.class_weight')
    self.eval_metrics = eval_metrics_class(self.num_classes)
    check_eval_options(config)

  def build_model(self):
    mcfg = self.config.model
    return models.create_model(
        mcfg.name,
        num_classes=self.num_classes,
        drop_path_rate=mcfg.drop_path_rate,
        dtype=compute.compute_dtype(self.config.compute_dtype),
        compute=self.config.get('compute'),
        **dict(mcfg.get('overrides', None) or {}),
    )

  def train_loss(self, model, variables, batch, rng):
    (logits, aux), new_vars = apply_model(model, variables, batch[self.input_key], train=True, rng=rng)
    labels = batch[LABEL_KEY]
    decode = weighted_cross_entropy(logits, labels, self.class_weight)
    out = {'decode_loss': decode, 'accuracy': pixel_accuracy(logits, labels)}
    total = decode
    if 'aux_logits' in aux:
      out['aux_loss'] = weighted_cross_entropy(aux['aux_logits'], labels, self.class_weight)
      total = total + self.aux_weight * out['aux_loss']
    else:
      out['aux_loss'] = jnp.zeros((), jnp.float32)
    out['loss'] = total
    return total, (out, new_vars)

  def eval_outputs(self, model, variables, batch):
    labels = batch[LABEL_KEY]
    image = batch[self.input_key]
    slide = tuple(self.config.get('slide_window', ()) or ())
    scale = tuple(self.config.get('eval_resize', ()) or ())
    ratios = tuple(float(r) for r in self.config.get('eval_scales', ()) or (1.0,))
    flip = bool(self.config.get('eval_flip', False))

    def logits_fn(x):
      return model.apply(variables, x, train=False)[0]

    if scale or flip or ratios != (1.0,):  # mmseg's test-time resize / multi-scale + flip (seg_ops.aug_test_probs)
      scores = seg_ops.aug_test_probs(
          logits_fn,
          image,
          labels.shape[1:3],
          scale or None,
          ratios,
          flip,
          (int(slide[0]), int(slide[1])) if slide else None,
      )
    elif slide:  # (crop, stride): mmseg's slide mode on the image as given
      crop, stride = int(slide[0]), int(slide[1])
      scores = resize_bilinear(
          seg_ops.slide_inference(logits_fn, image, (crop, crop), (stride, stride)).astype(jnp.float32),
          *labels.shape[1:3],
      )
    else:  # whole-image inference
      scores = resize_bilinear(logits_fn(image).astype(jnp.float32), *labels.shape[1:3])
    return {'predictions': jnp.argmax(scores, axis=-1), 'labels': labels, 'mask': batch['mask']}

  def lr_scale_fn(self):
    ocfg = self.config.optimizer
    decay = ocfg.get('layer_decay', None)
    if decay is None or float(decay) >= 1.0:
      return None
    num_layers = int(ocfg.get('layer_decay_num_layers', 12))
    print(describe_scales(float(decay), num_layers), flush=True)
    return stage_wise_scale_fn(float(decay), num_layers)

  def load_pretrained(self, variables, path, reinit_head):
    """An mmseg UperNet checkpoint or ImageNet ConvNeXt weights (``upernet_convert.load_pretrained``), or one of
    our training checkpoints (a step dir or a workdir: every variable, strictly; `reinit_head` keeps the fresh
    classifiers); a ConvNeXt classifier's step dir or workdir (no backbone/ params) initializes the backbone."""
    found = weights_lib.read_weights(path).tensors if os.path.isdir(path) else {}
    if any(k.startswith('params/backbone/') for k in found):
      tree = weights_lib.unflatten(found)
      loaded = {k: tree.get(k, {}) for k in ('params', 'batch_stats')}
      keep = [r'params/\w+_head/conv_seg/\w+'] if reinit_head else []
      merged = weights_lib.merge_params(loaded, variables, keep_fresh=keep, source=path)
      return {'params': merged.get('params', {}), 'batch_stats': merged.get('batch_stats', {})}
    from convnext_jax import upernet_convert  # pylint: disable=import-outside-toplevel  (torch only when needed)

    return upernet_convert.load_pretrained(variables, path, reinit_head)

  def extra_results(self, state):
    from core_jax import counting  # pylint: disable=import-outside-toplevel

    return {'params': counting.count_params(state.params)}
