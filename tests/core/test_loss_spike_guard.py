"""The loss-spike guard (issue 23, item 4; core_jax.guard) with the toy task as real processes: 5 sane steps,
then the same workdir resumed at lr 1e8, so the update of step 6 explodes the parameters and the loss of step 7
(computed on them) is the spike. The run stops with one line before that state is saved, the
step-6 checkpoint (already of the exploded trajectory) is moved aside, the line offers step 5, and a rerun from it
with a sane schedule finishes. The rule itself is checked on plain numbers."""

import json
import math
import os
import shutil
import types

import numpy as np
import pytest
import toy_runs

from core_jax import guard
from core_jax.errors import UserError

EVERY_STEP = ('--config.checkpoint.every_steps=1', '--config.log_every_steps=1')


@pytest.fixture(scope='module', autouse=True)
def _remove_compile_cache():
  yield
  shutil.rmtree(toy_runs.COMPILE_CACHE, ignore_errors=True)


@pytest.mark.slow
def test_a_spike_stops_before_it_is_saved_and_the_offered_step_resumes(tfds_dir, tmp_path):
  toy_runs.run(tmp_path, tfds_dir, *EVERY_STEP, '--config.num_train_steps=5')  # sane: steps 3, 4, 5 kept
  proc = toy_runs.run(tmp_path, tfds_dir, *EVERY_STEP, '--config.optimizer.lr=1e8', check=False)  # resumes at 5
  line = toy_runs.one_line_error(proc, 'at step 7', '--config.checkpoint.restore_step=5', 'not saved')
  assert 'steps 6 of that trajectory moved to' in line, line
  # step 6 (saved before its parameters' loss was known; keep=3 let it push out step 3) is moved aside
  assert toy_runs.steps(tmp_path) == [4, 5] and toy_runs.steps(tmp_path, 'checkpoints_superseded') == [6]
  for step in (4, 5):  # what is kept is from before the spike: parameters of the sane lr's size
    params = {k: v for k, v in toy_runs.read_state(tmp_path, step).items() if k.startswith('params/')}
    assert max(float(np.abs(v).max()) for v in params.values()) < 10.0
  out = toy_runs.run(tmp_path, tfds_dir, '--config.checkpoint.restore_step=5')  # the sane lr again
  assert 'resumed from step 5' in out.stdout
  results = json.load(open(os.path.join(tmp_path, 'results.json')))
  assert results['step'] == 12 and math.isfinite(results['eval']['loss'])


def _metrics(loss):
  return types.SimpleNamespace(loss=types.SimpleNamespace(total=np.float32(loss), count=np.float32(1.0)))


def test_the_rule_on_numbers():
  g = guard.LossSpikeGuard({'loss_spike_factor': 100.0, 'window': 4})
  for step, loss in enumerate([2.3, 1.0, 0.5, 0.02, 0.01, 0.01, 0.01, 50.0], 1):  # 50 < 100 x the first loss
    g.observe(step, _metrics(loss))
  assert g.check() is None
  g.observe(9, _metrics(231.0))
  spike = g.check()
  assert spike.step == 9 and spike.threshold == pytest.approx(230.0)
  g.observe(10, _metrics(float('nan')))
  assert g.check().step == 10
  off = guard.LossSpikeGuard({'loss_spike_factor': 0.0, 'window': 4})
  off.observe(1, _metrics(1.0))
  off.observe(2, _metrics(1e30))
  assert off.check() is None


@pytest.mark.parametrize('options', [dict(loss_spike_factor=0.5), dict(loss_spike_factor=-1.0), dict(window=0)])
def test_bad_options_are_one_line(options):
  with pytest.raises(UserError, match='guard'):
    guard.check_options({'loss_spike_factor': 1000.0, 'window': 200, **options})
