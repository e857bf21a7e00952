"""The compute policy (core_jax.compute): one conv for every formulation, hashing, config resolution, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax import compute as compute_lib
from core_jax.compute import Compute
from core_jax.config import base_config
from core_jax.errors import UserError

_DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize(
    'policy, shape, k, stride, pad, path',
    [
        (Compute(patch_conv='matmul'), (2, 9, 7, 5), 2, 2, 0, 'dot'),  # space-to-depth; remainder row dropped
        (Compute(small_conv='matmul'), (2, 4, 4, 6), 3, 1, 1, 'dot'),  # 16 output positions: shifted patches
        (Compute(small_conv='matmul'), (2, 5, 5, 6), 3, 1, 1, 'conv'),  # 25 positions: stays a conv
        (Compute(pointwise_conv='matmul'), (2, 7, 9, 6), 1, 2, 0, 'dot'),  # strided 1x1
        (Compute(channel_multiple=8), (2, 6, 6, 6), 3, 1, 1, 'pad'),  # 6 -> 8 input channels, 13 -> 16 outputs
        (Compute(), (2, 6, 6, 6), 3, 2, 1, 'conv'),
    ],
)
def test_every_formulation_is_the_same_conv(policy, shape, k, stride, pad, path, highest_precision):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*shape).astype(np.float32))
  kernel = jnp.asarray(rng.randn(k, k, shape[-1], 13).astype(np.float32))
  strides, padding = (stride, stride), ((pad, pad), (pad, pad))

  def ours(x, kernel):
    return policy.conv(x, kernel, strides, padding)

  def ref(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)

  jaxpr = str(jax.make_jaxpr(ours)(x, kernel))
  assert ('conv_general_dilated' in jaxpr) == (path != 'dot')
  assert ('f32[3,3,8,16]' in jaxpr) == (path == 'pad')  # the kernel zero-padded to 8 inputs, 16 outputs
  np.testing.assert_allclose(ours(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, kernel) for f in (ours, ref)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_the_policy_is_part_of_the_compiled_program():
  """Equal policies hash equal and share one compiled program; a policy differing in one field is another program
  (the old process-global channel multiple, read at trace time, was silently ignored after the first compile)."""
  from pruning_jax.models import layers  # pylint: disable=import-outside-toplevel

  assert Compute(channel_multiple=8) == Compute(channel_multiple=8)
  assert hash(Compute(channel_multiple=8)) == hash(Compute(channel_multiple=8))
  assert Compute(channel_multiple=8) != Compute(channel_multiple=1)
  x = jnp.ones((2, 8, 8, 6))
  apply = jax.jit(lambda module, v, x: module.apply(v, x), static_argnums=0)
  conv = lambda m: layers.conv(57, 3, name='c', compute=Compute(channel_multiple=m))
  v = conv(1).init(jax.random.PRNGKey(0), x)
  outputs = [apply(conv(m), v, x) for m in (8, 8, 1)]
  assert apply._cache_size() == 2  # pylint: disable=protected-access
  texts = [apply.lower(conv(m), v, x).as_text() for m in (8, 1)]
  assert texts[0] != texts[1] and 'x64xf32' in texts[0] and 'x64xf32' not in texts[1]  # 57 -> 64 padded
  np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-5, atol=1e-5)


def test_resolve_auto_per_line_and_one_line_errors():
  from anytime_jax import confidence  # pylint: disable=import-outside-toplevel
  from convnext_jax import ops  # pylint: disable=import-outside-toplevel
  from pruning_jax.models import layers  # pylint: disable=import-outside-toplevel

  options = base_config().compute  # every field 'auto' / None
  assert jax.default_backend() == 'cpu'
  assert layers.for_backend(options) == Compute(small_conv='matmul', channel_multiple=8)
  assert confidence.for_backend(options) == Compute(
      pointwise_conv='matmul',
      masked_conv='sparse',
      fusion_barriers=True,
      masked_dense_above=(0.5, 0.3, 0.9),
      patch_max_by_channels=((0, 0.25), (48, 0.35), (96, 0.5)),
      dense_entry=confidence.SEGMENT_DENSE_ENTRY,
  )
  with pytest.raises(UserError, match='compute.patch_max_by_channels=.*: the pruning line has no use for it'):
    layers.for_backend(dict(patch_max_by_channels=((0, 0.5),)))
  got = ops.for_backend(options)
  assert got.patch_conv == 'matmul' and got.fusion_barriers and got.dwconv == ops.resolve_dwconv_impl('auto')
  assert got.dense_grad == 'narrow_transpose' and got.dot_general is compute_lib.dense_dot_general
  assert Compute().dot_general is None  # Flax's lax.dot_general: the plain formulation
  # the pruning line's ConvNeXts: ConvNeXt's choices, the line's for the fields ConvNeXt's table leaves out
  assert layers.for_convnext(options) == dataclasses.replace(got, small_conv='matmul', channel_multiple=8)
  assert layers.for_convnext(dict(patch_conv='conv', dwconv='xla')).dwconv == 'xla'  # set fields win here too
  assert layers.for_backend(dict(channel_multiple=1)).channel_multiple == 1  # a set field wins over auto
  with pytest.raises(UserError, match='compute.fusion_barriers=True: the pruning line has no use for it'):
    layers.for_backend(dict(fusion_barriers=True))
  with pytest.raises(UserError, match='unknown compute option compute.channels'):
    layers.for_backend(dict(channels=8))
  with pytest.raises(UserError, match='compute.small_conv must be one of'):
    layers.for_backend(dict(small_conv='fast'))
  with pytest.raises(UserError, match='compute.channel_multiple must be an int >= 1'):
    layers.for_backend(dict(channel_multiple=0))
  with pytest.raises(dataclasses.FrozenInstanceError):
    Compute().channel_multiple = 8  # frozen: a policy cannot change under a compiled program


@pytest.mark.parametrize('lead, c, d', [((2, 5, 3), 4, 16), ((2, 5, 3), 16, 4), ((7,), 6, 6)])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_dense_dot_general_is_the_dot_with_a_standard_form_weight_gradient(lead, c, d, dtype, highest_precision):
  """``dense_grad='narrow_transpose'``: the forward and both gradients equal ``lax.dot_general``'s autodiff, in
  the operands' dtypes; the weight gradient's matmul contracts the narrower operand transposed (never the wider
  output gradient, which XLA:CPU copied transposed for autodiff's form); other contractions pass through."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*lead, c), dtype)
  w = jnp.asarray(rng.randn(c, d), dtype)
  dn = (((len(lead),), (0,)), ((), ()))
  ours = lambda x, w: compute_lib.dense_dot_general(x, w, dn)
  ref = lambda x, w: jax.lax.dot_general(x, w, dn)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.float32(ours(x, w)), np.float32(ref(x, w)), rtol=tol, atol=tol)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w).astype(jnp.float32)))
  got, want = jax.grad(loss(ours), argnums=(0, 1))(x, w), jax.grad(loss(ref), argnums=(0, 1))(x, w)
  for a, b in zip(got, want):
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=tol, atol=tol * 10)
  eqns = jax.make_jaxpr(jax.grad(loss(ours), argnums=1))(x, w).jaxpr.eqns
  transposed = [tuple(e.invars[0].aval.shape) for e in eqns if e.primitive.name == 'transpose']
  assert transposed[0] == (int(np.prod(lead)), min(c, d))
  batched = (((2,), (1,)), ((0,), (0,)))  # not a dense layer's contraction: lax.dot_general as it is
  xb, wb = jnp.ones((2, 3, 4), dtype), jnp.ones((2, 4, 5), dtype)
  assert compute_lib.dense_dot_general(xb, wb, batched).shape == (2, 3, 5)


def test_compute_dtype():
  assert compute_lib.compute_dtype('bfloat16') == jnp.bfloat16
  assert compute_lib.compute_dtype('float32') == jnp.float32
  with pytest.raises(UserError, match='float16 would need loss scaling'):
    compute_lib.compute_dtype('float16')
  with pytest.raises(UserError, match="compute_dtype must be one of \\('float32', 'bfloat16'\\), got 'bf16'"):
    compute_lib.compute_dtype('bf16')


def test_layer_end_of_is_the_layer_with_a_barrier_only_where_the_policy_says():
  """``Compute.layer_end_of(fn, *args)`` is ``fn(*args)``; with ``fusion_barriers`` inside one conditional (the
  barrier XLA:CPU keeps), without none. ``layer_end`` of an output computed already is the same rule."""
  a, b = jnp.linspace(-2.0, 2.0, 24).reshape(2, 3, 4), jnp.linspace(1.0, -1.0, 24).reshape(2, 3, 4)
  anchor = jnp.ones((3,))
  relu_sum = lambda x, y: jax.nn.relu(x + y)
  for policy, conds in ((Compute(fusion_barriers=True), 1), (Compute(), 0)):
    end_of = lambda x, y, policy=policy: policy.layer_end_of(relu_sum, x, y, anchor=anchor)
    end = lambda x, y, policy=policy: policy.layer_end(relu_sum(x, y), anchor)
    for f in (end_of, end):
      assert str(jax.make_jaxpr(f)(a, b)).count('cond[') == conds, policy
      np.testing.assert_array_equal(jax.jit(f)(a, b), relu_sum(a, b))
      grads = jax.grad(lambda x, y, f=f: jnp.sum(f(x, y) * x), argnums=(0, 1))(a, b)
      want = jax.grad(lambda x, y: jnp.sum(relu_sum(x, y) * x), argnums=(0, 1))(a, b)
      np.testing.assert_array_equal(grads, want)
