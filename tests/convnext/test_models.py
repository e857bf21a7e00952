"""Tests for convnext_jax.models (Flax Linen ConvNeXt).

Run: .venv/bin/python -m pytest tests/convnext/test_models.py -q
The timm parity tests are skipped when torch/timm are not installed.
"""

import os
import sys

import cheap_init
import numpy as np
import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import profile_convnext_layers  # noqa: E402
from convnext_jax import (  # noqa: E402
    DropPath,
    PatchConv,
    create_model,
    depthwise_conv2d,
    for_backend,
    gelu_exact,
    list_models,
    param_count,
    resolve_dwconv_impl,
)
from core_jax import native_kernels  # noqa: E402
from core_jax.compute import Compute, fusion_barrier  # noqa: E402
from core_jax.errors import UserError  # noqa: E402


def _rand(shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape).astype(np.float32))


def _np_variables(model, shape, seed=0, gamma=None):
  """Init-like variables built with numpy from the abstract tree: compiling a jitted ``model.init`` on CPU is
  mostly compiling its threefry RNG calls, and costs more than the test itself."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))
  rs = np.random.RandomState(seed)

  def fill(path, s):
    name = str(path[-1].key)
    if name == 'kernel':
      a = rs.randn(*s.shape) * 0.02
    elif name == 'scale':
      a = 1.0 + 0.1 * rs.randn(*s.shape)
    elif name == 'bias':
      a = 0.02 * rs.randn(*s.shape)
    elif name == 'gamma':
      a = np.full(s.shape, model.layer_scale_init_value if gamma is None else gamma)
    else:
      raise AssertionError(name)
    return jnp.asarray(a.astype(np.float32))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _flat(tree):
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


# ------------------------------------------------------------------------------------------------
# Registry / parameter counts
# ------------------------------------------------------------------------------------------------
EXPECTED_PARAMS = {
    'convnext_atto': 3_695_520,
    'convnext_femto': 5_217_784,
    'convnext_pico': 9_045_672,
    'convnext_nano': 15_593_560,
    'convnext_tiny': 28_589_128,
    'convnext_small': 50_223_688,
    'convnext_base': 88_591_464,
    'convnext_large': 197_767_336,
    'convnext_xlarge': 350_196_968,
    # isotropic: computed from the layer formulas (paper Table 2: 22M / 87M / 306M)
    'convnext_iso_small': 22_308_712,
    'convnext_iso_base': 87_083_752,
    'convnext_iso_large': 305_942_504,
}


def test_list_models():
  names = list_models('convnext_*')  # other families (the roadmap) may share the registry
  assert set(EXPECTED_PARAMS) | {'convnext_digits'} == set(names)
  assert list_models('convnext_iso_*') == ['convnext_iso_base', 'convnext_iso_large', 'convnext_iso_small']
  with pytest.raises(UserError, match="unknown ConvNeXt model 'convnext_nope'"):
    create_model('convnext_nope')


# The 27- and 36-block models take seconds each to trace; tests/convnext/test_zoo.py counts them too.
_DEEP = ('convnext_small', 'convnext_base', 'convnext_large', 'convnext_xlarge', 'convnext_iso_large')


@pytest.mark.parametrize(
    'name', [pytest.param(n, marks=pytest.mark.slow) if n in _DEEP else n for n in sorted(EXPECTED_PARAMS)]
)
def test_param_count(name):
  # jax.eval_shape: nothing is materialised.  Count is input-size independent; 'xla' traces fastest.
  model = create_model(name, num_classes=1000, compute=dict(dwconv='xla'))
  size = (32, 32) if 'iso' not in name else (16, 16)
  assert param_count(model, size) == EXPECTED_PARAMS[name]


def test_isotropic_layer_scale():
  for name, has_gamma in [('convnext_iso_small', False), ('convnext_iso_base', False), ('convnext_iso_large', True)]:
    model = create_model(name, compute=dict(dwconv='xla'))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    flat = _flat(shapes['params'])
    assert ('blocks_0/gamma' in flat) == has_gamma
    assert 'stem_norm/scale' not in flat and flat['stem_conv/kernel'].shape[:3] == (16, 16, 3)


def test_param_tree_names_and_shapes():
  model = create_model('convnext_atto', compute=dict(dwconv='xla'))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  flat = _flat(shapes['params'])
  expect = {
      'stem_conv/kernel': (4, 4, 3, 40),
      'stem_conv/bias': (40,),
      'stem_norm/scale': (40,),
      'stem_norm/bias': (40,),
      'downsample_1/norm/scale': (40,),
      'downsample_1/conv/kernel': (2, 2, 40, 80),
      'downsample_3/conv/bias': (320,),
      'stages_0_block_0/dwconv/kernel': (7, 7, 1, 40),
      'stages_0_block_0/dwconv/bias': (40,),
      'stages_0_block_0/norm/scale': (40,),
      'stages_0_block_0/pwconv1/kernel': (40, 160),
      'stages_0_block_0/pwconv2/kernel': (160, 40),
      'stages_0_block_0/gamma': (40,),
      'stages_2_block_5/pwconv1/bias': (640,),
      'head_norm/scale': (320,),
      'head/kernel': (320, 1000),
      'head/bias': (1000,),
  }
  for k, s in expect.items():
    assert flat[k].shape == s, k
  assert 'downsample_0/conv/kernel' not in flat and 'stages_2_block_6/gamma' not in flat
  # 4 stem + 3*4 downsample + 12 blocks * 9 + 4 head
  assert len(flat) == 4 + 12 + 12 * 9 + 4
  assert all(v.dtype == jnp.float32 for v in flat.values())


def test_create_model_overrides_and_no_layer_scale():
  model = create_model(
      'convnext_digits', num_classes=7, layer_scale_init_value=0.0, dims=[16, 32, 48, 64], depths=[1, 1, 1, 1]
  )
  assert model.dims == (16, 32, 48, 64) and model.num_classes == 7
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  flat = _flat(v['params'])
  assert not any(k.endswith('gamma') for k in flat)
  logits, _ = jax.eval_shape(model.apply, v, x)
  assert logits.shape == (2, 7)
  # num_classes=0 -> pooled + normed features, no head Dense
  m0 = create_model('convnext_digits', num_classes=0)
  v0 = jax.eval_shape(m0.init, jax.random.PRNGKey(0), x)
  assert 'head' not in v0['params'] and jax.eval_shape(m0.apply, v0, x)[0].shape == (2, 256)


# ------------------------------------------------------------------------------------------------
# Forward: shapes, features, dtype
# ------------------------------------------------------------------------------------------------
def test_digits_forward_features():
  model = create_model('convnext_digits')
  x = _rand((2, 32, 32, 3))
  v = _np_variables(model, x.shape)
  logits, feats = jax.jit(model.apply)(v, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  c = model.dims
  p = model.patch_size
  assert sorted(feats) == ['stage_0', 'stage_1', 'stage_2', 'stage_3']
  for i in range(4):
    s = 32 // p // 2**i
    assert feats[f'stage_{i}'].shape == (2, s, s, c[i])


def test_valid_padding_floors_like_pytorch():
  model = create_model('convnext_atto', num_classes=3, compute=dict(dwconv='xla'))
  x = jax.ShapeDtypeStruct((1, 70, 66, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  _, feats = jax.eval_shape(model.apply, v, x)
  # 70 -> 17 -> 8 -> 4 -> 2 ; 66 -> 16 -> 8 -> 4 -> 2 (floor, padding 0)
  assert [feats[f'stage_{i}'].shape[1:3] for i in range(4)] == [(17, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.slow  # bfloat16 programs compile slowly on XLA:CPU
def test_bf16_compute_dtype():
  small = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
  model = create_model('convnext_digits', dtype=jnp.bfloat16, **small)
  x = _rand((2, 32, 32, 3))
  v = _np_variables(model, x.shape)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(v))
  logits, feats = jax.jit(model.apply)(v, x)
  assert logits.dtype == jnp.float32 and feats['stage_3'].dtype == jnp.bfloat16
  ref, _ = jax.jit(create_model('convnext_digits', **small).apply)(v, x)
  assert np.allclose(logits, ref, atol=5e-2)


# ------------------------------------------------------------------------------------------------
# Depthwise conv implementations
# ------------------------------------------------------------------------------------------------
# The kernel gradient reduces over two-image chunks (even batches) or single images (odd ones);
# (2, 2, 2, 16) and (2, 1, 1, 8) take the cropped kernel.
@pytest.mark.parametrize(
    'shape', [(2, 16, 16, 8), (1, 14, 15, 6), (3, 5, 7, 4), (2, 2, 2, 16), (2, 1, 1, 8), (1, 3, 9, 5)]
)
@pytest.mark.slow
def test_depthwise_conv_impls_agree(shape, highest_precision):
  x = _rand(shape, 1)
  k = _rand((7, 7, 1, shape[-1]), 2)

  def f(impl):
    fn = lambda x, k: jnp.sum(jnp.sin(profile_convnext_layers.depthwise_conv(x, k, 3, impl)))
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(x, k), profile_convnext_layers.depthwise_conv(x, k, 3, impl)

  (ref_val, (ref_dx, ref_dk)), ref_y = f('xla')
  # The model's paths, and the variants the layer profiles compare them with (benchmarks/).
  for impl in ('native', 'shifted', 'auto', *profile_convnext_layers.PROFILING_DWCONVS):
    (val, (dx, dk)), y = f(impl)
    np.testing.assert_allclose(y, ref_y, atol=1e-5, rtol=1e-5)
    # gradients are sums of many more terms: fp32 summation-order noise ~1e-5 absolute
    np.testing.assert_allclose(dx, ref_dx, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(dk, ref_dk, atol=2e-4, rtol=1e-4)
  with pytest.raises(ValueError):
    depthwise_conv2d(x, k, 3, 'bogus')


def test_native_dwconv_computes_a_pruned_width_padded_to_the_channel_multiple(highest_precision):
  """11 channels (a pruned width) by the C++ kernels are computed as 16 under channel_multiple=8 (the pruning
  line's ConvNeXts): the same function as unpadded and as XLA's grouped conv, forward and backward."""
  from convnext_jax import ops  # pylint: disable=import-outside-toplevel

  assert ops.native_cpu_kernels_available()
  x, k = _rand((2, 9, 9, 11), 1), _rand((7, 7, 1, 11), 2)

  def run(compute):
    fn = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(ops.depthwise_conv(compute, x, k, 3))), (0, 1)))
    return fn(x, k), fn.lower(x, k).as_text()

  (ref, _), (padded, text8), (unpadded, text1) = (
      run(c) for c in (Compute(), Compute(dwconv='native', channel_multiple=8), Compute(dwconv='native'))
  )
  assert 'custom_call' in text8 and 'x9x9x16xf32' in text8 and 'x16xf32' not in text1
  for got in (padded, unpadded):
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got[1][0], ref[1][0], atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(got[1][1], ref[1][1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    'cpu_paths',
    [
        dict(dwconv='native'),  # CPU defaults: C++ dwconv + patch matmul
        dict(dwconv='shifted'),  # barriers + patch matmul
        dict(dwconv='xla', fusion_barriers=True, patch_conv='matmul'),
    ],
)  # barriers off + conv patches: test_timm_parity's 'plain' case; each depthwise impl: test above
@pytest.mark.slow
def test_model_dwconv_impls_same_tree_and_numerics(cpu_paths, highest_precision):
  """Every speed path (depthwise impl, patch-conv impl, fusion barriers) against the plain XLA model:
  same parameter tree, same outputs, same gradients."""
  x = _rand((4, 32, 32, 3))
  small = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))  # 16/8/4/2 maps: exercises the cropped 2x2 path
  m_xla = create_model('convnext_digits', compute=Compute(), **small)
  m_sh = create_model('convnext_digits', compute=cpu_paths, **small)
  v = _np_variables(m_xla, x.shape, gamma=1.0)  # gamma 1: make the residual branch matter
  v_sh = jax.eval_shape(m_sh.init, jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(v_sh)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, v, v_sh))
  la, fa = jax.jit(m_xla.apply)(v, x)
  lb, fb = jax.jit(m_sh.apply)(v, x)
  np.testing.assert_allclose(la, lb, atol=1e-5, rtol=1e-5)
  for key in fa:
    np.testing.assert_allclose(fa[key], fb[key], atol=1e-5, rtol=1e-5)

  def loss(m):
    return lambda p: jnp.mean(m.apply({'params': p}, x)[0] ** 2)

  ga = jax.jit(jax.grad(loss(m_xla)))(v['params'])
  gb = jax.jit(jax.grad(loss(m_sh)))(v['params'])
  for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('shape,k', [((2, 16, 16, 3), 4), ((3, 9, 7, 5), 2)])
@pytest.mark.slow
def test_patch_conv_impls_agree_with_nn_conv(shape, k, highest_precision):
  """PatchConv by a patch matmul == by a conv == nn.Conv(k, stride k, VALID): params, values, grads."""
  x = _rand(shape, 3)
  ref = flax.linen.Conv(7, (k, k), strides=(k, k), padding='VALID')
  v = ref.init(jax.random.PRNGKey(1), x)
  v = jax.tree_util.tree_map(lambda a: a + 0.1, v)  # non-zero bias
  y_ref = ref.apply(v, x)
  g_ref = jax.grad(lambda v, x: jnp.sum(jnp.sin(ref.apply(v, x))), argnums=(0, 1))(v, x)
  for impl in ('conv', 'matmul', 'auto'):
    m = PatchConv(7, k, compute=for_backend(dict(patch_conv=impl)))
    v_m = m.init(jax.random.PRNGKey(1), x)
    assert jax.tree_util.tree_map(jnp.shape, v_m) == jax.tree_util.tree_map(jnp.shape, v)
    np.testing.assert_allclose(m.apply(v, x), y_ref, atol=1e-6, rtol=1e-6)
    g = jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(v, x)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  with pytest.raises(UserError, match='compute.patch_conv'):
    for_backend(dict(patch_conv='bogus'))
  with pytest.raises(UserError, match='compute.patch_conv'):
    create_model('convnext_atto', compute=dict(patch_conv='bogus'))
  with pytest.raises(UserError, match='compute.channel_multiple=8: the convnext line has no use for it'):
    create_model('convnext_atto', compute=dict(channel_multiple=8))


def test_gelu_exact_matches_autodiff_and_torch(highest_precision):
  x = jnp.linspace(-9.0, 9.0, 2001, dtype=jnp.float32)
  np.testing.assert_allclose(gelu_exact(x), jax.nn.gelu(x, approximate=False), atol=1e-6, rtol=1e-6)
  g_ours = jax.grad(lambda x: jnp.sum(jnp.sin(gelu_exact(x))))(x)
  g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(jax.nn.gelu(x, approximate=False))))(x)
  np.testing.assert_allclose(g_ours, g_ref, atol=2e-6, rtol=1e-5)
  torch = pytest.importorskip('torch')
  xt = torch.from_numpy(np.array(x)).requires_grad_(True)
  yt = torch.nn.functional.gelu(xt)
  np.testing.assert_allclose(gelu_exact(x), yt.detach().numpy(), atol=1e-6, rtol=1e-6)
  torch.sin(yt).sum().backward()
  np.testing.assert_allclose(g_ours, xt.grad.numpy(), atol=2e-6, rtol=1e-5)


def test_fusion_barrier_is_identity_with_identity_gradient():
  x = _rand((2, 5, 5, 3))
  f = jax.jit(lambda x: fusion_barrier(jnp.sin(x)) * 2.0)
  np.testing.assert_array_equal(f(x), jnp.sin(x) * 2.0)
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(f(x)))(x), 2.0 * jnp.cos(x))
  # The conditional's predicate is False for a NaN first element; both branches are the identity.
  x_nan = x.at[0, 0, 0, 0].set(jnp.nan)
  np.testing.assert_array_equal(np.isnan(f(x_nan)), np.isnan(jnp.sin(x_nan)))
  np.testing.assert_array_equal(f(x_nan)[1], (jnp.sin(x_nan) * 2.0)[1])
  # A barrier is what makes XLA compute the depthwise conv once: it shows up as a conditional.
  hlo = jax.jit(lambda x: fusion_barrier(x) + 1.0).lower(x).compile().as_text()
  assert 'conditional' in hlo


# ------------------------------------------------------------------------------------------------
# Drop path
# ------------------------------------------------------------------------------------------------
def test_drop_path_module():
  x = jnp.ones((4000, 2, 2, 3))
  dp = DropPath(0.25)
  assert dp.apply({}, x, train=False) is x
  y = dp.apply({}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
  per_sample = np.asarray(y).reshape(4000, -1)
  assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))  # whole-sample masks
  assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
  assert abs(per_sample.mean() - 1.0) < 0.05  # unbiased (scaled by 1/keep)


def test_drop_path_schedule_and_model_behaviour():
  small = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
  model = create_model('convnext_digits', drop_path_rate=0.5, layer_scale_init_value=1.0, **small)
  rates = model.block_drop_rates()
  assert len(rates) == sum(model.depths) and rates[0] == 0.0 and np.isclose(rates[-1], 0.5)
  x = _rand((8, 32, 32, 3))
  v = _np_variables(model, x.shape)
  ref, _ = jax.jit(create_model('convnext_digits', drop_path_rate=0.0, layer_scale_init_value=1.0, **small).apply)(v, x)
  apply = jax.jit(model.apply, static_argnames='train')
  e1, _ = apply(v, x)  # eval: identity, no rng needed
  e2, _ = apply(v, x, train=False, rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(e1, ref)
  np.testing.assert_array_equal(e2, ref)
  t1, _ = apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  t2, _ = apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  t1b, _ = apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert not np.allclose(t1, t2) and not np.allclose(t1, ref)
  np.testing.assert_array_equal(t1, t1b)


# ------------------------------------------------------------------------------------------------
# Initialisation
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a jitted init: compiling its threefry calls dominates
def test_init_statistics():
  # atto widths, one block per stage (fast to init); 1000-class head; compiled as a training run compiles its init
  model = create_model('convnext_atto', depths=(1, 1, 1, 1), head_init_scale=0.1, compute=dict(dwconv='xla'))
  v = cheap_init.init(model, jnp.zeros((1, 32, 32, 3)))
  flat = _flat(v['params'])
  w = np.asarray(flat['stages_2_block_0/pwconv1/kernel'])
  assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001
  assert np.abs(w).max() > 0.06  # PyTorch trunc_normal_(std=.02, a=-2, b=2) ~ untruncated (not cut at 2 sigma)
  kernels = np.concatenate([np.asarray(a).ravel() for k, a in flat.items() if k.endswith('kernel') and 'head' not in k])
  assert abs(kernels.std() - 0.02) < 0.0005
  head = np.asarray(flat['head/kernel'])
  assert abs(head.std() - 0.002) < 0.0001
  for k, a in flat.items():
    a = np.asarray(a)
    if k.endswith('gamma'):
      np.testing.assert_array_equal(a, np.full_like(a, 1e-6))
    elif k.endswith('bias'):
      np.testing.assert_array_equal(a, 0)
    elif k.endswith('scale'):
      np.testing.assert_array_equal(a, 1)


# ------------------------------------------------------------------------------------------------
# Training step smoke test
# ------------------------------------------------------------------------------------------------
def test_train_step_reduces_loss():
  model = create_model(
      'convnext_digits', drop_path_rate=0.1, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), layer_scale_init_value=1.0
  )
  x = _rand((16, 32, 32, 3))
  y = jnp.arange(16) % 10
  params = _np_variables(model, x.shape)['params']

  def loss_fn(p, rng):
    logits, _ = model.apply({'params': p}, x, train=True, rngs={'dropout': rng})
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  @jax.jit
  def step(p, rng):
    loss, g = jax.value_and_grad(loss_fn)(p, rng)
    return jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, p, g), loss

  losses = []
  for i in range(15):
    params, loss = step(params, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------------
# Parity with timm (PyTorch)
# ------------------------------------------------------------------------------------------------
def timm_to_flax(state_dict, depths):
  """timm ConvNeXt state_dict -> Flax param tree of convnext_jax.ConvNeXt (test-only helper).

  Handles both the Linear MLP (out, in) and the conv_mlp=True 1x1-conv MLP (out, in, 1, 1) layouts.
  """
  sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state_dict.items()}

  def conv(w):  # (O, I, kh, kw) -> (kh, kw, I, O)
    return np.transpose(w, (2, 3, 1, 0))

  def dense(w):  # (out, in[,1,1]) -> (in, out)
    return np.transpose(w.reshape(w.shape[0], w.shape[1]))

  def ln(prefix):
    return {'scale': sd[prefix + '.weight'], 'bias': sd[prefix + '.bias']}

  p = {
      'stem_conv': {'kernel': conv(sd['stem.0.weight']), 'bias': sd['stem.0.bias']},
      'stem_norm': ln('stem.1'),
      'head_norm': ln('head.norm'),
      'head': {'kernel': dense(sd['head.fc.weight']), 'bias': sd['head.fc.bias']},
  }
  for i, depth in enumerate(depths):
    if i > 0:
      p[f'downsample_{i}'] = {
          'norm': ln(f'stages.{i}.downsample.0'),
          'conv': {'kernel': conv(sd[f'stages.{i}.downsample.1.weight']), 'bias': sd[f'stages.{i}.downsample.1.bias']},
      }
    for j in range(depth):
      t = f'stages.{i}.blocks.{j}'
      blk = {
          'dwconv': {'kernel': conv(sd[t + '.conv_dw.weight']), 'bias': sd[t + '.conv_dw.bias']},
          'norm': ln(t + '.norm'),
          'pwconv1': {'kernel': dense(sd[t + '.mlp.fc1.weight']), 'bias': sd[t + '.mlp.fc1.bias']},
          'pwconv2': {'kernel': dense(sd[t + '.mlp.fc2.weight']), 'bias': sd[t + '.mlp.fc2.bias']},
      }
      if t + '.gamma' in sd:
        blk['gamma'] = sd[t + '.gamma']
      p[f'stages_{i}_block_{j}'] = blk
  n_torch = sum(v.size for v in sd.values())
  n_flax = sum(a.size for a in jax.tree_util.tree_leaves(p))
  assert n_torch == n_flax, (n_torch, n_flax)
  return jax.tree_util.tree_map(jnp.asarray, p)


def _randomize_torch(model, torch):
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, prm in model.named_parameters():
      if (
          name.endswith('gamma')
          or (prm.ndim == 1 and 'norm' in name and name.endswith('weight'))
          or (prm.ndim == 1 and '.downsample.0.' in name and name.endswith('weight'))
          or (name.startswith('stem.1') and name.endswith('weight'))
      ):
        prm.copy_(torch.rand(prm.shape, generator=g) + 0.5)  # U(0.5, 1.5)
      elif name.endswith('bias'):
        prm.copy_(torch.randn(prm.shape, generator=g) * 0.05)


@pytest.mark.parametrize(
    'name,size,impl',
    [
        ('convnext_atto', (64, 64), 'shifted'),  # timm conv_mlp=True layout
        ('convnext_atto', (64, 64), 'native'),  # the CPU default: C++ depthwise kernels
        ('convnext_atto', (70, 66), 'xla'),  # non-multiple-of-32 input: VALID padding floors like PyTorch
        ('convnext_atto', (70, 66), 'plain'),  # no CPU speed paths: grouped conv, nn conv, no barriers
        pytest.param('convnext_tiny', (224, 224), 'xla', marks=pytest.mark.slow),  # Linear MLP layout, full size
    ],
)
@pytest.mark.slow
def test_timm_parity(name, size, impl, highest_precision):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  torch.manual_seed(0)
  tm = timm.create_model(name, pretrained=False, num_classes=1000).eval()
  _randomize_torch(tm, torch)
  compute = Compute() if impl == 'plain' else dict(dwconv=impl)  # plain: no CPU speed paths
  model = create_model(name, num_classes=1000, compute=compute)
  params = timm_to_flax(tm.state_dict(), model.depths)
  ref_tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  assert jax.tree_util.tree_structure(ref_tree['params']) == jax.tree_util.tree_structure(params)

  x = np.random.RandomState(0).randn(2, 3, *size).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x)).numpy()
  logits, _ = jax.jit(model.apply)({'params': params}, jnp.asarray(np.transpose(x, (0, 2, 3, 1))))
  err = float(np.max(np.abs(np.asarray(logits) - ref)))
  print(f'\n{name} {size} {impl}: max|logit diff| = {err:.2e} (logit scale {np.abs(ref).max():.2f})')
  assert err <= 1e-4


needs_compiler = pytest.mark.skipif(native_kernels._compiler() is None, reason='no C++ compiler on this machine')


@needs_compiler
def test_native_dwconv_is_the_cpu_default_and_deterministic():
  """With a compiler, 'auto' on a one-device CPU process is the C++ kernel (the HLO holds the custom
  calls, forward and backward), and the kernel gradient's fixed block order makes it bit-reproducible."""
  from convnext_jax import ops  # pylint: disable=import-outside-toplevel

  assert ops.native_cpu_kernels_available() and resolve_dwconv_impl('auto') == 'native'
  x, k = _rand((4, 9, 11, 24), 1), _rand((7, 7, 1, 24), 2)
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(depthwise_conv2d(x, k, 3, 'auto'))), argnums=(0, 1)))
  hlo = grad.lower(x, k).as_text()
  assert 'convnext_dwconv_forward' in hlo and 'convnext_dwconv_kernel_grad' in hlo
  a, b = grad(x, k), grad(x + 0.0, k + 0.0)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  empty = grad(x[:0], k)  # an empty batch: zero kernel gradient, no out-of-bounds block sums
  assert empty[0].shape == (0, 9, 11, 24) and not np.any(np.asarray(empty[1]))
  # bf16 compute falls back to the shifted path (the kernels are float32 only), same function
  y16 = depthwise_conv2d(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 3, 'native')
  ref = depthwise_conv2d(x, k, 3, 'xla')
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), ref, atol=0.15, rtol=0.05)


@needs_compiler
@pytest.mark.parametrize('shape', [(4, 9, 11, 24), (3, 40), (2, 5, 3, 13)])
def test_layer_norm_native_matches_xla(shape):
  """The C++ LayerNorm (the CPU default inside the models) equals the XLA LayerNorm: values, dx,
  dscale and dbias, for 4-D maps, the head's 2-D input and channel counts off the 8-wide vectors."""
  from convnext_jax import ops  # pylint: disable=import-outside-toplevel

  assert ops.native_cpu_kernels_available()
  x = _rand(shape, 1) * 3.0 + 1.0
  scale, bias, g = _rand(shape[-1:], 2) + 1.5, _rand(shape[-1:], 3), _rand(shape, 4)
  outs = {}
  for name, fn in (('xla', ops.layer_norm_channels_last), ('native', ops.layer_norm_native)):
    f = lambda x, s, b, fn=fn: fn(x, s, b, 1e-6)
    y, vjp = jax.vjp(f, x, scale, bias)
    outs[name] = (y, *vjp(g))
  for a, b in zip(outs['xla'], outs['native']):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-5)
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(ops.layer_norm_native(x, scale, bias, 1e-6) ** 2))).lower(x).as_text()
  assert 'convnext_layer_norm_forward' in hlo and 'convnext_layer_norm_backward' in hlo
