"""The pruning line's model families and named models, one registry.

    pruning_jax.models.create('resnet56')                          # a named model, its default cfg
    pruning_jax.models.create('resnet56_b')                        # a named pruned architecture (L1-norm B)
    pruning_jax.models.create('resnet_cifar', cfg=[...], num_classes=100)   # a family from any cfg
    pruning_jax.models.create('densenet', cfg=cfg, selections=sel)  # channel-selection families take indices

A family plus its cfg determines the architecture (depth is implied by the cfg length); `selections` are the
channel_selection indices of PreResNet / DenseNet / ResNet-50 (None = every channel). In the ResNet families with
removable blocks (`BLOCK_FAMILIES`) a block width of 0 (ResNet-50: its [mid1, mid2] both 0) is a block without
its residual branch (Sparse Structure Selection's pruned blocks), and block_scale=True gives every residual
branch SSS's learned factor. `describe(model)` gives
the JSON-able dict that `from_description` rebuilds the model from (the pruned-model sidecar uses it).

Beyond the paper's families, `GRAPH_FAMILIES` are models only the traced surgery prunes (pruning_jax.structured):
'convnext' is the demo's ConvNeXt (`convnext_digits`: depths 1/1/3/1, patch 2) and 'convnext_tiny' ConvNeXt-T
(depths 3/3/9/3, patch 4), each with cfg = its four stage widths.
Their pruned models are `rewidth.Rewidthed` wrappers; `describe` adds their 'widths' table and `from_description`
/ `build_from_config` rebuild it.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn

from core_jax.compute import Compute
from core_jax.errors import UserError
from core_jax.registry import Registry
from pruning_jax.models import densenet, layers, preresnet, regression_2x, resnet_cifar, resnet_imagenet, vgg
from pruning_jax.rewidth import Rewidthed, widths_from_json, widths_jsonable

FAMILIES = (
    'vgg_l1',
    'vgg_slimming',
    'vgg_imagenet',
    'vgg_bn_imagenet',
    'vgg_gap_imagenet',
    'resnet_cifar',
    'preresnet',
    'densenet',
    'resnet34',
    'resnet50',
)
SELECTION_FAMILIES = ('preresnet', 'densenet', 'resnet50')
BLOCK_FAMILIES = ('resnet_cifar', 'resnet50')  # blocks removable (width 0) and scalable (block_scale)
CONVNEXT_DIGITS_DIMS = (32, 64, 128, 256)  # convnext_jax's convnext_digits (depths 1/1/3/1, patch 2), drop path 0.1
# family -> (convnext_jax registry name, its stage widths, drop path rate: the recipes' values for these sizes)
CONVNEXT_FAMILIES = {
    'convnext': ('convnext_digits', CONVNEXT_DIGITS_DIMS, 0.1),
    'convnext_tiny': ('convnext_tiny', (96, 192, 384, 768), 0.1),
}
GRAPH_FAMILIES = tuple(CONVNEXT_FAMILIES)
_VGG_HEADS = {
    'vgg_l1': 'l1',
    'vgg_slimming': 'slimming',
    'vgg_imagenet': 'imagenet',
    'vgg_bn_imagenet': 'imagenet_bn',
    'vgg_gap_imagenet': 'imagenet_gap',
}


@dataclasses.dataclass(frozen=True)
class Named:
  family: str
  cfg: tuple
  dataset: str  # 'cifar' (32x32, 10 classes by default) or 'imagenet' (224x224, 1000 classes)
  base: str | None = None  # the unpruned model a pruned architecture comes from
  selections: tuple | None = None  # channel_selection indices (ResNet-50-2x)


def _x(n: int, width: int) -> list[int]:
  return [width] * n


# The paper's pruned architectures with fixed cfgs (reference sheet section 4.1-4.3; ThiNet's and regression
# pruning's from the official repo's imagenet/thinet/models and imagenet/regression-pruning/models).
_VGG16_A = (32, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 256, 256, 256, 'M', 256, 256, 256)
_R56_A = tuple(_x(7, 14) + [16, 14, 32] + _x(8, 28) + [64] + _x(7, 57) + [64])
_R56_B = tuple(_x(7, 6) + [16, 16, 32] + _x(6, 22) + [32, 22, 64] + _x(7, 57) + [64])
_R110_A = tuple(_x(17, 8) + [16] + _x(18, 32) + _x(18, 64))
_R110_B = tuple(_x(17, 8) + [16, 32] + _x(17, 19) + [64] + _x(17, 44))
_R34_A = (64, 44, 44, 128, 89, 89, 128, 256, 179, 179, 179, 179, 256, 512, 512, 512)
_R34_B = (64, 32, 32, 128, 51, 51, 128, 256, 153, 153, 153, 153, 256, 512, 512, 512)


_THINET_CONV = (32, 32, 'M', 64, 64, 'M', 128, 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M')


def _thinet(mid: tuple[int, int, int, int]) -> tuple[int, ...]:
  cfg, inplanes = [], 64
  for m, w, n in zip(mid, resnet_imagenet.WIDTHS, resnet_imagenet.STAGES[50]):
    for _ in range(n):
      cfg += [inplanes, m, m]
      inplanes = 4 * w
  return tuple(cfg)


NAMED: dict[str, Named] = {}
for _d, _cfg in vgg.CIFAR_CFGS.items():
  NAMED[f'vgg{_d}_l1'] = Named('vgg_l1', _cfg, 'cifar')
  NAMED[f'vgg{_d}_slimming'] = Named('vgg_slimming', _cfg, 'cifar')
NAMED['vgg16'] = NAMED['vgg16_l1']  # the paper's L1-norm VGG-16
NAMED['vgg19'] = NAMED['vgg19_slimming']  # the paper's Network Slimming VGG-19
for _d in (20, 32, 56, 110):
  NAMED[f'resnet{_d}'] = Named('resnet_cifar', resnet_cifar.default_cfg(_d), 'cifar')
NAMED['preresnet164'] = Named('preresnet', preresnet.default_cfg(164), 'cifar')
NAMED['densenet40'] = Named('densenet', densenet.default_cfg(40), 'cifar')
NAMED['vgg16_imagenet'] = Named('vgg_imagenet', vgg.IMAGENET_VGG16_CFG, 'imagenet')
NAMED['vgg11_bn_imagenet'] = Named('vgg_bn_imagenet', vgg.IMAGENET_VGG11_BN_CFG, 'imagenet')
NAMED['resnet34'] = Named('resnet34', resnet_imagenet.default_cfg(34), 'imagenet')
NAMED['resnet50'] = Named('resnet50', resnet_imagenet.default_cfg(50), 'imagenet')
NAMED.update(
    {
        'vgg16_a': Named('vgg_l1', _VGG16_A, 'cifar', base='vgg16'),
        'resnet56_a': Named('resnet_cifar', _R56_A, 'cifar', base='resnet56'),
        'resnet56_b': Named('resnet_cifar', _R56_B, 'cifar', base='resnet56'),
        'resnet110_a': Named('resnet_cifar', _R110_A, 'cifar', base='resnet110'),
        'resnet110_b': Named('resnet_cifar', _R110_B, 'cifar', base='resnet110'),
        'resnet34_a': Named('resnet34', _R34_A, 'imagenet', base='resnet34'),
        'resnet34_b': Named('resnet34', _R34_B, 'imagenet', base='resnet34'),
        'resnet50_thinet30': Named('resnet50', _thinet((19, 38, 76, 153)), 'imagenet', base='resnet50'),
        'resnet50_thinet50': Named('resnet50', _thinet((32, 64, 128, 256)), 'imagenet', base='resnet50'),
        'resnet50_thinet70': Named('resnet50', _thinet((44, 89, 179, 358)), 'imagenet', base='resnet50'),
        'vgg16_thinet_conv': Named('vgg_imagenet', _THINET_CONV, 'imagenet', base='vgg16_imagenet'),
        'vgg16_thinet_gap': Named('vgg_gap_imagenet', vgg.THINET_GAP_CFG, 'imagenet', base='vgg16_imagenet'),
        'vgg16_thinet_tiny': Named('vgg_gap_imagenet', vgg.THINET_TINY_CFG, 'imagenet', base='vgg16_imagenet'),
        'resnet50_2x': Named(
            'resnet50', regression_2x.CFG, 'imagenet', base='resnet50', selections=regression_2x.selections()
        ),
        **{
            f'{name}_sss': Named('resnet50', resnet_imagenet.stage_blocks_cfg(stages), 'imagenet', base='resnet50')
            for name, stages in resnet_imagenet.SSS_STAGE_BLOCKS.items()
        },
        'vgg16_5x': Named(
            'vgg_imagenet',
            (24, 22, 'M', 41, 51, 'M', 108, 89, 111, 'M', 184, 276, 228, 'M', 512, 512, 512, 'M'),
            'imagenet',
            base='vgg16_imagenet',
        ),
    }
)


def input_shape(dataset: str) -> tuple[int, int, int, int]:
  return (1, 32, 32, 3) if dataset == 'cifar' else (1, 224, 224, 3)


def default_classes(dataset: str) -> int:
  return 10 if dataset == 'cifar' else 1000


def normalize_cfg(cfg: Sequence) -> tuple:
  """A cfg as a tuple of ints and 'M' (JSON round trips give lists and may give strings); 0 is a removed block's
  width, which only `BLOCK_FAMILIES` accept (`build` checks)."""
  out = []
  for v in cfg:
    if v == 'M':
      out.append('M')
    elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise UserError(f'cfg entries must be positive ints or "M", got {v!r}')
    else:
      out.append(int(v))
  return tuple(out)


def _normalize_selections(selections):
  if selections is None:
    return None
  return tuple(None if s is None else tuple(int(i) for i in s) for s in selections)


def _validate(family: str, cfg: tuple, selections) -> None:
  """Checks at construction (not at first call) that `cfg` (and `selections`) fit `family`."""
  n = len(cfg)
  try:
    if 0 in cfg and family not in BLOCK_FAMILIES:
      raise ValueError(f'cfg entries must be positive ints or "M" ({family} has no removable blocks), got 0')
    if family == 'resnet50' and any((cfg[i + 1] == 0) != (cfg[i + 2] == 0) or cfg[i] == 0 for i in range(0, n, 3)):
      raise ValueError('resnet50: a removed block has [mid1, mid2] = [0, 0] (both), and its input width stays')
    if family in _VGG_HEADS:
      if not vgg.conv_widths(cfg, _VGG_HEADS[family]) or (family == 'vgg_bn_imagenet' and 'M' in cfg[-2:]):
        raise ValueError(f'{family}: cfg {list(cfg)} has no conv widths (or no FC widths at the end)')
    elif 'M' in cfg:
      raise ValueError(f'{family}: only VGG cfgs have "M" entries')
    elif family == 'resnet_cifar':
      if n == 0 or n % 3:
        raise ValueError(f'resnet_cifar needs 3n block widths (depth 6n+2), got {n}')
    elif family == 'preresnet':
      d = 1 + n
      preresnet.check_selections(
          cfg, selections, preresnet.selection_widths(d), list(cfg[0 : n - 1 : 3]) + [cfg[-1]], f'PreResNet-{d}'
      )
    elif family == 'densenet':
      d = 1 + n
      densenet.check_selections(cfg, selections, densenet.selection_widths(d), cfg, f'DenseNet-{d}')
    elif family in ('resnet34', 'resnet50'):
      expected = 16 if family == 'resnet34' else 48
      if n != expected:
        raise ValueError(f'{family} needs a cfg of {expected} entries, got {n}')
      if family == 'resnet50':
        preresnet.check_selections(cfg, selections, resnet_imagenet.block_input_widths(50), cfg[0::3], 'ResNet-50')
  except ValueError as e:
    raise UserError(str(e)) from None


def policy_for(family: str, compute: Compute | Mapping | None = None) -> Compute:
  """The compute policy `family`'s model is built with: `compute` itself when a `Compute`, else the options
  (`config.compute`; None: every field auto) resolved for the running process: `layers.for_convnext` for the
  ConvNeXt families (ConvNeXt's own choices: C++ depthwise-conv and LayerNorm kernels on CPU), `layers.for_backend`
  for the others."""
  if isinstance(compute, Compute):
    return compute
  return (layers.for_convnext if family in GRAPH_FAMILIES else layers.for_backend)(compute)


def build(
    family: str,
    cfg: Sequence,
    num_classes: int,
    selections=None,
    dtype=None,
    compute: Compute | Mapping | None = None,
    block_scale: bool = False,
) -> nn.Module:
  """The model of `family` with channel configuration `cfg` (the depth follows from the cfg length); `dtype`: the
  computation dtype (params stay float32); `compute`: the compute policy or the options it is resolved from
  (`policy_for`); `block_scale`: SSS's learned factor on every residual branch (BLOCK_FAMILIES only)."""
  cfg = normalize_cfg(cfg)
  if block_scale and family not in BLOCK_FAMILIES:
    raise UserError(
        f'block_scale (Sparse Structure Selection) needs a family of {", ".join(BLOCK_FAMILIES)}, got {family}'
    )
  compute = policy_for(family, compute)
  if family in GRAPH_FAMILIES:
    return _convnext(family, cfg, num_classes, dtype, compute)
  selections = _normalize_selections(selections)
  if selections is not None and family not in SELECTION_FAMILIES:
    raise UserError(f'family {family!r} has no channel selection (selections given)')
  _validate(family, cfg, selections)
  try:
    if family in _VGG_HEADS:
      return vgg.VGG(cfg, num_classes, _VGG_HEADS[family], dtype=dtype, compute=compute)
    if family == 'resnet_cifar':
      return resnet_cifar.CifarResNet(
          2 + 2 * len(cfg), cfg, num_classes, dtype=dtype, compute=compute, block_scale=bool(block_scale)
      )
    if family == 'preresnet':
      return preresnet.PreResNet(1 + len(cfg), cfg, num_classes, selections, dtype=dtype, compute=compute)
    if family == 'densenet':
      return densenet.DenseNet(1 + len(cfg), cfg, num_classes, selections=selections, dtype=dtype, compute=compute)
    if family == 'resnet34':
      return resnet_imagenet.ResNet34(cfg, num_classes, dtype=dtype, compute=compute)
    if family == 'resnet50':
      return resnet_imagenet.ResNet50(
          cfg, num_classes, selections, dtype=dtype, compute=compute, block_scale=bool(block_scale)
      )
  except ValueError as e:
    raise UserError(str(e)) from None
  raise UserError(f'unknown model family {family!r} (known: {", ".join(FAMILIES)})')


def _convnext(family: str, cfg: tuple, num_classes: int, dtype, compute: Compute) -> nn.Module:
  from convnext_jax import models as convnext_models  # pylint: disable=import-outside-toplevel

  arch, dims, drop_path = CONVNEXT_FAMILIES[family]
  if len(cfg) != len(dims) or 'M' in cfg:
    raise UserError(f'{family}: cfg is the {len(dims)} stage widths, got {list(cfg)}')
  spec = dict(dims=tuple(cfg), num_classes=int(num_classes), drop_path_rate=drop_path)
  if dtype is not None:
    spec['dtype'] = dtype
  return convnext_models.create_model(arch, compute=compute, **spec)


# Every named model: its family's `build` with the named cfg and its dataset's class count as defaults.
MODELS = Registry('model')
for _name, _spec in NAMED.items():
  MODELS.register(
      _name,
      build,
      family=_spec.family,
      cfg=_spec.cfg,
      num_classes=default_classes(_spec.dataset),
      selections=_spec.selections,
  )


def list_models(pattern: str | None = None) -> list[str]:
  """Sorted named models (the zoo, the tests), optionally an fnmatch pattern."""
  return MODELS.list_models(pattern)


def create(
    family_or_name: str,
    cfg: Sequence | None = None,
    num_classes: int | None = None,
    selections=None,
    dtype=None,
    compute: Compute | Mapping | None = None,
    block_scale: bool = False,
) -> nn.Module:
  """A named model (optionally with another cfg) or a family built from `cfg`; `compute` as `build`'s."""
  if family_or_name in MODELS:
    given = {k: v for k, v in (('cfg', cfg), ('num_classes', num_classes), ('selections', selections)) if v is not None}
    if cfg is not None and selections is None:  # another cfg: the named selections (sized for its cfg) do not apply
      given['selections'] = None
    if block_scale:
      given['block_scale'] = True
    return MODELS.create(family_or_name, dtype=dtype, compute=compute, **given)
  arch_family = {arch: f for f, (arch, _, _) in CONVNEXT_FAMILIES.items()}
  if family_or_name in GRAPH_FAMILIES or family_or_name in arch_family:
    family = arch_family.get(family_or_name, family_or_name)
    cfg = CONVNEXT_FAMILIES[family][1] if cfg is None else cfg
    default_classes_ = 10 if family == 'convnext' else 1000
    return build(family, cfg, default_classes_ if num_classes is None else num_classes, None, dtype, compute)
  if family_or_name in FAMILIES:
    if cfg is None:
      raise UserError(f'family {family_or_name!r} needs a cfg (or use a named model: {", ".join(list_models())})')
    return build(
        family_or_name, cfg, 10 if num_classes is None else num_classes, selections, dtype, compute, block_scale
    )
  raise UserError(f'{MODELS.unknown(family_or_name)} (or a family: {", ".join(FAMILIES)})')


def convnext_family(model) -> str:
  """The CONVNEXT_FAMILIES entry whose depths and patch size `model` (a convnext_jax ConvNeXt) has."""
  from convnext_jax import models as convnext_models  # pylint: disable=import-outside-toplevel

  for family, (arch, _, _) in CONVNEXT_FAMILIES.items():
    ref = convnext_models.create_model(arch)
    if (tuple(ref.depths), ref.patch_size, ref.kernel_size) == (
        tuple(model.depths),
        model.patch_size,
        model.kernel_size,
    ):
      return family
  raise UserError(f'a ConvNeXt with depths {tuple(model.depths)}, patch {model.patch_size} is not a pruning_jax model')


def family_of(model: nn.Module) -> str:
  from convnext_jax.models import ConvNeXt  # pylint: disable=import-outside-toplevel

  if isinstance(model, Rewidthed):
    return family_of(model.base)
  if isinstance(model, ConvNeXt):
    return convnext_family(model)
  if isinstance(model, vgg.VGG):
    return {v: k for k, v in _VGG_HEADS.items()}[model.head]
  for family, cls in (
      ('resnet_cifar', resnet_cifar.CifarResNet),
      ('preresnet', preresnet.PreResNet),
      ('densenet', densenet.DenseNet),
      ('resnet34', resnet_imagenet.ResNet34),
      ('resnet50', resnet_imagenet.ResNet50),
  ):
    if isinstance(model, cls):
      return family
  raise UserError(f'{type(model).__name__} is not a pruning_jax model')


def cfg_of(model: nn.Module) -> tuple:
  if isinstance(model, Rewidthed):
    return cfg_of(model.base)
  if family_of(model) in GRAPH_FAMILIES:
    return tuple(int(d) for d in model.dims)
  if model.cfg is not None:
    return tuple(model.cfg)
  family = family_of(model)
  defaults = {
      'resnet_cifar': lambda: resnet_cifar.default_cfg(model.depth),
      'preresnet': lambda: preresnet.default_cfg(model.depth),
      'densenet': lambda: densenet.default_cfg(model.depth, model.growth),
      'resnet34': lambda: resnet_imagenet.default_cfg(34),
      'resnet50': lambda: resnet_imagenet.default_cfg(50),
  }
  return defaults[family]()


def describe(model: nn.Module) -> dict:
  """JSON-able {'family', 'cfg', 'num_classes', 'selections'} that `from_description` rebuilds `model` from."""
  base = model.base if isinstance(model, Rewidthed) else model
  sel = getattr(base, 'selections', None)
  d = {
      'family': family_of(base),
      'cfg': list(cfg_of(base)),
      'num_classes': int(base.num_classes),
      'selections': None if sel is None else [None if s is None else list(s) for s in sel],
  }
  if getattr(base, 'block_scale', False):
    d['block_scale'] = True  # SSS's factors on the residual branches (absent: none)
  if isinstance(model, Rewidthed):
    d['widths'] = widths_jsonable(model.widths)  # the traced surgery's layer widths over the base's cfg
  return d


def from_description(d: dict, dtype=None, compute: Compute | Mapping | None = None) -> nn.Module:
  missing = [k for k in ('family', 'cfg', 'num_classes') if k not in d]
  if missing:
    raise UserError(f'model description lacks {missing[0]!r}')
  model = build(
      d['family'], d['cfg'], int(d['num_classes']), d.get('selections'), dtype, compute, bool(d.get('block_scale'))
  )
  return Rewidthed(model, widths_from_json(d['widths'])) if d.get('widths') else model
