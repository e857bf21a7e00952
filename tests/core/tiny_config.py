"""A seconds-long variant of configs/convnext/digits.py for loop tests: tiny ConvNeXt, few steps."""

import importlib.util
import os

_DIGITS = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'convnext', 'digits.py')


def get_config():
  spec = importlib.util.spec_from_file_location('_digits_config', _DIGITS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.overrides = dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16))
  c.compute.dwconv = 'xla'  # compiles faster
  c.batch_size = 16
  c.eval_batch_size = 40
  c.num_train_steps = 12
  c.log_every_steps = 4
  c.eval_every_epochs = 1000  # eval only at the end
  c.checkpoint.every_steps = 4
  c.optimizer.warmup_epochs = 0
  # SGD keeps cross-device float differences at rounding level; Adam's m/sqrt(v) would blow near-zero
  # gradient noise up to a fraction of a step and blunt the distribution tests.
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.05
  c.optimizer.weight_decay = 5e-4
  # debug.write_batch_digests: per-step batch digests (data-order tests); debug.step_delay_s: the SIGKILL
  # tests slow steps down so the kill lands mid-run. Both off here, turned on per test.
  c.data.data_dir = os.environ.get('TEST_TFDS_DIR', '')
  return c
