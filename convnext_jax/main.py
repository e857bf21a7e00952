"""python -m convnext_jax.main --config=configs/convnext/<name>.py --workdir=DIR [--config.key=value ...]"""
import sys

from core_jax import cli


def _run(config, workdir):
  from convnext_jax import train  # after flag parsing, so `--help`-level errors stay instant
  train.run(config, workdir)


if __name__ == '__main__':
  sys.exit(cli.run_main(_run))
