"""python -m pruning_jax.main --config=configs/pruning/<experiment>.py[:arg] --workdir=DIR [--config.key=value ...]

Runs one pruning experiment end to end (pruning_jax.job): per seed the large model, pruning, fine-tuning,
Scratch-E and Scratch-B, each phase in its own sub-workdir (rerun the same command to resume a killed run);
then DIR/results.json and DIR/results.md, the paper's table (pruning_jax.report), printed at the end. `--help`
lists the configs of configs/pruning; `--config=FILE --help` lists that config's keys. Bad input: one line on
stderr, exit 2."""

import os
import sys

from core_jax import cli

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'pruning')


def _run(config, workdir):
  from pruning_jax import job  # after flag parsing, so `--help`-level errors stay instant

  job.run(config, workdir)


def main(argv=None) -> int:
  return cli.run_main(_run, argv, prog='pruning_jax.main', config_dir=CONFIG_DIR)


if __name__ == '__main__':
  sys.exit(main())
