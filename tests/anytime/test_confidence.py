"""Confidence adaptivity: RBF fill on hand-built examples, PyTorch-nearest masks, lambda gradient, copy
aggregation through a whole (tiny) HRNet, FLOP accounting of masked convs, bad-input errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anytime_jax import confidence, flops, hrnet
from anytime_jax.confidence import Conv, MaskSet
from core_jax import counting
from core_jax.compute import Compute
from core_jax.errors import UserError


def rbf_by_hand(y, mask, lam):
  """Loops: masked (b, i, j) <- sum over computed neighbours in the 7x7 window of w(d) * y, w = exp(-lam^2 d^2)
  / (sum of the full 7x7 kernel with the centre at d^2 = 1e5 + 1e-5)."""
  r = 3
  full = sum(
      math.exp(-(lam**2) * (1e5 if (a, b) == (0, 0) else a * a + b * b))
      for a in range(-r, r + 1)
      for b in range(-r, r + 1)
  )
  out = y.copy()
  bsz, h, w, _ = y.shape
  for n in range(bsz):
    for i in range(h):
      for j in range(w):
        if mask[n, i, j]:
          continue
        acc = np.zeros(y.shape[-1])
        for a in range(-r, r + 1):
          for b in range(-r, r + 1):
            ii, jj = i + a, j + b
            if (a, b) != (0, 0) and 0 <= ii < h and 0 <= jj < w and mask[n, ii, jj]:
              acc += math.exp(-(lam**2) * (a * a + b * b)) / (full + 1e-5) * y[n, ii, jj]
        out[n, i, j] = acc
  return out


@pytest.mark.slow  # 6-16 s on 2 cores: out of make test-fast (5-minute budget), still in make test
def test_rbf_fill_hand_built():
  y = np.arange(2 * 5 * 6 * 2, dtype=np.float32).reshape(2, 5, 6, 2) / 10 - 2
  mask = np.ones((2, 5, 6), np.float32)
  mask[0, 2, 3] = 0  # an isolated hole: ~the mean of its 4 neighbours, shrunk by 0.98
  mask[0, 0, :3] = 0  # a hole at the border
  mask[1] = 0
  mask[1, 4, 5] = 1  # one computed pixel in the corner of an empty image
  for lam in (3.0, 1.0, 0.5):
    got = np.asarray(confidence.rbf_fill(jnp.asarray(y), jnp.asarray(mask), jnp.float32(lam)))
    np.testing.assert_allclose(got, rbf_by_hand(y.astype(np.float64), mask, lam), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[mask == 1], y[mask == 1])  # computed positions untouched
  got = np.asarray(confidence.rbf_fill(jnp.asarray(y), jnp.asarray(mask), jnp.float32(3.0)))
  k = confidence.rbf_kernel(jnp.float32(3.0))
  assert abs(float(k[3, 4]) - 0.245) < 1e-3 and float(k[3, 3]) == 0.0 and abs(float(k.sum()) - 0.98) < 1e-2
  np.testing.assert_allclose(got[0, 2, 3], 0.245 * (y[0, 1, 3] + y[0, 3, 3] + y[0, 2, 2] + y[0, 2, 4]), rtol=2e-3)
  # far from the only computed pixel: nothing to interpolate from
  np.testing.assert_array_equal(got[1, 0, 0], 0.0)
  # the separable pass equals the reference's 7x7 depthwise conv, values and gradients (lambda included): banded
  # matmuls on these short sides, and on a side longer than BAND_MAX the shifted slices (here the width)
  wide_y = np.random.RandomState(3).randn(1, 6, confidence.BAND_MAX + 9, 2).astype(np.float32)
  wide_mask = (np.random.RandomState(4).rand(1, 6, confidence.BAND_MAX + 9) < 0.3).astype(np.float32)
  got = np.asarray(confidence.rbf_fill(jnp.asarray(wide_y), jnp.asarray(wide_mask), jnp.float32(1.0)))
  np.testing.assert_allclose(got, rbf_by_hand(wide_y.astype(np.float64), wide_mask, 1.0), rtol=1e-5, atol=1e-6)
  for t, m in ((y, mask), (wide_y, wide_mask)):
    grads = [
        jax.grad(lambda t, lam, f=f, m=m: jnp.sum(f(t, jnp.asarray(m), lam) ** 2), argnums=(0, 1))(
            jnp.asarray(t), jnp.float32(0.7)
        )
        for f in (confidence.rbf_fill, confidence.rbf_fill_conv)
    ]
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-5)


def test_dense_conv_as_matmul_equals_xla_conv():
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 9, 13, 6).astype(np.float32))
  for k, s in ((3, 1), (3, 2), (1, 1), (1, 2)):
    kernel, bias = jnp.asarray(rng.randn(k, k, 6, 7).astype(np.float32)), jnp.arange(7.0)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    got = confidence.dense_conv(confidence.for_backend(), x, kernel, bias, (s, s), pad)
    np.testing.assert_allclose(got, confidence.dense_conv_xla(x, kernel, bias, (s, s), pad), rtol=1e-5, atol=1e-5)


def test_masked_conv_module_and_lambda_gradient():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 8, 8, 3).astype(np.float32))
  big = (rng.rand(2, 8, 8) > 0.4).astype(np.float32)  # the logits-resolution mask
  conv = Conv(4, 3, strides=2, use_bias=True, exit_index=3)
  variables = conv.init(jax.random.PRNGKey(0), x, MaskSet(jnp.asarray(big)))
  assert set(variables) == {'params', 'macs'}  # init sows too: keep only the params
  variables = {'params': variables['params']}
  p = variables['params']
  assert p['rbf_lambda'] == 3.0 and p['kernel'].shape == (3, 3, 3, 4)
  assert abs(float(jnp.std(p['kernel'])) - 0.001) < 3e-4  # N(0, 0.001)
  dense = np.asarray(confidence.dense_conv(Compute(), x, p['kernel'], p['bias'], (2, 2), ((1, 1), (1, 1))))
  out, state = conv.apply(variables, x, MaskSet(jnp.asarray(big)), mutable=['macs'])
  m = big[:, ::2, ::2]  # PyTorch nearest = top-left sample
  np.testing.assert_allclose(np.asarray(out), rbf_by_hand(dense.astype(np.float64), m, 3.0), rtol=1e-5, atol=1e-7)
  # FLOP accounting of a masked conv: dense * p + (1 - p) * p * C_out * 49 * H * W, per example
  dmacs = 4 * 4 * 9 * 3 * 4
  pf = m.mean((1, 2))
  np.testing.assert_allclose(state['macs']['actual_exit3'], dmacs * pf + (1 - pf) * pf * 4 * 49 * 16, rtol=1e-6)
  np.testing.assert_array_equal(state['macs']['dense_exit3'], [dmacs, dmacs])
  assert counting.count_macs(conv, x, MaskSet(jnp.asarray(big))) == 2 * dmacs  # static count: dense

  def loss(lam):
    v = {'params': {**p, 'rbf_lambda': lam}}
    return jnp.sum(conv.apply(v, x, MaskSet(jnp.asarray(big))) ** 2)

  g = jax.grad(loss)(jnp.float32(3.0))
  assert np.isfinite(g) and abs(float(g)) > 0
  full = jnp.ones_like(jnp.asarray(big))  # nothing masked: lambda has no effect
  assert (
      float(
          jax.grad(lambda lam: jnp.sum(conv.apply({'params': {**p, 'rbf_lambda': lam}}, x, MaskSet(full))))(
              jnp.float32(3.0)
          )
      )
      == 0.0
  )


def test_the_policy_masked_conv_is_what_every_masked_conv_calls(monkeypatch):
  calls = []

  def spy(compute, *args):
    calls.append((compute.masked_conv, args[3].shape))
    return confidence.masked_dense(compute, *args)

  monkeypatch.setitem(confidence.MASKED_CONVS, 'dense', spy)
  x = jnp.ones((1, 4, 4, 2))
  conv = Conv(3, 1, exit_index=2, compute=confidence.for_backend(dict(masked_conv='dense')))
  v = conv.init(jax.random.PRNGKey(0), x, MaskSet(jnp.ones((1, 4, 4))))
  conv.apply(v, x, MaskSet(jnp.ones((1, 4, 4))))
  assert calls == [('dense', (1, 4, 4)), ('dense', (1, 4, 4))]
  with pytest.raises(UserError, match=r"compute.masked_conv must be one of \('dense', 'sparse'\), got 'tiles'"):
    confidence.for_backend(dict(masked_conv='tiles'))
  with pytest.raises(UserError, match='compute.dwconv=.shifted.: the anytime line has no use for it'):
    confidence.for_backend(dict(dwconv='shifted'))


def test_mask_sampling_matches_torch_nearest():
  torch = pytest.importorskip('torch')
  rng = np.random.RandomState(0)
  for (h, w), (oh, ow) in [((16, 32), (8, 16)), ((16, 32), (2, 4)), ((9, 7), (5, 4)), ((13, 10), (3, 10))]:
    m = (rng.rand(2, h, w) > 0.5).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(m)[:, None], size=(oh, ow)).numpy()[:, 0]
    np.testing.assert_array_equal(np.asarray(MaskSet(jnp.asarray(m)).at(oh, ow)), want)


def test_confidence_mask_and_tau_check():
  logits = jnp.asarray(np.log(np.array([[[[0.999, 0.001], [0.5, 0.5]]]], np.float32)))
  np.testing.assert_array_equal(confidence.confidence_mask(logits, 0.998), [[[0.0, 1.0]]])
  np.testing.assert_array_equal(confidence.confidence_mask(logits, 1.0), [[[1.0, 1.0]]])
  for bad in (0, 0.0, -0.5, 1.0001, 2, 'high', None):
    with pytest.raises(UserError, match='tau'):
      confidence.check_tau(bad)
  assert confidence.check_tau(1) == 1.0


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(tau=1.5), r'\(0, 1\]'),
        (dict(tau=0.0), r'\(0, 1\]'),
        (dict(tau=0.9, masked_stages=(1, 2)), 'stage 1 cannot be masked'),
        (dict(tau=0.9, masked_stages=(5,)), 'cannot mask stage 5'),
        (dict(exits=(1, 2, 5)), 'exit 5 does not exist'),
        (dict(exits=(1, 2, 3)), 'must include 4'),
        (dict(exits=(1, 2, 4), tau=0.9, masked_stages=(3, 4)), 'masking stage 4 needs exit 3'),
        (dict(exit_type='dense'), 'exit_type'),
    ],
)
def test_bad_structure_one_line_errors(kwargs, match):
  with pytest.raises(UserError, match=match) as e:
    hrnet.build('w8_tiny', **kwargs)
  assert '\n' not in str(e.value)
  with pytest.raises(UserError, match='unknown HRNet arch'):
    hrnet.build('w99')


@pytest.fixture(scope='module')
def tiny_ca():
  """A tiny ADP-C HRNet with random weights and a threshold splitting exit 1's pixels."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 64, 64, 3).astype(np.float32))
  # masked-dense, the reference formulation (the sparse one equals it: test_sparse_conv.py; on CPU it is 'auto''s
  # choice, whose program compiles several times longer)
  dense = confidence.for_backend(dict(masked_conv='dense'))
  probe = hrnet.build('w8_tiny', exit_type='rh', tau=1.0, num_classes=4, compute=dense)
  abstract = jax.eval_shape(probe.init, jax.random.PRNGKey(0), x)

  def fill(path, s):
    name = path[-1].key
    if name == 'var':
      return np.full(s.shape, 1.0, s.dtype)
    if name in ('scale', 'rbf_lambda'):
      return np.full(s.shape, 1.0 if name == 'scale' else 2.0, s.dtype)
    if name == 'mean':
      return np.zeros(s.shape, s.dtype)
    return (rng.randn(*s.shape) / math.sqrt(max(1, math.prod(s.shape[:-1])))).astype(s.dtype)

  variables = jax.tree_util.tree_map_with_path(
      fill, {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
  )
  # exit 1's logits only (`last_exit=1`: the stages after it cannot change them), without compiling the rest
  logits1 = jax.jit(lambda v, x: probe.apply(v, x, last_exit=1)['logits'][0])(variables, x)
  conf = jax.nn.softmax(logits1, -1).max(-1)
  tau = float(jnp.quantile(conf, 0.5))
  return hrnet.build('w8_tiny', exit_type='rh', tau=tau, num_classes=4, compute=dense), variables, x


@pytest.mark.slow
def test_exited_pixels_keep_their_logits_and_flops(tiny_ca):
  model, variables, x = tiny_ca
  out, macs = jax.jit(lambda v, x: flops.apply_with_macs(model, v, x))(variables, x)
  logits, fractions = out['logits'], out['fractions']
  assert len(logits) == 4 and logits[0].shape == (2, 16, 16, 4)
  exited = np.zeros((2, 16, 16), bool)
  exited_after = []
  for k in range(1, 4):
    prev, cur = np.asarray(logits[k - 1]), np.asarray(logits[k])
    m = np.asarray(confidence.confidence_mask(jnp.asarray(prev), model.tau))
    exited |= m == 0
    exited_after.append(exited.mean())
    np.testing.assert_array_equal(cur[exited], prev[exited])
    np.testing.assert_allclose(np.asarray(fractions[k]), 1 - exited.mean((1, 2)), rtol=1e-6)
    # pixels exited at k - 1 or earlier never change again
    for later in range(k, 4):
      np.testing.assert_array_equal(np.asarray(logits[later])[exited], prev[exited])
  assert 0.3 < exited_after[0] < 0.7 and exited_after == sorted(exited_after)  # tau = exit 1's median conf
  dense = flops.dense_macs(model, 64, 64)
  m1 = np.asarray(macs['exit1'])
  np.testing.assert_array_equal(m1, [dense['exit1']] * 2)  # nothing before exit 1 is masked
  for k in (2, 3, 4):
    assert np.all(np.asarray(macs[f'exit{k}']) < dense[f'exit{k}'])
    assert np.all(np.asarray(macs[f'exit{k}']) >= np.asarray(macs[f'exit{k - 1}']))

  def loss(params):  # up to exit 2 (`last_exit`): stage 2 is the masked stage checked; a smaller program
    o = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, last_exit=2)
    return sum(jnp.mean(l**2) for l in o['logits'])

  grads = jax.jit(jax.grad(loss))(variables['params'])
  g = grads['stage2_0']['branch0_0']['conv1']['rbf_lambda']  # stage 2: half the pixels masked
  assert np.isfinite(g) and float(g) != 0.0
