"""Regenerate the module map of docs/architecture.md from the tree. Run: `make docs`.

Every module of ``pytc`` (and ``commands/``, installed as ``pytc.commands``) gets one row: its
dotted name, the first sentence of its docstring and its public names (``__all__``, else its
top-level public functions and classes). tests/test_docs_refs.py fails when the file is out of date,
so a new module cannot be left off the map.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import update_readme  # noqa: E402  (docs/update_readme.py: the block renderer both share)

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SOURCES = {"pytc": ROOT / "pytc", "pytc.commands": ROOT / "commands"}  # installed names (pyproject package-dir)
MAX_NAMES = 10  # public names listed per module; the rest are counted


def modules() -> dict[str, Path]:
    """Dotted name → file, packages first within each folder, in tree order."""
    found = {}
    for prefix, folder in SOURCES.items():
        paths = sorted(folder.rglob("*.py"), key=lambda p: (p.parent.relative_to(folder).parts, p.name != "__init__.py",
                                                             p.name))  # fmt: skip
        for path in paths:
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def first_sentence(doc: str | None) -> str:
    if not doc:
        return ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    sentence = (match.group(1) if match else paragraph).rstrip(":;.")
    return sentence + "."


def public_names(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return [node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")]


def _cell(text: str) -> str:
    """reST roles and double backticks as Markdown code; pipes escaped for the table."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


def module_table() -> str:
    rows = ["| module | what it is | public names |", "|---|---|---|"]
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        names = public_names(tree)
        shown = ", ".join(f"`{n}`" for n in names[:MAX_NAMES])
        if len(names) > MAX_NAMES:
            shown += f" and {len(names) - MAX_NAMES} more"
        where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()
        rows.append(f"| `{name}` ([{where}](../{where})) | {_cell(first_sentence(ast.get_docstring(tree)))} | {shown} |")
    return "\n".join(rows) + "\n"


BLOCKS = {"modules": module_table}


def render(text: str) -> str:
    return update_readme.render(text, BLOCKS, ARCHITECTURE.name)


if __name__ == "__main__":
    ARCHITECTURE.write_text(render(ARCHITECTURE.read_text()))
    print(f"updated {ARCHITECTURE}")
