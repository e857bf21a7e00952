"""The Makefile's demo wiring (`make -n`: commands listed, nothing run): every digits config of a line has its demo
job, the default runs one job per line, and an unknown LINE is one line naming it."""

import glob
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make(*args):
  if shutil.which('make') is None:
    pytest.fail('make is not installed: the README quick start needs it')
  return subprocess.run(
      ['make', '-C', REPO, '--no-print-directory', '-n', 'DEMO_DIR=/nonexistent/demo', *args],
      capture_output=True,
      text=True,
      timeout=60,
      env={k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')},  # under make test
  )


def _configs_run(stdout):
  return {ln.split('--config=')[1].split()[0] for ln in stdout.splitlines() if '--config=' in ln}


def test_default_demo_is_one_job_per_line():
  proc = _make('demo')
  assert proc.returncode == 0, proc.stderr
  assert _configs_run(proc.stdout) == {
      'configs/convnext/digits.py',
      'configs/pruning/digits_slimming.py',
      'configs/anytime/digit_scenes.py',
  }


def test_every_pruning_digits_config_has_its_demo_job():
  proc = _make('demo', 'LINE=pruning')
  assert proc.returncode == 0, proc.stderr
  want = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'configs/pruning/digits_*.py'))}
  assert _configs_run(proc.stdout) == want
  for config in want:  # each also alone, as `make demo LINE=pruning-<method>` (ConvNeXt's two are one job)
    method = os.path.basename(config)[len('digits_') : -len('.py')].replace('convnext_magnitude', 'convnext')
    one = _make('demo', f'LINE=pruning-{method}')
    assert one.returncode == 0 and config in _configs_run(one.stdout), (method, one.stderr)


def test_all_runs_every_line():
  proc = _make('demo', 'LINE=all')
  assert proc.returncode == 0, proc.stderr
  ran = _configs_run(proc.stdout)
  assert {
      'configs/convnext/digits.py',
      'configs/convnext/upernet_digit_scenes.py',
      'configs/anytime/digit_scenes.py',
  } <= ran
  assert len([c for c in ran if c.startswith('configs/pruning/')]) == len(
      glob.glob(f'{REPO}/configs/pruning/digits_*.py')
  )


def test_an_unknown_line_is_one_line_naming_it():
  proc = _make('demo', 'LINE=pruning-l2')
  assert proc.returncode != 0 and not proc.stdout.strip()
  assert proc.stderr.strip().count('\n') == 0 and 'no demo named pruning-l2' in proc.stderr, proc.stderr


def test_upernet_table_waits_for_the_anytime_demo_of_the_same_make():
  """The UperNet demo's table reads the anytime demo's anytime.json: with both lines in one make (LINE=all) its
  report runs after the anytime job; alone (LINE=upernet) it runs no anytime job."""
  lines = _make('demo', 'LINE=all').stdout.splitlines()
  anytime = next(i for i, ln in enumerate(lines) if 'anytime_jax.main' in ln)
  report = next(i for i, ln in enumerate(lines) if 'convnext_jax.upernet_demo' in ln)
  assert anytime < report
  alone = _make('demo', 'LINE=upernet')
  assert alone.returncode == 0, alone.stderr
  assert _configs_run(alone.stdout) == {'configs/convnext/upernet_digit_scenes.py'}
  assert 'convnext_jax.upernet_demo' in alone.stdout
