"""Nothing is written before the inputs are checked (issue 23, item 2), with the lines' real `main` processes on a
fresh workdir: HRNet weights of another width given to the anytime job, and a pruning export without its JSON
sidecar given to the pruning experiment, each end with their one-line error and leave no DIR/xla_cache (the
experiment's compilation cache is switched on only once a run's data, model and weights have loaded) and no
folder at all."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(line, config, workdir, tfds_dir, *overrides):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # a cache the process already has would win over the workdir's
  return subprocess.run(
      [
          sys.executable,
          '-m',
          f'{line}.main',
          f'--config={os.path.join(REPO, "configs", config)}',
          f'--workdir={workdir}',
          f'--config.data.data_dir={tfds_dir}',
          *overrides,
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )


def _one_line(proc, needle):
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
  err = proc.stderr.strip().splitlines()
  assert err[-1].startswith('error: ') and needle in err[-1], proc.stderr[-2000:]
  assert sum(line.startswith('error: ') for line in err) == 1, proc.stderr[-2000:]


@pytest.mark.slow  # a real anytime process building its HRNet: ~22 s on 2 cores
def test_anytime_weights_of_another_width_leave_nothing(tmp_path, tfds_dir):
  from anytime_jax import convert, hrnet  # pylint: disable=import-outside-toplevel

  model = hrnet.base('w18_small_v2', num_classes=19)  # the digit_scenes job trains w8_nano
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
  weights = str(tmp_path / 'w18.safetensors')
  convert.save_variables(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), weights, 'timm')
  workdir = tmp_path / 'run'
  proc = _main('anytime_jax', 'anytime/digit_scenes.py', workdir, tfds_dir, f'--config.init_from={weights}')
  _one_line(proc, 'checkpoint is HRNet-W18 but the model is HRNet-W8')
  assert not workdir.exists(), sorted(str(p) for p in workdir.rglob('*'))


def test_pruning_export_without_sidecar_leaves_nothing(tmp_path, tfds_dir):
  export = tmp_path / 'pruned.safetensors'
  export.write_bytes(b'weights whose sidecar pruned.json is missing')
  workdir = tmp_path / 'run'
  proc = _main('pruning_jax', 'pruning/digits_l1.py', workdir, tfds_dir, f'--config.init_from={export}')
  _one_line(proc, 'its sidecar')
  assert not workdir.exists(), sorted(str(p) for p in workdir.rglob('*'))
