"""ADP-C anytime segmentation as a `core_jax` Task: an HRNet with several exits, trained and evaluated per exit.

Config fields read here (`configs/anytime/*`):
  model.arch, model.exits, model.exit_type ('ee' | 'rh'), model.inter_channels (0: the arch's),
  model.rh_max_depth (an RH exit k's down steps are min(4 - k, it): 3 = the paper's, fewer for small inputs),
  model.confidence_adaptive (CA on/off), model.tau (its threshold, in (0, 1]), model.masked_stages (2..4),
  model.bn_momentum (0.99 = the reference), model.conv_init ('normal' = the reference's N(0, 0.001) | 'he')
                          -> anytime_jax.hrnet.build
  loss.exit_weights       one weight per exit (the reference: all 1)
  loss.class_weights      one weight per class (the reference's 19 Cityscapes weights), () = uniform

Train loss: for every exit, its (aggregated) 1/4-resolution logits bilinearly upsampled (align_corners=False) to
the label size, class-weighted cross-entropy with ignore label 255 as PyTorch's weighted mean
(sum_i w_{y_i} nll_i / sum_i w_{y_i} over the non-ignored pixels of the global batch), summed over exits with
`loss.exit_weights`. Train metrics: 'loss', 'accuracy' (last exit's pixel accuracy), 'exit{k}_loss'.

Eval metrics (`eval_metrics`, one field per exit, each computing to a dict; flattened by metrics.to_floats):
  exit{k}/miou, exit{k}/pixel_accuracy, exit{k}/iou/<c>    the exit's confusion matrix over the eval set
                                                           (core_jax.metrics.confusion_matrix_metric)
  exit{k}/fraction    fraction of the 1/4-resolution pixels exit k computed, averaged over the eval images
  exit{k}/gflops      cumulative GFLOPs per image up to exit k (the paper's convention: conv/linear MACs / 1024^3,
                      backbone to stage k plus exits 1..k), averaged over the eval images: the dense count of
                      `core_jax.counting.count_macs_by_mark` at the eval size, where every masked conv's dense cost
                      is replaced by its sown actual cost (dense x p + the RBF interpolation term, anytime_jax.
                      confidence.Conv; anytime_jax.flops.ca_macs)
  mean/miou, mean/gflops, mean/fraction                    the mean over the exits (the paper's "mean" columns)
Primary metric: the last exit's mIoU ('exit4/miou'). Eval runs at the eval transforms' resolution (full
resolution: no resize) with `eval_batch_size`; padded examples (mask False) count for nothing.

`load_pretrained` (config.init_from): a timm HRNet backbone or an official ADP-C checkpoint (.pth/.safetensors,
anytime_jax.convert.load_pretrained: layout from the keys; `init_reinit_head` loads only an official file's
backbone), or one of our training checkpoints (a step dir, or a workdir: its
latest step). Our checkpoints load strictly except for the masked convs' `rbf_lambda`: a model with CA takes
the fresh 3.0 where the checkpoint has none, a model without CA ignores them, so one set of weights is
evaluated with and without CA. `init_reinit_head=True` keeps the fresh exits and head.
`extra_results`: params, the dense per-exit GFLOPs at the eval size, the eval size.
"""

import functools
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics

from anytime_jax import confidence, flops, hrnet
from anytime_jax import exits as exits_lib
from core_jax import counting
from core_jax import metrics as metrics_lib
from core_jax import weights as weights_lib
from core_jax.compute import cast_dtype, compute_dtype
from core_jax.errors import UserError
from core_jax.seg_ops import check_class_weights, pixel_accuracy, resize_bilinear, weighted_cross_entropy
from core_jax.task import Task, apply_model

GIGA = flops.GIGA
LABEL_KEY = 'segmentation'
_HEAD_MODULES = ('last_layer',)


# ---------------------------------------------------------------------------------------------- config
def model_options(config) -> dict:
  """The `hrnet.build` keyword arguments of `config.model`, validated (one-line UserErrors).

  Validated once per distinct `config.model`: anytime_jax.job checks a config before any data work, and the
  task built from the same config later (or each phase's task) takes the checked options from the cache."""
  m = config.model
  return dict(_model_options(json.dumps(m.to_dict() if hasattr(m, 'to_dict') else dict(m), sort_keys=True)))


@functools.lru_cache(maxsize=64)
def _model_options(model_json: str) -> dict:
  m = json.loads(model_json)
  name = str(m.get('name') or 'hrnet')  # base_config's '' means unset
  if name != 'hrnet':  # the line's one model family; its sizes are model.arch
    raise UserError(
        f"model.name {name!r}: the anytime line's model is 'hrnet' (its size is model.arch: {', '.join(hrnet.ARCHS)})"
    )
  arch = str(m.get('arch', 'w48'))
  hrnet.get_arch(arch)
  exits = tuple(m.get('exits', (1, 2, 3, 4)))
  for e in exits:
    if not isinstance(e, int) or isinstance(e, bool):
      raise UserError(f'model.exits must be stage numbers 1..4 (one exit after each stage), got {e!r}')
  masked = tuple(m.get('masked_stages', (2, 3, 4)))
  for s in masked:
    if isinstance(s, str) and s.lower() == 'stem':
      raise UserError(
          'model.masked_stages: the stem cannot be masked (it runs before any exit gives a mask); ' 'stages 2..4 can'
      )
    if not isinstance(s, int) or isinstance(s, bool):
      raise UserError(f'model.masked_stages must be stage numbers 2..4, got {s!r}')
  tau = confidence.check_tau(m.get('tau', 0.998))
  ca = bool(m.get('confidence_adaptive', False))
  inter = int(m.get('inter_channels', 0) or 0)
  if inter < 0:
    raise UserError(f'model.inter_channels must be >= 0 (0: the arch default), got {inter}')
  rh_max_depth = exits_lib.check_rh_max_depth(m.get('rh_max_depth', exits_lib.RH_MAX_DEPTH), 'model.rh_max_depth')
  exit_type = str(m.get('exit_type', 'rh'))
  exits, masked = hrnet.check_structure(exits, exit_type, tau if ca else None, masked if ca else ())
  bn_momentum = float(m.get('bn_momentum', exits_lib.BN_MOMENTUM))
  if not 0.0 <= bn_momentum < 1.0:
    raise UserError(f'model.bn_momentum must be in [0, 1) (Flax: 1 - PyTorch momentum), got {bn_momentum!r}')
  conv_init = str(m.get('conv_init', 'normal'))
  if conv_init not in confidence.CONV_INITS:
    raise UserError(f'model.conv_init must be one of {confidence.CONV_INITS}, got {conv_init!r}')
  return dict(
      arch=arch,
      exits=exits,
      exit_type=exit_type,
      inter_channels=inter or None,
      rh_max_depth=rh_max_depth,
      tau=tau if ca else None,
      masked_stages=masked or (2, 3, 4),
      bn_momentum=bn_momentum,
      conv_init=conv_init,
  )


def loss_weights(config, num_exits: int, num_classes: int) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
  """(exit weights, class weights or None) from `config.loss`, validated."""
  lcfg = config.get('loss', None) or {}
  exit_w = tuple(float(w) for w in lcfg.get('exit_weights', ()) or (1.0,) * num_exits)
  if len(exit_w) != num_exits:
    raise UserError(f'loss.exit_weights has {len(exit_w)} entries; the model has {num_exits} exits')
  if any(w < 0 for w in exit_w):
    raise UserError('loss.exit_weights must be >= 0')
  return exit_w, check_class_weights(lcfg.get('class_weights', ()), num_classes, 'loss.class_weights')


def validate_config(config) -> None:
  """Every model / loss / compute option checked before any data or device work (main calls it first)."""
  opts = model_options(config)
  # the compute policy and dtype: a bad one was found only when a phase built its model, after the job had
  # started the phase (or, eval-only, after looking for the checkpoint)
  confidence.check_policy(config.get('compute'))
  compute_dtype(config.get('compute_dtype', 'float32'))
  num_exits = len(opts['exits'])
  lcfg = config.get('loss', None) or {}
  exit_w = tuple(lcfg.get('exit_weights', ()) or ())
  if exit_w and len(exit_w) != num_exits:
    raise UserError(f'loss.exit_weights has {len(exit_w)} entries; the model has {num_exits} exits')


# ---------------------------------------------------------------------------------------------- metrics
def exit_metric(k: int, num_classes: int) -> type[metrics.Metric]:
  """Exit k's eval metric: its confusion matrix plus the eval-set averages of its fraction and GFLOPs."""
  confusion_cls = metrics_lib.confusion_matrix_metric(num_classes, predictions_key=f'predictions_exit{k}')

  @flax.struct.dataclass
  class ExitMetric(metrics.Metric):
    confusion: confusion_cls
    fraction_sum: jax.Array
    gflops_sum: jax.Array
    count: jax.Array

    @classmethod
    def from_model_output(cls, **outputs):
      m = jnp.asarray(outputs['mask']).astype(jnp.float32)
      return cls(
          confusion=confusion_cls.from_model_output(**outputs),
          fraction_sum=(outputs[f'fraction_exit{k}'] * m).sum(),
          gflops_sum=(outputs[f'gflops_exit{k}'] * m).sum(),
          count=m.sum(),
      )

    def merge(self, other):
      return type(self)(
          confusion=self.confusion.merge(other.confusion),
          fraction_sum=self.fraction_sum + other.fraction_sum,
          gflops_sum=self.gflops_sum + other.gflops_sum,
          count=self.count + other.count,
      )

    def compute(self):
      n = float(self.count)
      return {
          **self.confusion.compute(),
          'fraction': float(self.fraction_sum) / n if n else float('nan'),
          'gflops': float(self.gflops_sum) / n if n else float('nan'),
      }

  ExitMetric.__name__ = ExitMetric.__qualname__ = f'Exit{k}Metric'
  return ExitMetric


def eval_metrics_class(exits, num_classes: int) -> type[metrics.Collection]:
  """A clu Collection with one `exit{k}` field per exit; compute() adds 'mean' over the exits."""
  annotations = {f'exit{k}': exit_metric(k, num_classes) for k in exits}

  def compute(self):
    out = metrics.Collection.compute(self)
    per_exit = [out[f'exit{k}'] for k in exits]
    out['mean'] = {key: float(np.mean([e[key] for e in per_exit])) for key in ('miou', 'gflops', 'fraction')}
    return out

  cls = type(
      'AnytimeEvalMetrics',
      (metrics.Collection,),
      {'__annotations__': annotations, 'compute': compute, '__module__': __name__},
  )
  return flax.struct.dataclass(cls)


def train_metrics_class(exits) -> type[metrics.Collection]:
  annotations = {'loss': metrics.Average.from_output('loss'), 'accuracy': metrics.Average.from_output('accuracy')}
  annotations.update({f'exit{k}_loss': metrics.Average.from_output(f'exit{k}_loss') for k in exits})
  cls = type('AnytimeTrainMetrics', (metrics.Collection,), {'__annotations__': annotations, '__module__': __name__})
  return flax.struct.dataclass(cls)


# ---------------------------------------------------------------------------------------------- task
class AnytimeSegTask(Task):
  primary_metric = 'exit4/miou'
  progress_metrics = ('loss', 'accuracy')

  def __init__(self, config, dataset_info):
    super().__init__(config, dataset_info)
    self.options = model_options(config)
    self.exits = self.options['exits']
    self.num_classes = (
        int(dataset_info.num_classes)
        if dataset_info is not None and dataset_info.num_classes
        else int(config.model.get('num_classes', 19))
    )
    self.exit_weights, self.class_weights = loss_weights(config, len(self.exits), self.num_classes)
    self.primary_metric = f'exit{self.exits[-1]}/miou'
    self.train_metrics = train_metrics_class(self.exits)
    self.eval_metrics = eval_metrics_class(self.exits, self.num_classes)
    self._dense_marks: dict[tuple[int, int], dict[str, int]] = {}
    self.eval_size: tuple[int, int] | None = None

  def build_model(self):
    return hrnet.build(
        num_classes=self.num_classes,
        compute=confidence.for_backend(self.config.get('compute')),
        dtype=cast_dtype(self.config.compute_dtype),
        **self.options,
    )

  def init_inputs(self, example_batch):
    image = jnp.asarray(example_batch[self.input_key][:1])
    self.eval_size = tuple(int(d) for d in image.shape[1:3])
    return (image,)

  def dense_marks(self, height: int, width: int, variables: dict | None = None) -> dict[str, int]:
    """Per-image cumulative dense MACs at each exit ({'exit1': .., 'total': ..}) for one input size (cached).
    `variables` (the eval step's): their shapes stand in for an abstract init of the model, which took a third of
    the eval step's tracing time (the count itself is one abstract forward pass)."""
    if (height, width) not in self._dense_marks:
      abstract = None
      if variables is not None:
        kept = {k: variables[k] for k in ('params', 'batch_stats') if k in variables}
        abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), kept)
      self._dense_marks[(height, width)] = flops.dense_macs(self.build_model(), height, width, variables=abstract)
    return self._dense_marks[(height, width)]

  def train_loss(self, model, variables, batch, rng):
    out, new_vars = apply_model(model, variables, batch[self.input_key], train=True, rng=rng)
    labels = batch[LABEL_KEY]
    metrics_out, total = {}, 0.0
    for k, logits, w in zip(self.exits, out['logits'], self.exit_weights):
      loss_k = weighted_cross_entropy(logits, labels, self.class_weights)
      metrics_out[f'exit{k}_loss'] = loss_k
      total = total + w * loss_k
    metrics_out['loss'] = total
    metrics_out['accuracy'] = pixel_accuracy(out['logits'][-1], labels)
    return total, (metrics_out, new_vars)

  def eval_constants(self):
    """The confidence threshold as an argument of the eval step: evaluating the same weights at another tau
    (eval-only runs, the job's eval_taus) reuses the compiled program instead of compiling one per tau."""
    tau = self.options['tau']
    return {} if tau is None else {'tau': np.float32(tau)}

  def eval_outputs(self, model, variables, batch):
    image, labels = batch[self.input_key], batch[LABEL_KEY]
    variables = {k: v for k, v in variables.items() if k != counting.MACS_COLLECTION}
    out, state = model.apply(variables, image, train=False, mutable=[counting.MACS_COLLECTION])
    macs = flops.ca_macs(
        self.dense_marks(*image.shape[1:3], variables), state.get(counting.MACS_COLLECTION, {}), image.shape[0]
    )
    outputs = {'labels': labels, 'mask': batch['mask']}
    for k, logits, fraction in zip(self.exits, out['logits'], out['fractions']):
      up = resize_bilinear(logits.astype(jnp.float32), *labels.shape[1:3])
      outputs[f'predictions_exit{k}'] = jnp.argmax(up, axis=-1)
      outputs[f'fraction_exit{k}'] = fraction.astype(jnp.float32)
      outputs[f'gflops_exit{k}'] = macs[f'exit{k}'] / GIGA
    return outputs

  def load_pretrained(self, variables, path, reinit_head):
    if os.path.isdir(path):
      loaded, source = read_our_checkpoint(path), path
    else:
      from anytime_jax import convert  # pylint: disable=import-outside-toplevel  (torch only when needed)

      return convert.load_pretrained(variables, path, reinit_head)
    return fit_variables(variables, loaded, source, keep_head=reinit_head)

  def eval_tag(self):
    """'tau<t>' with confidence adaptivity (one set of weights evaluates at any threshold), else 'dense'."""
    tau = self.options['tau']
    return 'dense' if tau is None else f'tau{float(tau):g}'

  def extra_results(self, state):
    res = {'params': counting.count_params(state.params)}
    if self.eval_size is not None:
      marks = self.dense_marks(*self.eval_size)
      res['eval_size'] = list(self.eval_size)
      res['gflops_dense'] = {k: v / GIGA for k, v in marks.items() if k.startswith('exit')}
    res['model'] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
    return res


# ---------------------------------------------------------------------------------------------- weights
def read_our_checkpoint(path: str) -> dict:
  """{'params', 'batch_stats'} of a training step dir, or of a workdir's latest step."""
  tree = weights_lib.unflatten(weights_lib.read_weights(path).tensors)
  return {'params': tree.get('params', {}), 'batch_stats': tree.get('batch_stats', {})}


def fit_variables(fresh: dict, loaded: dict, source: str, keep_head: bool = False) -> dict:
  """`fresh` ({'params', 'batch_stats'}) with the values of `loaded` (core_jax.weights.merge_params): same keys
  and shapes, except masked convs' `rbf_lambda` (kept fresh where `loaded` has none, dropped where the model has
  none) and, with `keep_head`, the exits and head (kept fresh)."""
  head = [rf'[^/]+/(exit[^/]*|{"|".join(_HEAD_MODULES)})(/.*)?'] if keep_head else []
  fresh = {k: fresh.get(k) or {} for k in ('params', 'batch_stats')}
  loaded = {k: loaded.get(k) or {} for k in ('params', 'batch_stats')}
  tree = weights_lib.merge_params(loaded, fresh, keep_fresh=head, optional=[r'params/.*/rbf_lambda'], source=source)
  return {'params': tree.get('params', {}), 'batch_stats': tree.get('batch_stats', {})}
