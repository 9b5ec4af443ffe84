"""The library's shape: no import circle, modules of readable size, no repeated code.

Read from the source files (``ast``), imports inside functions included: a lazy import is still
a dependency.
"""

import ast
import collections
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'lclmt_jax')
MAX_LINES = 500
REPEATED_LINES = 6  # a run of this many identical statements in two places is duplicated code


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for directory, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, '.')
                modules[dotted.removesuffix('.__init__')] = path
    return modules


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('lclmt_jax'):
            for alias in node.names:
                child = f'{node.module}.{alias.name}'
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    return found & set(modules)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


@pytest.mark.parametrize('name', sorted(_modules()))
def test_every_module_stays_readable(name):
    path = _modules()[name]
    assert sum(1 for _ in open(path)) <= MAX_LINES


def _statements(path: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that carry code: no blanks, comments, imports
    (a parenthesised one's names too), lone brackets or docstring quotes."""
    lines, in_import = [], False
    for number, line in enumerate(open(path), 1):
        text = line.strip()
        if in_import:  # the names of a parenthesised import
            in_import = text != ')'
            continue
        if text.startswith('from ') and text.endswith('('):
            in_import = True
            continue
        if text and not text.startswith(('#', 'import ', 'from ')) and text not in (
                ')', ']', '}', '"""', "'''", '):', ') -> None:'):
            lines.append((number, text))
    return lines


def test_no_run_of_statements_is_written_twice():
    places = collections.defaultdict(list)
    for path in _modules().values():
        lines = _statements(path)
        for start in range(len(lines) - REPEATED_LINES + 1):
            run = tuple(text for _, text in lines[start:start + REPEATED_LINES])
            places[run].append(f'{os.path.relpath(path, PACKAGE)}:{lines[start][0]}')
    repeated = {run[0]: where for run, where in places.items() if len(where) > 1}
    assert repeated == {}
