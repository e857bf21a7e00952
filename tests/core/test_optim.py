"""Optimizers and schedules against hand-written numpy references of the PyTorch semantics."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from core_jax import optim
from core_jax.errors import UserError


def cfg(**kw):
  base = dict(name='sgd', lr=0.1, schedule='constant')
  base.update(kw)
  return ml_collections.ConfigDict(base)


def sched(c, spe=10, total=100):
  return optim.make_schedule(c, steps_per_epoch=spe, total_steps=total)


# ---------------------------------------------------------------- schedules


def test_cosine_with_warmup_exact():
  peak, mn, spe, total, wep = 4e-3, 1e-6, 10, 300, 5
  s = sched(cfg(lr=peak, schedule='cosine', warmup_epochs=wep, min_lr=mn), spe, total)
  W, T = wep * spe, total - wep * spe
  assert float(s(0)) == 0.0
  assert float(s(W)) == np.float32(peak)
  assert float(s(total)) == np.float32(mn)
  assert float(s(total + 50)) == np.float32(mn)
  for t in [1, 7, W - 1, W + 1, 123, 200, total - 1]:
    ref = peak * t / W if t < W else mn + 0.5 * (peak - mn) * (1 + math.cos(math.pi * (t - W) / T))
    np.testing.assert_allclose(float(s(t)), ref, rtol=2e-6)
  # jit-able with a traced int step, vectorised
  ts = jnp.arange(total + 1)
  lrs = jax.jit(s)(ts)
  assert lrs[W] == np.float32(peak) and lrs[total] == np.float32(mn)
  t = np.arange(total + 1, dtype=np.float64)
  ref = np.where(t < W, peak * t / W, mn + 0.5 * (peak - mn) * (1 + np.cos(np.pi * (t - W) / T)))
  np.testing.assert_allclose(lrs, ref, rtol=2e-6)


def test_warmup_init_lr_and_fractional_warmup_epochs():
  s = sched(cfg(lr=1.0, schedule='constant', warmup_epochs=0.5, warmup_init_lr=0.2), spe=8, total=40)
  # W = 4 steps: 0.2, 0.4, 0.6, 0.8, then 1.0
  np.testing.assert_allclose([float(s(t)) for t in range(6)], [0.2, 0.4, 0.6, 0.8, 1.0, 1.0], rtol=1e-6)


def test_step_schedule_milestones_absolute_epochs():
  s = sched(
      cfg(lr=0.1, schedule='step', decay_epochs=(150, 225), decay_factor=0.1, warmup_epochs=1), spe=10, total=3000
  )
  np.testing.assert_allclose(float(s(5)), 0.05, rtol=1e-6)
  for t, want in [(10, 0.1), (1499, 0.1), (1500, 0.01), (2249, 0.01), (2250, 0.001), (3000, 0.001)]:
    np.testing.assert_allclose(float(s(t)), want, rtol=1e-6)


def test_poly_schedule():
  peak, mn, p = 0.01, 1e-4, 0.9
  s = sched(cfg(lr=peak, schedule='poly', poly_power=p, min_lr=mn, warmup_epochs=1), spe=10, total=110)
  for t in [10, 11, 50, 109, 110, 200]:
    frac = min((t - 10) / 100, 1.0)
    w = (1 - frac) ** p
    np.testing.assert_allclose(float(s(t)), peak * w + mn * (1 - w), rtol=2e-6)
  assert float(s(110)) == np.float32(mn)


def test_cosine_without_warmup_starts_at_peak():
  s = sched(cfg(lr=0.5, schedule='cosine'), spe=10, total=100)
  assert float(s(0)) == 0.5
  np.testing.assert_allclose(float(s(50)), 0.25, rtol=1e-6)
  assert float(s(100)) == 0.0


def test_unknown_names_and_bad_values_raise_user_error():
  with pytest.raises(UserError, match="'lamb'"):
    optim.build_optimizer(cfg(name='lamb'), steps_per_epoch=1, total_steps=1, params={})
  with pytest.raises(UserError, match="'linear'"):
    optim.build_optimizer(cfg(schedule='linear'), steps_per_epoch=1, total_steps=1, params={})
  with pytest.raises(UserError, match='warmup'):
    sched(cfg(warmup_epochs=20), spe=10, total=100)
  with pytest.raises(UserError, match="'lr'"):
    optim.make_schedule(ml_collections.ConfigDict(dict(name='sgd')), steps_per_epoch=1, total_steps=1)
  with pytest.raises(UserError, match='nesterov'):
    optim.build_optimizer(cfg(momentum=0.0, nesterov=True), steps_per_epoch=1, total_steps=1, params={})


def test_scaled_lr():
  assert optim.scaled_lr(cfg(lr=0.1)) == 0.1
  assert optim.scaled_lr(cfg(lr=0.1), 1024) == 0.1
  assert optim.scaled_lr(cfg(lr=0.1, base_batch_size=256), 1024) == pytest.approx(0.4)
  assert optim.scaled_lr(cfg(lr=4e-3, base_batch_size=4096, accumulate_steps=4), 1024) == pytest.approx(4e-3)
  _, s = optim.build_optimizer(
      cfg(lr=0.1, base_batch_size=256), steps_per_epoch=1, total_steps=1, params={}, global_batch_size=512
  )
  np.testing.assert_allclose(float(s(0)), 0.2, rtol=1e-6)


# ---------------------------------------------------------------- update rules


def make_params():
  rng = np.random.default_rng(0)
  return {
      'conv': {
          'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
          'bias': rng.normal(size=(4,)).astype(np.float32),
      },
      'head': {'kernel': rng.normal(size=(4, 5)).astype(np.float32), 'gamma': rng.normal(size=(5,)).astype(np.float32)},
  }


def grads_seq(params, n, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(n)]


def run_optax(tx, params, grads):
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads:
    upd, state = tx.update(g, state, p)
    p = optax.apply_updates(p, upd)
  return p, state


def leaves_np(tree):
  return {
      '/'.join(k): np.asarray(v, np.float64)
      for k, v in zip(
          *[
              [optim.path_to_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)],
              jax.tree_util.tree_leaves(tree),
          ]
      )
  }


def lr_scale(path, leaf):
  return 0.5 if path[0] == 'conv' else 1.0


@pytest.mark.parametrize('nesterov', [False, True])
@pytest.mark.parametrize('with_scale', [False, True])
def test_sgd_matches_pytorch_coupled_l2(nesterov, with_scale):
  params, wd, mu = make_params(), 5e-2, 0.9
  c = cfg(
      name='sgd',
      lr=0.1,
      momentum=mu,
      nesterov=nesterov,
      weight_decay=wd,
      schedule='cosine',
      warmup_epochs=1,
      min_lr=0.0,
  )
  spe, total = 2, 6
  tx, s = optim.build_optimizer(
      c, steps_per_epoch=spe, total_steps=total, params=params, lr_scale_fn=lr_scale if with_scale else None
  )
  grads = grads_seq(params, 3)
  got, _ = run_optax(tx, params, grads)

  # torch.optim.SGD(lr=lr_t * group_scale, momentum, nesterov, weight_decay=wd or 0 for 1-D), by hand:
  p, bufs = leaves_np(params), {}
  lrs = [0.0, 0.05, 0.1]  # warmup over 2 steps, then peak at step 2
  for t, g in enumerate(grads):
    g = leaves_np(g)
    np.testing.assert_allclose(float(s(t)), lrs[t], rtol=1e-6)
    for k in p:
      d = g[k] + (wd * p[k] if p[k].ndim > 1 else 0.0)
      bufs[k] = d if t == 0 else mu * bufs[k] + d
      d = d + mu * bufs[k] if nesterov else bufs[k]
      scale = (0.5 if k.startswith('conv') else 1.0) if with_scale else 1.0
      p[k] = p[k] - lrs[t] * scale * d
  for k, v in leaves_np(got).items():
    np.testing.assert_allclose(v, p[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize('with_scale', [False, True])
def test_adamw_matches_pytorch_decoupled(with_scale):
  params, wd, b1, b2, eps = make_params(), 0.05, 0.9, 0.999, 1e-8
  c = cfg(
      name='adamw', lr=4e-3, b1=b1, b2=b2, eps=eps, weight_decay=wd, schedule='cosine', warmup_epochs=1, min_lr=1e-6
  )
  spe, total = 2, 8
  tx, s = optim.build_optimizer(
      c, steps_per_epoch=spe, total_steps=total, params=params, lr_scale_fn=lr_scale if with_scale else None
  )
  grads = grads_seq(params, 5)
  got, _ = run_optax(tx, params, grads)

  # torch.optim.AdamW, per-group lr = lr_t * scale, weight_decay 0 for 1-D params, by hand:
  p = leaves_np(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t, g in enumerate(grads):
    g = leaves_np(g)
    lr_t = (4e-3 * t / 2) if t < 2 else 1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + math.cos(math.pi * (t - 2) / 6))
    np.testing.assert_allclose(float(s(t)), lr_t, rtol=2e-6)
    step = t + 1
    for k in p:
      lr = lr_t * ((0.5 if k.startswith('conv') else 1.0) if with_scale else 1.0)
      if p[k].ndim > 1:
        p[k] = p[k] * (1 - lr * wd)
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
      denom = np.sqrt(v2[k]) / math.sqrt(1 - b2**step) + eps
      p[k] = p[k] - (lr / (1 - b1**step)) * m[k] / denom
  for k, v in leaves_np(got).items():
    np.testing.assert_allclose(v, p[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_wd_exclude_1d_off_decays_everything():
  params = make_params()
  c = cfg(name='sgd', lr=1.0, momentum=0.0, weight_decay=0.1, wd_exclude_1d=False)
  tx, _ = optim.build_optimizer(c, steps_per_epoch=1, total_steps=1, params=params)
  zeros = jax.tree.map(np.zeros_like, params)
  got, _ = run_optax(tx, params, [zeros])
  for k, v in leaves_np(got).items():
    np.testing.assert_allclose(v, leaves_np(params)[k] * 0.9, rtol=1e-6)
  mask = optim.weight_decay_mask(params)
  assert mask == {'conv': {'kernel': True, 'bias': False}, 'head': {'kernel': True, 'gamma': False}}


def test_grad_clip_global_norm():
  params = make_params()
  g = grads_seq(params, 1)[0]
  norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in jax.tree.leaves(g)))
  c = cfg(name='sgd', lr=1.0, momentum=0.0, grad_clip_norm=norm / 4)
  tx, _ = optim.build_optimizer(c, steps_per_epoch=1, total_steps=1, params=params)
  got, _ = run_optax(tx, params, [g])
  for k, v in leaves_np(got).items():
    np.testing.assert_allclose(v, leaves_np(params)[k] - leaves_np(g)[k] / 4, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_multisteps():
  params, k = make_params(), 2
  c = cfg(name='sgd', lr=0.1, momentum=0.9, weight_decay=1e-2, schedule='cosine', accumulate_steps=k)
  tx, s = optim.build_optimizer(c, steps_per_epoch=4, total_steps=8, params=params)
  ref_tx, _ = optim.build_optimizer(
      cfg(name='sgd', lr=0.1, momentum=0.9, weight_decay=1e-2, schedule='cosine'),
      steps_per_epoch=2,
      total_steps=4,
      params=params,
  )
  grads = grads_seq(params, 4)
  got, state = run_optax(tx, params, grads)
  mean = [jax.tree.map(lambda a, b: (a + b) / 2, grads[i], grads[i + 1]) for i in (0, 2)]
  want, _ = run_optax(ref_tx, params, mean)
  for key, v in leaves_np(got).items():
    np.testing.assert_allclose(v, leaves_np(want)[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert int(state.gradient_step) == 2
  # after one micro-step nothing moves
  one, _ = run_optax(tx, params, grads[:1])
  for key, v in leaves_np(one).items():
    np.testing.assert_array_equal(v, leaves_np(params)[key])


def test_layerwise_lr_decay_scale():
  fn = optim.layerwise_lr_decay_scale(12, 0.8, lambda path: int(path[0]))
  assert fn(('13', 'kernel'), None) == 1.0
  assert fn(('12', 'kernel'), None) == pytest.approx(0.8)
  assert fn(('0', 'kernel'), None) == pytest.approx(0.8**13)
  tree = optim.lr_scale_tree({'0': {'k': np.ones(2)}, '13': {'k': np.ones(2)}}, fn)
  assert tree['13']['k'] == 1.0 and tree['0']['k'] == pytest.approx(0.8**13)
  with pytest.raises(UserError, match='lr_scale_fn'):
    optim.build_optimizer(
        cfg(), steps_per_epoch=1, total_steps=1, params={'a': np.ones(2)}, lr_scale_fn=lambda p, x: float('nan')
    )


def test_ema_update():
  ema = {'w': jnp.array([1.0, 2.0]), 'n': jnp.array([0.0], jnp.bfloat16)}
  new = {'w': jnp.array([3.0, 4.0]), 'n': jnp.array([1.0], jnp.bfloat16)}
  out = optim.ema_update(ema, new, 0.9)
  np.testing.assert_allclose(out['w'], [1.2, 2.2], rtol=1e-6)
  assert out['n'].dtype == jnp.bfloat16
  out = jax.jit(optim.ema_update)(ema, new, jnp.float32(0.0))
  np.testing.assert_allclose(out['w'], [3.0, 4.0])
  init = optim.ema_init(new)
  assert init['w'] is not new['w'] and np.array_equal(init['w'], new['w'])


def test_jit_train_step_runs():
  params = make_params()
  tx, _ = optim.build_optimizer(
      cfg(
          name='adamw',
          lr=1e-3,
          weight_decay=0.05,
          grad_clip_norm=1.0,
          accumulate_steps=2,
          schedule='cosine',
          warmup_epochs=1,
      ),
      steps_per_epoch=2,
      total_steps=8,
      params=params,
      lr_scale_fn=lr_scale,
  )
  state = tx.init(params)

  @jax.jit
  def step(p, st, g):
    upd, st = tx.update(g, st, p)
    return optax.apply_updates(p, upd), st

  p, st = step(params, state, grads_seq(params, 1)[0])
  assert jax.tree.structure(p) == jax.tree.structure(params)


def test_step_schedule_decay_fractions_scale_with_the_budget():
  """Milestones as fractions of the run: doubling total_steps (Scratch-B) doubles the milestone steps."""
  for total in (400, 800):
    s = sched(cfg(lr=0.1, schedule='step', decay_fractions=(0.5, 0.75), decay_factor=0.1), spe=10, total=total)
    half, three_q = total // 2, total * 3 // 4
    for t, want in [(0, 0.1), (half - 1, 0.1), (half, 0.01), (three_q - 1, 0.01), (three_q, 0.001), (total, 0.001)]:
      np.testing.assert_allclose(float(s(t)), want, rtol=1e-6, err_msg=f'total={total} t={t}')
  # The same run written with epochs gives the same schedule.
  a = sched(cfg(lr=0.1, schedule='step', decay_fractions=(0.5, 0.75)), spe=10, total=400)
  b = sched(cfg(lr=0.1, schedule='step', decay_epochs=(20, 30)), spe=10, total=400)
  ts = jnp.arange(401)
  np.testing.assert_array_equal(jax.jit(a)(ts), jax.jit(b)(ts))


def test_step_schedule_bad_fractions_are_user_errors():
  with pytest.raises(UserError, match='not both'):
    sched(cfg(schedule='step', decay_fractions=(0.5,), decay_epochs=(3,)))
  with pytest.raises(UserError, match=r'\[0, 1\]'):
    sched(cfg(schedule='step', decay_fractions=(50,)))


def _traced_program(s):
  def lr(numbers, t):
    with s.traced(numbers):
      return s(t)

  return jax.jit(lr)


def test_step_and_constant_schedules_are_one_program_with_the_constant_programs_values():
  """A pruning experiment's fine-tune (constant lr) and Scratch-E / Scratch-B (step milestones at fractions of
  runs of two lengths) lower to one program with the schedule's numbers as inputs (the train steps share one
  executable), and it computes each schedule's lr to the bit of the program with the numbers as constants."""
  ts = jnp.arange(230)
  runs = [
      sched(cfg(lr=0.001, schedule='constant'), spe=22, total=44),
      sched(cfg(lr=0.1, schedule='step', decay_fractions=(0.5, 0.75)), spe=22, total=110),
      sched(cfg(lr=0.1, schedule='step', decay_fractions=(0.5, 0.75)), spe=22, total=220),
      sched(cfg(lr=0.01, schedule='step', decay_epochs=(1, 3, 5), decay_factors=(10, 0.2, 0.2)), spe=22, total=220),
  ]
  texts = {_traced_program(s).lower(s.numbers, ts).as_text() for s in runs[:3]}
  assert len(texts) == 1
  for s in runs:
    np.testing.assert_array_equal(_traced_program(s)(s.numbers, ts), jax.jit(s)(ts))
  assert float(runs[0](229)) == np.float32(0.001) and float(runs[2](165)) == np.float32(0.1) * np.float32(0.1) ** 2
  # a warmup (or a cosine / poly form) keeps its numbers in the program: nothing to trace
  assert sched(cfg(schedule='step', decay_epochs=(2,), warmup_epochs=1)).numbers == {}
  assert sched(cfg(schedule='cosine')).numbers == {}
