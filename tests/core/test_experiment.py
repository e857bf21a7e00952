"""Multi-phase experiments (core_jax.experiment) and the step-directory reader they hand weights through.

The reader: `read_training_checkpoint` returns params / batch_stats / EMA as host numpy trees plus the JSON meta,
without the optimizer state; `latest_step_dir` ignores saves still in flight. The core imports no line.

The experiment: a 3-phase toy (train a tiny ConvNeXt; magnitude-prune its weights into a step directory; fine-tune
from that via init_from) run as a real process (this file is also its driver: `python test_experiment.py WORKDIR
DATA_DIR DELAY`), SIGKILLed once inside each phase and at the two hand-overs (after phase 1's results.json; phase 3
started but before its first step, paused there by core_jax.pause_points), rerun with the same command each time;
the finished phases are skipped, the running one resumes, and every phase's weights equal an uninterrupted run's
bit for bit.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == '__main__':
  sys.path.insert(0, REPO)

from core_jax import checkpoint, experiment, pause_points  # noqa: E402
from core_jax.errors import UserError  # noqa: E402


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
  newest = _save_step(
      tmp_path,
      10,
      {'params': params, 'batch_stats': stats, 'ema_params': params, 'step': 10},
      meta={'step': 10, 'config': {'model': {'name': 'm'}}},
  )
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


# ---------------------------------------------------------------- run_experiment with plain-Python phases
def test_finished_phases_are_skipped_and_results_handed_on(tmp_path):
  calls = []

  def first(workdir, done):
    calls.append('first')
    assert done == {} and os.path.isdir(workdir)
    with open(os.path.join(workdir, 'out.txt'), 'w') as f:
      f.write('7')
    return {'value': 7}

  def second(workdir, done):
    calls.append('second')
    assert done['a/first']['value'] == 7
    with open(os.path.join(done['a/first']['workdir'], 'out.txt')) as f:
      return {'doubled': 2 * int(f.read())}

  phases = [experiment.Phase('a/first', first), experiment.Phase('second', second)]
  results = experiment.run_experiment(phases, str(tmp_path))
  assert results['second']['doubled'] == 14 and results['a/first']['workdir'] == str(tmp_path / 'a' / 'first')
  assert json.load(open(tmp_path / 'second' / 'results.json')) == {'doubled': 14}
  assert calls == ['first', 'second']
  assert experiment.run_experiment(phases, str(tmp_path)) == results  # all finished: nothing runs again
  assert calls == ['first', 'second']
  os.remove(tmp_path / 'second' / 'results.json')  # as if killed inside the second phase
  assert experiment.run_experiment(phases, str(tmp_path)) == results and calls == ['first', 'second', 'second']


def test_preempted_phase_stops_the_experiment(tmp_path):
  later = []
  phases = [
      experiment.Phase('one', lambda w, d: {'preempted_at_step': 3}, writes_results=True),
      experiment.Phase('two', lambda w, d: later.append(1) or {}),
  ]
  results = experiment.run_experiment(phases, str(tmp_path))
  assert results['one']['preempted_at_step'] == 3 and 'two' not in results and not later
  assert not (tmp_path / 'one' / 'results.json').exists()


def test_bad_phases_are_one_line_errors(tmp_path):
  cases = [(['a', 'a'], 'two phases'), (['../up'], 'relative'), (['/abs'], 'relative'), ([''], 'relative')]
  for names, message in cases:
    with pytest.raises(UserError, match=message):
      experiment.run_experiment([experiment.Phase(n, lambda w, d: {}) for n in names], str(tmp_path))
  with pytest.raises(UserError, match='not JSON'):
    experiment.run_experiment([experiment.Phase('x', lambda w, d: {'a': object()})], str(tmp_path))
  with pytest.raises(UserError, match='not a results dict'):
    experiment.run_experiment([experiment.Phase('y', lambda w, d: [1])], str(tmp_path))


def test_a_failing_phase_leaves_no_empty_folder(tmp_path):
  def bad_input(workdir, done):
    del workdir, done
    raise UserError('unknown dataset')

  def writes_then_fails(workdir, done):
    del done
    with open(os.path.join(workdir, 'log.txt'), 'w') as f:
      f.write('started')
    raise UserError('diverged')

  with pytest.raises(UserError, match='unknown dataset'):
    experiment.run_experiment([experiment.Phase('seed0/large', bad_input)], str(tmp_path / 'exp'))
  assert not os.listdir(tmp_path)  # the experiment dir and the phase's were made for the phase: both gone
  with pytest.raises(UserError, match='diverged'):
    experiment.run_experiment([experiment.Phase('seed0/large', writes_then_fails)], str(tmp_path / 'exp'))
  assert (tmp_path / 'exp' / 'seed0' / 'large' / 'log.txt').read_text() == 'started'  # what it wrote is kept


# ---------------------------------------------------------------- the 3-phase toy experiment, killed in each phase
TINY = os.path.join(REPO, 'tests', 'core', 'tiny_config.py')
PHASES = ('large', 'prune', 'finetune')


def _set_step_delay(c, seconds):
  """The loop's test-only step delay, under its old (test_step_delay_s) or new (debug.step_delay_s) name."""
  if 'debug' in c:
    c.debug.step_delay_s = seconds
  if 'test_step_delay_s' in c or 'debug' not in c:
    c.test_step_delay_s = seconds


def toy_experiment(workdir, data_dir, delay):
  """large (6 steps) -> prune (half of each kernel's weights, smallest |w|, set to 0) -> finetune (4 steps)."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel,redefined-outer-name,reimported
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from convnext_jax.task import ConvNeXtTask  # pylint: disable=import-outside-toplevel

  def config(steps):
    spec = importlib.util.spec_from_file_location('_tiny_config', TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.data_dir = data_dir
    c.num_train_steps = steps
    c.checkpoint.every_steps = 2
    c.log_every_steps = 2
    _set_step_delay(c, delay)
    return c

  def prune(phase_dir, done):
    source = checkpoint.latest_step_dir(done['large']['workdir'])
    ckpt = checkpoint.read_training_checkpoint(source)
    with open(os.path.join(phase_dir, 'started'), 'w') as f:
      f.write('')
    time.sleep(6 * delay)  # a window for the test's SIGKILL inside this phase

    def half(w):
      if w.ndim < 2:
        return w
      return np.where(np.abs(w) >= np.median(np.abs(w)), w, np.zeros_like(w))

    pruned = _tree_map(half, ckpt['params'])
    target = os.path.join(phase_dir, 'pruned')  # a step directory, as read_training_checkpoint reads it
    saver = ocp.StandardCheckpointer()
    saver.save(os.path.join(target, 'state'), {'params': pruned}, force=True)  # force: a rerun overwrites
    saver.wait_until_finished()
    zeros = sum(int((v == 0).sum()) for v in _flat(pruned).values())
    return {'source': source, 'init_from': target, 'zeros': zeros}

  def finetune(done):
    c = config(4)
    c.init_from = done['prune']['init_from']
    return c

  phases = [
      experiment.train_phase('large', lambda done: config(6), ConvNeXtTask),
      experiment.Phase('prune', prune),
      experiment.train_phase('finetune', finetune, ConvNeXtTask),
  ]
  return experiment.run_experiment(phases, workdir)


def _tree_map(fn, tree):
  return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f'{prefix}/{k}') if isinstance(v, dict) else {f'{prefix}/{k}': v})
  return out


_CACHE = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'core_jax_experiment_cache_{os.getpid()}')


def _start(workdir, data_dir, delay, pause_at=''):
  import xla_test_flags  # pylint: disable=import-outside-toplevel  (tests/: not on this file's path as a script)

  env = dict(
      os.environ,
      TF_CPP_MIN_LOG_LEVEL='3',
      JAX_PLATFORMS='cpu',
      PYTHONPATH=REPO,
      JAX_COMPILATION_CACHE_DIR=_CACHE,
      XLA_FLAGS=xla_test_flags.with_devices(1),
  )
  env[pause_points.ENV] = pause_at
  return subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(workdir), str(data_dir), str(delay)],
      env=env,
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )


def _finish(proc, timeout=600):
  out = proc.communicate(timeout=timeout)[0]
  assert proc.returncode == 0, out[-4000:]
  return out


def _kill_when(proc, ready, what):
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None and not ready():
    time.sleep(0.05)
  assert proc.poll() is None, f'the run ended before the kill {what}:\n{proc.communicate()[0][-3000:]}'
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL


def _kill_paused(proc, point):
  """Reads the run's output until it pauses at `point` (core_jax.pause_points), then SIGKILLs it there."""
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.strip() == f'paused at {point}':
      break
  assert proc.poll() is None, f'the run ended before pausing at {point}:\n{"".join(seen)[-3000:]}'
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL


def _has_step(phase_dir, at_least):
  d = os.path.join(phase_dir, 'checkpoints')
  return os.path.isdir(d) and any(n.isdigit() and int(n) >= at_least for n in os.listdir(d))


def _weights(workdir):
  """Per phase, the flat weights it ended with (the pruned step directory for 'prune')."""
  return {
      'large': _flat(checkpoint.read_training_checkpoint(checkpoint.latest_step_dir(workdir / 'large'))['params']),
      'prune': _flat(checkpoint.read_training_checkpoint(workdir / 'prune' / 'pruned')['params']),
      'finetune': _flat(
          checkpoint.read_training_checkpoint(checkpoint.latest_step_dir(workdir / 'finetune'))['params']
      ),
  }


@pytest.mark.slow
def test_three_phase_experiment_killed_in_each_phase_and_at_hand_overs_resumes_bitwise(tfds_dir, tmp_path):
  ref, exp = tmp_path / 'reference', tmp_path / 'killed'
  try:
    out = _finish(_start(ref, tfds_dir, 0.0))
    assert 'experiment done: 3 phases' in out
    assert f'initialized from {ref / "prune" / "pruned"}' in out  # phase 3 started from phase 2's weights
    delay = 0.4  # same numerics; the kills land inside the phases
    _kill_when(_start(exp, tfds_dir, delay), lambda: _has_step(exp / 'large', 2), 'in phase 1')
    assert not (exp / 'large' / 'results.json').exists()
    # the hand-over from phase 1 to 2: phase 1's results.json written, phase 2 not begun
    _kill_paused(_start(exp, tfds_dir, delay, 'phase_done:large'), 'phase_done:large')
    assert (exp / 'large' / 'results.json').exists() and not (exp / 'prune').exists()
    large_results = (exp / 'large' / 'results.json').stat().st_mtime_ns
    _kill_when(_start(exp, tfds_dir, delay), lambda: (exp / 'prune' / 'started').exists(), 'in phase 2')
    assert not (exp / 'prune' / 'results.json').exists()
    # the hand-over from phase 2 to 3: phase 3 started (its lock, TensorBoard file), before its first step
    _kill_paused(_start(exp, tfds_dir, delay, 'train:before_first_step'), 'train:before_first_step')
    assert (exp / 'prune' / 'results.json').exists() and (exp / 'finetune' / 'tensorboard').is_dir()
    assert not _has_step(exp / 'finetune', 0) and not (exp / 'finetune' / 'results.json').exists()
    _kill_when(_start(exp, tfds_dir, delay), lambda: _has_step(exp / 'finetune', 2), 'in phase 3')
    assert (exp / 'prune' / 'results.json').exists() and not (exp / 'finetune' / 'results.json').exists()
    out = _finish(_start(exp, tfds_dir, delay))  # the same command once more
    assert 'phase 1/3 large: finished earlier' in out and 'phase 2/3 prune: finished earlier' in out
    assert 'resumed from step' in out and 'experiment done: 3 phases' in out
    assert (exp / 'large' / 'results.json').stat().st_mtime_ns == large_results  # untouched by the reruns
  finally:
    shutil.rmtree(_CACHE, ignore_errors=True)
  want, got = _weights(ref), _weights(exp)
  for phase in PHASES:
    assert want[phase].keys() == got[phase].keys()
    for k in want[phase]:
      np.testing.assert_array_equal(got[phase][k], want[phase][k], err_msg=f'{phase}: {k}')
  pruned = json.load(open(exp / 'prune' / 'results.json'))
  assert pruned['zeros'] > 0 and pruned == json.load(open(ref / 'prune' / 'results.json')) | {
      'source': pruned['source'],
      'init_from': pruned['init_from'],
  }
  finetuned = json.load(open(exp / 'finetune' / 'results.json'))
  reference = json.load(open(ref / 'finetune' / 'results.json'))
  assert finetuned['step'] == 4 and finetuned['accuracy'] == reference['accuracy']


if __name__ == '__main__':
  try:
    toy_experiment(sys.argv[1], sys.argv[2], float(sys.argv[3]))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def test_compilation_cache_in_the_experiment_dir_then_restored(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=import-outside-toplevel

  before = jax.config.jax_compilation_cache_dir  # the suite's (tests/conftest.py)
  min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
  try:
    # a cache the process already has wins: nothing changes
    with experiment.compilation_cache(str(tmp_path / 'ignored')):
      assert jax.config.jax_compilation_cache_dir == before
    jax.config.update('jax_compilation_cache_dir', None)
    cc.reset_cache()
    with experiment.compilation_cache(str(tmp_path / 'off'), enabled=False):
      assert jax.config.jax_compilation_cache_dir is None
    with experiment.compilation_cache(str(tmp_path)):
      # armed, not on: what compiles before the run's inputs have loaded is not written
      assert jax.config.jax_compilation_cache_dir is None
      jax.jit(lambda x: x * 5.0 - 1.0)(jnp.arange(7.0)).block_until_ready()
      assert not (tmp_path / experiment.CACHE_DIR).exists()
      experiment.start_compilation_cache()  # what train.run calls once data, model and weights have loaded
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / experiment.CACHE_DIR)
      jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()  # even a tiny compile is kept
    assert os.listdir(tmp_path / experiment.CACHE_DIR)
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == min_seconds
    assert not (tmp_path / 'ignored').exists() and not (tmp_path / 'off').exists()
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', min_seconds)
    cc.reset_cache()


def test_a_rerun_with_another_config_stops_instead_of_reporting_the_old_phases(tmp_path, capsys):
  """A pruning experiment rerun with another ratio or model printed the finished phases' old table, exit 0."""
  import ml_collections  # pylint: disable=import-outside-toplevel

  def config(ratio, **more):
    c = ml_collections.ConfigDict(
        dict(prune=dict(ratio=ratio), experiment=dict(seeds=(0,)), checkpoint=dict(allow_config_change=False))
    )
    c.update(more)
    return c

  ran = []
  phases = [experiment.Phase('a', lambda w, d: ran.append('a') or {'accuracy': 0.5})]
  assert experiment.run_experiment(phases, str(tmp_path), config(0.5))['a']['accuracy'] == 0.5
  assert (tmp_path / experiment.CONFIG_FILE).is_file()
  again = experiment.run_experiment(phases, str(tmp_path), config(0.5, experiment=dict(seeds=(0, 1))))
  assert ran == ['a'] and again['a']['accuracy'] == 0.5  # more seeds: the same experiment
  experiment.run_experiment(phases, str(tmp_path), config(0.5, added_since=dict(option=1)))  # a new default
  with pytest.raises(UserError, match=r'holds an experiment begun with another config: prune.ratio 0.5 -> 0.3; its'):
    experiment.run_experiment(phases, str(tmp_path), config(0.3))
  allowed = config(0.3)
  allowed.checkpoint.allow_config_change = True
  capsys.readouterr()
  experiment.run_experiment(phases, str(tmp_path), allowed)
  assert 'changed options since this experiment began (finished phases are not rerun): prune.ratio 0.5 -> 0.3' in (
      capsys.readouterr().out
  )
  assert ran == ['a']
  assert '0.5' in (tmp_path / experiment.CONFIG_FILE).read_text()  # the experiment's first config is kept
