"""Unstructured magnitude pruning (pruning_jax.methods.magnitude): the global conv-only threshold against a numpy
reference, iterative rounds over the remaining weights, the sparsity-adjusted re-initialization, non-zero MACs,
the configs, bad input; and (slow) the runner on the tiny CIFAR-layout builder: Scratch-B budgeted by non-zero
MACs, masks exact through training, a SIGKILL and a resume on another device count."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import cifar_like
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xla_test_flags
from pruning_helpers import random_variables
from test_pruning_pipeline import _main, _tiny, _write_config

from core_jax import counting
from core_jax.weights import flatten, unflatten
from pruning_jax import job, models
from pruning_jax import main as pruning_main
from pruning_jax.methods import magnitude
from pruning_jax.task import load_mask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
X = jnp.zeros((1, 32, 32, 3), jnp.float32)
TINY_RESNET = (4, 8, 8)  # ResNet-8 (one block a stage) with narrow inner widths


@pytest.fixture(scope='module')
def tiny():
  model = models.create('resnet_cifar', cfg=TINY_RESNET, num_classes=10)
  return model, random_variables(model, X)


def _conv_paths(params):
  return sorted(p for p, x in flatten(dict(params)).items() if p.endswith('kernel') and np.ndim(x) == 4)


def test_one_global_threshold_over_conv_weights_only(tiny):
  model, variables = tiny
  params = flatten(variables['params'])
  convs = _conv_paths(variables['params'])
  everything = np.sort(np.concatenate([np.abs(params[p]).ravel() for p in convs]))
  for percent in (0.3, 0.8, 0.95):
    result = magnitude.prune(model, None, variables, percent)
    t = everything[int(everything.size * percent)]
    assert result.report['threshold'] == pytest.approx(float(t))
    mask = flatten(result.mask)
    pruned = flatten(result.variables['params'])
    for path, w in params.items():
      if path in convs:  # kept exactly where |w| > t, across all layers at once; zeroed elsewhere
        np.testing.assert_array_equal(mask[path], (np.abs(w) > t).astype(w.dtype), err_msg=path)
        np.testing.assert_array_equal(pruned[path], w * mask[path])
      else:  # Linear, BN, biases: not pruned, no mask
        assert mask[path] is None
        np.testing.assert_array_equal(pruned[path], w)
    kept = sum(int(mask[p].sum()) for p in convs)
    assert kept == everything.size - int(everything.size * percent) - 1  # distinct values: the threshold one goes
    assert result.model is model and result.variables['batch_stats'] is variables['batch_stats']
  per_layer = magnitude.prune(model, None, variables, 0.8).report['kept_fraction_per_layer']
  assert len(set(per_layer.values())) > 1  # a global threshold, not a per-layer one


def test_a_round_with_a_mask_removes_that_fraction_of_the_remaining_weights(tiny):
  model, variables = tiny
  first = magnitude.prune(model, None, variables, 0.5)
  remaining = first.report['kept_conv_weights']
  second = magnitude.prune(model, None, first.variables, 0.5, mask=first.mask)
  assert second.report['kept_conv_weights'] == remaining - int(remaining * 0.5) - 1
  for path, m in flatten(second.mask).items():
    if m is not None:
      assert np.all(m <= flatten(first.mask)[path])  # never revives a pruned weight


def test_sparse_reinit_draws_each_conv_with_std_sqrt_2_over_nnz_per_input_channel(tiny):
  model, variables = tiny
  result = magnitude.prune(model, None, variables, 0.6)
  mask = flatten(result.mask)
  fresh = magnitude.sparse_reinit(variables['params'], result.mask, 3)
  again = magnitude.sparse_reinit(variables['params'], result.mask, 3)
  flat = flatten(fresh)
  for path, w in flat.items():
    np.testing.assert_array_equal(w, flatten(again)[path])  # a key gives one init
    m = mask[path]
    if m is None:
      np.testing.assert_array_equal(w, flatten(variables['params'])[path])
      continue
    assert np.all(w[m == 0] == 0) and np.all(w[m != 0] != 0)
    n = m.sum() / w.shape[2]
    if m.sum() > 200:  # enough draws for the sample std to be within 15% of sqrt(2 / n)
      assert np.std(w[m != 0]) == pytest.approx(math.sqrt(2 / n), rel=0.15), path
  empty = {k: np.zeros_like(v) if v is not None else None for k, v in mask.items()}
  zeroed = magnitude.sparse_reinit(variables['params'], unflatten(empty), 0)
  assert all(not np.any(flatten(zeroed)[p]) for p in _conv_paths(variables['params']))


def test_nonzero_macs_count_output_positions_times_nonzero_conv_weights(tiny):
  model, variables = tiny
  dense = counting.count_macs(model, jax.ShapeDtypeStruct(X.shape, X.dtype), variables=variables)
  assert magnitude.nonzero_macs(model, variables, X.shape) == dense
  result = magnitude.prune(model, None, variables, 0.7)
  params = flatten(result.variables['params'])
  # this ResNet's convs: the stem and stage 1 at 32x32, stage 2 at 16x16, stage 3 at 8x8 (conv1 of the first
  # block of a stage strides)
  positions = {'conv1': 32 * 32, 'layer1_0': 32 * 32, 'layer2_0': 16 * 16, 'layer3_0': 8 * 8}
  zeros = sum(positions[p.split('/')[0]] * int(np.sum(params[p] == 0)) for p in _conv_paths(params))
  assert magnitude.nonzero_macs(model, result.variables, X.shape) == dense - zeros


@pytest.mark.parametrize('percent', [1.0, -0.1])
def test_a_keep_ratio_outside_0_1_is_one_line_and_nothing_is_made(tmp_path, capsys, percent):
  config = _write_config(
      tmp_path / 'bad.py', 'digits_magnitude.py', [f'c.prune.percent = {percent}', 'c.data.data_dir = "/nonexistent"']
  )
  workdir = tmp_path / 'run'
  code, err = _main([f'--config={config}', f'--workdir={workdir}'], capsys)
  assert code == 2 and len(err) == 1 and 'prune.percent must be in [0, 1) (a keep ratio in (0, 1])' in err[0], err
  assert not workdir.exists()


MAGNITUDE_CONFIGS = ['magnitude_cifar.py:vgg19_c10_30', 'magnitude_cifar.py:densenet40_c100_95']
MAGNITUDE_CONFIGS += ['magnitude_imagenet.py:resnet50_30', 'magnitude_imagenet.py:resnet50_60', 'digits_magnitude.py']


@pytest.mark.parametrize('spec', MAGNITUDE_CONFIGS)
def test_magnitude_configs_resolve_the_mask_implementation_and_the_nonzero_budget(spec):
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  c = cli.load_config_file(os.path.join(REPO, 'configs', 'pruning', spec))
  job.check_config(c)
  assert c.prune.method == 'magnitude' and 0.3 <= c.prune.percent <= 0.95 and c.experiment.title
  assert [p.name for p in job.phases_for(c)][:5] == [f'seed{int(c.experiment.seeds[0])}/{p}' for p in job.PHASES]
  prune = {
      'export': '/x/pruned.safetensors',
      'masked_export': '/x/pruned.safetensors',
      'mask': '/x/mask.safetensors',
      'scratch_init': '/x/scratch_init.safetensors',
      'pruned_model': models.describe(models.create(c.model.name, cfg=c.model.cfg, num_classes=10)),
      'macs_large': 1000,
      'macs': 400,
  }
  ft = job.finetune_config(c, 0, prune)
  assert (ft.init_from, ft.mask.path, ft.model.name) == (
      prune['export'],
      prune['mask'],
      c.model.name,
  )
  for kind in ('scratch_e', 'scratch_b'):
    sc = job.scratch_config(c, 0, prune, kind)
    assert (sc.init_from, sc.mask.path) == (prune['scratch_init'], prune['mask'])
  sb = job.scratch_config(c, 0, prune, 'scratch_b')
  cap = c.scratch.budget_cap or None
  assert sb.num_epochs == int(c.num_epochs * (min(2.5, cap) if cap else 2.5))
  if spec.startswith('magnitude_imagenet'):
    assert c.finetune.num_epochs == 10 and c.experiment.paper['scratch_b'] in (75.60, 74.90)


# ------------------------------------------------------------------------------------------------ the runner
def _env(devices: int):
  return dict(
      os.environ,
      PYTHONPATH=REPO + os.pathsep + os.path.dirname(__file__),
      JAX_PLATFORMS='cpu',
      XLA_FLAGS=xla_test_flags.with_devices(devices),
  )


def _conv_kernels_exactly_masked(step_dir, mask_file):
  """The checkpoint's conv kernels are 0 exactly where the mask file is 0 and non-zero elsewhere, and the mask the
  optimizer state carries is the file's; returns the number of masked-out weights."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = os.path.join(step_dir, 'state')
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  checkpointer = ocp.StandardCheckpointer()
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), checkpointer.metadata(path).item_metadata.tree
  )
  state = checkpointer.restore(path, target)
  mask = {p: m for p, m in flatten(load_mask(mask_file, state['params'])).items() if m is not None}
  params = flatten(state['params'])
  for p, m in mask.items():
    w = np.asarray(params[p])
    assert np.all(w[m == 0] == 0), p
    assert np.all(w[m != 0] != 0), p  # the kept weights trained (an exact 0 is "practically impossible")
  carried = {  # keep_masked's state: opt_state/.../mask/<the param's path>
      '/'.join(str(getattr(k, 'key', k)) for k in keys).split('/mask/', 1)[1]: np.asarray(leaf)
      for keys, leaf in jax.tree_util.tree_flatten_with_path(state['opt_state'])[0]
      if any(getattr(k, 'key', None) == 'mask' for k in keys)
  }
  assert set(mask) <= set(carried)
  for p, m in mask.items():
    np.testing.assert_array_equal(carried[p], m, err_msg=p)
  return sum(int(np.sum(m == 0)) for m in mask.values())


def _start_and_kill(argv, env, ckpts):
  """Runs argv (slowed down) until its first checkpoint in `ckpts`, then SIGKILLs it; returns that step."""
  proc = subprocess.Popen(
      argv + ['--config.debug.step_delay_s=0.5'],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      start_new_session=True,
  )
  deadline = time.time() + 300
  try:
    while time.time() < deadline and proc.poll() is None:
      if ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts)):
        break
      time.sleep(0.05)
    assert proc.poll() is None, 'the run ended before it could be killed mid-phase'
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  return min(int(d) for d in os.listdir(ckpts) if d.isdigit())


@pytest.mark.slow
def test_masks_stay_exact_through_training_a_sigkill_and_a_resume_on_two_devices(tmp_path, tfds_dir, capsys):
  data_dir = cifar_like.prepare(str(tfds_dir), 'cifar10', num_train=128, num_test=64)
  lines = _tiny(
      data_dir,
      [
          f'c.model.update(dict(name="resnet_cifar", cfg={TINY_RESNET!r}))',
          'c.prune.percent = 0.6',
          'c.num_epochs = 1',
          'c.experiment.phases = ("large", "prune")',
      ],
  )
  config = _write_config(tmp_path / 'tiny_mag.py', 'magnitude_cifar.py:vgg19_c10_30', lines)
  workdir = tmp_path / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  prune = json.loads((workdir / 'seed0' / 'prune' / 'results.json').read_text())
  ratio = prune['macs_large'] / prune['macs']  # dense over non-zero MACs, counted with the mask applied
  assert ratio > 1.5 and prune['masked_export'] == prune['export']
  # Scratch-B (int(1 x ratio) epochs of 2 steps from the sparse re-initialization), SIGKILLed after its first
  # checkpoint on one device, then resumed on two
  argv = [sys.executable, '-m', 'pruning_jax.main', f'--config={config}', f'--workdir={workdir}']
  argv.append('--config.experiment.phases=("large", "prune", "scratch_b")')
  ckpts = workdir / 'seed0' / 'scratch_b' / 'checkpoints'
  first = _start_and_kill(argv, _env(1), ckpts)
  epochs = int(ratio)
  assert first < 2 * epochs and not (workdir / 'seed0' / 'scratch_b' / 'results.json').exists()
  _conv_kernels_exactly_masked(str(ckpts / str(first)), prune['mask'])
  out = subprocess.run(argv, cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'resumed from step {first}' in out.stdout
  sb = json.loads((workdir / 'seed0' / 'scratch_b' / 'results.json').read_text())
  assert sb['devices'] == 2 and sb['step'] == 2 * epochs
  assert sb['nonzero_macs'] == prune['macs'] and sb['nonzero_params'] == prune['params'] < sb['params']
  masked_out = _conv_kernels_exactly_masked(str(ckpts / str(2 * epochs)), prune['mask'])
  assert masked_out == prune['params_large'] - prune['params']
  summary = json.loads((workdir / 'results.json').read_text())
  assert list(summary['phases']) == ['large', 'prune', 'scratch_b']
  assert summary['phases']['scratch_b']['per_seed'][0]['epochs'] == epochs
  table = (workdir / 'results.md').read_text()
  assert 'unstructured magnitude pruning 60% of the conv weights' in table and f'| {epochs} |' in table
