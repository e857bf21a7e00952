"""A pruning experiment that learns (issue 18): on the embedded `digits`, one seed of configs/pruning/digits_l1.py
scaled down to seconds, the large model learns well above chance, L1-norm pruning of half of each block's inner
width takes it back down, fine-tuning the pruned model beats the pruned model's accuracy before fine-tuning, and
the paper's claim the demo's table is there to show holds: the pruned architecture trained from scratch for the
large model's compute (Scratch-B) is at least as good as the fine-tuned one. The numbers are read from the
experiment's results.json, as a user reads them.

Margins at these settings, by hand under the suite's XLA flags (tests/xla_test_flags.py), seeds 0 / 1: large 64.2 /
76.7, pruned 10.8 / 8.3, fine-tuned 56.7 / 68.1, Scratch-B 77.8 / 82.8 (% of 360 test digits): fine-tuning gains
46-60 points and Scratch-B leads it by 15-21, beyond what another CPU's rounding moves (the README's digits_l1
numbers differ across CPUs by under 6 points). With one fine-tune epoch instead of the demo's two, seed 1 gained
only 5 points (8.3 -> 13.3) and Scratch-B led by 57-64: too close a start for the fine-tune assertion.

The tiny experiments of test_pruning_pipeline.py run on random CIFAR-layout images and stay at chance in every
phase: they test the pipeline's mechanics, not that a phase improves on its start."""

import json
import os

import pytest

from pruning_jax import main as pruning_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS_L1 = os.path.join(REPO, 'configs', 'pruning', 'digits_l1.py')
CHANCE = 10.0  # percent: ten digit classes, about equally many test digits each


def _config(path, data_dir: str) -> str:
  path.write_text(f"""import importlib.util
spec = importlib.util.spec_from_file_location('_digits_l1', {DIGITS_L1!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)


def get_config():
  c = module.get_config()
  c.data.data_dir = {data_dir!r}
  c.model.cfg = (8, 16, 16)  # ResNet-8 at half width: compiles and trains in seconds
  c.num_epochs = 3
  c.finetune.num_epochs = 2  # as the demo: one epoch leaves seed 1 at 13% (see above)
  c.finetune.lr = 0.01
  c.experiment.seeds = (0,)
  c.experiment.phases = ('large', 'prune', 'finetune', 'scratch_b')  # Scratch-B: 3 x MACs ratio 1.85 = 5 epochs
  return c
""")
  return str(path)


@pytest.mark.slow
def test_fine_tuning_improves_on_the_pruned_start_and_scratch_b_is_at_least_as_good(tfds_dir, tmp_path):
  config = _config(tmp_path / 'digits_l1_tiny.py', str(tfds_dir))
  workdir = tmp_path / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  results = json.loads((workdir / 'results.json').read_text())
  phases = results['phases']
  large, pruned, finetuned, scratch_b = (
      phases[p]['accuracy']['mean'] for p in ('large', 'prune', 'finetune', 'scratch_b')
  )
  print(f'accuracy (%): large {large:.2f}, pruned {pruned:.2f}, fine-tuned {finetuned:.2f}, Scratch-B {scratch_b:.2f}')
  assert large > 3 * CHANCE, phases['large']
  assert pruned < large  # half of each block's inner width removed: the start the fine-tune phase improves on
  assert finetuned > pruned + 10.0, (pruned, finetuned)
  # Scratch-B trains for the large model's compute (MACs budget), so more epochs than the large model
  assert phases['scratch_b']['epochs']['mean'] > phases['large']['epochs']['mean']
  assert scratch_b >= finetuned, (finetuned, scratch_b)  # the paper's claim, on one seed: no spread to lean on
  assert results['claim']['holds'] is True  # and the report says so under the table
