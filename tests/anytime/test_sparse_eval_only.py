"""`python -m anytime_jax.main --config.eval_only=True` with the sparse masked conv, as a user runs it (real
processes): a short training run's checkpoint evaluated sparse writes DIR/eval/<tag>/ and exits 0, with the
numbers of the masked-dense evaluation (every exit's mIoU, computed fraction and GFLOPs), also with the batch split
over 8 devices; a bad compute policy (an unknown masked conv, a bad `masked_dense_above`, a bad compute dtype) or
an eval batch the devices do not divide stops with one line and exit 2, nothing already saved changed."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py')
STEPS = 2
TAU = 0.3  # after 2 steps exits 3 and 4 compute about a tenth of the pixels at this threshold: mixed masks


def _main(workdir, tfds_dir, *overrides, devices: int = 1):
  import xla_test_flags  # pylint: disable=import-outside-toplevel  (tests/ is on the path under pytest)

  args = [
      sys.executable,
      '-m',
      'anytime_jax.main',
      f'--config={DIGITS}',
      f'--workdir={workdir}',
      f'--config.data.data_dir={tfds_dir}',
      '--config.data.train_split=train[:8]',
      '--config.data.eval_split=validation[:8]',
      '--config.batch_size=8',
      '--config.eval_batch_size=8',
      f'--config.num_train_steps={STEPS}',
      f'--config.log_every_steps={STEPS}',
      f'--config.checkpoint.every_steps={STEPS}',
      '--config.anytime.eval_taus=()',  # one run, not the demo's comparison
      *overrides,
  ]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_test_flags.with_devices(devices))
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _digests(workdir) -> dict:
  """Every file under `workdir` but the compilation cache: path -> sha256 of its bytes."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if d != 'xla_cache']
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _exits(eval_dir) -> list:
  with open(os.path.join(eval_dir, 'anytime.json')) as f:
    runs = json.load(f)['runs']
  assert len(runs) == 1
  return [{k: e[k] for k in ('exit', 'miou', 'fraction', 'gflops')} for e in runs[0]['exits']]


@pytest.mark.slow  # a 2-step training run (~80 s) and four evaluations (~35 s each sparse, compile included)
def test_sparse_eval_only_through_main(tmp_path, tfds_dir):
  workdir = tmp_path / 'run'
  trained = _main(workdir, tfds_dir)
  assert trained.returncode == 0, trained.stderr[-3000:]
  eval_dir = workdir / 'eval' / f'step{STEPS}-tau{TAU:g}'

  sparse = _main(
      workdir, tfds_dir, '--config.eval_only=True', f'--config.model.tau={TAU}', '--config.compute.masked_conv=sparse'
  )
  assert sparse.returncode == 0, sparse.stderr[-3000:]
  assert (eval_dir / 'results.json').is_file() and (eval_dir / 'anytime.png').is_file()
  got = _exits(eval_dir)
  fractions = [e['fraction'] for e in got]
  assert fractions[0] == 1 and 0 < min(fractions[1:]) < 1, fractions  # the masks are mixed

  eight = _main(
      workdir,
      tfds_dir,
      '--config.eval_only=True',
      f'--config.model.tau={TAU}',
      '--config.compute.masked_conv=sparse',
      devices=8,
  )
  assert eight.returncode == 0, eight.stderr[-3000:]
  sharded = _exits(eval_dir)
  dense = _main(
      workdir, tfds_dir, '--config.eval_only=True', f'--config.model.tau={TAU}', '--config.compute.masked_conv=dense'
  )
  assert dense.returncode == 0, dense.stderr[-3000:]
  want = _exits(eval_dir)
  for g in (got, sharded):  # the same pixels computed, the same cost, the same predictions' mIoU
    assert [e['fraction'] for e in g] == [e['fraction'] for e in want]
    assert [e['miou'] for e in g] == pytest.approx([e['miou'] for e in want], abs=1e-9)
    assert [e['gflops'] for e in g] == pytest.approx([e['gflops'] for e in want], rel=1e-6)

  saved = _digests(workdir)
  sparse_with = lambda above: ['--config.compute.masked_conv=sparse', f'--config.compute.masked_dense_above={above}']
  bad = [
      (['--config.compute.masked_conv=bogus'], "compute.masked_conv must be one of ('dense', 'sparse'), got 'bogus'"),
      (sparse_with('(0.5, 0.5)'), 'compute.masked_dense_above must be 3 kept fractions'),
      (sparse_with('(0.5, 0.5, 2.0)'), 'compute.masked_dense_above must be 3 kept fractions'),
      (['--config.compute_dtype=float16'], 'compute_dtype must be one of'),
      (['--config.model.tau=nan'], "bad value for config key 'model.tau'"),
      (['--config.model.tau=(0.9, 0.9, 0.9)'], "bad value for config key 'model.tau'"),
  ]
  for overrides, message in bad:
    proc = _main(workdir, tfds_dir, '--config.eval_only=True', *overrides)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and message in err[0], (overrides, proc.stderr[-2000:])
  proc = _main(workdir, tfds_dir, '--config.eval_only=True', '--config.eval_batch_size=4', devices=8)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: eval_batch_size 4 (a global batch) is not divisible by the 8 devices'
  ]
  assert _digests(workdir) == saved


@pytest.mark.parametrize(
    'overrides, message',
    [
        (['--config.compute.masked_conv=bogus'], "compute.masked_conv must be one of ('dense', 'sparse'), got 'bogus'"),
        (['--config.compute.masked_conv=bogus', '--config.eval_only=True'], 'compute.masked_conv must be one of'),
        (['--config.compute.masked_dense_above=(0.5, 0.5)'], 'compute.masked_dense_above must be 3 kept fractions'),
        (['--config.compute.masked_dense_above=(0.5, 0.5, -0.1)', '--config.eval_only=True'], 'masked_dense_above'),
        (['--config.compute_dtype=float16'], 'compute_dtype must be one of'),
        (['--config.compute.dwconv=shifted'], "compute.dwconv='shifted': the anytime line has no use for it"),
    ],
)
def test_bad_compute_policy_stops_before_any_phase(tmp_path, capsys, overrides, message):
  """A bad `config.compute` / `compute_dtype` is checked with the other options (anytime_jax.job.validate): it was
  found only when a phase built its model, after the demo job had announced and entered the phase, and an eval-only
  run said 'no checkpoint' instead."""
  from anytime_jax import main  # pylint: disable=import-outside-toplevel
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / 'run'
  code = cli.run_main(
      main._run,  # pylint: disable=protected-access
      [f'--config={DIGITS}', f'--workdir={workdir}', *overrides],
      prog='anytime_jax.main',
      config_dir=main.CONFIG_DIR,
  )
  out, err = capsys.readouterr()
  assert code == 2 and message in err and '\n' not in err.strip(), err
  assert 'phase' not in out and not workdir.exists(), out
