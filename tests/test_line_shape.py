"""Every research line has the same rooms (issue 18): a thin `main.py` (flags only: its one job is handing the
parsed config to the line's runner), a `report.py` (tables, JSON, plots), its models in one core_jax.registry
Registry, and the runner `main.py` hands off to (`job.py` where the line runs phases, else `train.py`)."""

import ast
import importlib
import importlib.util
import os
import pkgutil

import pytest

from core_jax.registry import Registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = ('convnext_jax', 'pruning_jax', 'anytime_jax')
RUNNERS = ('job', 'train')  # the modules a main may hand the config to
MAIN_FUNCTIONS = {'main', '_run'}  # the entry (argv -> exit code) and the hand-off after flag parsing
MAX_CODE_LINES = 30  # lines that are not the docstring, comments or blank; the mains have 11-14
MAX_FUNCTION_STATEMENTS = 3  # a hand-off is an import and a call


def _code_lines(source: str, tree: ast.Module) -> int:
  doc = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
  skip = set(range(doc.lineno, doc.end_lineno + 1)) if doc else set()
  return sum(
      1
      for i, line in enumerate(source.splitlines(), 1)
      if i not in skip and line.strip() and not line.strip().startswith('#')
  )


def main_problems(path: str, package: str) -> list[str]:
  """Why the main.py at `path` is not a thin main of `package` (empty when it is one)."""
  with open(path) as f:
    source = f.read()
  tree = ast.parse(source)
  problems = []
  if ast.get_docstring(tree) is None:
    problems.append('no docstring (the usage line)')
  if (n := _code_lines(source, tree)) > MAX_CODE_LINES:
    problems.append(f'{n} lines of code (at most {MAX_CODE_LINES})')
  runners = set()
  for node in tree.body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      if isinstance(node, ast.ImportFrom):
        names = [f'{node.module}.{a.name}' for a in node.names]
      else:
        names = [a.name for a in node.names]
      if any(n not in ('os', 'sys', 'core_jax.cli') for n in names):
        problems.append(f'imports {names} at the top (only os, sys and core_jax.cli: flags first)')
    elif isinstance(node, ast.ClassDef):
      problems.append(f'defines class {node.name}')
    elif isinstance(node, ast.FunctionDef):
      if node.name not in MAIN_FUNCTIONS:
        problems.append(f'defines {node.name}() (only {sorted(MAIN_FUNCTIONS)})')
      body = node.body[1:] if ast.get_docstring(node) is not None else node.body
      if len(body) > MAX_FUNCTION_STATEMENTS:
        problems.append(f'{node.name}() has {len(body)} statements (at most {MAX_FUNCTION_STATEMENTS})')
      for inner in ast.walk(node):
        if isinstance(inner, ast.ImportFrom) and inner.module == package:
          runners.update(a.name for a in inner.names)
    elif not isinstance(node, (ast.Expr, ast.Assign, ast.If)):
      problems.append(f'top-level {type(node).__name__} at line {node.lineno}')
  if 'cli.run_main(' not in source:
    problems.append('does not parse its flags with core_jax.cli.run_main')
  if len(runners) != 1 or not runners <= set(RUNNERS):
    problems.append(f'hands off to {sorted(runners)} (one of {RUNNERS} of {package})')
  return problems


@pytest.mark.parametrize('package', LINES)
def test_main_is_thin(package):
  assert main_problems(os.path.join(ROOT, package, 'main.py'), package) == []


@pytest.mark.parametrize('package', LINES)
def test_report_and_runner_rooms_exist(package):
  folder = os.path.join(ROOT, package)
  assert os.path.isfile(os.path.join(folder, 'report.py'))
  assert any(os.path.isfile(os.path.join(folder, f'{r}.py')) for r in RUNNERS)


@pytest.mark.parametrize('package', LINES)
def test_models_live_in_one_core_registry(package):
  """One module of the line holds `MODELS = Registry(...)` (core_jax.registry), and it is a Registry with models."""
  holders = []
  for info in pkgutil.walk_packages([os.path.join(ROOT, package)], prefix=f'{package}.'):
    spec = importlib.util.find_spec(info.name)
    with open(spec.origin) as f:
      tree = ast.parse(f.read())
    for node in tree.body:
      if (
          isinstance(node, ast.Assign)
          and [getattr(t, 'id', None) for t in node.targets] == ['MODELS']
          and isinstance(node.value, ast.Call)
          and getattr(node.value.func, 'id', None) == 'Registry'
      ):
        holders.append(info.name)
  assert len(holders) == 1, holders
  registry = importlib.import_module(holders[0]).MODELS
  assert isinstance(registry, Registry) and registry.list_models()


FAT_MAIN = '''"""python -m fat_jax.main"""
import os
import sys

from core_jax import cli
from fat_jax import job, report


def _labels(config):
  return [str(x) for x in config.labels]


def _run(config, workdir):
  from fat_jax import job

  if not os.path.isdir(workdir):
    os.makedirs(workdir)
  labels = _labels(config)
  results = job.run(config, workdir)
  print(report.table(results, labels))


if __name__ == '__main__':
  sys.exit(cli.run_main(_run, prog='fat_jax.main'))
'''


def test_a_fat_main_fails(tmp_path):
  path = tmp_path / 'main.py'
  path.write_text(FAT_MAIN + '\n'.join(f'ROW_{i} = {i}' for i in range(MAX_CODE_LINES)) + '\n')
  problems = main_problems(str(path), 'fat_jax')
  assert any('imports' in p for p in problems)
  assert any('defines _labels()' in p for p in problems)
  assert any('_run() has 5 statements' in p for p in problems)
  assert any('lines of code' in p for p in problems)
  path.write_text(FAT_MAIN.replace('cli.run_main', 'cli.parse'))
  assert any('run_main' in p for p in main_problems(str(path), 'fat_jax'))
