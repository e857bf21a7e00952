"""What ThiNet (methods.thinet) and regression-based pruning (methods.regression) share: sampled activations,
least squares, and the layer-by-layer loop through pruning_jax.surgery.

Both prune the channels of a channel set by looking at its *consumer*, the conv that reads them (VGG: the next
conv; ResNets: the next conv of the block; a channel selection: the block's first conv), and reconstruct that
consumer's output from fewer input channels:

  sample_layer(model, variables, images, set_name, ...)   -> LayerSamples: the consumer's input patches at random
                                     output positions (`per_image` of them per image, the papers' sampling), the
                                     consumer's kernel, and the output to reconstruct (without bias): the model's
                                     own, or a `reference` model's (the unpruned one, He et al.'s choice)
  output_error(samples, keep, kernel=None)    mean squared reconstruction error of keeping the positions `keep`
                                     (with the kept channels' kernel `kernel`, default: the consumer's own slice)
  solve_least_squares(gram, rhs)     min ||A x - b||^2 from A^T A and A^T b (minimum-norm on rank deficiency)
  refit_kernel(samples, keep)        least-squares consumer kernel over the kept channels (He et al.'s step 2)
  prune_layer_by_layer(...)          for each set in forward order: sample, let the method choose the kept
                                     channels and their consumer kernel, cut through surgery, write the kernel,
                                     optionally fine-tune before the next set
  prune(method, choose, model_name_or_family, cfg, variables, images, keep_ratio, ...)  the methods' `prune`:
                                     keep counts, the loop, the PruneResult and its report
  keep_counts(model, sets, keep_ratio, keep_widths)   {set: channels kept}, one-line errors for bad input
  target_widths(model, name)         keep_widths that prune `model` to a named fixed architecture of the zoo
                                     (vgg16_imagenet -> vgg16_thinet_conv / vgg16_5x, resnet50 ->
                                     resnet50_thinet30/50/70 / resnet50_2x): the method picks the channels,
                                     the paper fixed only their counts

Channels are *positions* in the consumer's current input (a selection set's positions map to stream channel ids).
Memory: patches are N x kh*kw x C float32 (N = images x per_image), held for one layer at a time.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import numpy as np

from core_jax.compute import Compute
from core_jax.errors import UserError, check_fraction
from pruning_jax import models, surgery
from pruning_jax.methods import PruneResult, resolve_model


@dataclasses.dataclass
class LayerSamples:
  set_name: str
  consumer: str  # module path of the conv whose output is reconstructed
  patches: np.ndarray  # (N, kh*kw, C) the consumer's input at the sampled output positions
  kernel: np.ndarray  # (kh, kw, C, O) the consumer's current kernel
  target: np.ndarray  # (N, O) the output to reconstruct, without the consumer's bias
  out_channel: np.ndarray  # (N,) one random output channel per sample (ThiNet samples scalars)

  @property
  def num_channels(self) -> int:
    return int(self.patches.shape[-1])

  def flat_kernel(self) -> np.ndarray:
    kh, kw, c, o = self.kernel.shape
    return self.kernel.reshape(kh * kw, c, o)


# ----------------------------------------------------------------------------------------------- the layers
def consumer_of(cs: surgery.ChannelSet) -> str | None:
  """The conv reading the set's channels on its input axis (None: a Dense head or anything that is not a conv)."""
  for collection, path, axis, _ in cs.members:
    if collection == 'params' and axis == -2 and path.endswith('/kernel') and path != f'{cs.conv}/kernel':
      return path[: -len('/kernel')]
  return None


def prunable_sets(model) -> list[surgery.ChannelSet]:
  """Channel sets whose consumer is a conv (the last VGG conv feeds the classifier and is left alone)."""
  return [cs for cs in surgery.channel_sets(model) if consumer_of(cs) is not None]


def keep_counts(model, sets: Sequence[str] | None, keep_ratio, keep_widths: Mapping | None = None) -> dict[str, int]:
  """{set name: channels to keep}: `keep_widths` names exact counts, the other `sets` (default: every prunable
  set) keep floor(width * keep_ratio)."""
  known = {cs.name: cs for cs in prunable_sets(model)}
  family = models.family_of(model)
  if not known:
    raise UserError(f'{family} has no channel set read by a conv: nothing to reconstruct')
  keep_widths = dict(keep_widths or {})
  names = list(sets) if sets else ([] if keep_widths else list(known))
  names += [n for n in keep_widths if n not in names]
  for name in names:
    if name not in known:
      raise UserError(
          f'{name!r} is not a channel set of {family} read by a conv (known: {", ".join(list(known)[:6])}, ...)'
      )
  out = {}
  for name in [cs for cs in known if cs in names]:  # forward order
    width = _current_width(model, known[name])
    if name in keep_widths:
      n = keep_widths[name]
      if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= width:
        raise UserError(f'keep width of {name} must be an int in [1, {width}], got {n!r}')
    else:
      ratio = check_fraction(keep_ratio, 'keep ratio')
      n = int(width * ratio + 1e-9)
      if n < 1:
        raise UserError(f'keep ratio {ratio} leaves no channel of {name} (width {width})')
    out[name] = int(n)
  return out


def target_widths(model, name: str) -> dict[str, int]:
  """{set: width} that turns `model` into the named fixed architecture `name` (same family, same layout, every
  changed width read by a conv and not wider than now)."""
  if name not in models.NAMED:
    raise UserError(f'unknown fixed architecture {name!r} (e.g. vgg16_thinet_conv, resnet50_thinet50, vgg16_5x)')
  spec, family = models.NAMED[name], models.family_of(model)
  if spec.family != family:
    raise UserError(
        f'fixed architecture {name} is a {spec.family} model; it cannot be pruned from this {family} model'
        + (
            ' (VGG-GAP / VGG-Tiny replace the FC head: train them from scratch)'
            if spec.family == 'vgg_gap_imagenet'
            else ''
        )
    )
  cfg, target = models.cfg_of(model), models.normalize_cfg(spec.cfg)
  if len(cfg) != len(target) or [v == 'M' for v in cfg] != [v == 'M' for v in target]:
    raise UserError(f'fixed architecture {name} has cfg {list(target)}, not the layout of this model {list(cfg)}')
  sets = {cs.cfg_index: cs for cs in surgery.channel_sets(model)}
  readable = {cs.name for cs in prunable_sets(model)}
  widths = {}
  for i, (now, want) in enumerate(zip(cfg, target)):
    if now == want or now == 'M':
      continue
    cs = sets.get(i)
    if want > now or cs is None or cs.name not in readable:
      raise UserError(
          f'fixed architecture {name}: cfg entry {i} ({now} -> {want}) is not a width this model can prune to'
      )
    widths[cs.name] = int(want)
  return widths


def get_leaf(tree: Mapping, path: str):
  for part in path.split('/'):
    tree = tree[part]
  return tree


def set_leaf(tree: Mapping, path: str, value) -> dict:
  """A copy of the nested dict `tree` with the leaf at `path` replaced (the other leaves shared)."""
  head, _, rest = path.partition('/')
  out = dict(tree)
  out[head] = set_leaf(tree[head], rest, value) if rest else value
  return out


def _current_width(model, cs: surgery.ChannelSet) -> int:
  if cs.kind == 'conv':
    return cs.width
  return len(_selection_ids(model, cs))


def _selection_ids(model, cs: surgery.ChannelSet) -> list[int]:
  sel = getattr(model, 'selections', None)
  cur = None if sel is None else sel[cs.selection_index]
  return list(range(cs.width)) if cur is None else list(cur)


# ----------------------------------------------------------------------------------------------- sampling
class _Captured(Exception):
  """Raised by the interceptor once the consumer's input is seen: the rest of the forward pass is not needed."""

  def __init__(self, inputs):
    super().__init__('captured')
    self.inputs = inputs


def _input_capture(model, path: str):
  """(variables, images) -> the input of the module at `path` as numpy, and a dict that then holds that conv's
  kernel size, strides and padding. Eager (op by op, each op compiled once per shape by JAX): the forward pass
  stops at the consumer, and no whole-model program is compiled per layer and per pruned shape."""
  geometry = {}
  if hasattr(model, 'compute'):  # plain XLA convs: the same values, far fewer ops than the CPU policy's matmuls
    model = model.clone(compute=Compute())

  def intercept(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and '/'.join(context.module.path) == path:
      m = context.module
      geometry.update(kernel=tuple(m.kernel_size), strides=tuple(m.strides), padding=tuple(map(tuple, m.padding)))
      raise _Captured(args[0])
    return next_fun(*args, **kwargs)

  def run(variables, images):
    try:
      with nn.intercept_methods(intercept):
        model.apply(variables, images, train=False)
    except _Captured as c:
      return np.asarray(c.inputs, np.float32)
    raise ValueError(f'module {path} was not called')

  return run, geometry


def _patches(inputs: np.ndarray, image_index, ys, xs, kernel, strides, padding) -> np.ndarray:
  """(N, kh*kw, C): the zero-padded input window of each sampled output position (y, x) of image image_index."""
  (pt, pb), (pl, pr) = padding
  padded = np.pad(inputs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw = kernel
  dy, dx = np.meshgrid(np.arange(kh), np.arange(kw), indexing='ij')
  rows = ys[:, None] * strides[0] + dy.reshape(-1)[None]
  cols = xs[:, None] * strides[1] + dx.reshape(-1)[None]
  return padded[image_index[:, None], rows, cols]


def _output_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - k) // stride + 1


def sample_layer(
    model,
    variables: Mapping,
    images: np.ndarray,
    set_name: str,
    *,
    per_image: int = 10,
    seed: int = 0,
    reference: tuple | None = None,
    batch_size: int = 16,
) -> LayerSamples:
  """The consumer's input patches at `per_image` random output positions of every image, its kernel, and the
  output to reconstruct: its own (reference None) or that of `reference` = (model, variables) at the same
  positions (the consumer has the same module path there)."""
  sets = {cs.name: cs for cs in surgery.channel_sets(model)}
  if set_name not in sets or consumer_of(sets[set_name]) is None:
    raise UserError(f'{set_name!r} is not a channel set of {models.family_of(model)} read by a conv')
  consumer = consumer_of(sets[set_name])
  if per_image < 1:
    raise UserError(f'locations per image must be >= 1, got {per_image}')
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[0] == 0:
    raise UserError(f'sampling needs a batch of NHWC images, got shape {images.shape}')
  rng = np.random.default_rng(seed)
  capture, geometry = _input_capture(model, consumer)
  kernel = np.asarray(get_leaf(variables['params'], f'{consumer}/kernel'), np.float32)
  ref = None
  if reference is not None:
    ref_capture, ref_geometry = _input_capture(reference[0], consumer)
    ref_kernel = np.asarray(get_leaf(reference[1]['params'], f'{consumer}/kernel'), np.float32)
    ref = (ref_capture, ref_geometry, ref_kernel, reference[1])
  patches, targets, channels = [], [], []
  for start in range(0, images.shape[0], batch_size):
    chunk = images[start : start + batch_size]
    inputs = np.asarray(capture(variables, chunk), np.float32)
    k, s, p = geometry['kernel'], geometry['strides'], geometry['padding']
    out_h, out_w = (_output_size(inputs.shape[i + 1], k[i], s[i], p[i]) for i in (0, 1))
    n = chunk.shape[0] * per_image
    image_index = np.repeat(np.arange(chunk.shape[0]), per_image)
    ys, xs = rng.integers(0, out_h, n), rng.integers(0, out_w, n)
    x = _patches(inputs, image_index, ys, xs, k, s, p).reshape(n, k[0] * k[1], -1)
    patches.append(x)
    channels.append(rng.integers(0, kernel.shape[-1], n))
    if ref is None:
      targets.append(np.einsum('nkc,kco->no', x, kernel.reshape(k[0] * k[1], *kernel.shape[2:])))
    else:
      ref_capture, g, ref_kernel, ref_vars = ref
      ref_inputs = np.asarray(ref_capture(ref_vars, chunk), np.float32)
      rx = _patches(ref_inputs, image_index, ys, xs, g['kernel'], g['strides'], g['padding']).reshape(n, -1)
      targets.append(rx @ ref_kernel.reshape(-1, ref_kernel.shape[-1]))
  return LayerSamples(
      set_name, consumer, np.concatenate(patches), kernel, np.concatenate(targets), np.concatenate(channels)
  )


# ----------------------------------------------------------------------------------------------- least squares
def solve_least_squares(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
  """argmin_x ||A x - b||^2 given gram = A^T A and rhs = A^T b (float64; minimum-norm where A is rank-deficient,
  e.g. a channel that is always zero on the samples)."""
  return np.linalg.lstsq(np.asarray(gram, np.float64), np.asarray(rhs, np.float64), rcond=None)[0]


def kept_design(samples: LayerSamples, keep) -> np.ndarray:
  """(N, kh*kw*c') the kept channels' patches, flattened in the (kh, kw, c) order of a conv kernel."""
  return samples.patches[:, :, np.asarray(keep, np.int64)].reshape(samples.patches.shape[0], -1)


def refit_kernel(samples: LayerSamples, keep) -> np.ndarray:
  """The least-squares consumer kernel over the kept channels: (kh, kw, c', O) minimizing the output error."""
  a = kept_design(samples, keep).astype(np.float64)
  w = solve_least_squares(a.T @ a, a.T @ samples.target)
  kh, kw, _, o = samples.kernel.shape
  return w.reshape(kh, kw, len(keep), o).astype(np.float32)


def output_error(samples: LayerSamples, keep, kernel: np.ndarray | None = None) -> float:
  """Mean over samples of ||target - patches_kept . kernel_kept||^2 (kernel_kept: the consumer's own slice)."""
  keep = np.asarray(keep, np.int64)
  kernel = samples.kernel[:, :, keep] if kernel is None else kernel
  pred = kept_design(samples, keep) @ kernel.reshape(-1, kernel.shape[-1])
  return float(np.mean(np.sum((samples.target - pred) ** 2, axis=1)))


# ----------------------------------------------------------------------------------------------- the loop
# choose(samples, num_keep) -> (kept positions, consumer kernel over them, JSON-able report of this layer)
Chooser = Callable[[LayerSamples, int], tuple[list[int], np.ndarray, dict]]
# between(model, variables, set name, index) -> variables: e.g. fine-tuning after each pruned layer
Between = Callable[[nn.Module, dict, str, int], dict]


def prune_layer_by_layer(
    model,
    variables: Mapping,
    images: np.ndarray,
    counts: Mapping[str, int],
    choose: Chooser,
    *,
    per_image: int = 10,
    seed: int = 0,
    target_from_reference: bool = False,
    between: Between | None = None,
):
  """(pruned model, its variables, per-layer reports): the sets of `counts` pruned one at a time in forward
  order, each from activations of the model pruned so far; the output to reconstruct is the current model's
  (ThiNet) or the unpruned model's (target_from_reference, He et al.: it also absorbs earlier layers' error)."""
  reference = (model, variables)
  current, current_vars = model, {c: dict(v) for c, v in variables.items()}
  layer_reports = []
  for index, (name, num_keep) in enumerate(counts.items()):
    samples = sample_layer(
        current,
        current_vars,
        images,
        name,
        per_image=per_image,
        seed=seed + index,
        reference=reference if target_from_reference else None,
    )
    keep_pos, kernel, layer_report = choose(samples, int(num_keep))
    keep_pos = sorted(int(i) for i in keep_pos)
    if len(keep_pos) != num_keep:
      raise AssertionError(f'{name}: the method kept {len(keep_pos)} channels, not {num_keep}')
    cs = {c.name: c for c in surgery.channel_sets(current)}[name]
    ids = keep_pos if cs.kind == 'conv' else [_selection_ids(current, cs)[p] for p in keep_pos]
    current, current_vars = surgery.prune(current, current_vars, {name: ids})
    current_vars['params'] = set_leaf(current_vars['params'], f'{samples.consumer}/kernel', kernel)
    layer_reports.append({'set': name, 'kept': len(keep_pos), 'of': samples.num_channels, **layer_report})
    if between is not None:
      current_vars = between(current, current_vars, name, index)
  return current, current_vars, layer_reports


def prune(
    method: str,
    choose: Chooser,
    model_name_or_family,
    cfg,
    variables: Mapping,
    images: np.ndarray,
    keep_ratio: float = 0.5,
    *,
    layers: Sequence[str] | None = None,
    keep_widths: Mapping[str, int] | None = None,
    target: str | None = None,
    per_image: int = 10,
    seed: int = 0,
    target_from_reference: bool = False,
    between: Between | None = None,
    num_classes: int | None = None,
    report: Mapping | None = None,
) -> PruneResult:
  """`choose` applied layer by layer to `variables` with sampling `images` (NHWC, the eval transform applied):
  every channel set of `layers` (default: each one read by a conv) keeps floor(width * keep_ratio) channels (or
  its `keep_widths` entry, or the widths of the fixed architecture `target`); `between(model, variables, set,
  index)` runs after each layer."""
  model = resolve_model(model_name_or_family, cfg, num_classes, variables=variables)
  if target:
    keep_widths = {**target_widths(model, target), **dict(keep_widths or {})}
  counts = keep_counts(model, layers, keep_ratio, keep_widths)
  small, small_vars, layer_reports = prune_layer_by_layer(
      model,
      variables,
      images,
      counts,
      choose,
      per_image=per_image,
      seed=seed,
      target_from_reference=target_from_reference,
      between=between,
  )
  full_report = {
      'method': method,
      'keep_ratio': None if target else float(keep_ratio),
      'target': target or None,
      **dict(report or {}),
      'cfg': list(models.cfg_of(small)),
      'samples_per_layer': int(np.asarray(images).shape[0]) * int(per_image),
      'kept': {r['set']: r['kept'] for r in layer_reports},
      'layers': layer_reports,
  }
  return PruneResult(small, small_vars, full_report)
