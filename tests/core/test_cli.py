"""Config loading and `--config.x=y` overrides: typed, and unknown keys fail in one line."""

import os

import pytest

from core_jax import cli
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, 'configs', 'convnext', 'digits.py')


def test_overrides_are_typed():
  config, workdir = cli.parse_args(
      [
          f'--config={DIGITS}',
          '--workdir=/tmp/x',
          '--config.num_epochs=2',
          '--config.optimizer.lr=1',
          '--config.checkpoint.asynchronous=false',
          "--config.data.train_transforms=('flip_lr',)",
          '--config.data.data_dir=/d',
      ]
  )
  assert workdir == '/tmp/x'
  assert config.num_epochs == 2 and config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
  assert config.checkpoint.asynchronous is False
  assert config.data.train_transforms == ('flip_lr',)
  assert config.data.data_dir == '/d'


@pytest.mark.parametrize(
    'args,message',
    [
        (['--config.nope=1'], "unknown config key 'nope'"),
        (['--config.optimizer.lrr=1'], "unknown config key 'optimizer.lrr'"),
        (['--config.nothere.lr=1'], "unknown config key 'nothere'"),
        (['--config.batch_size=big'], "bad value for config key 'batch_size'"),
        (['--config.optimizer=1'], 'is a group'),
        (['--frobnicate=1'], 'unknown flag --frobnicate'),
    ],
)
def test_bad_overrides_name_the_problem(args, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(')):
    cli.parse_args([f'--config={DIGITS}', '--workdir=/tmp/x', *args])


def test_missing_config_file_and_flags():
  with pytest.raises(UserError, match='config file not found'):
    cli.parse_args(['--config=/nonexistent.py', '--workdir=/tmp/x'])
  with pytest.raises(UserError, match='required'):
    cli.parse_args([f'--config={DIGITS}'])
  for empty in ('', ' '):  # was a "fresh start in :" line, then a late error once the model had loaded
    with pytest.raises(UserError, match='^--workdir is empty'):
      cli.parse_args([f'--config={DIGITS}', f'--workdir={empty}'])


def test_run_main_prints_one_line_and_exits_2(capsys):
  assert cli.run_main(lambda c, w: None, [f'--config={DIGITS}', '--workdir=/tmp/x', '--config.zzz=1']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: unknown config key 'zzz'"]


def test_run_main_ends_a_job_with_its_wall_and_cpu_time(capsys):
  ran = []
  assert cli.run_main(lambda c, w: ran.append(w), [f'--config={DIGITS}', '--workdir=/tmp/x']) == 0
  assert ran == ['/tmp/x']
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith('done in ') and out[0].endswith(' CPU time)'), out


@pytest.mark.parametrize(
    'seconds,text', [(0.4, '0 s'), (42.6, '43 s'), (133, '2 min 13 s'), (3599.6, '1 h 00 min'), (7385, '2 h 03 min')]
)
def test_duration_text(seconds, text):
  assert cli.duration_text(seconds) == text
  assert cli.done_line(seconds, 2 * seconds) == f'done in {text} ({cli.duration_text(2 * seconds)} CPU time)'


@pytest.mark.parametrize(
    'source,line,error',
    [
        ('def get_config():\n  return {\n', 2, 'SyntaxError'),
        ('import ml_collections\nx = 1\nraise RuntimeError("no GPU here")\n', 3, 'RuntimeError: no GPU here'),
        (
            'import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict({"a": 1 / 0})\n',
            4,
            'ZeroDivisionError: division by zero',
        ),
        ('import not_a_module_anywhere\n', 1, "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ],
)
def test_broken_config_file_is_one_line_naming_file_and_line(tmp_path, capsys, source, line, error):
  path = tmp_path / 'broken.py'
  path.write_text(source)
  assert cli.run_main(lambda c, w: None, [f'--config={path}', '--workdir=/tmp/x']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith(f'error: config file {path}, line {line}') and error in err[0], err[0]


def test_config_error_in_an_imported_sibling_names_both(tmp_path):
  (tmp_path / 'base.py').write_text('VALUE = 1\nraise ValueError("bad base")\n')
  (tmp_path / 'child.py').write_text(
      'import importlib.util, os\n'
      'spec = importlib.util.spec_from_file_location("b", os.path.join(os.path.dirname(__file__), "base.py"))\n'
      'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
  )
  with pytest.raises(UserError) as e:
    cli.load_config_file(str(tmp_path / 'child.py'))
  child, base = tmp_path / 'child.py', tmp_path / 'base.py'
  assert str(e.value) == f'config file {child} (via {base}, line 2): ValueError: bad base'


def _doc_line(path):
  import ast  # pylint: disable=import-outside-toplevel

  return ast.get_docstring(ast.parse(open(path).read())).strip().splitlines()[0]


def test_help_lists_the_lines_config_files(capsys):
  config_dir = os.path.dirname(DIGITS)
  assert cli.run_main(None, ['--help'], prog='convnext_jax.main', config_dir=config_dir) == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: python -m convnext_jax.main --config=FILE')
  files = sorted(f for f in os.listdir(config_dir) if f.endswith('.py'))
  assert 'digits.py' in files
  for f in files:
    line = next(l for l in out.splitlines() if l.strip().startswith(f + ' '))
    assert line.split(None, 1)[1] == _doc_line(os.path.join(config_dir, f))


def test_help_with_config_lists_its_keys_and_values(capsys):
  assert cli.run_main(None, [f'--config={DIGITS}', '--config.num_epochs=3', '-h'], config_dir=None) == 0
  rows = {}
  for line in capsys.readouterr().out.splitlines()[2:]:
    key, _, value = line.strip().partition(' = ')
    rows[key.strip()] = value
  config = cli.load_config_file(DIGITS)
  assert rows['num_epochs'] == repr(type(config.num_epochs)(3)) and rows['optimizer.lr'] == repr(config.optimizer.lr)
  assert rows['data.name'] == "'digits'" and rows['checkpoint.every_steps'] == repr(config.checkpoint.every_steps)
  assert cli.run_main(None, [f'--config={DIGITS}', '--config.nope=1', '--help']) == 2


def test_main_help_as_a_process():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  r = subprocess.run(
      [sys.executable, '-m', 'convnext_jax.main', '--help'],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, 'PYTHONPATH': REPO},
      timeout=120,
  )
  assert r.returncode == 0 and r.stderr == '', r.stderr
  assert 'digits.py' in r.stdout and 'finetune.py' in r.stdout and 'usage:' in r.stdout


@pytest.mark.parametrize(
    'arg,message',
    [
        # bool is an int to Python: this was a batch of 1, silently
        ('--config.batch_size=True', "bad value for config key 'batch_size': expected int, got bool 'True'"),
        ('--config.optimizer.lr=False', "bad value for config key 'optimizer.lr': expected float, got bool 'False'"),
        ('--config.num_epochs=nan', "bad value for config key 'num_epochs': expected a finite float, got 'nan'"),
        ('--config.optimizer.lr=-inf', "bad value for config key 'optimizer.lr': expected a finite float, got '-inf'"),
        (
            '--config.optimizer.lr=1e999',
            "bad value for config key 'optimizer.lr': expected a finite float, got '1e999'",
        ),
    ],
)
def test_a_bool_or_a_non_finite_number_for_a_number_is_one_line(arg, message):
  with pytest.raises(UserError) as e:
    cli.parse_args([f'--config={DIGITS}', '--workdir=/tmp/x', arg])
  assert str(e.value) == message
  config, _ = cli.parse_args([f'--config={DIGITS}', '--workdir=/tmp/x', '--config.checkpoint.asynchronous=True'])
  assert config.checkpoint.asynchronous is True  # a bool field still takes one


def test_running_out_of_memory_is_one_line_and_exit_1(tmp_path, capsys):
  """A batch too large for the device was a 40-line JAX traceback; now one line, the details in WORKDIR/log.txt."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def too_large(config, workdir):
    del config
    os.makedirs(workdir, exist_ok=True)
    jnp.zeros((1 << 42,), jnp.uint8).block_until_ready()  # XLA refuses the 4 TiB buffer at once, allocates nothing

  workdir = tmp_path / 'w'
  assert cli.run_main(too_large, [f'--config={DIGITS}', f'--workdir={workdir}']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: out of memory (RESOURCE_EXHAUSTED: Out of memory'), err
  assert 'smaller batch_size or eval_batch_size' in err[0]
  assert 'Traceback' in (workdir / 'log.txt').read_text()


def test_other_errors_of_a_run_are_not_reworded():
  def broken(config, workdir):
    raise RuntimeError('a bug of ours')

  with pytest.raises(RuntimeError, match='a bug of ours'):
    cli.run_main(broken, [f'--config={DIGITS}', '--workdir=/tmp/x'])
  assert cli.out_of_memory(ValueError('x')) is None
  try:
    try:
      raise MemoryError()
    except MemoryError as e:
      raise RuntimeError('while decoding') from e
  except RuntimeError as e:
    assert cli.out_of_memory(e) == 'host memory'


def test_an_argument_to_a_config_that_takes_none_is_one_line():
  """Was 'config file ... (via core_jax/cli.py, line 45) in get_config('zz'): TypeError: ... 0 positional'."""
  with pytest.raises(UserError) as e:
    cli.parse_args([f'--config={DIGITS}:zz', '--workdir=/tmp/x'])
  assert str(e.value) == f'config file {DIGITS} takes no argument; drop the :zz after it'
  cityscapes = os.path.join(REPO, 'configs', 'anytime', 'cityscapes.py')
  with pytest.raises(UserError, match=r"in get_config\('w48_adpc'\): ValueError: cityscapes variant 'w48_adpc'"):
    cli.parse_args([f'--config={cityscapes}:w48_adpc', '--workdir=/tmp/x'])


@pytest.mark.parametrize(
    'argv, message',
    [
        # importlib has no loader for a .md: was an AttributeError traceback
        (['--config=README.md', '--workdir=/tmp/x'], 'config file README.md is not a Python file: name a .py config'),
        ([f'--config={DIGITS}', '--workdir', '/tmp/x'], '--workdir takes its value after an =: --workdir=DIR; usage:'),
        (['--config', DIGITS, '--workdir=/tmp/x'], '--config takes its value after an =: --config=FILE; usage:'),
        # the last one silently won
        (
            [f'--config={DIGITS}', '--workdir=/tmp/a', '--workdir=/tmp/b'],
            "--workdir is given twice ('/tmp/a' and '/tmp/b')",
        ),
        ([f'--config={DIGITS}', f'--config={DIGITS}', '--workdir=/tmp/a'], f"--config is given twice ('{DIGITS}' and"),
    ],
)
def test_command_lines_that_are_not_one_run_are_one_line(argv, message, monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(UserError) as e:
    cli.parse_args(argv)
  assert str(e.value).startswith(message), str(e.value)
  config, workdir = cli.parse_args([f'--config={DIGITS}', '--workdir=/tmp/x', '--config.seed=1', '--config.seed=2'])
  assert (config.seed, workdir) == (2, '/tmp/x')  # a repeated override: the last one, as a script appends them


@pytest.mark.parametrize(
    'module, args, message',
    [
        # a KeyError traceback before
        ('pruning_jax.zoo', ['nonexistent_model'], 'nonexistent_model is not a named model of the zoo'),
        # a table of 0 GMACs and exit 0 before
        ('convnext_jax.roadmap', ['--size=0'], '--size must be a positive multiple of 32'),
        # argparse's usage line above its error before
        ('convnext_jax.roadmap', ['--size=abc'], "argument --size: invalid int value: 'abc'"),
        ('convnext_jax.zoo', ['--models', 'convnext_nope'], 'convnext_nope is not in the zoo'),
        ('anytime_jax.zoo', ['--bogus'], 'unrecognized arguments: --bogus'),
    ],
)
def test_the_lines_small_tools_say_a_bad_argument_in_one_line(module, args, message, capsys):
  import importlib  # pylint: disable=import-outside-toplevel

  with pytest.raises(SystemExit) as e:
    importlib.import_module(module).main(args)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(f'error: {message}'), err
  assert err.endswith(f'(python -m {module} --help for usage)\n'), err
