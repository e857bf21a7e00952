"""Model-zoo tables: params and GMACs of every registered ImageNet ConvNeXt variant and of the UperNet
segmentors, computed from the models (the tables are drawn by convnext_jax.report).

    python -m convnext_jax.zoo            # Markdown tables (for the README)
    python -m convnext_jax.zoo --json     # the same rows as JSON

Params are counted on ``jax.eval_shape`` of ``model.init`` (1000-class head, nothing materialised); GMACs
are ``core_jax.counting.count_macs`` for one image at 224x224 and 384x384 (fvcore convention = the paper's
"FLOPs": convs and linears only).  The top-1 columns are REFERENCE numbers copied from the sources below
(not measured here).

UperNet rows (``convnext_jax.upernet``): params with and without the auxiliary head, and GMACs of one image
through the backbone and the decode head at 2048x512 and 2560x640 (H x W as mmseg's ``get_flops --shape 2048
512``), beside the paper's Table 4 (params with the auxiliary head; "FLOPs" = mmcv's count, the same MACs plus
biases, ReLUs and pooling, ~0.02%: ``convnext_jax.upernet.count``).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from convnext_jax import models, report, upernet
from core_jax import cli, counting
from core_jax.compute import Compute

__all__ = [
    'ZOO_MODELS',
    'REFERENCE_TOP1',
    'params_and_macs',
    'model_stats',
    'zoo_table',
    'upernet_table',
]

ZOO_MODELS: tuple[str, ...] = models.IMAGENET_MODELS

# ---------------------------------------------------------------------------------------------------
# REFERENCE ImageNet-1K val top-1 (%) of models trained on ImageNet-1K only -- NOT computed here.
# (top-1 @224, top-1 @384 or None, source). Sources:
#   paper  = Liu et al., "A ConvNet for the 2020s", arXiv:2201.03545v2, Table 1 (hierarchical, IN-1K
#            trained; 384 = fine-tuned at 384) and Table 2 (isotropic; iso-S is 78.7 in the official README).
#            ConvNeXt-XL has no IN-1K-only result (it is only reported with ImageNet-22K pre-training).
#   timm   = huggingface/pytorch-image-models results/results-imagenet.csv (@aa4b585), timm-trained
#            atto/femto/pico/nano (not in the paper): convnext_atto.d2_in1k, femto.d1_in1k, pico.d1_in1k,
#            nano.d1h_in1k, evaluated at 224.
# ---------------------------------------------------------------------------------------------------
REFERENCE_TOP1: dict[str, tuple[float | None, float | None, str]] = {
    'convnext_atto': (75.672, None, 'timm results CSV (atto.d2_in1k)'),
    'convnext_femto': (77.498, None, 'timm results CSV (femto.d1_in1k)'),
    'convnext_pico': (79.516, None, 'timm results CSV (pico.d1_in1k)'),
    'convnext_nano': (80.762, None, 'timm results CSV (nano.d1h_in1k)'),
    'convnext_tiny': (82.1, None, 'paper Table 1'),
    'convnext_small': (83.1, None, 'paper Table 1'),
    'convnext_base': (83.8, 85.1, 'paper Table 1'),
    'convnext_large': (84.3, 85.5, 'paper Table 1'),
    'convnext_xlarge': (None, None, 'paper Table 1 (22K pre-trained only: 87.0 / 87.8)'),
    'convnext_iso_small': (79.7, None, 'paper Table 2 (README: 78.7)'),
    'convnext_iso_base': (82.0, None, 'paper Table 2'),
    'convnext_iso_large': (82.6, None, 'paper Table 2'),
}


def params_and_macs(model: nn.Module, x: jax.ShapeDtypeStruct, **kwargs) -> tuple[int, int]:
  """(number of params, MACs) of ``model`` on input ``x`` from ONE abstract trace.

  ``count_macs`` with empty variables initialises the parameters while it traces the forward pass
  (``apply`` with ``mutable=True`` and a 'params' rng is how flax's ``init`` works), and the traced method
  reads the param count off the bound module, so init and counting share a single trace.
  """
  box = {}

  def forward(mdl, inp, **kw):
    out = mdl(inp, **kw)
    box['params'] = counting.count_params(mdl.variables.get('params', {}))
    return out

  kwargs.setdefault('train', False)
  macs = counting.count_macs(model, x, variables={}, method=forward, **kwargs)
  return box['params'], macs


def model_stats(name: str, sizes: Sequence[int] = (224, 384), num_classes: int = 1000) -> dict[str, int]:
  """{'params': ..., 'macs_<size>': ...} for ``create_model(name, num_classes=num_classes)``, abstractly
  (one trace per size; params reported for the first size -- they do not depend on it).

  The model computes with the plain policy (``Compute()``, as ``upernet.count``): every policy is the same
  function through the same layers, so it has the same MACs, and the plain one traces in about 10% less time
  than the CPU's (no fusion barriers, no custom weight gradient; tests/convnext/test_zoo.py compares the two)."""
  model = models.create_model(name, num_classes=num_classes, compute=Compute())
  out = {}
  for s in sizes:
    x = jax.ShapeDtypeStruct((1, s, s, model.in_chans), jnp.float32)
    params, out[f'macs_{s}'] = params_and_macs(model, x)
    out.setdefault('params', params)
  return out


def zoo_table(names: Sequence[str] = ZOO_MODELS) -> list:
  rows = []
  for name in names:
    st = model_stats(name)
    top1, top1_384, src = REFERENCE_TOP1.get(name, (None, None, ''))
    rows.append(
        dict(
            model=name,
            params=st['params'],
            gmacs_224=round(st['macs_224'] / 1e9, 2),
            gmacs_384=round(st['macs_384'] / 1e9, 2),
            macs_224=st['macs_224'],
            macs_384=st['macs_384'],
            ref_top1_224=top1,
            ref_top1_384=top1_384,
            ref_source=src,
        )
    )
  return rows


def upernet_table(names: Sequence[str] = upernet.UPERNET_MODELS) -> list:
  """One row per UperNet size: params (with / without the auxiliary head), GMACs at each of report.UPERNET_SIZES, and
  the paper's params (M) and GFLOPs at its input size."""
  rows = []
  for name in names:
    row: dict = dict(model=name)
    for h, w in report.UPERNET_SIZES:
      c = upernet.count(name, h, w)
      row.update(params=c['params'], params_no_aux=c['params_no_aux'])
      row[f'macs_{h}x{w}'] = c['macs']
      row[f'gmacs_{h}x{w}'] = round(c['macs'] / 1e9, 2)
    paper = upernet.PAPER[name]
    row.update(
        paper_params_m=paper['params_m'], paper_gflops=paper['gflops'], paper_input='x'.join(map(str, paper['input']))
    )
    rows.append(row)
  return rows


def main(argv=None) -> None:
  p = cli.ArgumentParser(
      prog='python -m convnext_jax.zoo', description='ConvNeXt model-zoo table (params, GMACs, reference top-1)'
  )
  p.add_argument('--json', action='store_true', help='print JSON instead of Markdown')
  p.add_argument(
      '--models', nargs='*', default=None, help='subset of model names (default: all ImageNet and UperNet ones)'
  )
  args = p.parse_args(argv)
  names = args.models or ZOO_MODELS + upernet.UPERNET_MODELS
  unknown = [n for n in names if n not in ZOO_MODELS + upernet.UPERNET_MODELS]
  if unknown:
    p.error(f'{unknown[0]} is not in the zoo (its ImageNet ConvNeXt and UperNet models)')
  rows = zoo_table([n for n in names if n in ZOO_MODELS])
  seg_rows = upernet_table([n for n in names if n in upernet.UPERNET_MODELS])
  print(report.zoo_text(rows, seg_rows, as_json=args.json))


if __name__ == '__main__':
  main()
