"""Guided pruning and transferred guided pruning (the paper's section 5, "pruning as architecture search").

Network Slimming's pruned architectures are consistent across runs (VGG-16 at 60%: conv1 down to about 40 of 64,
conv2-7 almost untouched, the 512-wide conv8-13 cut hardest). Guided pruning keeps only that pattern: the kept
width ratio of every *layer stage* (the prunable layers that share one feature-map size), averaged over several
pruning runs, applied to the unpruned network, which is then trained from scratch. The paper compares it with
uniform pruning (every layer cut by the same ratio) at the same parameter count: guided matches the pruned
architectures' parameter efficiency and beats uniform. Transferred guided pruning applies a pattern found on one
network and dataset to another (VGG-16 on CIFAR-10 -> VGG-19 on CIFAR-100) and still beats uniform.

Stages (`stages`; the maps between stages below say which transfers exist):
  vgg_l1, vgg_slimming, vgg_imagenet, vgg_bn_imagenet
      stage k = the convs between the (k-1)-th and the k-th 'M' of the cfg (one feature-map size; every VGG of the
      zoo has 5); vgg_bn_imagenet adds the stage 'fc' (its two BN1d FC widths, which ImageNet slimming prunes)
  resnet_cifar
      stage k = the inner widths of the k-th group of blocks (the residual widths 16/32/64 are never pruned)
A stage's ratio is its kept widths over its unpruned widths (sum over the stage's layers) of one run, averaged
over the runs. `granularity='layer'` averages each layer's ratio instead (the same layer layout only).

Transfer: stages map by name, within a family group -- stage k of any VGG to stage k of any VGG (VGG-16 -> VGG-19:
each of the 5 stages to itself; VGG-19's extra conv in stages 3-5 takes its stage's ratio; a CIFAR VGG's stage k
runs at 32 / 2^(k-1) pixels, an ImageNet VGG's at 224 / 2^(k-1): the same position in the network), stage k of a
CIFAR ResNet to stage k of another CIFAR ResNet (ResNet-56 -> ResNet-110). Between groups there is no map (a VGG
stage is a run of plain convs, a ResNet's pruned widths are block-internal; 5 stages against 3): an error. A
target stage the source has not got (an ImageNet VGG-11-BN's 'fc' from a CIFAR pattern) is an error too.

Widths: max(1, floor(ratio x unpruned width + 0.5)) (halves round up), so with the same architecture and
stage-wise equal widths the guided model's widths are the rounded averages of the runs' kept widths.

Guided sparsification (guided.structure='unstructured', the paper's unstructured counterpart): the source runs are
unstructured magnitude pruning (prune.percent of the conv weights, one global threshold); a stage is every conv
whose output has one spatial size (`conv_stages`, any family), its ratio the fraction of the stage's conv weights
the run kept, averaged over the runs (or per conv with granularity 'layer'). With the densities the runs' average
keep-probability maps of the kernels are kept (`KernelMap`, the paper's figure of 3x3 maps per layer stage): per
stage and kernel size, the fraction of the (in, out) channel pairs whose weight at each kernel position survived,
pooled over the stage's convs, per run, then averaged (their std over runs says how stable they are). The guided
network is the unpruned one under a mask drawn per conv (`sparse_mask`) with its stage's density and, at each
kernel position, that stage's map scaled to the conv's density (guided.kernel_maps, the default; False draws the
positions uniformly, densities only); it is trained from scratch as the mask implementation. Uniform
sparsification puts one density, the guided mask's overall one, in every conv (the same non-zero count within one
weight per conv), positions uniform. Transfer (guided.pattern_from with an unstructured pattern): the k-th stage
of the target (its k-th largest feature map) takes the source's k-th stage's density and maps (`sparse_stage_map`;
VGG-16 -> VGG-19 on CIFAR: 5 stages each, VGG-19's extra convs take their stage's); a different number of stages
is an error naming both networks.

  stages(family, cfg)                           [(stage name, cfg indices of its prunable widths)]
  average(runs, granularity='stage')            -> Pattern over `Run`s (one family, one unpruned cfg, >= 1 run)
  stage_map(pattern, family, cfg)               {target stage: source stage} (or the layer-wise identity)
  apply(pattern, family, cfg)                   the guided (or, on another network, transferred) cfg
  uniform(family, cfg, ratio)                   every prunable width x ratio (rounded as above)
  uniform_at_params(family, cfg, target, params_of)  (cfg, ratio): the uniform cfg whose params are closest
  Counter(num_classes, input_shape)             .params(family, cfg), .macs(family, cfg): exact, cached
  conv_stages(model, variables, input_shape)    unstructured: [(stage name, its conv kernel paths)]
  average_density(masks, layout, ...)           unstructured: -> Pattern of kept-weight fractions
  average_kernel_maps(masks, layout)            unstructured: per stage and kernel size, the keep probability maps
  sparse_stage_map(pattern, layout, family)     unstructured: {target stage: source stage} (stage k -> stage k)
  conv_densities(pattern, layout, mapping)      {conv kernel path: its density}
  conv_position_weights(pattern, layout, shapes, mapping)  {conv kernel path: its stage's map, flat} (k x k only)
  sparse_mask(shapes, densities, seed, position_weights)  {conv kernel path: 0/1 mask with round(density x size)
                                                ones, split over the kernel positions by the weights when given}
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from core_jax.errors import UserError
from pruning_jax import models

VGG_FAMILIES = ('vgg_l1', 'vgg_slimming', 'vgg_imagenet', 'vgg_bn_imagenet')
GROUPS = {**{f: 'vgg' for f in VGG_FAMILIES}, 'resnet_cifar': 'resnet_cifar'}  # transfers stay within a group
GRANULARITIES = ('stage', 'layer')
STRUCTURES = ('structured', 'unstructured')  # channel widths | conv weight densities


@dataclasses.dataclass(frozen=True)
class Run:
  """One pruning run: its family, the unpruned cfg and the cfg pruning left."""

  family: str
  cfg: tuple
  pruned_cfg: tuple


@dataclasses.dataclass(frozen=True)
class KernelMap:
  """One stage's keep probability at each position of its k x k kernels (unstructured): per run, the kept weights
  at the position over the (in, out) channel pairs there, pooled over the stage's convs of that kernel size."""

  stage: str
  kernel: tuple[int, int]  # (kh, kw)
  runs: tuple[tuple[float, ...], ...]  # per run kh x kw values, row-major

  @property
  def mean(self) -> np.ndarray:
    return np.mean(np.asarray(self.runs, np.float64), axis=0).reshape(self.kernel)

  @property
  def std(self) -> np.ndarray:
    """The sample std over runs at each position (0 for one run): how stable the map is across runs."""
    runs = np.asarray(self.runs, np.float64)
    return (np.std(runs, axis=0, ddof=1) if len(runs) > 1 else np.zeros(runs.shape[1])).reshape(self.kernel)

  def to_json(self) -> dict:
    return {
        'stage': self.stage,
        'kernel': list(self.kernel),
        'mean': self.mean.tolist(),
        'std': self.std.tolist(),
        'runs': [np.reshape(r, self.kernel).tolist() for r in self.runs],
    }

  @classmethod
  def from_json(cls, d: dict) -> 'KernelMap':
    kernel = tuple(int(k) for k in d['kernel'])
    runs = d.get('runs') or [d['mean']]
    return cls(d['stage'], kernel, tuple(tuple(float(v) for v in np.reshape(r, -1)) for r in runs))


@dataclasses.dataclass(frozen=True)
class Pattern:
  """Kept-width ratios averaged over pruning runs of one network, per stage (or per prunable layer)."""

  family: str
  cfg: tuple  # the unpruned cfg the runs pruned
  granularity: str
  names: tuple[str, ...]  # stage names, or 'layer<i>' per prunable layer in cfg order
  ratios: tuple[float, ...]
  runs: tuple[tuple, ...] = ()  # the pruned cfgs averaged (unstructured: each run's ratios)
  source: str = ''  # what produced the runs (method, ratio, dataset), for the table
  structure: str = 'structured'  # 'unstructured': the ratios are kept fractions of the conv weights
  kernel_maps: tuple[KernelMap, ...] = ()  # unstructured: per stage and kernel size, the keep-probability maps

  def to_json(self) -> dict:
    return {
        'family': self.family,
        'cfg': list(self.cfg),
        'granularity': self.granularity,
        'ratios': dict(zip(self.names, self.ratios)),
        'runs': [list(r) for r in self.runs],
        'source': self.source,
        'structure': self.structure,
        'kernel_maps': [m.to_json() for m in self.kernel_maps],
    }

  @classmethod
  def from_json(cls, d: dict, where: str = 'pattern') -> 'Pattern':
    missing = [k for k in ('family', 'cfg', 'granularity', 'ratios') if k not in d]
    if missing:
      raise UserError(f'{where}: not a guided-pruning pattern (no {missing[0]!r})')
    ratios = dict(d['ratios'])
    return cls(
        d['family'],
        models.normalize_cfg(d['cfg']),
        d['granularity'],
        tuple(ratios),
        tuple(float(v) for v in ratios.values()),
        tuple(tuple(r) for r in d.get('runs') or ()),
        d.get('source', ''),
        d.get('structure', 'structured'),
        tuple(KernelMap.from_json(m) for m in d.get('kernel_maps') or ()),
    )


def _group(family: str) -> str:
  if family not in GROUPS:
    raise UserError(f'guided pruning has no layer stages for family {family!r} (families: {", ".join(GROUPS)})')
  return GROUPS[family]


def stages(family: str, cfg: Sequence) -> list[tuple[str, tuple[int, ...]]]:
  """[(stage name, indices into cfg of the stage's prunable widths)] in forward order."""
  cfg = models.normalize_cfg(cfg)
  if _group(family) == 'resnet_cifar':
    if not cfg or len(cfg) % 3:
      raise UserError(f'resnet_cifar needs 3n block widths, got {len(cfg)}')
    n = len(cfg) // 3
    return [(f'stage{k + 1}', tuple(range(k * n, (k + 1) * n))) for k in range(3)]
  body = len(cfg) - 2 if family == 'vgg_bn_imagenet' else len(cfg)
  groups, current = [], []
  for i, v in enumerate(cfg[:body]):
    if v == 'M':
      if current:
        groups.append(tuple(current))
      current = []
    else:
      current.append(i)
  if current:
    groups.append(tuple(current))
  out = [(f'stage{k + 1}', g) for k, g in enumerate(groups)]
  if family == 'vgg_bn_imagenet':
    out.append(('fc', (len(cfg) - 2, len(cfg) - 1)))
  return out


def prunable(family: str, cfg: Sequence) -> tuple[int, ...]:
  """The cfg indices guided pruning rewidths, in cfg order."""
  return tuple(sorted(i for _, ix in stages(family, cfg) for i in ix))


def width(ratio: float, base: int) -> int:
  return max(1, int(math.floor(ratio * base + 0.5)))


def _check_run(run: Run, cfg: tuple) -> tuple:
  pruned = models.normalize_cfg(run.pruned_cfg)
  if len(pruned) != len(cfg) or any((a == 'M') != (b == 'M') for a, b in zip(pruned, cfg)):
    raise UserError(f'a pruned cfg {list(pruned)} does not have the layout of its unpruned cfg {list(cfg)}')
  return pruned


def average(runs: Sequence[Run], granularity: str = 'stage', source: str = '') -> Pattern:
  """The runs' kept-width ratios averaged per stage (or per prunable layer)."""
  runs = list(runs)
  if not runs:
    raise UserError('guided pruning averages at least 1 pruning run, got none')
  if granularity not in GRANULARITIES:
    raise UserError(f'guided.granularity must be one of {", ".join(GRANULARITIES)}, got {granularity!r}')
  family, cfg = runs[0].family, models.normalize_cfg(runs[0].cfg)
  for run in runs[1:]:
    if run.family != family:
      raise UserError(f'guided pruning averages runs of one family, got {family!r} and {run.family!r}')
    if models.normalize_cfg(run.cfg) != cfg:
      raise UserError(f'guided pruning averages runs of one unpruned network, got cfgs {list(cfg)} and {list(run.cfg)}')
  pruned = [_check_run(r, cfg) for r in runs]
  if granularity == 'stage':
    layout = stages(family, cfg)
    names = tuple(name for name, _ in layout)
    per_run = [[sum(p[i] for i in ix) / sum(cfg[i] for i in ix) for _, ix in layout] for p in pruned]
  else:
    ix = prunable(family, cfg)
    names = tuple(f'layer{i}' for i in ix)
    per_run = [[p[i] / cfg[i] for i in ix] for p in pruned]
  ratios = tuple(sum(r[k] for r in per_run) / len(per_run) for k in range(len(names)))
  return Pattern(family, cfg, granularity, names, ratios, tuple(tuple(p) for p in pruned), source)


def stage_map(pattern: Pattern, family: str, cfg: Sequence) -> dict[str, str]:
  """{target stage (or layer): the source's stage (or layer) whose ratio it takes}."""
  cfg = models.normalize_cfg(cfg)
  if pattern.structure != 'structured':
    raise UserError(
        'an unstructured pattern (conv weight densities) does not rewidth a network: guided.structure=structured '
        'takes the pattern of a guided pruning experiment'
    )
  if _group(pattern.family) != _group(family):
    raise UserError(
        f'no stage mapping from {pattern.family} to {family}: guided patterns transfer between VGGs or between '
        'CIFAR ResNets only'
    )
  if pattern.granularity == 'layer':
    target = tuple(f'layer{i}' for i in prunable(family, cfg))
    if family != pattern.family or target != pattern.names:
      raise UserError(
          f'a per-layer pattern applies to its own layer layout only ({pattern.family}, {len(pattern.names)} '
          f'prunable layers); transfer a per-stage one (guided.granularity=stage)'
      )
    return {n: n for n in target}
  source = set(pattern.names)
  out = {}
  for name, _ in stages(family, cfg):
    if name not in source:
      raise UserError(
          f'no stage mapping for {family} stage {name!r}: the pattern ({pattern.family}) has stages '
          f'{", ".join(pattern.names)}'
      )
    out[name] = name
  return out


def apply(pattern: Pattern, family: str, cfg: Sequence) -> tuple:
  """`cfg` rewidthed by the pattern: every prunable width x its stage's (layer's) averaged ratio."""
  cfg = models.normalize_cfg(cfg)
  ratio_of = dict(zip(pattern.names, pattern.ratios))
  mapping = stage_map(pattern, family, cfg)
  out = list(cfg)
  if pattern.granularity == 'layer':
    for i in prunable(family, cfg):
      out[i] = width(ratio_of[mapping[f'layer{i}']], cfg[i])
  else:
    for name, ix in stages(family, cfg):
      for i in ix:
        out[i] = width(ratio_of[mapping[name]], cfg[i])
  return tuple(out)


def uniform(family: str, cfg: Sequence, ratio: float) -> tuple:
  """Every prunable width of `cfg` x `ratio` (uniform channel pruning)."""
  cfg = models.normalize_cfg(cfg)
  out = list(cfg)
  for i in prunable(family, cfg):
    out[i] = width(ratio, cfg[i])
  return tuple(out)


def uniform_at_params(
    family: str, cfg: Sequence, target_params: int, params_of: Callable[[str, tuple], int]
) -> tuple[tuple, float]:
  """(uniform cfg, its ratio) with params closest to `target_params`.

  A uniform width max(1, floor(r w + 1/2)) steps from k to k + 1 at r = (k + 1/2) / w, so uniform cfgs change only
  at those ratios: one ratio between each two neighbouring steps stands for every cfg there is. Params grow with
  r, so a bisection over those ratios brackets the target between two neighbouring cfgs and the closer one wins:
  the match is within one step, the params of one more channel in every layer whose width changes at that ratio
  (at most one channel per layer)."""
  cfg = models.normalize_cfg(cfg)
  widths = {cfg[i] for i in prunable(family, cfg)}
  steps = sorted({(k + 0.5) / w for w in widths for k in range(1, w)})
  edges = [0.0, *steps, 1.0]
  candidates = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:]) if b > a] + [1.0]

  def params(j: int) -> int:
    return params_of(family, uniform(family, cfg, candidates[j]))

  lo, hi = 0, len(candidates) - 1
  if params(hi) <= target_params:
    return uniform(family, cfg, 1.0), 1.0
  if params(lo) >= target_params:
    return uniform(family, cfg, candidates[lo]), candidates[lo]
  while hi - lo > 1:  # params(lo) < target <= params(hi)
    mid = (lo + hi) // 2
    if params(mid) >= target_params:
      hi = mid
    else:
      lo = mid
  best = lo if target_params - params(lo) < params(hi) - target_params else hi
  return uniform(family, cfg, candidates[best]), candidates[best]


class Counter:
  """Exact params and MACs (one image) of family + cfg architectures, from abstract inits, cached per cfg."""

  def __init__(self, num_classes: int, input_shape: Sequence[int]):
    self.num_classes = int(num_classes)
    self.shape = tuple(int(d) for d in input_shape)
    self._variables, self._macs = {}, {}

  def _abstract(self, family: str, cfg: tuple):
    key = (family, models.normalize_cfg(cfg))
    if key not in self._variables:
      model = models.build(family, key[1], self.num_classes)
      v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(self.shape, jnp.float32)))
      self._variables[key] = (model, v)
    return key, self._variables[key]

  def params(self, family: str, cfg: tuple) -> int:
    from core_jax import counting  # pylint: disable=import-outside-toplevel

    return counting.count_params(self._abstract(family, cfg)[1][1]['params'])

  def macs(self, family: str, cfg: tuple) -> int:
    from core_jax import counting  # pylint: disable=import-outside-toplevel

    key, (model, v) = self._abstract(family, cfg)
    if key not in self._macs:
      self._macs[key] = counting.count_macs(model, jax.ShapeDtypeStruct(self.shape, jnp.float32), variables=v)
    return self._macs[key]


# ----------------------------------------------------------------------------------------------- guided sparsification
def conv_stages(model, variables, input_shape) -> list[tuple[str, tuple[str, ...]]]:
  """[(stage name, conv kernel paths)]: the convs grouped by the spatial size of their output, largest maps first
  (stage1 runs at the input's resolution in the CIFAR nets); `variables` may be zeros of the right shapes."""
  from pruning_jax.methods import magnitude  # pylint: disable=import-outside-toplevel

  maps = magnitude.conv_output_maps(model, variables, input_shape)
  sizes = sorted({m for m in maps.values()}, key=lambda m: -math.prod(m))
  return [(f'stage{k + 1}', tuple(p for p, m in maps.items() if m == size)) for k, size in enumerate(sizes)]


def average_density(
    masks, layout, granularity: str = 'stage', family: str = '', cfg: Sequence = (), source: str = ''
) -> Pattern:
  """The runs' kept fractions of the conv weights ({conv kernel path: 0/1 mask} per run) averaged per stage of
  `layout` (conv_stages), or per conv (granularity 'layer', named by their kernel paths), with the runs' kernel
  maps per stage (average_kernel_maps)."""
  masks = list(masks)
  if not masks:
    raise UserError('guided sparsification averages at least 1 pruning run, got none')
  if granularity not in GRANULARITIES:
    raise UserError(f'guided.granularity must be one of {", ".join(GRANULARITIES)}, got {granularity!r}')
  for mask in masks:
    missing = [p for _, paths in layout for p in paths if p not in mask]
    if missing:
      raise UserError(f'a pruning run has no mask for the conv {missing[0]}')
  if granularity == 'stage':
    names = tuple(name for name, _ in layout)
    groups = [paths for _, paths in layout]
  else:
    groups = [(p,) for _, paths in layout for p in paths]
    names = tuple(g[0] for g in groups)

  def kept(mask, paths):
    return sum(float(np.count_nonzero(mask[p])) for p in paths) / sum(np.size(mask[p]) for p in paths)

  per_run = [tuple(kept(mask, paths) for paths in groups) for mask in masks]
  ratios = tuple(float(np.mean([r[k] for r in per_run])) for k in range(len(names)))
  return Pattern(
      family,
      models.normalize_cfg(cfg) if cfg else (),
      granularity,
      names,
      ratios,
      tuple(per_run),
      source,
      'unstructured',
      average_kernel_maps(masks, layout),
  )


def kernel_of(shape) -> tuple[int, int]:
  """The (kh, kw) of a conv kernel: flax's (kh, kw, in, out), or (1, 1) for a pointwise (in, out) one."""
  return (int(shape[0]), int(shape[1])) if len(shape) == 4 else (1, 1)


def _kept_per_position(mask) -> tuple[np.ndarray, int]:
  """(kept weights at each kernel position, row-major; the (in, out) channel pairs at one position)."""
  kh, kw = kernel_of(np.shape(mask))
  by_position = np.reshape(np.asarray(mask), (kh * kw, -1))
  return np.count_nonzero(by_position, axis=1), by_position.shape[1]


def average_kernel_maps(masks, layout) -> tuple[KernelMap, ...]:
  """Per stage of `layout` and kernel size with more than one position (a 1 x 1 kernel's map is its density), each
  run's fraction of kept weights at every kernel position: the kept weights there over the (in, out) channel
  pairs, pooled over the stage's convs of that size (the paper's average 3 x 3 keep-probability maps)."""
  out = []
  for name, paths in layout:
    by_kernel: dict[tuple[int, int], list[str]] = {}
    for p in paths:
      by_kernel.setdefault(kernel_of(np.shape(masks[0][p])), []).append(p)
    for kernel, group in sorted(by_kernel.items()):
      if math.prod(kernel) == 1:
        continue
      runs = []
      for mask in masks:
        counts = [_kept_per_position(mask[p]) for p in group]
        fractions = sum(c for c, _ in counts) / sum(pairs for _, pairs in counts)
        runs.append(tuple(float(v) for v in fractions))
      out.append(KernelMap(name, kernel, tuple(runs)))
  return tuple(out)


def _describe(pattern: Pattern) -> str:
  cfg = f' {list(pattern.cfg)}' if pattern.cfg else ''
  return f'{pattern.family or "the source network"}{cfg}'


def sparse_stage_map(pattern: Pattern, layout, family: str = '') -> dict[str, str]:
  """{target stage of `layout` (conv_stages): the source stage whose density and maps it takes}: stage k (the k-th
  largest feature map) to stage k, so both networks need the same number of stages; a per-conv pattern applies to
  its own convs only."""
  if pattern.structure != 'unstructured':
    raise UserError(
        'a structured pattern (channel widths) does not sparsify a network: guided.structure=unstructured '
        'takes the pattern of a guided sparsification experiment'
    )
  names = [name for name, _ in layout]
  if pattern.granularity == 'layer':
    convs = tuple(p for _, paths in layout for p in paths)
    if convs != pattern.names:
      raise UserError(
          f'a per-conv pattern applies to its own convs only ({_describe(pattern)}, {len(pattern.names)} convs); '
          'transfer a per-stage one (guided.granularity=stage)'
      )
    return {n: n for n in names}
  if len(names) != len(pattern.names):
    raise UserError(
        f'no stage mapping from {_describe(pattern)} ({len(pattern.names)} feature-map sizes) to '
        f'{family or "the target network"} ({len(names)} feature-map sizes): stage k maps to stage k, so both need '
        'the same number of stages'
    )
  return dict(zip(names, pattern.names))


def conv_densities(pattern: Pattern, layout, mapping: dict[str, str] | None = None) -> dict[str, float]:
  """{conv kernel path: the density the pattern gives it} (its stage's ratio through `mapping`, {target stage:
  source stage}, default the identity; or its own per conv)."""
  ratio_of = dict(zip(pattern.names, pattern.ratios))
  if pattern.granularity == 'layer':
    return {p: ratio_of[p] for _, paths in layout for p in paths}
  mapping = mapping or {name: name for name, _ in layout}
  return {p: ratio_of[mapping[name]] for name, paths in layout for p in paths}


def conv_position_weights(pattern: Pattern, layout, shapes, mapping: dict[str, str] | None = None) -> dict:
  """{conv kernel path: its (source) stage's mean keep-probability map for its kernel size, flat row-major}, for the
  convs whose stage has a map of their kernel size (others: positions uniform)."""
  mapping = mapping or {name: name for name, _ in layout}
  maps = {(m.stage, m.kernel): m.mean.reshape(-1) for m in pattern.kernel_maps}
  out = {}
  for name, paths in layout:
    for p in paths:
      weights = maps.get((mapping[name], kernel_of(shapes[p])))
      if weights is not None:
        out[p] = weights
  return out


def split_over_positions(weights, ones: int, capacity: int) -> np.ndarray:
  """Integer kept counts per kernel position summing to `ones`: proportional to `weights` (a stage's map, so each
  position's keep probability is its map value scaled to the conv's density), each at most `capacity` (the channel
  pairs at one position); a full position's excess goes to the others in proportion, positions of weight 0 only
  once all others are full; the rounding gives the largest remainders one more."""
  weights = np.asarray(weights, np.float64)
  share = np.zeros(len(weights))
  free = np.ones(len(weights), bool)
  left = float(ones)
  while free.any() and left > 0:
    w = weights[free] if weights[free].sum() > 0 else np.ones(int(free.sum()))
    want = left * w / w.sum()
    full = want >= capacity
    if not full.any():
      share[free] = want
      break
    idx = np.flatnonzero(free)[full]
    share[idx] = capacity
    left -= capacity * len(idx)
    free[idx] = False
  counts = np.floor(share + 1e-9).astype(np.int64)
  rest = int(ones - counts.sum())
  order = np.argsort(-(share - counts), kind='stable')
  counts[order[:rest]] += 1
  return counts


def sparse_mask(shapes, densities, seed: int, position_weights=None) -> dict[str, np.ndarray]:
  """{conv kernel path: float32 0/1 mask of its shape with max(1, floor(density x size + 1/2)) ones}; conv i (sorted
  path order) draws from numpy's default_rng([seed, i]). Without position weights for a conv its ones sit at
  positions drawn uniformly; with them (conv_position_weights) the ones are first split over the kernel positions
  (split_over_positions) and at each position the (in, out) channel pairs that keep their weight are drawn."""
  position_weights = position_weights or {}
  out = {}
  for i, path in enumerate(sorted(densities)):
    shape = tuple(shapes[path])
    size = math.prod(shape)
    density = float(densities[path])
    if not 0.0 < density <= 1.0:
      raise UserError(f'a conv density must be in (0, 1], got {density} for {path}')
    ones = min(size, max(1, int(math.floor(density * size + 0.5))))
    rng = np.random.default_rng([int(seed), i])
    positions = math.prod(kernel_of(shape))
    if path not in position_weights or positions == 1:
      flat = np.zeros(size, np.float32)
      flat[rng.permutation(size)[:ones]] = 1.0
      out[path] = flat.reshape(shape)
      continue
    pairs = size // positions
    by_position = np.zeros((positions, pairs), np.float32)
    for k, count in enumerate(split_over_positions(position_weights[path], ones, pairs)):
      by_position[k, rng.permutation(pairs)[:count]] = 1.0
    out[path] = by_position.reshape(shape)
  return out
