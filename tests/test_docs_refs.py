"""docs/reliability.md names the test behind each guarantee: every test it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_reliability_md_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    defined = set()
    for file in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", file.read_text(), flags=re.M))
    named = set(re.findall(r"(?<![\w/.])(test_\w+)(?=[`\[(]|::| \()", doc))
    named = {n for n in named if not (ROOT / "tests" / f"{n}.py").exists()}  # module names are not tests
    assert len(named) > 60  # the doc's tables, not an accident of the pattern
    assert sorted(named - defined) == []


def _update_architecture():
    from conftest import docs_script

    return docs_script("update_architecture")


def test_architecture_md_maps_every_module_of_the_tree():
    update = _update_architecture()
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert update.render(text) == text, "docs/architecture.md is stale: run `make docs`"
    rows = set(re.findall(r"^\| `([\w.]+)` \(\[", text, flags=re.M))
    assert rows == set(update.modules()) and "pytc.inference.predictor" in rows and "pytc.commands.infer" in rows


def test_a_new_module_makes_the_architecture_map_stale(tmp_path, monkeypatch):
    update = _update_architecture()
    text = (ROOT / "docs" / "architecture.md").read_text()
    extra = tmp_path / "pytc"
    extra.mkdir()
    (extra / "newcomer.py").write_text('"""A module nobody mapped yet."""\n\n\ndef hello():\n    pass\n')
    monkeypatch.setitem(update.SOURCES, "pytc.extra", extra)
    assert "| `pytc.extra.newcomer` ([" in update.render(text) and update.render(text) != text


def test_the_security_grep_finds_only_what_reliability_md_says():
    # docs/reliability.md, "How this was checked": one torch.load (weights_only) and one np.load (no pickle).
    pattern = re.compile(r"yaml\.(load|unsafe_load|full_load)|[^.\w]eval\(|[^.\w]exec\(|pickle\.loads?\(|torch\.load\("
                         r"|os\.system|subprocess|shell=True|__import__|import_module|allow_pickle")
    code = [line.strip() for folder in ("pytc", "commands") for path in sorted((ROOT / folder).rglob("*.py"))
            for line in path.read_text().splitlines() if pattern.search(line) and "``" not in line]  # not docstrings
    assert code == ['state = torch.load(file, map_location="cpu", weights_only=True)',
                    "array = np.load(path, allow_pickle=False)"]
    assert "`pytc/engine/checkpoint/loading.py`" in (ROOT / "docs" / "reliability.md").read_text()
