"""scripts/gpu_check.py (`make gpu-check`): one line and exit 0 without a GPU; the bf16-vs-fp32 verdict per line.

The full check needs a GPU; its CPU path (`--cpu --tiny`) runs every line's real Task through the core loop and
was run by hand (a few minutes per line on 2 cores). Here: the no-GPU path as a process, and the comparison with
the loop replaced by recorded results, so a verdict that cannot fail would fail these tests.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'scripts'))
import gpu_check  # noqa: E402  pylint: disable=wrong-import-position


def test_without_a_gpu_prints_one_line_and_exits_0():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  p = subprocess.run([sys.executable, 'scripts/gpu_check.py'], cwd=REPO, env=env, capture_output=True, text=True)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip().splitlines() == ['gpu-check: skipped, no GPU here (jax backend cpu)']


@pytest.fixture
def fake_runs(monkeypatch, tmp_path):
  """The loop replaced by results with the given eval losses per dtype; no benchmark."""
  losses = {}

  def run(config, workdir, task_cls):
    del workdir, task_cls
    loss = losses[config.compute_dtype]
    return {'eval': {'loss': loss, 'accuracy': 0.5}, 'primary_metric': 'accuracy', 'accuracy': 0.5}

  class Config(dict):
    __getattr__, __setattr__ = dict.get, dict.__setitem__

    def unlocked(self):
      import contextlib  # pylint: disable=import-outside-toplevel

      return contextlib.nullcontext()

  from core_jax import train  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(train, 'run', run)
  monkeypatch.setattr(gpu_check, 'LINES', {'toy': lambda tiny: (Config(data=Config()), None)})
  return losses


@pytest.mark.parametrize(
    'fp32,bf16,ok',
    [
        (2.0, 2.0 * (1 + 0.9 * gpu_check.BF16_RTOL), True),
        (2.0, 2.0 * (1 + 1.1 * gpu_check.BF16_RTOL), False),
        (2.0, float('nan'), False),
    ],
)
def test_bf16_within_the_stated_tolerance_of_fp32(fake_runs, capsys, tmp_path, fp32, bf16, ok):
  fake_runs.update(float32=fp32, bfloat16=bf16)
  code = gpu_check.main(['--cpu', '--tiny', '--no-bench', '--lines', 'toy', '--workdir', str(tmp_path)])
  assert code == (0 if ok else 1)
  out = capsys.readouterr().out
  assert out.startswith(f'gpu-check toy: {"ok" if ok else "FAILED"} (bf16 vs fp32, in units of the tolerance')


def test_a_line_without_an_eval_loss_is_compared_on_pixel_accuracies():
  fp32 = {'eval': {'exit4/miou': 0.3, 'exit4/pixel_accuracy': 0.80, 'exit1/pixel_accuracy': 0.7}}
  assert gpu_check._compared(fp32) == {'exit4/pixel_accuracy': 0.80, 'exit1/pixel_accuracy': 0.7}
  assert gpu_check._difference('exit4/pixel_accuracy', 0.80, 0.80 + 0.9 * gpu_check.BF16_PIXEL_ATOL) < 1
  assert gpu_check._difference('exit4/pixel_accuracy', 0.80, 0.80 - 1.1 * gpu_check.BF16_PIXEL_ATOL) > 1


def test_unknown_line_is_refused():
  with pytest.raises(SystemExit):
    gpu_check.main(['--cpu', '--lines', 'resnet'])
