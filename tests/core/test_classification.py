"""`core_jax.classification.ClassificationTask` reads its input through `Task.input_key`; the `Task` contract
imports nothing from `core_jax.data`."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from core_jax.classification import ClassificationTask
from core_jax.data.sources import DatasetInfo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Linear:
  """A stand-in model: logits = mean over pixels of x @ w, features = None."""

  def apply(self, variables, x, train, rngs=None, mutable=None):
    del train, rngs, mutable
    return (x.mean(axis=(1, 2)) @ variables['params']['w'], None)


def _task(input_key: str) -> ClassificationTask:
  config = ml_collections.ConfigDict(
      dict(
          label_smoothing=0.1,
          mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5),
          data=dict(name='toy'),
      )
  )
  task_cls = type('KeyedTask', (ClassificationTask,), {'input_key': input_key})
  return task_cls(config, DatasetInfo(name='toy', num_classes=3, splits={'train': 8}, features=(input_key, 'label')))


@pytest.mark.slow  # 6-16 s on 2 cores: out of make test-fast (5-minute budget), still in make test
def test_classification_reads_the_task_input_key():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 3))
  labels = jnp.array([0, 2, 1, 2])
  variables = {'params': {'w': jax.random.normal(jax.random.PRNGKey(1), (3, 3))}}
  by_image, by_pixels = _task('image'), _task('pixels')
  key, step = jax.random.PRNGKey(2), jnp.int32(5)
  mixed_image = by_image.prepare_train_batch({'image': x, 'label': labels}, key, step)
  mixed_pixels = by_pixels.prepare_train_batch({'pixels': x, 'label': labels}, key, step)
  assert 'image' not in mixed_pixels and mixed_pixels['label'].shape == (4, 3)
  assert not np.array_equal(np.asarray(mixed_pixels['pixels']), np.asarray(x))  # Mixup/CutMix mixed it
  np.testing.assert_array_equal(mixed_image['image'], mixed_pixels['pixels'])
  np.testing.assert_array_equal(mixed_image['label'], mixed_pixels['label'])
  loss_image, _ = by_image.train_loss(_Linear(), variables, mixed_image, None)
  loss_pixels, _ = by_pixels.train_loss(_Linear(), variables, mixed_pixels, None)
  assert float(loss_image) == float(loss_pixels) and np.isfinite(float(loss_pixels))
  mask = jnp.array([True, True, True, False])
  out = by_pixels.eval_outputs(_Linear(), variables, {'pixels': x, 'label': labels, 'mask': mask})
  want = by_image.eval_outputs(_Linear(), variables, {'image': x, 'label': labels, 'mask': mask})
  assert out.keys() == want.keys()
  for k in out:
    np.testing.assert_array_equal(out[k], want[k], err_msg=k)
  assert by_pixels.init_inputs({'pixels': np.zeros((4, 4, 4, 3))})[0].shape == (1, 4, 4, 3)


def test_task_contract_imports_nothing_from_data():
  script = (
      'import sys; import core_jax.task; '
      "print(' '.join(m for m in sys.modules if m == 'core_jax.data' or m.startswith('core_jax.data.')))"
  )
  out = subprocess.run(
      [sys.executable, '-c', script],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == '', f'core_jax.task pulled in {out.stdout.strip()}'


@pytest.mark.parametrize(
    'changes, message',
    [
        (dict(label_smoothing=1.0), r'^label_smoothing must be in \[0, 1\) .*, got 1.0$'),
        (dict(label_smoothing=-0.1), r'^label_smoothing must be in \[0, 1\) .*, got -0.1$'),
        (dict(mixup=dict(mixup_alpha=0.8, label_smoothing=1.5)), r'^mixup.label_smoothing must be in \[0, 1\)'),
    ],
)
def test_a_label_smoothing_outside_0_1_is_one_line(changes, message):
  """1.5 or -0.5 trained silently before: targets with negative mass or none on the label."""
  from core_jax.errors import UserError  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict(dict(label_smoothing=0.1, mixup=None, data=dict(name='toy')))
  config.update(changes)
  info = DatasetInfo(name='toy', num_classes=3, splits={'train': 8}, features=('image', 'label'))
  with pytest.raises(UserError, match=message):
    ClassificationTask(config, info)
  ClassificationTask(ml_collections.ConfigDict(dict(label_smoothing=0.0, data=dict(name='toy'))), info)
