"""HRNetV2 for segmentation with ADP-C's four exits and confidence adaptivity (Flax Linen, NHWC).

Structure (HRNet-Semantic-Segmentation / the ADP-C code): stem (3x3 s2 conv 3->64 + BN + ReLU, 3x3 s2 64->64 +
BN + ReLU: 1/4), stage 1 = `layer1` Bottlenecks (planes 64, out 256; the first with a 1x1 + BN downsample),
transitions (an existing branch whose channels change: 3x3 conv + BN + ReLU; a new branch: 3x3 s2 conv + BN +
ReLU chain from the lowest-resolution branch), stages 2-4 of HighResolutionModules (BasicBlock branches, SUM
fuse: j > i 1x1 conv + BN then bilinear up, j < i chains of 3x3 s2 conv + BN (+ ReLU except the last), ReLU of
the sum), every conv bias-free and N(0, 0.001), BN momentum 0.99 (PyTorch 0.01), eps 1e-5, bilinear with
align_corners=False everywhere. Branch resolutions 1/4 .. 1/32, channels width * 2^i. Two recipe options keep
the reference's values by default: `bn_momentum` (every BN) and `conv_init` ('he': N(0, 2 / fan_in) kernels, for
short from-scratch runs; `random_variables` always draws the reference's N(0, 0.001)).

Exits (`exits`, a subset of 1..4 that includes 4): exit k (k = 1..3) after stage k, of `exit_type` 'ee' or 'rh'
(`anytime_jax.exits`; `rh_max_depth` caps an RH exit's down steps, 3 = the paper's, fewer for small inputs);
exit 4 is the HRNet head `last_layer` (the original exit on the 4-branch concat). `exits=(4,)` is the plain
HRNetV2 segmentation model. Each exit's input is the concat of the current branches upsampled to 1/4; all logits
are at 1/4.

Confidence adaptivity (`tau` set): the aggregated logits of exit k-1 give a mask (`confidence.confidence_mask`)
that every conv of transition k-1, stage k and exit k uses (the stem, stage 1 and exit 1 are never masked;
`masked_stages` picks among 2..4), and exit k's logits are aggregated with "copy". A threshold given as
variables['constants']['tau'] (traced) replaces `tau`'s value, so one compiled program serves every threshold
(`tau` set still decides that the model has CA); given as a (3,) array it is one threshold per exit 1..3 (the
benchmark sets the computed fractions that way). With `compute.masked_conv='sparse'` the masked convs compute
only the kept pixels at evaluation (`train=False`), and an original exit forms its input at the kept pixels only
(`exits.OriginalExit`); each segment (transition k-1, stage k, exit k) first chooses once, from its mask's kept
fraction over the batch, between its plain, masked-dense and sparse convs (`confidence.segment_kind`: one switch
around the segment, traced once per kind with the same params; initialization and MAC counts trace it once).
The switch's index waits for the previous exit's head and mask; the segment's entry convs (`entry_convs`: those
that read its input branches) do not, and with `compute.dense_entry` they are computed dense before the switch and
every kind starts from their outputs, so that they can run beside that head as masked-dense's do.
Training always computes them masked-dense. Counting: after
exit k the forward calls `core_jax.counting.mark(f'exit{k}')`, so `count_macs_by_mark` gives the paper's
cumulative dense cost per exit; masked convs sow their actual cost (`confidence.Conv`).

`__call__(x, train)` returns {'logits': (exit logits, aggregated, in exit order), 'fractions': (per-example
fraction of 1/4-res pixels computed by each exit: 1.0 unless that exit's stage is masked)};
`features_only=True` returns the four stage-4 branch outputs instead (backbone only); `last_exit=k` stops
after exit k (its logits last), for per-exit latency.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from anytime_jax import confidence
from anytime_jax.confidence import Conv, MaskSet
from anytime_jax.exits import (
    BN_MOMENTUM,
    EXIT_TYPES,
    RH_MAX_DEPTH,
    OriginalExit,
    batch_norm,
    check_rh_max_depth,
    exit_input,
    make_exit,
    resize_bilinear,
)
from core_jax import counting
from core_jax.compute import Compute
from core_jax.errors import UserError
from core_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Arch:
  """One HRNetV2 configuration (the yaml's STAGE1..4)."""

  width: int  # branch 0 channels; branch i has width * 2^i
  stage1_blocks: int  # Bottlenecks in layer1
  stage_modules: tuple[int, int, int]  # HighResolutionModules in stages 2, 3, 4
  stage_blocks: int  # BasicBlocks per branch per module
  timm_name: str  # the timm model with the same backbone
  inter_channels: int  # RH exit inter channels the ADP-C code uses with this width
  stem_width: int = 64  # the stem's channels (HRNet: 64)
  layer1_planes: int = 64  # layer1's Bottleneck planes (HRNet: 64, out 256)

  def channels(self, num_branches: int) -> list[int]:
    return [self.width * 2**i for i in range(num_branches)]


ARCHS = {
    'w48': Arch(48, 4, (1, 4, 3), 4, 'hrnet_w48', 128),
    'w18_small_v2': Arch(18, 2, (1, 3, 2), 2, 'hrnet_w18_small_v2', 64),  # the ADP-C code's "w18"
    'w18': Arch(18, 4, (1, 4, 3), 4, 'hrnet_w18', 64),
    # not from the papers: a small HRNet (one module per stage, one block per branch) for CPU jobs and tests
    'w8_tiny': Arch(8, 1, (1, 1, 1), 1, '', 16),
    # not from the papers: w8_tiny with a 16-channel stem and layer1 planes 16 (out 64), whose 64 / 256 channels
    # at 1/2 and 1/4 are most of w8_tiny's cost: the embedded CPU job trains it for more epochs in its budget
    'w8_nano': Arch(8, 1, (1, 1, 1), 1, '', 16, stem_width=16, layer1_planes=16),
}


def get_arch(name: str) -> Arch:
  if name not in ARCHS:
    raise MODELS.unknown(name)
  return ARCHS[name]


def _sum_relu(*terms: jax.Array) -> jax.Array:
  y = terms[0]
  for t in terms[1:]:
    y = y + t
  return nn.relu(y)


def relu_of_sum(terms, compute: Compute, anchor: jax.Array) -> jax.Array:
  """ReLU(sum of `terms`): a block's or a fuse layer's output, a layer end of `compute`
  (`Compute.layer_end_of`: with `fusion_barriers` the sum and ReLU are computed into their own buffer; `anchor` a
  parameter for its predicate): XLA:CPU fused each output's producers (the BN + residual + ReLU of every block
  before it, and the fuse layers' upsampled maps, read transposed) into each of its consumers again instead of
  reading one buffer, so a stage's elementwise work grew with the square of its blocks (19 ReLUs in one stage-4
  fusion of W18-Small-v2, in every contender's program): most of the sparse last segment's time at tau=0.998. In
  training too: the W18-Small-v2 EE+RH train step runs faster and compiles in less CPU (benchmarks/ANALYSIS.md)."""
  return compute.layer_end_of(_sum_relu, *terms, anchor=anchor)


class ConvBN(nn.Module):
  """conv + BN (+ ReLU): the PyTorch nn.Sequential(conv, BN[, ReLU]) of transitions, fuses and downsamples."""

  features: int
  kernel_size: int
  strides: int = 1
  relu: bool = True
  exit_index: int | None = None
  bn_momentum: float = BN_MOMENTUM
  conv_init: str = 'normal'
  compute: Compute = Compute()
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False, masks: MaskSet | None = None, conv_out: jax.Array | None = None):
    """`conv_out`: the conv's dense output computed already (`Conv`'s `dense_out`)."""
    x = Conv(
        self.features,
        self.kernel_size,
        self.strides,
        exit_index=self.exit_index,
        conv_init=self.conv_init,
        compute=self.compute,
        name='conv',
    )(x, masks, conv_out)
    x = batch_norm(train, 'bn', self.bn_momentum, self.dtype)(x)
    return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
  planes: int
  downsample: bool = False
  bn_momentum: float = BN_MOMENTUM
  conv_init: str = 'normal'
  compute: Compute = Compute()
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    m, ci = self.bn_momentum, self.conv_init
    out = nn.relu(
        batch_norm(train, 'bn1', m, self.dtype)(
            Conv(self.planes, 1, conv_init=ci, compute=self.compute, name='conv1')(x)
        )
    )
    out = nn.relu(
        batch_norm(train, 'bn2', m, self.dtype)(
            Conv(self.planes, 3, conv_init=ci, compute=self.compute, name='conv2')(out)
        )
    )
    out = batch_norm(train, 'bn3', m, self.dtype)(
        Conv(self.planes * 4, 1, conv_init=ci, compute=self.compute, name='conv3')(out)
    )
    residual = (
        ConvBN(
            self.planes * 4,
            1,
            relu=False,
            bn_momentum=m,
            conv_init=ci,
            compute=self.compute,
            dtype=self.dtype,
            name='downsample',
        )(x, train)
        if self.downsample
        else x
    )
    return nn.relu(out + residual)


class BasicBlock(nn.Module):
  planes: int
  exit_index: int | None = None
  bn_momentum: float = BN_MOMENTUM
  conv_init: str = 'normal'
  compute: Compute = Compute()
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False, masks: MaskSet | None = None, conv1_out: jax.Array | None = None):
    """`conv1_out`: conv1's dense output computed already (`Conv`'s `dense_out`)."""
    m, ci = self.bn_momentum, self.conv_init
    conv1 = Conv(self.planes, 3, exit_index=self.exit_index, conv_init=ci, compute=self.compute, name='conv1')
    out = conv1(x, masks, conv1_out)
    out = nn.relu(batch_norm(train, 'bn1', m, self.dtype)(out))
    out = Conv(self.planes, 3, exit_index=self.exit_index, conv_init=ci, compute=self.compute, name='conv2')(out, masks)
    out = batch_norm(train, 'bn2', m, self.dtype)(out)
    return relu_of_sum((out, x), self.compute, self.variables['params']['bn2']['scale'])


class HighResolutionModule(nn.Module):
  channels: tuple[int, ...]
  num_blocks: int
  fuse_upsample: str = 'bilinear'
  exit_index: int | None = None
  bn_momentum: float = BN_MOMENTUM
  conv_init: str = 'normal'
  compute: Compute = Compute()
  dtype: Any = None

  @nn.compact
  def __call__(self, xs, train: bool = False, masks: MaskSet | None = None, first_convs=None):
    """`first_convs`: per branch the dense output of its first block's conv1 computed already, or None."""
    xs = list(xs)
    first_convs = first_convs or [None] * len(xs)
    opts = dict(
        exit_index=self.exit_index,
        bn_momentum=self.bn_momentum,
        conv_init=self.conv_init,
        compute=self.compute,
        dtype=self.dtype,
    )
    n = len(self.channels)
    for i in range(n):
      for b in range(self.num_blocks):
        conv1_out = first_convs[i] if b == 0 else None
        xs[i] = BasicBlock(self.channels[i], name=f'branch{i}_{b}', **opts)(xs[i], train, masks, conv1_out)
    outs = []
    for i in range(n):
      terms = []
      for j in range(n):
        if j == i:
          t = xs[j]
        elif j > i:
          t = ConvBN(self.channels[i], 1, relu=False, name=f'fuse{i}_{j}', **opts)(xs[j], train, masks)
          t = self._upsample(t, xs[i].shape[1:3], 2 ** (j - i))
        else:
          t = xs[j]
          for k in range(i - j):
            last = k == i - j - 1
            t = ConvBN(
                self.channels[i] if last else self.channels[j],
                3,
                2,
                relu=not last,
                name=f'fuse{i}_{j}_{k}',
                **opts,
            )(t, train, masks)
        terms.append(t)
      outs.append(relu_of_sum(terms, self.compute, self.variables['params'][f'branch{i}_0']['bn2']['scale']))
    return outs

  def _upsample(self, t, size, factor):
    if self.fuse_upsample == 'bilinear':
      return resize_bilinear(t, *size)
    if self.fuse_upsample == 'nearest':  # HRNet classification / timm (x 2^(j-i), nearest)
      return jnp.repeat(jnp.repeat(t, factor, axis=1), factor, axis=2)[:, : size[0], : size[1]]
    raise ValueError(f'fuse_upsample must be bilinear or nearest, got {self.fuse_upsample!r}')


def entry_convs(arch: Arch, s: int) -> tuple[tuple[str, int, int], ...]:
  """Segment s's entry convs: the masked convs that read its input branches (stage s - 1's outputs, or layer1's)
  directly, as (param path, input branch, stride): a transition's conv where a branch's width changes, the first
  conv of a new branch's chain (from the last branch), and the first block's conv1 of a branch the transition
  passes through (`HRNet`'s `segment` names them so)."""
  pre = arch.channels(s - 1) if s > 2 else [arch.layer1_planes * 4]
  cur = arch.channels(s)
  convs = []
  for i in range(s):
    if i >= len(pre):
      convs.append((f'transition{s - 1}_{i}_0/conv', len(pre) - 1, 2))
    elif cur[i] != pre[i]:
      convs.append((f'transition{s - 1}_{i}/conv', i, 1))
    else:
      convs.append((f'stage{s}_0/branch{i}_0/conv1', i, 1))
  return tuple(convs)


def check_structure(exits, exit_type: str, tau, masked_stages) -> tuple:
  """Validates the exit / CA options (one-line UserErrors); returns (exits, masked_stages) as sorted tuples."""
  exits = tuple(sorted({int(e) for e in exits}))
  bad = [e for e in exits if e not in (1, 2, 3, 4)]
  if bad:
    raise UserError(f'exit {bad[0]} does not exist: HRNet has 4 stages, so exits are 1..4 (one after each stage)')
  if 4 not in exits:
    raise UserError('exits must include 4 (the segmentation head after stage 4)')
  if len(exits) > 1 and exit_type not in EXIT_TYPES:
    raise UserError(f'exit_type must be one of {EXIT_TYPES}, got {exit_type!r}')
  if tau is None:
    if masked_stages:
      raise UserError('masked_stages given without a confidence threshold tau')
    return exits, ()
  confidence.check_tau(tau)
  masked_stages = tuple(sorted({int(s) for s in masked_stages}))
  for s in masked_stages:
    if s == 1:
      raise UserError('stage 1 cannot be masked: the stem, layer1 and exit 1 run before any exit gives a mask')
    if s not in (2, 3, 4):
      raise UserError(f'cannot mask stage {s}: HRNet has stages 1..4 and only 2..4 can be masked')
    if s - 1 not in exits:
      raise UserError(f'masking stage {s} needs exit {s - 1}, whose confidence gives the mask (exits={exits})')
  return exits, masked_stages


class HRNet(nn.Module):
  arch: str = 'w48'
  num_classes: int = 19
  exits: tuple[int, ...] = (1, 2, 3, 4)
  exit_type: str = 'rh'
  inter_channels: int | None = None  # RH exits; None: the arch's (128 for W48, 64 for W18)
  rh_max_depth: int = RH_MAX_DEPTH  # RH exit k's down steps are min(4 - k, this): 3 = the paper's, 1-2 small inputs
  tau: float | None = None  # confidence adaptivity when set
  masked_stages: tuple[int, ...] = (2, 3, 4)
  fuse_upsample: str = 'bilinear'
  bn_momentum: float = BN_MOMENTUM  # the reference's 0.99 (PyTorch 0.01)
  conv_init: str = 'normal'  # confidence.CONV_INITS: the reference's N(0, 0.001), or 'he'
  compute: Compute = Compute()  # how the convs compute (confidence.for_backend), never what they compute
  dtype: Any = None  # activations and convs (None: the inputs'); params, BN statistics and logits stay float32+

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False, last_exit: int = 4):
    arch = get_arch(self.arch)
    if last_exit not in tuple(self.exits):
      raise UserError(f'last_exit={last_exit} is not one of the exits {tuple(self.exits)}')
    exits, masked = check_structure(
        self.exits, self.exit_type, self.tau, self.masked_stages if self.tau is not None else ()
    )
    inter = self.inter_channels or arch.inter_channels
    ca = self.tau is not None and not features_only
    # the threshold: `tau`, or a traced value given as variables['constants']['tau'] (the eval step's argument,
    # core_jax.task.Task.eval_constants), so one compiled program serves every threshold
    tau = self.get_variable('constants', 'tau', self.tau) if ca else None
    if ca and jnp.shape(tau) not in ((), (3,)):  # a traced index past the end would clamp: exit 3 took exit 2's
      raise UserError(f"constants['tau'] must be one threshold or one per exit 1..3, shape (3,); got {jnp.shape(tau)}")

    bn_m, ci = self.bn_momentum, self.conv_init
    opts = dict(bn_momentum=bn_m, conv_init=ci, compute=self.compute, dtype=self.dtype)
    if self.dtype is not None:  # None computes in the inputs' dtype: float32, or float64 under jax_enable_x64
      x = x.astype(self.dtype)
    x = nn.relu(
        batch_norm(train, 'bn1', bn_m, self.dtype)(
            Conv(arch.stem_width, 3, 2, conv_init=ci, compute=self.compute, name='conv1')(x)
        )
    )
    x = nn.relu(
        batch_norm(train, 'bn2', bn_m, self.dtype)(
            Conv(arch.stem_width, 3, 2, conv_init=ci, compute=self.compute, name='conv2')(x)
        )
    )
    for b in range(arch.stage1_blocks):
      x = Bottleneck(arch.layer1_planes, downsample=b == 0, name=f'layer1_{b}', **opts)(x, train)
    ys = [x]

    logits, fractions, ran = [], [], []
    masks = None  # the MaskSet of the last exit, for the next stage
    prev = None  # the last exit's aggregated logits
    batch = x.shape[0]
    static_shape = all(isinstance(d, int) for d in x.shape)  # False under jax.export's symbolic dimensions

    def exit_head(k, branches, masks_k):
      seg = k if k in masked else None
      if k == 4:
        head = OriginalExit(self.num_classes, exit_index=seg, name='last_layer', **opts)
      else:
        head = make_exit(
            self.exit_type, k, self.num_classes, inter, seg, f'exit{k}', rh_max_depth=self.rh_max_depth, **opts
        )
      # the original exit takes the branches: the sparse path forms its input at the kept pixels only
      return head(branches if isinstance(head, OriginalExit) else exit_input(branches), train, masks_k)

    def run_exit(k, branches, masks_k, out=None):
      """Exit k's logits (`out`: its head's, computed by the segment) aggregated, counted, and the next mask."""
      nonlocal prev, masks
      if features_only:
        return
      if out is None:
        out = exit_head(k, branches, masks_k)
      # logits, masks and the aggregation at least float32 whatever the compute dtype (float64 stays float64)
      out = out.astype(jnp.promote_types(out.dtype, jnp.float32))
      if masks_k is not None:
        out = confidence.aggregate(prev, out, masks_k.mask)
        fractions.append(masks_k.fraction)
      else:
        fractions.append(jnp.ones((batch,), jnp.float32))
      logits.append(out)
      ran.append(k)
      counting.mark(f'exit{k}')
      prev = out
      if ca and k + 1 in masked:
        tau_k = tau[k - 1] if jnp.ndim(tau) == 1 else tau  # one threshold per exit 1..3 (the benchmark's masks)
        masks = MaskSet(confidence.confidence_mask(out, tau_k), train=train)
      else:
        masks = None

    if 1 in exits:
      run_exit(1, ys, None)

    def segment(s, ys, pre, masks_s, entry=None):
      """Transition s - 1 and stage s from the branches `ys` (`pre` their widths), and exit s's head's logits (None
      when s is no exit or only features are asked for). `entry`: the dense outputs of the entry convs computed
      already (`entry_convs`, by path), or None."""
      entry = entry or {}
      seg = s if s in masked else None
      cur = arch.channels(s)
      xs = []
      for i in range(s):
        if i < len(pre):
          if cur[i] != pre[i]:
            name = f'transition{s - 1}_{i}'
            conv = ConvBN(cur[i], 3, exit_index=seg, name=name, **opts)
            xs.append(conv(ys[i], train, masks_s, entry.get(f'{name}/conv')))
          else:
            xs.append(ys[i])
        else:
          t = ys[-1]
          for j in range(i + 1 - len(pre)):
            out_c = cur[i] if j == i - len(pre) else pre[-1]
            name = f'transition{s - 1}_{i}_{j}'
            t = ConvBN(out_c, 3, 2, exit_index=seg, name=name, **opts)(t, train, masks_s, entry.get(f'{name}/conv'))
          xs.append(t)
      for m in range(arch.stage_modules[s - 2]):
        first = [entry.get(f'stage{s}_{m}/branch{i}_0/conv1') for i in range(s)]
        xs = HighResolutionModule(
            tuple(cur), arch.stage_blocks, self.fuse_upsample, exit_index=seg, name=f'stage{s}_{m}', **opts
        )(xs, train, masks_s, first)
      return xs, exit_head(s, xs, masks_s) if s in exits and not features_only else None

    def entry_outputs(s, ys):
      """The dense outputs (bias included) of segment s's entry convs (`entry_convs`), from the params: the same
      convs every kind of the segment starts with (`Compute.dense_entry`)."""
      params = self.variables['params']
      out = {}
      for path, branch, stride in entry_convs(arch, s):
        conv = functools.reduce(lambda tree, name: tree[name], path.split('/'), params)
        kernel = conv['kernel']
        padding = confidence.conv_padding(kernel.shape[0])
        out[path] = confidence.dense_conv(self.compute, ys[branch], kernel, conv.get('bias'), (stride, stride), padding)
      return out

    def switched_segment(s, ys, pre, masks_s):
      """`segment` with its masked convs as the segment's mask chooses (`confidence.segment_kind`): one switch,
      each branch the segment traced with one kind of masked conv (the same params). With `Compute.dense_entry`
      for the segment its entry convs are computed dense before the switch and every kind starts from them: the
      switch's index waits for exit s - 1's head and mask, these convs do not (they can run beside that head, as
      masked-dense's do)."""

      def branch(kind):
        return lambda mdl, ys, mask, entry: segment(s, ys, pre, MaskSet(mask, kind=kind), entry)

      entry = entry_outputs(s, ys) if self.compute.dense_entry[s - 2] else {}
      branches = [branch(kind) for kind in confidence.SEGMENT_KINDS]
      kind = confidence.segment_kind(masks_s.mask, self.compute.masked_dense_above[s - 2])
      return nn.switch(kind, branches, self, list(ys), masks_s.mask, entry)

    pre = [arch.layer1_planes * 4]
    for s in (2, 3, 4):
      if not features_only and ran and ran[-1] >= last_exit:
        break  # stop after `last_exit` (per-exit latency, as the ADP-C code's stop_k)
      masks_s = masks if s in masked and ca else None
      if masks_s is not None and not static_shape and masks_s.masked_conv(self.compute) == 'sparse':
        # a shape-polymorphic trace (jax.export with a symbolic batch size): the sparse loops' chunk is a static
        # size of the pixels, so these segments compute masked-dense, the same outputs
        masks_s = MaskSet(masks_s.mask, kind='dense')
      # the sparse policy chooses per segment at evaluation; initialization and a MAC count trace it once
      choose = masks_s is not None and masks_s.masked_conv(self.compute) == 'sparse' and masks_s.kind is None
      if choose and not self.is_initializing() and not counting.active():
        xs, out = switched_segment(s, ys, pre, masks_s)
      else:
        xs, out = segment(s, ys, pre, masks_s)
      ys, pre = xs, arch.channels(s)
      if s in exits:
        run_exit(s, ys, masks_s, out)

    if features_only:
      return ys
    return {'logits': tuple(logits), 'fractions': tuple(fractions)}


def build(
    arch: str = 'w48',
    *,
    num_classes: int = 19,
    exits=(1, 2, 3, 4),
    exit_type: str = 'rh',
    inter_channels: int | None = None,
    rh_max_depth: int = RH_MAX_DEPTH,
    tau: float | None = None,
    masked_stages=(2, 3, 4),
    fuse_upsample: str = 'bilinear',
    bn_momentum: float = BN_MOMENTUM,
    conv_init: str = 'normal',
    compute: Compute | None = None,
    dtype: Any = None,
) -> HRNet:
  """An HRNet with the options validated up front (one-line UserErrors); `compute` None: the backend's policy
  (`confidence.for_backend`); `dtype`: activations and convs, None for the inputs' dtype (params, BN statistics
  and logits float32)."""
  get_arch(arch)
  if conv_init not in confidence.CONV_INITS:
    raise UserError(f'conv_init must be one of {confidence.CONV_INITS}, got {conv_init!r}')
  if not 0.0 <= float(bn_momentum) < 1.0:
    raise UserError(f'bn_momentum must be in [0, 1) (Flax convention: 1 - PyTorch momentum), got {bn_momentum!r}')
  check_rh_max_depth(rh_max_depth)
  exits, masked = check_structure(exits, exit_type, tau, masked_stages if tau is not None else ())
  return HRNet(
      arch=arch,
      num_classes=num_classes,
      exits=exits,
      exit_type=exit_type,
      inter_channels=inter_channels,
      rh_max_depth=rh_max_depth,
      tau=None if tau is None else float(tau),
      masked_stages=masked or (2, 3, 4),
      fuse_upsample=fuse_upsample,
      bn_momentum=float(bn_momentum),
      conv_init=conv_init,
      compute=confidence.for_backend() if compute is None else compute,
      dtype=dtype,
  )


def base(arch: str = 'w48', num_classes: int = 19) -> HRNet:
  """The plain HRNetV2 segmentation model (head only)."""
  return build(arch, num_classes=num_classes, exits=(4,))


def random_variables(model: HRNet, height: int = 64, width: int = 64, seed: int = 0) -> dict:
  """{'params', 'batch_stats'} as host numpy arrays drawn like the model's init (conv weights N(0, 0.001),
  biases U(+-1/sqrt(fan_in)), BN scale 1 / bias 0 / mean 0 / var 1, rbf_lambda 3), without compiling
  `model.init` (which takes minutes for W48 on a small CPU); shapes from `jax.eval_shape`."""
  import numpy as np  # host-only helper

  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
  rng = np.random.RandomState(seed)
  fan_in = {
      tuple(p.key for p in path[:-1]): int(np.prod(s.shape[:-1]))
      for path, s in jax.tree_util.tree_flatten_with_path(abstract['params'])[0]
      if path[-1].key == 'kernel'
  }

  def fill(path, s):
    keys = tuple(p.key for p in path)[1:]  # drop the collection name
    name = keys[-1]
    if name == 'kernel':
      return rng.normal(0.0, confidence.CONV_INIT_STD, s.shape).astype(s.dtype)
    if name == 'bias' and keys[:-1] in fan_in:
      bound = 1.0 / np.sqrt(fan_in[keys[:-1]])
      return rng.uniform(-bound, bound, s.shape).astype(s.dtype)
    if name == 'rbf_lambda':
      return np.full(s.shape, confidence.LAMBDA_INIT, s.dtype)
    return np.full(s.shape, 1.0 if name in ('scale', 'var') else 0.0, s.dtype)

  tree = {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
  return jax.tree_util.tree_map_with_path(fill, tree)


# Every arch by name: `build` with that arch as default (MODELS.create('w48', exit_type='ee', tau=0.99)).
MODELS = Registry('HRNet arch')
for _name in ARCHS:
  MODELS.register(_name, build, arch=_name)


def list_models(pattern: str | None = None) -> list[str]:
  """Sorted arch names (the zoo, the tests), optionally an fnmatch pattern."""
  return MODELS.list_models(pattern)
