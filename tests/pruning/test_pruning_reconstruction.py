"""ThiNet and regression-based pruning (pruning_jax.methods.thinet / regression, sharing methods.reconstruction)
on a tiny VGG: their selections reconstruct the next layer better than L1-norm and random selections of the same
width, their least-squares steps lower the error further, and the pruned model comes out of the surgery with the
reconstructed weights in place."""

import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.errors import UserError
from pruning_jax import models
from pruning_jax.methods import l1_norm, reconstruction, regression, thinet
from tests.pruning.pruning_helpers import random_variables

CFG = (8, 'M', 16, 'M', 16, 'M', 16, 'M', 16)
LAYER, WIDTH, KEEP = 'conv1', 16, 8  # conv1's 16 filters, read by conv2


@pytest.fixture(scope='module')
def tiny():
  model = models.create('vgg_slimming', cfg=CFG, num_classes=10)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(48, 32, 32, 3)).astype(np.float32)
  variables = random_variables(model, jnp.asarray(images[:1]))
  fit = reconstruction.sample_layer(model, variables, images[:24], LAYER, per_image=10, seed=1)
  held_out = reconstruction.sample_layer(model, variables, images[24:], LAYER, per_image=10, seed=2)
  return model, variables, images, fit, held_out


def _random_errors(held_out, draws=5):
  rng = np.random.default_rng(3)
  return [
      reconstruction.output_error(held_out, sorted(rng.choice(WIDTH, KEEP, replace=False).tolist()))
      for _ in range(draws)
  ]


@pytest.mark.parametrize('method', [thinet, regression], ids=['thinet', 'regression'])
def test_selection_beats_l1_and_random_at_the_same_width(tiny, method):
  model, variables, _, fit, held_out = tiny
  keep, _, _ = method.choose(fit, KEEP)
  assert len(keep) == KEEP
  l1_keep = l1_norm.keep_largest(l1_norm.filter_l1_norms(variables['params'][LAYER]['kernel']), KEEP)
  chosen = reconstruction.output_error(held_out, keep)  # consumer's own weights: the selection alone
  assert chosen < reconstruction.output_error(held_out, l1_keep)
  assert chosen < min(_random_errors(held_out))


def test_thinet_rescaling_lowers_the_error(tiny):
  _, _, _, fit, held_out = tiny
  keep, kernel, report = thinet.choose(fit, KEEP)
  assert report['error_rescaled'] < report['error_selected']
  assert report['error_selected'] == pytest.approx(reconstruction.output_error(fit, keep))
  assert reconstruction.output_error(held_out, keep, kernel) < reconstruction.output_error(held_out, keep)
  # the greedy's objective: what it removes contributes least to the sampled outputs among single swaps
  x_hat = thinet.sampled_contributions(fit)
  removed = sorted(set(range(WIDTH)) - set(keep))
  cost = lambda r: float(np.sum(x_hat[:, r].sum(axis=1) ** 2))
  assert cost(removed) <= cost(removed[1:] + [keep[0]])


def test_regression_least_squares_lowers_the_error(tiny):
  _, _, _, fit, held_out = tiny
  keep, kernel, report = regression.choose(fit, KEEP)
  assert report['error_reconstructed'] < report['error_lasso']
  assert report['error_reconstructed'] < report['error_selected']
  assert reconstruction.output_error(held_out, keep, kernel) < reconstruction.output_error(held_out, keep)
  # the least-squares kernel is the minimum: a perturbed kernel reconstructs worse
  worse = kernel + 0.01 * np.random.default_rng(0).normal(size=kernel.shape).astype(np.float32)
  assert reconstruction.output_error(fit, keep, kernel) < reconstruction.output_error(fit, keep, worse)


def test_lasso_coordinate_descent_and_penalty_search():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(200, 6))
  b = a @ np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.1]) + 0.01 * rng.normal(size=200)
  gram, rhs = a.T @ a / 200, a.T @ b / 200
  np.testing.assert_allclose(regression.lasso(gram, rhs, 0.0), np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-5)
  assert not np.any(regression.lasso(gram, rhs, float(np.max(np.abs(rhs))) * 1.01))
  keep, beta, penalty, tie = regression.select(gram, rhs, 3)
  assert keep == [0, 1, 4] and np.count_nonzero(beta) == 3 and penalty > 0 and not tie


def test_pruned_models_carry_the_reconstructed_consumer(tiny):
  model, variables, images, _, _ = tiny
  calls = []

  def between(m, v, name, index):
    calls.append((name, index, models.cfg_of(m)))
    return v

  result = thinet.prune(model, None, variables, images[:16], 0.5, layers=[LAYER], per_image=4, seed=7, between=between)
  assert result.cfg == [8, 'M', 8, 'M', 16, 'M', 16, 'M', 16] and result.report['kept'] == {LAYER: KEEP}
  assert calls == [(LAYER, 0, tuple(result.cfg))]
  # the pruned model's conv2 output, through surgery and apply, is what the method reconstructed
  before = reconstruction.sample_layer(model, variables, images[:16], LAYER, per_image=4, seed=7)
  after = reconstruction.sample_layer(result.model, result.variables, images[:16], LAYER, per_image=4, seed=7)
  error = float(np.mean(np.sum((after.target - before.target) ** 2, axis=1)))
  assert error == pytest.approx(result.report['layers'][0]['error_rescaled'], rel=1e-3)
  logits, _ = result.model.apply(result.variables, images[:2])
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))

  every = regression.prune(model, None, variables, images[:16], 0.5, per_image=4)
  assert every.cfg == [4, 'M', 8, 'M', 8, 'M', 8, 'M', 16]  # every conv read by a conv; the last feeds the head
  assert [r['set'] for r in every.report['layers']] == ['conv0', 'conv1', 'conv2', 'conv3']
  assert all(r['error_reconstructed'] <= r['error_selected'] for r in every.report['layers'])


def test_resnet_blocks_prune_their_inner_width():
  model = models.create('resnet_cifar', cfg=(8, 8, 8), num_classes=10)
  images = np.random.default_rng(1).normal(size=(8, 16, 16, 3)).astype(np.float32)
  variables = random_variables(model, jnp.asarray(images[:1]))
  result = thinet.prune(model, None, variables, images, 0.5, per_image=4)
  assert result.cfg == [4, 4, 4]
  assert [r['set'] for r in result.report['layers']] == ['layer1_0/conv1', 'layer2_0/conv1', 'layer3_0/conv1']


@pytest.mark.parametrize('ratio', [0.0, -0.5, 1.5, 'half', None])
def test_keep_ratio_outside_0_1_is_one_line(tiny, ratio):
  model, variables, images, _, _ = tiny
  with pytest.raises(UserError, match=r'keep ratio must be'):
    thinet.prune(model, None, variables, images[:2], ratio)


def test_keep_ratio_that_empties_a_layer_or_unknown_layer(tiny):
  model, variables, images, _, _ = tiny
  with pytest.raises(UserError, match='leaves no channel of conv0'):
    regression.prune(model, None, variables, images[:2], 0.1)
  with pytest.raises(UserError, match="'conv4' is not a channel set"):
    regression.prune(model, None, variables, images[:2], 0.5, layers=['conv4'])
  with pytest.raises(UserError, match=r'keep width of conv1 must be an int in \[1, 16\]'):
    regression.prune(model, None, variables, images[:2], 0.5, keep_widths={'conv1': 17})


def test_lasso_that_cannot_reach_the_count_is_one_line(tiny):
  _, _, _, fit, _ = tiny
  dead = reconstruction.LayerSamples(
      fit.set_name, fit.consumer, fit.patches.copy(), fit.kernel, fit.target, fit.out_channel
  )
  dead.patches[:, :, 6:] = 0.0  # 10 of 16 channels never fire on the samples
  with pytest.raises(UserError, match=r'LASSO cannot keep 8 channels of conv1: only 6 of 16 contribute'):
    regression.choose(dead, KEEP)
  keep, _, _ = regression.choose(dead, 6)
  assert keep == list(range(6))
