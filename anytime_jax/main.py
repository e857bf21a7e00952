"""python -m anytime_jax.main --config=configs/anytime/<name>.py --workdir=DIR [--config.key=value ...]

Trains and evaluates an anytime HRNet (anytime_jax.task.AnytimeSegTask through core_jax.train; the phases in
anytime_jax.job), then prints the per-exit table (mIoU, GFLOPs, fraction of pixels computed, the mean over exits)
and writes DIR/anytime.json and DIR/anytime.png (the anytime curve, anytime_jax.curve; the paper's points beside
it for Cityscapes configs): anytime_jax.report.

- `--config.eval_only=True` evaluates without training: the weights of `--config.init_from` (a timm / official
  ADP-C .pth or .safetensors, or one of our step dirs / workdirs), else DIR's checkpoint (latest, or
  `checkpoint.restore_step`). The core writes it to DIR/eval/<what>-<how>/ (core_jax.train.evaluate_only:
  e.g. DIR/eval/step496-tau0.99, DIR/eval/weights-adpc_w48-dense), its anytime.json and curve beside it, so a
  training run's results are never overwritten.
- `--config.model.tau=0.99` (with eval_only) evaluates the same weights at another threshold, no retraining.
  The threshold is an argument of the compiled eval step (`AnytimeSegTask.eval_constants`), not a constant in
  it, and compiled programs are kept in DIR/xla_cache (`anytime.compilation_cache`, default True; a
  JAX_COMPILATION_CACHE_DIR already set wins), so evaluating another threshold compiles nothing new.
- Configs with `anytime.eval_taus` or `anytime.baseline_exit_type` (configs/anytime/digit_scenes.py) run the
  whole comparison as one core_jax.experiment: [baseline without CA,] the CA model, eval-only runs of the CA
  weights at each threshold; the table and curve then hold every run. Rerunning skips finished phases.
  With eval_only such a config runs the one evaluation (e.g. of a phase directory at another tau).

`anytime_jax.job.run(config, workdir)` is the importable entry (returns {'runs': [...], ...} as written to
anytime.json).
`--help` lists the config files of configs/anytime; `--config=FILE --help` lists that config's keys.
"""

import os
import sys

from core_jax import cli

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'anytime')


def _run(config, workdir):
  from anytime_jax import job  # after flag parsing, so `--help`-level errors stay instant

  job.run(config, workdir)


if __name__ == '__main__':
  sys.exit(cli.run_main(_run, prog='anytime_jax.main', config_dir=CONFIG_DIR))
