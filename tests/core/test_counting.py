"""count_params / count_macs on small hand-built Linen modules with hand-computed MACs."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax import counting


def x_of(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_conv_same_stride2():
  m = nn.Conv(8, (3, 3), strides=2, padding='SAME')
  assert counting.count_macs(m, x_of(1, 32, 32, 3)) == 16 * 16 * 8 * 3 * 9


def test_conv_valid_and_batch_scales():
  m = nn.Conv(8, (3, 3), padding='VALID', use_bias=False)
  assert counting.count_macs(m, x_of(1, 32, 32, 4)) == 30 * 30 * 8 * 4 * 9
  assert counting.count_macs(m, x_of(3, 32, 32, 4)) == 3 * 30 * 30 * 8 * 4 * 9


def test_conv_explicit_padding_and_rect_kernel():
  m = nn.Conv(5, (1, 7), strides=(1, 2), padding=((0, 0), (3, 3)))
  # H: 10, W: (20 + 6 - 7) // 2 + 1 = 10
  assert counting.count_macs(m, jnp.zeros((2, 10, 20, 6))) == 2 * 10 * 10 * 5 * 6 * 7


def test_grouped_and_depthwise_conv():
  g = nn.Conv(16, (3, 3), feature_group_count=4)
  assert counting.count_macs(g, x_of(1, 8, 8, 8)) == 8 * 8 * 16 * (8 // 4) * 9
  dw = nn.Conv(32, (7, 7), feature_group_count=32, padding=3)
  assert counting.count_macs(dw, x_of(1, 14, 14, 32)) == 14 * 14 * 32 * 49


def test_conv1d_and_unbatched():
  assert counting.count_macs(nn.Conv(4, (5,), padding='VALID'), x_of(2, 20, 3)) == 2 * 16 * 4 * 3 * 5
  assert counting.count_macs(nn.Conv(4, (3, 3)), x_of(6, 6, 2)) == 6 * 6 * 4 * 2 * 9


def test_conv_transpose_and_conv_local():
  # fvcore convention for transposed convs: input positions x kernel.
  ct = nn.ConvTranspose(4, (2, 2), strides=(2, 2))
  assert counting.count_macs(ct, x_of(1, 5, 5, 6)) == 5 * 5 * 6 * 4 * 4
  cl = nn.ConvLocal(4, (3, 3), padding='VALID')
  assert counting.count_macs(cl, x_of(2, 6, 6, 3)) == 2 * 4 * 4 * 4 * 3 * 9


def test_dense_on_4d_input():
  m = nn.Dense(32)
  assert counting.count_macs(m, x_of(2, 4, 4, 16)) == 2 * 4 * 4 * 16 * 32


def test_dense_general_and_einsum():
  m = nn.DenseGeneral(features=(3, 5), axis=(-2, -1))
  assert counting.count_macs(m, x_of(2, 7, 4, 6)) == 2 * 7 * 3 * 5 * 4 * 6
  e = nn.Einsum((4, 6, 5), 'bti,hio->btho')
  assert counting.count_macs(e, x_of(2, 3, 6)) == 2 * 3 * 4 * 5 * 6
  e2 = nn.Einsum((6, 5), '...i,io->...o', use_bias=False)
  assert counting.count_macs(e2, x_of(2, 3, 6)) == 2 * 3 * 6 * 5


class Bottleneck(nn.Module):
  """ResNet-style bottleneck with BatchNorm and a projection shortcut."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    y = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
    y = nn.relu(norm()(nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(y)))
    y = norm()(nn.Conv(self.features * 4, (1, 1), use_bias=False)(y))
    sc = norm()(nn.Conv(self.features * 4, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(y + sc)


def test_bottleneck_with_batchnorm():
  cin, f, h = 64, 32, 16
  ho = h // 2
  want = (
      h * h * f * cin  # 1x1 reduce
      + ho * ho * f * f * 9  # 3x3 stride 2
      + ho * ho * 4 * f * f  # 1x1 expand
      + ho * ho * 4 * f * cin
  )  # projection shortcut
  m = Bottleneck(f, strides=2)
  assert counting.count_macs(m, x_of(1, h, h, cin), train=False) == want
  assert counting.count_macs(m, x_of(1, h, h, cin), train=True) == want  # batch_stats mutable


class ShiftDepthwise(nn.Module):
  """Depthwise k x k conv written as k*k shifted multiply-adds (not an nn.Conv)."""

  k: int = 3

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    w = self.param('w', nn.initializers.normal(), (self.k, self.k, c))
    p = self.k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, wd = x.shape[1:3]
    y = jnp.zeros_like(x)
    for i in range(self.k):
      for j in range(self.k):
        y = y + xp[:, i : i + h, j : j + wd, :] * w[i, j]
    counting.record_macs(self.k * self.k * math.prod(x.shape))
    return y


class Mixer(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = ShiftDepthwise(5)(x)
    q = nn.Dense(8, name='q')(x)
    # attention-like matmul reported by hand
    s = jnp.einsum('bnc,bmc->bnm', q.reshape(q.shape[0], -1, 8), q.reshape(q.shape[0], -1, 8))
    n = s.shape[-1]
    counting.record_macs(q.shape[0] * n * n * 8)
    return s


def test_custom_hook_depthwise_and_matmul():
  b, h, c = 2, 6, 4
  assert counting.count_macs(ShiftDepthwise(3), x_of(b, h, h, c)) == b * 3 * 3 * c * h * h
  n = h * h
  want = b * 25 * c * n + b * n * c * 8 + b * n * n * 8
  assert counting.count_macs(Mixer(), x_of(b, h, h, c)) == want
  # outside count_macs the hook is a no-op (also when traced, e.g. under jit)
  x = jnp.ones((1, 4, 4, c))
  params = jax.eval_shape(Mixer().init, jax.random.PRNGKey(0), x)
  jax.jit(Mixer().apply).trace(params, x)
  counting.record_macs(5)
  assert counting.count_macs(ShiftDepthwise(1), x_of(1, 2, 2, 1)) == 4


def test_record_macs_rejects_traced_values():
  class Bad(nn.Module):

    @nn.compact
    def __call__(self, x):
      counting.record_macs(jnp.sum(x).astype(jnp.int32))
      return x

  with pytest.raises(TypeError):
    counting.count_macs(Bad(), x_of(1, 2))


class Net(nn.Module):
  """setup-defined submodules, a remat'd layer, a shared layer called twice, and a non-call method."""

  def setup(self):
    self.stem = nn.Conv(8, (3, 3), strides=2)
    self.block = nn.remat(Bottleneck, static_argnums=(2,))(2)
    self.head = nn.Dense(10)
    self.proj = nn.Dense(8)

  def __call__(self, x, train: bool = False):
    x = self.stem(x)
    x = self.block(x, train)
    x = self.proj(self.proj(x.mean((1, 2))[..., :8]))  # shared weights, called twice
    return self.head(x)

  def features(self, x):
    return self.stem(x)


def test_nested_setup_remat_shared_and_method():
  h = 8
  stem = (h // 2) ** 2 * 8 * 3 * 9
  s = h // 2
  block = s * s * 2 * 8 + s * s * 2 * 2 * 9 + s * s * 8 * 2 + s * s * 8 * 8
  want = stem + block + 2 * (8 * 8) + 8 * 10
  assert counting.count_macs(Net(), x_of(1, h, h, 3)) == want
  assert counting.count_macs(Net(), x_of(1, h, h, 3), method=Net.features) == stem


def test_given_variables_and_pytree_inputs():
  class Two(nn.Module):

    @nn.compact
    def __call__(self, inp, scale=1.0):
      return nn.Dense(3)(inp['a']) * scale + nn.Dense(3)(inp['b'])

  inp = {'a': jnp.ones((4, 5)), 'b': jnp.ones((4, 2))}
  variables = Two().init(jax.random.PRNGKey(0), inp)
  assert counting.count_macs(Two(), inp, variables=variables) == 4 * 5 * 3 + 4 * 2 * 3


def test_count_params():
  variables = jax.eval_shape(Bottleneck(4).init, jax.random.PRNGKey(0), x_of(1, 8, 8, 16))
  # convs: 16*4, 9*4*4, 4*16, 16*16; 4 BNs with scale+bias: 2*(4+4+16+16)
  assert counting.count_params(variables['params']) == 16 * 4 + 9 * 16 + 4 * 16 + 16 * 16 + 2 * (4 + 4 + 16 + 16)
  assert counting.count_params(variables['batch_stats']) == 2 * (4 + 4 + 16 + 16)
  real = nn.Dense(3).init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
  assert counting.count_params(real) == 5 * 3 + 3
  assert counting.count_params({'a': np.zeros((2, 3)), 'b': [jnp.zeros(4), jnp.zeros(())]}) == 11


def _convnext_t_macs_by_hand(r=224):
  """Conv + Linear MACs of ConvNeXt-T (depths 3,3,9,3, dims 96..768, 1000 classes)."""
  dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
  total, s = (r // 4) ** 2 * 96 * 3 * 16, r // 4
  for i, (d, n) in enumerate(zip(dims, depths)):
    if i:
      s //= 2
      total += s * s * d * dims[i - 1] * 4
    total += n * (s * s * d * 49 + 2 * s * s * d * 4 * d)
  return total + 768 * 1000


class TinyConvNeXt(nn.Module):
  """Shape-faithful ConvNeXt-T (no drop path / layer scale details needed for counting)."""

  @nn.compact
  def __call__(self, x):
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    for i, (d, n) in enumerate(zip(dims, depths)):
      if i == 0:
        x = nn.LayerNorm()(nn.Conv(d, (4, 4), strides=4)(x))
      else:
        x = nn.Conv(d, (2, 2), strides=2)(nn.LayerNorm()(x))
      for _ in range(n):
        y = nn.Conv(d, (7, 7), padding=3, feature_group_count=d)(x)
        y = nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(y))))
        x = x + self.param(f'gamma{_}_{i}', nn.initializers.ones, (d,)) * y
    return nn.Dense(1000)(nn.LayerNorm()(x.mean((1, 2))))


def test_convnext_tiny_gmacs():
  macs = counting.count_macs(TinyConvNeXt(), x_of(1, 224, 224, 3))
  assert macs == _convnext_t_macs_by_hand()
  assert round(macs / 1e9, 2) == 4.46  # conv + linear only ("4.5G FLOPs" in the paper; timm, which adds norms: 4.47)


def test_count_params_nonzero():
  tree = {'w': np.array([[0.0, 1.0], [2.0, 0.0]]), 'b': jnp.array([0.0, 0.0, 3.0])}
  assert counting.count_params(tree) == 7
  assert counting.count_params(tree, nonzero=True) == 3
  with pytest.raises(TypeError):
    counting.count_params({'w': x_of(2, 2)}, nonzero=True)


class TwoExits(nn.Module):
  """Stem, exit a, more convs, exit b: marks after each exit."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name='stem')(x)
    a = nn.Conv(2, (1, 1), name='exit_a')(x)
    counting.mark('exit_a')
    x = nn.Conv(8, (3, 3), strides=2, name='body')(x)
    b = nn.Dense(2, name='exit_b')(x)
    counting.mark('exit_b')
    return a, b


def test_count_macs_by_mark_cumulative_one_trace():
  h = 8
  stem, ea, body, eb = h * h * 4 * 3 * 9, h * h * 2 * 4, 4 * 4 * 8 * 4 * 9, 4 * 4 * 8 * 2
  got = counting.count_macs_by_mark(TwoExits(), x_of(1, h, h, 3))
  assert got == {'exit_a': stem + ea, 'exit_b': stem + ea + body + eb, 'total': stem + ea + body + eb}
  assert list(got) == ['exit_a', 'exit_b', 'total']
  # a plain function that applies a model itself
  variables = jax.eval_shape(TwoExits().init, jax.random.PRNGKey(0), x_of(2, h, h, 3))
  got = counting.count_macs_by_mark(lambda v, x: TwoExits().apply(v, x), variables, x_of(2, h, h, 3))
  assert got['exit_a'] == 2 * (stem + ea) and got['total'] == 2 * (stem + ea + body + eb)
  counting.mark('outside')  # no-op outside a count
  assert counting.count_macs(TwoExits(), x_of(1, h, h, 3)) == stem + ea + body + eb


def test_mark_twice_is_an_error():
  class Twice(nn.Module):

    @nn.compact
    def __call__(self, x):
      counting.mark('m')
      counting.mark('m')
      return x

  with pytest.raises(ValueError, match='twice'):
    counting.count_macs_by_mark(Twice(), x_of(1, 2))


class HalfConv(nn.Module):
  """A layer that pretends to compute only the positions where mask == 1 and sows those MACs."""

  @nn.compact
  def __call__(self, x, mask):
    conv = nn.Conv(3, (1, 1), use_bias=False, name='conv')
    y = conv(x)
    per_position = x.shape[-1] * 3
    counting.sow_macs(self, 'actual', mask.reshape(mask.shape[0], -1).sum(-1) * per_position)
    return y


class TwoHalf(nn.Module):

  @nn.compact
  def __call__(self, x, mask):
    shared = HalfConv(name='shared')
    return shared(shared(x, mask), mask) + HalfConv(name='other')(x, mask)


def test_sow_macs_data_dependent():
  x = jnp.ones((2, 4, 4, 3))
  mask = jnp.zeros((2, 4, 4)).at[0, :2].set(1.0).at[1, 0, 0].set(1.0)  # 8 and 1 computed positions
  variables = {'params': TwoHalf().init(jax.random.PRNGKey(0), x, mask)['params']}
  _, state = TwoHalf().apply(variables, x, mask, mutable=[])
  assert state == {}  # sow is a no-op when the collection is not mutable
  _, state = TwoHalf().apply(variables, x, mask, mutable=['macs'])
  per = 3 * 3
  np.testing.assert_array_equal(state['macs']['shared']['actual'], np.array([16, 2]) * per)  # called twice: sum
  np.testing.assert_array_equal(state['macs']['other']['actual'], np.array([8, 1]) * per)
  np.testing.assert_array_equal(counting.sum_macs(state['macs']), np.array([24, 3]) * per)
  np.testing.assert_array_equal(counting.sum_macs(state['macs'], name='actual'), np.array([24, 3]) * per)
  assert counting.sum_macs(state['macs'], name='absent') == 0
  # the static count still sees the dense cost of all three conv calls
  assert counting.count_macs(TwoHalf(), x, mask) == 3 * 2 * 16 * 3 * 3
