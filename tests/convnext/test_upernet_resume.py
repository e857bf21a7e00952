"""An UperNet run on ADE20K's layout resumes bitwise after SIGKILL: configs/convnext/upernet_ade20k.py:tiny shrunk
(a 4-stage width-8 ConvNeXt, 8 head channels, 32x32 crops of a fake release folder made here) through
`python -m convnext_jax.main`, with mmseg's train pipeline (resize by ratio, cat_max_ratio crop, flip, photometric
distortion, pad) and the multi-scale + flip eval; the killed-and-resumed run's final state and batches equal an
uninterrupted run's."""

import os
import signal
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tests', 'core'))  # the core's helpers for runs as processes
import toy_runs  # noqa: E402  pylint: disable=wrong-import-position

COMMAND = [sys.executable, '-m', 'convnext_jax.main']
TINY = """
import os
from core_jax import cli


def get_config():
  c = cli.load_config_file(os.path.join({repo!r}, 'configs', 'convnext', 'upernet_ade20k.py') + ':tiny:ms')
  c.model.overrides = dict(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), patch_size=2, channels=8, aux_channels=8)
  c.data.name = 'ade20k:' + {root!r}
  c.data.worker_count = 0
  c.data.train_transforms = (
      'seg_random_resize_ratio(scale=(64, 32), ratio_range=(0.5, 2.0))',
      'seg_random_crop_cat(size=(32, 32), cat_max_ratio=0.75)',
      'seg_flip(p=0.5)',
      'photometric_distortion',
      'imagenet_normalize',
      'seg_pad(size=(32, 32))',
  )
  c.eval_resize = (64, 32)  # with eval_flip from :ms; ratios (1.0,) keep the eval program small
  c.eval_scales = (1.0,)
  c.compute_dtype = 'float32'
  c.compute.dwconv = 'xla'  # the plain formulation: nothing but these small programs to compile
  c.xla_compiler_options = {{'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}}
  c.batch_size = 2
  c.num_train_steps = 6
  c.eval_every_epochs = 100.0
  c.log_every_steps = 1
  c.checkpoint.update(dict(every_steps=2, keep=1, keep_best=False))
  c.debug.write_batch_digests = True
  return c
"""


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
  base = tmp_path_factory.mktemp('ade')
  rng = np.random.default_rng(0)
  for split, n in (('training', 4), ('validation', 1)):
    for d in ('images', 'annotations'):
      (base / 'ADEChallengeData2016' / d / split).mkdir(parents=True)
    for i in range(n):
      image = rng.integers(0, 256, (40, 56, 3), np.uint8)
      label = np.zeros((40, 56), np.uint8)
      label[:, 20:] = rng.integers(1, 151)
      label[25:, :30] = rng.integers(1, 151)
      Image.fromarray(image).save(base / 'ADEChallengeData2016' / 'images' / split / f'{i}.jpg')
      Image.fromarray(label).save(base / 'ADEChallengeData2016' / 'annotations' / split / f'{i}.png')
  path = base / 'tiny_ade.py'
  path.write_text(TINY.format(repo=REPO, root=str(base / 'ADEChallengeData2016')))
  return str(path)


# Three runs of a tiny UperNet (compiled once, then from JAX's cache); over 5 min at load ~30 on 2 cores.
@pytest.mark.slow
def test_sigkill_resume_is_bitwise(tiny_config, tmp_path):
  ref_dir, killed_dir = tmp_path / 'ref', tmp_path / 'killed'
  ref = toy_runs.run(ref_dir, tmp_path, f'--config={tiny_config}', command=COMMAND, timeout=900)
  assert 'stage-wise lr decay 0.9 (num_layers 6)' in ref.stdout
  rc, out = toy_runs.start_and_signal(
      killed_dir,
      tmp_path,
      signal.SIGKILL,
      f'--config={tiny_config}',
      '--config.debug.step_delay_s=1.0',
      after_step=2,
      command=COMMAND,
      wait_s=900,
  )
  assert rc == -signal.SIGKILL, out[-2000:]
  resumed = toy_runs.run(killed_dir, tmp_path, f'--config={tiny_config}', command=COMMAND, timeout=900)
  assert 'resumed from step' in resumed.stdout
  want, got = toy_runs.read_state(ref_dir), toy_runs.read_state(killed_dir)
  assert want.keys() == got.keys() and max(toy_runs.steps(ref_dir)) == 6
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert toy_runs.digests(killed_dir) == toy_runs.digests(ref_dir)
