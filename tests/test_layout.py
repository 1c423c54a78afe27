"""The layout of the code: packages keep their private names, imports form no cycle, modules stay short,
and every package ships."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import docs_script

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
# Every module of the installed package, by dotted name: the same walk that maps docs/architecture.md.
MODULES = docs_script("update_architecture").modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _package(module: str) -> str:
    return module if module in PACKAGES else module.rpartition(".")[0]


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, top_level_only: bool):
    """(imported module, names) of each import of a pytc module; with ``top_level_only``, only those
    that run when the module is imported (not inside functions or ``if TYPE_CHECKING:``)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pytc"):
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.startswith("pytc"):
                yield target, [alias.name for alias in node.names]


def _owner_of_private(target: str, name: str | None) -> str | None:
    """The package whose private name this import reaches, or None when nothing private is reached."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:i]) or "pytc"
    if name is not None and _private(name):
        return _package(target)
    return None


def test_no_module_imports_another_packages_private_names():
    found = []
    for module in MODULES:
        here = _package(module)
        for target, names in _imports(module, top_level_only=False):
            for name in names or [None]:
                owner = _owner_of_private(target, name)
                if owner is not None and not (here == owner or here.startswith(owner + ".")):
                    found.append(f"{module} imports {target}{'.' + name if name else ''} (private to {owner})")
    assert found == [], "\n".join(found)


def test_the_checker_sees_a_private_import_across_packages():
    # The rule above on a made-up import: private to pytc.decode, seen from pytc.io.
    assert _owner_of_private("pytc.decode._blocks", "grid") == "pytc.decode"
    assert _owner_of_private("pytc.io.common", "_native") == "pytc.io"
    assert _owner_of_private("pytc.io.common", "json_attrs") is None


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, names in _imports(module, top_level_only=True):
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for dep in submodules or [target]:
                if dep in MODULES and dep != module:
                    graph[module].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_module_level_imports_form_no_cycle():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_longer_than_the_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_package_is_listed_in_pyproject():
    # Otherwise a non-editable install (pip install .) leaves the package out.
    listed = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    names = set(re.findall(r'"([\w.]+)"', listed))
    assert PACKAGES - names == set()
