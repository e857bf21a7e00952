"""A pruning experiment that learns (issue 18): on the embedded `digits`, one seed of configs/pruning/digits_l1.py
scaled down to seconds, the large model learns well above chance, L1-norm pruning of half of each block's inner
width takes it back down, and fine-tuning the pruned model beats the pruned model's accuracy before fine-tuning.
The numbers are read from the experiment's results.json, as a user reads them.

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
  c.finetune.num_epochs = 1
  c.finetune.lr = 0.01
  c.experiment.seeds = (0,)
  c.experiment.phases = ('large', 'prune', 'finetune')
  return c
""")
  return str(path)


@pytest.mark.slow
def test_fine_tuning_improves_on_the_pruned_start(tfds_dir, tmp_path):
  config = _config(tmp_path / 'digits_l1_tiny.py', str(tfds_dir))
  workdir = tmp_path / 'run'
  assert pruning_main.main([f'--config={config}', f'--workdir={workdir}']) == 0
  phases = json.loads((workdir / 'results.json').read_text())['phases']
  large, pruned, finetuned = (phases[p]['accuracy']['mean'] for p in ('large', 'prune', 'finetune'))
  print(f'accuracy (%): large {large:.2f}, pruned {pruned:.2f}, fine-tuned {finetuned:.2f}')
  assert large > 3 * CHANCE, phases['large']
  assert pruned < large  # half of each block's inner width removed: the start the fine-tune phase improves on
  assert finetuned > pruned + 10.0, (pruned, finetuned)
