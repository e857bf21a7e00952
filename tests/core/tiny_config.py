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
  c.batch_size = 16
  c.eval_batch_size = 40
  c.num_train_steps = 12
  c.log_every_steps = 4
  c.eval_every_epochs = 1000  # eval only at the end
  c.checkpoint.every_steps = 4
  c.optimizer.warmup_epochs = 0
  c.data.data_dir = os.environ.get('TEST_TFDS_DIR', '')
  return c
