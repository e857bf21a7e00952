"""The paper-recipe configs resolve to the values recorded in tests/core/config_snapshots.json: written from the
configs as they were before issue 18 moved their recipes (pruning: configs/pruning/_recipes.py; anytime: the five
Cityscapes files merged into cityscapes.py:ARG), so a refactor of a config's code cannot change a value unnoticed.

Every value recorded must resolve the same; keys added to the base config since are not compared. A change of a
recipe on purpose updates the snapshot: `python tests/core/test_config_snapshots.py --write SPEC...`."""

import json
import os
import sys

import pytest

from core_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNAPSHOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config_snapshots.json')


def _resolved(spec: str) -> dict:
  """`configs/SPEC` as plain JSON values (tuples as lists), the way the snapshot holds them."""
  return json.loads(cli.load_config_file(os.path.join(REPO, 'configs', spec)).to_json_best_effort(sort_keys=True))


def _leaves(tree, prefix=''):
  if isinstance(tree, dict) and tree:
    for k, v in tree.items():
      yield from _leaves(v, f'{prefix}.{k}' if prefix else k)
  else:
    yield prefix, tree


with open(SNAPSHOTS) as _f:
  RECORDED = json.load(_f)


@pytest.mark.parametrize('spec', sorted(RECORDED))
def test_config_resolves_to_its_recorded_values(spec):
  now = dict(_leaves(_resolved(spec)))
  for key, value in _leaves(RECORDED[spec]):
    assert key in now, f'{spec}: {key} is gone'
    assert now[key] == value, f'{spec}: {key} is {now[key]!r}, recorded {value!r}'


def test_the_snapshot_covers_every_recipe_config():
  specs = {s.split(':')[0] for s in RECORDED}
  assert specs == {
      'pruning/l1_cifar10.py',
      'pruning/l1_imagenet.py',
      'pruning/slimming_cifar.py',
      'pruning/slimming_imagenet.py',
      'anytime/cityscapes.py',
  }


if __name__ == '__main__':
  if sys.argv[1:2] != ['--write'] or len(sys.argv) < 3:
    raise SystemExit(
        'usage: python tests/core/test_config_snapshots.py --write SPEC... (e.g. anytime/cityscapes.py:w48_ee)'
    )
  for spec in sys.argv[2:]:
    RECORDED[spec] = _resolved(spec)
  with open(SNAPSHOTS, 'w') as f:
    json.dump(RECORDED, f, indent=1, sort_keys=True)
    f.write('\n')
