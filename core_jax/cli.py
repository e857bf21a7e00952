"""Command line shared by every line's `main`: `--config=FILE --workdir=DIR [--config.a.b=v ...]`.

We parse overrides ourselves instead of through absl's `config_flags`, because an unknown key there ends in
a multi-line traceback; here it is one line naming the key, and every override is type-checked against the
field it replaces.

`run_main(run_fn, prog=..., config_dir=...)` is the whole body of a line's `main`: `--help` lists the config
files of `config_dir` (first docstring line of each), `--config=FILE --help` the keys and values of one config;
a config file that does not import is one line naming the file and line; bad input exits 2.
"""

import argparse
import ast
import importlib.util
import inspect
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence

import ml_collections

from core_jax import config as config_lib
from core_jax import host_memory, run_log
from core_jax.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the lines' small tools (the zoos, the roadmap): a bad argument is one line, `error: ...` and
  exit status 2, instead of argparse's usage line above its error."""

  def error(self, message):
    print(f'error: {" ".join(message.split())} ({self.prog} --help for usage)', file=sys.stderr)
    self.exit(2)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Imports a config file and calls its `get_config()`; `FILE:arg` passes `arg` to it.

  A file that does not parse, raises while importing or raises in get_config() is a UserError naming the file,
  the line and the error (bad input, like an unknown key), not a traceback."""
  path, _, arg = path.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'config file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  if spec is None or spec.loader is None:  # README.md: importlib has no loader for it (was a traceback)
    raise UserError(f'config file {path} is not a Python file: name a .py config (--help lists them)')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's file)
    raise _config_error(path, e) from None
  if not hasattr(module, 'get_config'):
    raise UserError(f'config file {path} has no get_config()')
  if arg and not _takes_an_argument(module.get_config):  # was a TypeError 'via core_jax/cli.py'
    raise UserError(f'config file {path} takes no argument; drop the :{arg} after it')
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise _config_error(path, e, calling=f'get_config({arg!r})' if arg else 'get_config()') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f'config file {path}: get_config() returned a {type(config).__name__}, not a ConfigDict')
  return config


def _takes_an_argument(get_config) -> bool:
  try:
    parameters = inspect.signature(get_config).parameters.values()
  except (TypeError, ValueError):
    return True  # not introspectable: let the call say
  return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)


def _config_error(path: str, error: Exception, calling: str = '') -> UserError:
  """One line: the file (or the one it imports) and line where `error` arose, and the error itself."""
  where, lineno = path, None
  if isinstance(error, SyntaxError) and error.filename:
    where, lineno = error.filename, error.lineno
    message = f'SyntaxError: {error.msg}'
  else:
    frames = traceback.extract_tb(error.__traceback__)
    # the deepest frame in the config's own folder: the file itself or a sibling config it imports
    folder = os.path.dirname(os.path.realpath(path))
    own = [f for f in frames if os.path.dirname(os.path.realpath(f.filename)) == folder]
    frame = own[-1] if own else (frames[-1] if frames else None)
    if frame is not None:
      where, lineno = frame.filename, frame.lineno
    text = ' '.join(str(error).split())
    message = f'{type(error).__name__}: {text}' if text else type(error).__name__
  place = f'{where}, line {lineno}' if lineno else where
  if os.path.realpath(where) != os.path.realpath(path):
    place = f'{path} (via {place})'
  during = f' in {calling}' if calling else ''
  return UserError(f'config file {place}{during}: {message}')


def _parse_value(text: str, current):
  """Turns override text into a value of the same kind as the field it replaces."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected a bool, got {text!r}')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text  # a None field (e.g. an optional path) takes a bare string
    if isinstance(current, float) and text.strip().lstrip('+-').lower() in ('nan', 'inf', 'infinity'):
      raise ValueError(f'expected a finite float, got {text!r}') from None
    raise ValueError(f'cannot parse {text!r} as {type(current).__name__}') from None
  if isinstance(value, bool) and current is not None and not isinstance(current, bool):
    # bool is an int to Python: `--config.batch_size=True` was a batch of 1
    raise ValueError(f'expected {type(current).__name__}, got bool {text!r}')
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, float) and isinstance(value, float) and not math.isfinite(value):  # 1e999
    raise ValueError(f'expected a finite float, got {text!r}')
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and not isinstance(value, tuple):
    value = (value,)
  if current is not None and not isinstance(value, type(current)):
    raise ValueError(f'expected {type(current).__name__}, got {type(value).__name__} {text!r}')
  return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  node = config
  *parents, leaf = dotted.split('.')
  walked = []
  for name in parents:
    walked.append(name)
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise UserError(f'unknown config key {".".join(walked)!r} (in --config.{dotted})')
    node = node[name]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise UserError(f'unknown config key {dotted!r}')
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise UserError(f'config key {dotted!r} is a group; set one of its fields: {", ".join(sorted(current.keys()))}')
  try:
    value = _parse_value(text, current)
    with node.unlocked():
      node[leaf] = value
  except (ValueError, TypeError) as e:
    raise UserError(f'bad value for config key {dotted!r}: {e}') from None


def parse_args(argv: Sequence[str], prog: str = '<line>.main'):
  """Returns (config, workdir) from `--config=`, `--workdir=` and `--config.x=y` arguments."""
  usage = _usage(prog).splitlines()[0] + '  (--help for more)'
  config_path, workdir, overrides = None, None, []
  for arg in argv:
    if arg in ('--config', '--workdir'):  # `--config FILE`: the value is a separate argument
      raise UserError(f'{arg} takes its value after an =: {arg}={"FILE" if arg == "--config" else "DIR"}; {usage}')
    if not arg.startswith('--') or '=' not in arg:
      raise UserError(f'unexpected argument {arg!r}; {usage}')
    key, _, value = arg[2:].partition('=')
    if key in ('config', 'workdir') and (config_path if key == 'config' else workdir) is not None:
      # which one would run? a script that appends its own --workdir must not silently win or lose
      raise UserError(f'--{key} is given twice ({config_path if key == "config" else workdir!r} and {value!r})')
    if key == 'config':
      config_path = value
    elif key == 'workdir':
      workdir = value
    elif key.startswith('config.'):
      overrides.append((key[len('config.') :], value))
    else:
      raise UserError(f'unknown flag --{key}; {usage}')
  if config_path is None or workdir is None:
    raise UserError(f'--config and --workdir are required; {usage}')
  if not workdir.strip():
    raise UserError(f"--workdir is empty: name the run's folder; {usage}")
  config = load_config_file(config_path)
  for dotted, value in overrides:
    apply_override(config, dotted, value)
  config.lock()
  return config, workdir


def _quiet_libraries():
  """TF/TFDS/absl chatter (progress bars, 'no dataset_info.json') would bury our own progress lines."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  absl_logging.set_verbosity(absl_logging.ERROR)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  tfds.disable_progress_bar()


def _first_doc_line(path: str) -> str:
  """The first line of a file's module docstring, read without importing it."""
  try:
    with open(path) as f:
      doc = ast.get_docstring(ast.parse(f.read(), filename=path))
  except (OSError, SyntaxError, ValueError):
    return '(cannot read its docstring)'
  return doc.strip().splitlines()[0] if doc and doc.strip() else ''


def _display_path(path: str) -> str:
  rel = os.path.relpath(path)
  return rel if not rel.startswith('..') else path


def _usage(prog: str) -> str:
  return (
      f'usage: python -m {prog} --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE ...]\n'
      f"       python -m {prog} --config=FILE[:ARG] [--config.KEY=VALUE ...] --help   (the config's keys)"
  )


def help_text(prog: str, config_dir: str | None) -> str:
  """Usage and the line's config files, each with the first line of its docstring."""
  lines = [_usage(prog), '']
  if config_dir is None:
    return '\n'.join(lines[:1])
  files = (
      sorted(f for f in os.listdir(config_dir) if f.endswith('.py') and not f.startswith('_'))
      if os.path.isdir(config_dir)
      else []
  )
  if not files:
    lines.append(f'no config files in {_display_path(config_dir)}')
    return '\n'.join(lines)
  lines.append(f'config files ({_display_path(config_dir)}):')
  width = max(len(f) for f in files)
  for f in files:
    lines.append(f'  {f:<{width}}  {_first_doc_line(os.path.join(config_dir, f))}'.rstrip())
  lines.append('')
  lines.append('--config=FILE --help lists the keys of FILE and their values.')
  return '\n'.join(lines)


def config_help_text(config: ml_collections.ConfigDict, path: str) -> str:
  """Every key of `config` (dotted, in the config's order) with its value: what `--config.KEY=` can set."""
  rows = []

  def walk(node, prefix):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, name + '.')
      else:
        rows.append((name, repr(value)))

  walk(config, '')
  doc = _first_doc_line(path.partition(':')[0])
  width = max((len(k) for k, _ in rows), default=0)
  head = [f'{path}: {doc}' if doc else path, 'keys (set any with --config.KEY=VALUE):']
  return '\n'.join(head + [f'  {k:<{width}} = {v}' for k, v in rows])


def _help(argv: Sequence[str], prog: str, config_dir: str | None) -> str:
  """`--help` alone: usage and config files; with `--config=FILE` (and overrides): that config's keys."""
  rest = [a for a in argv if a not in ('--help', '-h')]
  config_path = next((a.partition('=')[2] for a in rest if a.startswith('--config=')), None)
  if config_path is None:
    return help_text(prog, config_dir)
  config = load_config_file(config_path)
  for arg in rest:
    key, _, value = arg[2:].partition('=') if arg.startswith('--') else ('', '', '')
    if key.startswith('config.'):
      apply_override(config, key[len('config.') :], value)
  return config_help_text(config, config_path)


def run_main(run_fn, argv=None, *, prog: str = '<line>.main', config_dir: str | None = None) -> int:
  """Entry point body for `<line>.main`: bad input ends as one line on stderr and exit status 2.

  `--help` / `-h` prints the usage and the config files in `config_dir` (each with its docstring's first
  line); with `--config=FILE` it lists that config's keys and values. Both exit 0 without training."""
  own_process = argv is None  # the process's command line, not an in-process caller such as a test
  argv = sys.argv[1:] if argv is None else argv
  if '--help' in argv or '-h' in argv:
    try:
      print(_help(argv, prog, config_dir), flush=True)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    except BrokenPipeError:  # `--help | head`: the reader left; not an error
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  host_memory.retain_freed_memory()  # first: before any thread pool exists (see host_memory)
  _quiet_libraries()
  wall_start, cpu_start = time.monotonic(), time.process_time()
  log = None
  try:
    config, workdir = parse_args(argv, prog=prog)
    from core_jax import optim  # pylint: disable=import-outside-toplevel  (imports jax: after retain_freed_memory)

    optim.check_config(config)  # once, before the line's job builds or writes anything
    config_lib.check_run_options(config)
    log = run_log.capture(workdir)  # library noise (orbax, TensorStore) to WORKDIR/log.txt, not stderr
    run_fn(config, workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except  (only running out of memory is ours to word; else re-raised)
    reason = out_of_memory(e)
    if reason is None:
      raise
    if log is not None:
      log.write('out of memory', traceback.format_exc())
    print(
        f'error: out of memory ({reason}); the steps already saved are kept: rerun with a smaller batch_size or '
        'eval_batch_size (or on a larger device)',
        file=sys.stderr,
    )
    return 1
  except KeyboardInterrupt:  # Ctrl-C before training began, or twice: the checkpoints saved are kept
    print(
        'error: interrupted (Ctrl-C); the steps already saved are kept: rerun the same command to resume',
        file=sys.stderr,
    )
    return 130
  finally:
    if log is not None:  # the process's own command line keeps the hooks to its exit (orbax's shutdown noise)
      log.flush() if own_process else log.release()
  if _is_main_process():
    print(done_line(time.monotonic() - wall_start, time.process_time() - cpu_start), flush=True)
  return 0


def out_of_memory(error: BaseException) -> str | None:
  """What ran out, in a few words, when `error` or one it came from is an allocation failure (XLA's
  RESOURCE_EXHAUSTED on any backend, Python's MemoryError), else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, MemoryError):
      return 'host memory'
    text = str(error)
    if 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text:
      lines = [line.strip() for line in text.splitlines() if 'memory' in line.lower()]
      line = (lines or [text.strip()])[0]
      return line if len(line) <= 200 else line[:197] + '...'
    error = error.__cause__ or error.__context__
  return None


def _is_main_process() -> bool:
  jax = sys.modules.get('jax')  # not imported here: --help and bad flags stay fast, and a run has imported it
  return jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0


def duration_text(seconds: float) -> str:
  """'42 s', '2 min 13 s', '1 h 02 min'."""
  s = int(round(seconds))
  if s < 60:
    return f'{s} s'
  if s < 3600:
    return f'{s // 60} min {s % 60} s'
  return f'{s // 3600} h {s % 3600 // 60:02d} min'


def done_line(wall_s: float, cpu_s: float) -> str:
  """The last line of every job: its wall time, and the CPU time of all its threads, which says how much of the
  wall time the machine's other load took (on an idle machine CPU time is about wall time x busy cores)."""
  return f'done in {duration_text(wall_s)} ({duration_text(cpu_s)} CPU time)'
