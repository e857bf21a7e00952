"""A PyTorch ConvNeXt + UperNet written from the references, for the parity tests of convnext_jax.upernet.

Structure and state-dict keys as the released code builds them: the backbone of facebookresearch/ConvNeXt
``semantic_segmentation/backbone/convnext.py`` (``downsample_layers``, ``stages``, ``norm0..3``), mmseg 0.x's
``EncoderDecoder`` with ``UPerHead`` (``psp_modules.{i}.1``, ``bottleneck``, ``lateral_convs``, ``fpn_convs``,
``fpn_bottleneck``, ``conv_seg``) and ``FCNHead`` (``convs.0``, ``conv_seg``), mmcv's ``ConvModule``
(``conv`` without bias, ``bn``, ReLU). Only what the tests need: eval-mode forward, no losses.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
  """The official LayerNorm: over C of NCHW (``channels_first``, mean / biased variance written out) or of
  NHWC (``F.layer_norm``)."""

  def __init__(self, c, channels_first=False, eps=1e-6):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(c))
    self.bias = nn.Parameter(torch.zeros(c))
    self.eps = eps
    self.channels_first = channels_first

  def forward(self, x):
    if not self.channels_first:
      return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + self.eps)
    return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):

  def __init__(self, dim, layer_scale):
    super().__init__()
    self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
    self.norm = LayerNorm(dim)
    self.pwconv1 = nn.Linear(dim, 4 * dim)
    self.act = nn.GELU()
    self.pwconv2 = nn.Linear(4 * dim, dim)
    self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

  def forward(self, x):
    y = self.dwconv(x).permute(0, 2, 3, 1)
    y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
    return x + y.permute(0, 3, 1, 2)


class Backbone(nn.Module):

  def __init__(self, depths, dims, in_chans=3, layer_scale=1.0):
    super().__init__()
    self.downsample_layers = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4), LayerNorm(dims[0], channels_first=True))]
        + [
            nn.Sequential(LayerNorm(dims[i], channels_first=True), nn.Conv2d(dims[i], dims[i + 1], 2, 2))
            for i in range(3)
        ]
    )
    self.stages = nn.ModuleList(
        [nn.Sequential(*[Block(d, layer_scale) for _ in range(n)]) for n, d in zip(depths, dims)]
    )
    for i, d in enumerate(dims):
      self.add_module(f'norm{i}', LayerNorm(d, channels_first=True))

  def forward(self, x):
    outs = []
    for i in range(4):
      x = self.stages[i](self.downsample_layers[i](x))
      outs.append(getattr(self, f'norm{i}')(x))
    return outs


class ConvModule(nn.Module):

  def __init__(self, cin, cout, k):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    self.bn = nn.BatchNorm2d(cout)
    self.activate = nn.ReLU()

  def forward(self, x):
    return self.activate(self.bn(self.conv(x)))


def resize(x, size):
  return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class UPerHead(nn.Module):

  def __init__(self, in_channels, channels, num_classes, pool_scales=(1, 2, 3, 6)):
    super().__init__()
    self.psp_modules = nn.ModuleList(
        [nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1)) for s in pool_scales]
    )
    self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
    self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1) for c in in_channels[:-1]])
    self.fpn_convs = nn.ModuleList([ConvModule(channels, channels, 3) for _ in in_channels[:-1]])
    self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
    self.dropout = nn.Dropout2d(0.1)
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, inputs):
    x = inputs[-1]
    psp = [x] + [resize(m(x), x.shape[2:]) for m in self.psp_modules]
    laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
    laterals.append(self.bottleneck(torch.cat(psp, 1)))
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
    outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)] + [laterals[-1]]
    outs = [outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]]
    return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, 1))))


class FCNHead(nn.Module):

  def __init__(self, in_channels, channels, num_classes):
    super().__init__()
    self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
    self.dropout = nn.Dropout2d(0.1)
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x):
    return self.conv_seg(self.dropout(self.convs(x)))


class EncoderDecoder(nn.Module):

  def __init__(self, depths, dims, num_classes, channels=512, aux_channels=256, in_chans=3):
    super().__init__()
    self.backbone = Backbone(depths, dims, in_chans)
    self.decode_head = UPerHead(dims, channels, num_classes)
    self.auxiliary_head = FCNHead(dims[2], aux_channels, num_classes)

  def forward(self, x):
    """(decode head logits at 1/4, auxiliary head logits at 1/16)."""
    feats = self.backbone(x)
    return self.decode_head(feats), self.auxiliary_head(feats[2])


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and BN statistics of the scale of trained ones (so every term of the parity matters)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if t.dtype == torch.int64:
        t.fill_(7)
      elif name.endswith('running_var'):
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif name.endswith(('weight', 'gamma')) and t.ndim == 1:
        t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=g))
      else:
        t.copy_(0.2 * torch.randn(t.shape, generator=g) / max(1.0, (t[0].numel() if t.ndim > 1 else 1) ** 0.5))
  return model.eval()


# --------------------------------------------------------------------------------------------------------------
# mmcv's get_flops convention (mmcv.cnn.utils.flops_counter), as forward hooks on the modules it knows
# --------------------------------------------------------------------------------------------------------------
def mmcv_flops(model: nn.Module, x: torch.Tensor, forward) -> dict[str, int]:
  """{'macs': conv + linear multiply-adds (no bias), 'mmcv': mmcv's total} of ``forward(model, x)``.

  mmcv counts a Conv2d as MACs + one per output element when it has a bias; Linear as input elements x
  out_features; ReLU one per output element; AdaptiveAvgPool2d one per input element; BatchNorm2d and
  nn.LayerNorm 2 per input element (affine) -- mmseg's configs use SyncBN, which is not in mmcv's table, so
  BN is counted separately under 'bn'. Custom modules (ConvNeXt's LayerNorm, GELU) and functional resizes
  count nothing."""
  totals = dict(macs=0, extra=0, bn=0)

  def hook(m, inputs, out):
    if isinstance(m, nn.Conv2d):
      kh, kw = m.kernel_size
      per = kh * kw * m.in_channels // m.groups * m.out_channels
      positions = out.shape[0] * out.shape[2] * out.shape[3]
      totals['macs'] += per * positions
      totals['extra'] += m.out_channels * positions if m.bias is not None else 0
    elif isinstance(m, nn.Linear):
      totals['macs'] += inputs[0].numel() * m.out_features
    elif isinstance(m, nn.ReLU):
      totals['extra'] += out.numel()
    elif isinstance(m, nn.AdaptiveAvgPool2d):
      totals['extra'] += inputs[0].numel()
    elif isinstance(m, nn.BatchNorm2d):
      totals['bn'] += 2 * inputs[0].numel()

  handles = [m.register_forward_hook(hook) for m in model.modules()]
  try:
    with torch.no_grad():
      forward(model, x)
  finally:
    for h in handles:
      h.remove()
  return dict(macs=totals['macs'], mmcv=totals['macs'] + totals['extra'], bn=totals['bn'])
