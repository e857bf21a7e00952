"""benchmarks.anytime_cost.thresholds: the paper's fractions are reached whether or not an exit's confidences
saturate (W48's random weights saturate exits 2 and 3; W18-Small-v2's do not)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from benchmarks import anytime_cost  # noqa: E402  pylint: disable=wrong-import-position

NUM_CLASSES = 5
FEATURES = 8


def _programs_and_variables(scales):
  """Fake per-exit programs: exit k's logits are fixed random features (a smooth map) times its class conv
  'exit{k}/cls'; a large kernel scale saturates its max-softmax at 1.0."""
  rng = np.random.RandomState(0)
  feats = {k: jnp.asarray(rng.randn(2, 16, 32, FEATURES).astype(np.float32)) for k in (1, 2, 3)}
  params = {
      f'exit{k}': {'cls': {'kernel': jnp.asarray(s * rng.randn(FEATURES, NUM_CLASSES).astype(np.float32))}}
      for k, s in zip((1, 2, 3), scales)
  }
  params['stage2'] = {'conv': {'kernel': jnp.ones((3, 3, FEATURES, NUM_CLASSES))}}  # not an exit: never scaled
  programs = {
      k: lambda v, x, k=k: ({'logits': [feats[k] @ v['params'][f'exit{k}']['cls']['kernel']]}, None) for k in (1, 2, 3)
  }
  return programs, {'params': params}


def _computed(programs, v):
  taus = np.asarray(v['constants']['tau'])
  out = []
  for k in (1, 2, 3):
    logits = programs[k](v, None)[0]['logits'][-1]
    out.append(float(np.mean(np.asarray(jax.nn.softmax(logits, -1).max(-1)) <= taus[k - 1])))
  return out


def test_fractions_without_saturation_keep_the_weights():
  programs, variables = _programs_and_variables((1.0, 1.0, 1.0))
  settings = anytime_cost.thresholds(programs, variables, None, NUM_CLASSES)
  fractions = settings['fractions']
  assert fractions['params'] is variables['params']  # nothing tempered: W18-Small-v2's rows as before
  np.testing.assert_allclose(_computed(programs, fractions), anytime_cost.PAPER_FRACTIONS, atol=0.01)
  np.testing.assert_allclose(settings[f'tau={anytime_cost.TAU}']['constants']['tau'], [anytime_cost.TAU] * 3)


def test_saturated_exits_are_tempered_in_the_fractions_setting_only():
  programs, variables = _programs_and_variables((1.0, 1e4, 1e4))
  at_tau = {**variables, 'constants': {'tau': jnp.ones(3)}}
  saturated = [
      np.mean(np.asarray(jax.nn.softmax(programs[k](at_tau, None)[0]['logits'][-1], -1).max(-1)) == 1.0) for k in (2, 3)
  ]
  assert min(saturated) > 0.5  # most pixels at exactly 1.0: no threshold keeps 63 % of them
  settings = anytime_cost.thresholds(programs, variables, None, NUM_CLASSES)
  fractions = settings['fractions']
  np.testing.assert_allclose(_computed(programs, fractions), anytime_cost.PAPER_FRACTIONS, atol=0.01)
  p, q = fractions['params'], variables['params']
  np.testing.assert_array_equal(p['exit1']['cls']['kernel'], q['exit1']['cls']['kernel'])
  np.testing.assert_array_equal(p['stage2']['conv']['kernel'], q['stage2']['conv']['kernel'])
  for k in (2, 3):
    assert float(jnp.abs(p[f'exit{k}']['cls']['kernel']).max()) < float(jnp.abs(q[f'exit{k}']['cls']['kernel']).max())
  assert settings[f'tau={anytime_cost.TAU}']['params'] is q  # the paper's tau reads the weights as drawn
