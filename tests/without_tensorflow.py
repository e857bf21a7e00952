"""Runs Python as if TensorFlow were not installed: `python tests/without_tensorflow.py -m MODULE ARGS...`,
`... -c CODE ARGS...` or `... SCRIPT ARGS...`.

The base install has no TensorFlow (setup.cfg: it is the `tf` extra), but the test env has it; this makes a run of
the test env stand in for the base install. `import tensorflow` (and any tensorflow.*) raises ModuleNotFoundError,
and `importlib.util.find_spec('tensorflow')` is None, which is what TFDS/etils check before importing it lazily
(a blocker that only raised would make that check raise too, unlike a real absence).
"""

import importlib.abc
import importlib.util
import os
import runpy
import sys

BLOCKED = 'tensorflow'


def _blocked(name: str) -> bool:
  return name == BLOCKED or name.startswith(BLOCKED + '.')


class _Blocker(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname, path=None, target=None):
    if _blocked(fullname):
      raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
    return None


def block() -> None:
  """Makes TensorFlow unimportable in this process (before anything imports it)."""
  if any(_blocked(name) for name in sys.modules):
    raise RuntimeError('tensorflow is already imported')
  sys.meta_path.insert(0, _Blocker())
  find_spec = importlib.util.find_spec

  def find_spec_without_tensorflow(name, package=None):
    if name == BLOCKED:
      return None
    return find_spec(name, package)

  importlib.util.find_spec = find_spec_without_tensorflow


def main(argv: list[str]) -> None:
  """Like `python ARGV` with TensorFlow blocked; sys.path[0] as python would set it (not this file's folder)."""
  block()
  if argv[:1] == ['-m']:
    sys.argv, sys.path[0] = argv[1:], os.getcwd()
    runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
  elif argv[:1] == ['-c']:
    sys.argv, sys.path[0] = ['-c', *argv[2:]], ''
    exec(compile(argv[1], '<string>', 'exec'), {'__name__': '__main__'})  # pylint: disable=exec-used
  else:
    sys.argv, sys.path[0] = argv, os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name='__main__')


if __name__ == '__main__':
  main(sys.argv[1:])
