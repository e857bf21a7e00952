"""Model-zoo table of the pruning line: exact params and MACs of every named model, next to the reference.

    python -m pruning_jax.zoo            # Markdown table
    python -m pruning_jax.zoo --json     # the same rows as JSON

Params count every trainable parameter (conv and Linear weights and biases, BN scale and bias; not the BN
running statistics), the convention of the paper's tables. MACs are `core_jax.counting.count_macs` of one image
(32x32 for CIFAR models, 224x224 for ImageNet ones, 10 / 1000 classes): conv and Linear multiply-accumulates
only, which is what Li et al. and the paper call FLOPs. Pruned architectures show the percentage of params and
MACs removed relative to their unpruned base model. The REFERENCE columns are copied from the reference sheet
(`shared/reference/pruning.md` sections 3 and 4.1, rounded as printed there; VGG-GAP / VGG-Tiny from ThiNet's
official README), not computed here.
"""

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import cli, counting
from pruning_jax import models

# name -> (params in M, MACs in M) as printed in the reference sheet (None: not given there).
REFERENCE_COUNTS: dict[str, tuple[float | None, float | None]] = {
    'vgg16': (14.99, 313.5),
    'vgg19': (20.04, 398.0),
    'resnet56': (0.853, 125.5),
    'resnet110': (1.728, 252.9),
    'preresnet164': (1.703, 247.6),
    'densenet40': (1.059, None),
    'resnet34': (21.80, 3660.0),
    'resnet50': (25.56, 4090.0),
    'vgg16_imagenet': (138.4, 15470.0),
    'vgg16_a': (5.40, None),
    # ThiNet's official README (Roll920/ThiNet), not the reference sheet: #Param. and #FLOPs / 2 (that table counts
    # a multiply-add as 2 FLOPs: VGG-GAP 9.34B, VGG-Tiny 2.01B)
    'vgg16_thinet_gap': (8.32, 4670.0),
    'vgg16_thinet_tiny': (1.32, 1005.0),
}
# pruned name -> (params pruned %, MACs pruned %) of the reference sheet section 4.1 (our formulas' values).
REFERENCE_PRUNED: dict[str, tuple[float, float]] = {
    'vgg16_a': (64.0, 34.2),
    'resnet56_a': (9.3, 10.4),
    'resnet56_b': (13.8, 27.6),
    'resnet110_a': (2.3, 15.9),
    'resnet110_b': (32.4, 38.7),
    'resnet34_a': (7.6, 15.4),
    'resnet34_b': (10.7, 24.1),
}
# Li et al. (2017) Table, as quoted in the reference sheet, for comparison only.
LI_ET_AL_PRUNED: dict[str, tuple[float, float]] = {
    'vgg16_a': (64.0, 34.2),
    'resnet56_a': (9.4, 10.4),
    'resnet56_b': (13.7, 27.6),
    'resnet110_a': (2.3, 15.9),
    'resnet110_b': (32.4, 38.6),
    'resnet34_a': (7.6, 15.5),
    'resnet34_b': (10.8, 24.2),
}


def params_and_macs(model, dataset: str, variables=None) -> tuple[int, int]:
  """Exact (params, MACs) of one image; `variables` (abstract or real) skips the abstract init."""
  shape = models.input_shape(dataset)
  if variables is None:
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32)))
  params = counting.count_params(variables['params'])
  macs = counting.count_macs(model, jax.ShapeDtypeStruct(shape, jnp.float32), variables=variables)
  return params, macs


def count_nonzero_params(params) -> int:
  """Non-zero entries over all leaves (mask-mode models: the weights that survive).

  Kept local until core_jax.counting.count_params(tree, nonzero=True) lands on main; then this delegates."""
  if 'nonzero' in inspect.signature(counting.count_params).parameters:
    return counting.count_params(params, nonzero=True)
  return int(sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree_util.tree_leaves(params)))


def pruned_percent(value: int, base: int) -> float:
  return 100.0 * (1.0 - value / base)


def zoo_rows(names=None) -> list[dict]:
  names = list(models.NAMED) if names is None else list(names)
  cache: dict[str, tuple[int, int]] = {}

  def stats(name):
    if name not in cache:
      spec = models.NAMED[name]
      cache[name] = params_and_macs(models.create(name), spec.dataset)
    return cache[name]

  rows = []
  for name in names:
    spec = models.NAMED[name]
    params, macs = stats(name)
    row = {
        'name': name,
        'family': spec.family,
        'dataset': spec.dataset,
        'params': params,
        'macs': macs,
        'ref_params_m': REFERENCE_COUNTS.get(name, (None, None))[0],
        'ref_macs_m': REFERENCE_COUNTS.get(name, (None, None))[1],
        'base': spec.base,
    }
    if spec.base is not None:
      base_params, base_macs = stats(spec.base)
      row['params_pruned_pct'] = round(pruned_percent(params, base_params), 4)
      row['macs_pruned_pct'] = round(pruned_percent(macs, base_macs), 4)
      row['ref_pruned_pct'] = REFERENCE_PRUNED.get(name)
      row['li_et_al_pruned_pct'] = LI_ET_AL_PRUNED.get(name)
    rows.append(row)
  return rows


def _ref(v):
  if v is None:
    return ''
  return f'{v / 1000:g}G' if v >= 1000 else f'{v:g}M'


def format_markdown(rows: list[dict]) -> str:
  lines = [
      '| model | family | data | params | MACs | ref. params | ref. MACs | pruned params / MACs | '
      'ref. pruned | Li et al. |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    pruned = ref = li = ''
    if r['base'] is not None:
      pruned = f"{r['params_pruned_pct']:.1f}% / {r['macs_pruned_pct']:.1f}% of {r['base']}"
      if r.get('ref_pruned_pct'):
        ref = '{:.1f}% / {:.1f}%'.format(*r['ref_pruned_pct'])
      if r.get('li_et_al_pruned_pct'):
        li = '{:.1f}% / {:.1f}%'.format(*r['li_et_al_pruned_pct'])
    lines.append(
        f"| {r['name']} | {r['family']} | {r['dataset']} | {r['params']:,} | {r['macs']:,} | "
        f"{_ref(r['ref_params_m'])} | {_ref(r['ref_macs_m'])} | {pruned} | {ref} | {li} |"
    )
  return '\n'.join(lines)


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m pruning_jax.zoo', description=__doc__.splitlines()[0])
  parser.add_argument('--json', action='store_true')
  parser.add_argument('names', nargs='*', help='named models (default: all)')
  args = parser.parse_args(argv)
  unknown = [n for n in args.names if n not in models.NAMED]
  if unknown:  # was a KeyError traceback
    parser.error(f'{unknown[0]} is not a named model of the zoo (python -m pruning_jax.zoo lists them)')
  rows = zoo_rows(args.names or None)
  print(json.dumps(rows, indent=1) if args.json else format_markdown(rows))


if __name__ == '__main__':
  main()
