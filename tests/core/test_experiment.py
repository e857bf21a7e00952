"""Multi-phase experiments (core_jax.experiment) and the step-directory reader they hand weights through.

The reader: `read_training_checkpoint` returns params / batch_stats / EMA as host numpy trees plus the JSON meta,
without the optimizer state; `latest_step_dir` ignores saves still in flight. The core imports no line.
"""
import os
import re

import numpy as np
import pytest

from core_jax import checkpoint
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _save_step(workdir, step, state, meta=None):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  step_dir = os.path.join(workdir, 'checkpoints', str(step))
  saver = ocp.StandardCheckpointer()
  saver.save(os.path.join(step_dir, 'state'), state)
  saver.wait_until_finished()
  if meta is not None:
    ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(os.path.join(step_dir, 'meta'), meta)
  return step_dir


def test_read_training_checkpoint_and_latest_step_dir(tmp_path):
  rng = np.random.default_rng(0)
  params = {'dense': {'kernel': rng.standard_normal((3, 4)).astype(np.float32), 'bias': np.zeros(4, np.float32)}}
  stats = {'bn': {'mean': rng.standard_normal(4).astype(np.float32)}}
  assert checkpoint.latest_step_dir(tmp_path) is None
  _save_step(tmp_path, 3, {'params': params, 'batch_stats': {}, 'opt_state': {'mu': params}, 'step': 3})
  newest = _save_step(tmp_path, 10, {'params': params, 'batch_stats': stats, 'ema_params': params, 'step': 10},
                      meta={'step': 10, 'config': {'model': {'name': 'm'}}})
  os.makedirs(tmp_path / 'checkpoints' / '12.orbax-checkpoint-tmp-1234')  # a save still in flight
  assert checkpoint.latest_step_dir(tmp_path) == newest
  got = checkpoint.read_training_checkpoint(newest)
  assert set(got) == {'params', 'batch_stats', 'ema_params', 'meta'}
  assert got['meta'] == {'step': 10, 'config': {'model': {'name': 'm'}}}
  for tree, want in ((got['params'], params), (got['ema_params'], params), (got['batch_stats'], stats)):
    assert isinstance(tree, dict)
    for k in want:
      for leaf in want[k]:
        assert isinstance(tree[k][leaf], np.ndarray)
        np.testing.assert_array_equal(tree[k][leaf], want[k][leaf])
  old = checkpoint.read_training_checkpoint(tmp_path / 'checkpoints' / '3')
  assert old['ema_params'] is None and old['batch_stats'] == {} and old['meta'] == {}
  with pytest.raises(UserError, match='not a training checkpoint step'):
    checkpoint.read_training_checkpoint(tmp_path)


def test_core_imports_no_line():
  lines = ('convnext_jax', 'pruning_jax', 'anytime_jax')
  hits = []
  for folder, _, files in os.walk(os.path.join(REPO, 'core_jax')):
    for f in files:
      if f.endswith('.py'):
        text = open(os.path.join(folder, f)).read()
        for m in re.finditer(r'^\s*(from|import)\s+(\w+)', text, re.M):
          if m.group(2) in lines:
            hits.append(f'{f}: {m.group(0).strip()}')
  assert not hits, hits
