"""Every registered model of every line builds through its line's registry (core_jax.registry.Registry)."""

import jax
import jax.numpy as jnp
import pytest

from anytime_jax import hrnet
from convnext_jax import models as convnext_models
from core_jax import counting, weights
from core_jax.errors import UserError
from core_jax.registry import Registry
from pruning_jax import models as pruning_models

CLASSES = 37  # a class count no layer of these models has as its width

LINES = {
    'convnext': (convnext_models.MODELS, lambda name: 32),
    'pruning': (pruning_models.MODELS, lambda name: pruning_models.input_shape(pruning_models.NAMED[name].dataset)[1]),
    'anytime': (hrnet.MODELS, lambda name: 64),
}
CASES = [(line, name) for line, (registry, _) in LINES.items() for name in registry.list_models()]


def test_zoos_and_converter_lists_come_from_the_registries():
  from anytime_jax import zoo as anytime_zoo  # pylint: disable=import-outside-toplevel
  from convnext_jax import export  # pylint: disable=import-outside-toplevel
  from convnext_jax import zoo as convnext_zoo  # pylint: disable=import-outside-toplevel

  assert convnext_zoo.ZOO_MODELS == convnext_models.IMAGENET_MODELS
  assert set(convnext_models.IMAGENET_MODELS) == set(convnext_models.list_models('convnext_*')) - {'convnext_digits'}
  assert export.TIMM_NAMES == set(convnext_models.IMAGENET_MODELS) - set(convnext_models.list_models('*iso*'))
  assert pruning_models.list_models() == sorted(pruning_models.NAMED)
  assert hrnet.list_models() == sorted(hrnet.ARCHS)
  assert [a for a, e in anytime_zoo.ROWS if e == 'base'] == ['w48', 'w18_small_v2', 'w18']


@pytest.mark.parametrize('line, name', CASES)
def test_each_registered_model_builds_with_overrides(line, name):
  registry, size = LINES[line]
  model = registry.create(name, num_classes=CLASSES)
  x = jax.ShapeDtypeStruct((1, size(name), size(name), 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']
  assert counting.count_params(params) > 0
  heads = [k for k, v in weights.flatten(params).items() if k.endswith('bias') and v.shape == (CLASSES,)]
  assert heads, f'{name}: num_classes={CLASSES} reached no classifier'


def test_unknown_names_are_one_line_errors_with_close_names():
  with pytest.raises(UserError) as e:
    convnext_models.MODELS.create('convnext_tiyn')
  assert str(e.value).startswith("unknown ConvNeXt model 'convnext_tiyn'; did you mean convnext_tiny, ")
  with pytest.raises(UserError, match=r"unknown model 'resnet57'; did you mean resnet56"):
    pruning_models.create('resnet57')
  with pytest.raises(UserError, match=r"unknown HRNet arch 'w49'; did you mean w48"):
    hrnet.MODELS.create('w49')
  with pytest.raises(UserError, match=r"unknown HRNet arch 'xyz'; registered: w18, w18_small_v2"):
    hrnet.get_arch('xyz')


def test_registry_defaults_decorator_and_conflicts():
  reg = Registry('thing')

  @reg.register('a', x=1)
  def make(x, y=0):
    return (x, y)

  reg.register('b', make, x=2, y=3)
  assert reg.create('a') == (1, 0) and reg.create('a', y=5) == (1, 5) and reg.create('b', x=0) == (0, 3)
  assert reg.config('b', y=4) == {'x': 2, 'y': 4} and reg.list_models() == ['a', 'b'] and reg.list_models('b*') == ['b']
  reg.register('a', make, x=1)  # the same entry again (a module imported twice) is fine
  with pytest.raises(ValueError, match='already registered'):
    reg.register('a', make, x=9)
