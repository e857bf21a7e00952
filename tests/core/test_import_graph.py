"""No module of the packages imports one that imports it back, directly or around a longer circle.

The graph is read statically (ast) from every import statement of every module, including deferred ones inside
functions, so a circle hidden by a deferred import still counts. An edge goes to the module named (for
`from pkg import name`, to `pkg.name` when that is a module, else to `pkg`); a package's `__init__` reached only
as the parent of a module is no edge, as Python runs it before either side. The body of a module's
`if __name__ == '__main__':` block is no edge either: it runs only in a script started with `python -m`, a module
named `__main__` that nothing imports back (e.g. `python -m convnext_jax.convert` runs `convnext_jax.export`'s CLI,
and export imports the module `convnext_jax.convert`, a second, ordinary instance).
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ('core_jax', 'convnext_jax', 'pruning_jax', 'anytime_jax', 'benchmarks')


def module_files(root: str, packages=PACKAGES) -> dict[str, str]:
  """{dotted module name: file} of every .py file under the packages (a package is its `__init__`)."""
  found = {}
  for package in packages:
    for folder, dirs, files in os.walk(os.path.join(root, package)):
      dirs[:] = sorted(d for d in dirs if d != '__pycache__' and not d.startswith('.'))
      rel = os.path.relpath(folder, root).split(os.sep)
      for name in files:
        if name.endswith('.py'):
          parts = rel if name == '__init__.py' else rel + [name[:-3]]
          found['.'.join(parts)] = os.path.join(folder, name)
  return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ''
  base = module.split('.') if is_package else module.split('.')[:-1]
  base = base[: len(base) - (node.level - 1)]
  return '.'.join(base + ([node.module] if node.module else []))


def _is_main_block(node: ast.stmt) -> bool:
  """`if __name__ == '__main__':` at module level."""
  test = node.test if isinstance(node, ast.If) else None
  return (
      isinstance(test, ast.Compare)
      and isinstance(test.left, ast.Name)
      and test.left.id == '__name__'
      and len(test.comparators) == 1
      and isinstance(test.comparators[0], ast.Constant)
      and test.comparators[0].value == '__main__'
  )


def import_graph(root: str, packages=PACKAGES) -> dict[str, set[str]]:
  """{module: the modules of the packages it imports anywhere in its body}."""
  files = module_files(root, packages)
  graph = {}
  for module, path in files.items():
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    targets = set()
    script_only = {id(n) for block in tree.body if _is_main_block(block) for n in ast.walk(block)}
    for node in (n for n in ast.walk(tree) if id(n) not in script_only):
      if isinstance(node, ast.Import):
        targets |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = _absolute(module, is_package, node)
        for alias in node.names:
          sub = f'{base}.{alias.name}'
          targets.add(sub if sub in files else base)
    graph[module] = {t for t in targets if t in files and t != module}
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One circle [a, b, ..., a] through each strongly connected component of more than one module (Tarjan)."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []

  def connect(v):  # recursive Tarjan: the graphs here are a few hundred modules deep at most
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      connect(v)
  cycles = []
  for component in components:
    start = min(component)
    # breadth-first from start inside the component back to start: the shortest circle through it
    previous, frontier, end = {start: None}, [start], None
    while frontier and end is None:
      following = []
      for v in frontier:
        for w in sorted(graph[v] & component):
          if w == start:
            end = v
            break
          if w not in previous:
            previous[w] = v
            following.append(w)
        if end is not None:
          break
      frontier = following
    path = []
    while end is not None:  # end -> ... -> start through `previous`
      path.append(end)
      end = previous[end]
    cycles.append(path[::-1] + [start])
  return cycles


def test_no_import_cycles():
  graph = import_graph(REPO)
  assert len(graph) > 50 and 'core_jax.train' in graph and 'core_jax.data.ops' in graph['core_jax.train']
  cycles = find_cycles(graph)
  assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)


def test_the_walk_sees_deferred_and_relative_imports(tmp_path):
  """The checker itself: a circle closed by an import inside a function, and one through a relative import."""
  pkg = tmp_path / 'pkg'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from pkg import b\n')
  (pkg / 'b.py').write_text('def f():\n  import pkg.c  # deferred\n')
  (pkg / 'c.py').write_text('from pkg.a import x\n')
  (pkg / 'sub' / 'd.py').write_text('from .. import a\nfrom . import e\n')
  (pkg / 'sub' / 'e.py').write_text('from ..sub.d import y\n')
  (pkg / 'leaf.py').write_text('import os\nfrom pkg import a\n')
  # a script block is no edge: `python -m pkg.cli` runs a module named __main__ that pkg.tool cannot import back
  (pkg / 'cli.py').write_text("X = 1\nif __name__ == '__main__':\n  from pkg.tool import main\n")
  (pkg / 'tool.py').write_text('from pkg.cli import X\n')
  graph = import_graph(str(tmp_path), ('pkg',))
  assert graph['pkg.b'] == {'pkg.c'} and graph['pkg.sub.d'] == {'pkg.a', 'pkg.sub.e'}
  assert graph['pkg.sub.e'] == {'pkg.sub.d'} and graph['pkg.leaf'] == {'pkg.a'}
  assert graph['pkg.cli'] == set() and graph['pkg.tool'] == {'pkg.cli'}
  cycles = {' -> '.join(c) for c in find_cycles(graph)}
  assert cycles == {'pkg.a -> pkg.b -> pkg.c -> pkg.a', 'pkg.sub.d -> pkg.sub.e -> pkg.sub.d'}, cycles


@pytest.mark.parametrize('package', PACKAGES)
def test_every_package_is_walked(package):
  assert any(m == package or m.startswith(package + '.') for m in module_files(REPO))
