"""python -m convnext_jax.main --config=configs/convnext/<name>.py --workdir=DIR [--config.key=value ...]

`--help` lists the config files of configs/convnext; `--config=FILE --help` lists that config's keys."""
import os
import sys

from core_jax import cli

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'convnext')


def _run(config, workdir):
  from convnext_jax import train  # after flag parsing, so `--help`-level errors stay instant
  train.run(config, workdir)


if __name__ == '__main__':
  sys.exit(cli.run_main(_run, prog='convnext_jax.main', config_dir=CONFIG_DIR))
