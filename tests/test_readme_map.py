"""README, "Where the code is": a newcomer finds each command's code and the key steps in one hop."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Where the code is\n", 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]


def _places(cell: str) -> tuple[str, str]:
    """`path`: `function` → (path, function)."""
    match = re.fullmatch(r"`([\w/.]+\.py)`: `([\w.]+)`", cell)
    assert match, f"not a `file`: `function` cell: {cell}"
    return match.group(1), match.group(2)


def _defines(path: str, name: str) -> bool:
    """``path`` defines ``name`` (a function or class, or ``Class.method``) at its top level."""
    tree = ast.parse((ROOT / path).read_text())
    head, _, method = name.partition(".")
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == head:
            if not method:
                return True
            return any(isinstance(n, ast.FunctionDef) and n.name == method for n in node.body)
    return False


def test_every_command_has_a_row_naming_its_file_and_the_function_it_calls():
    from pytc.cli import app

    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    rows = {row[0]: row for row in _rows(_section()) if row[0].startswith("`pytc ")}
    assert {name.strip("`").removeprefix("pytc ") for name in rows} == commands
    for name, (_, command_file, target) in rows.items():
        command_file = command_file.strip("`")
        path, function = _places(target)
        assert _defines(path, function), f"{path} has no {function}"
        assert re.search(rf"\b{function}\b", (ROOT / command_file).read_text()), f"{command_file} never calls {function}"


def test_every_step_named_is_where_the_readme_says():
    steps = {row[0]: _places(row[1]) for row in _rows(_section()) if not row[0].startswith("`pytc ")
             and row[0] not in ("command", "what happens")}
    assert len(steps) >= 10
    for what, (path, function) in steps.items():
        assert _defines(path, function), f"{what}: {path} has no {function}"


def test_a_newcomer_answers_the_four_questions_in_one_hop():
    # (a) blends windows, (b) writes a Zarr chunk atomically, (c) floods the bc-watershed, (d) picks
    # the precision on a CPU: each answered by one row, and the code there does it.
    steps = {row[0]: _places(row[1]) for row in _rows(_section()) if len(row) == 2 and row[0] != "what happens"}

    def answer(*words: str) -> tuple[str, str]:
        found = [place for what, place in steps.items() if all(w in what for w in words)]
        assert len(found) == 1, (words, found)
        return found[0]

    assert answer("blended") == ("pytc/inference/predictor.py", "BlockPredictor.predict")
    assert answer("Zarr chunk", "atomically") == ("pytc/io/zarr_store.py", "ZarrWriter.write")
    assert answer("bc-watershed", "flooded") == ("pytc/decode/bc_watershed.py", "flood_bc_watershed")
    assert answer("precision", "CPU") == ("pytc/runtime.py", "resolve_precision")


def test_the_named_functions_do_what_the_rows_say():
    import numpy as np
    import torch

    from pytc.config import load_config
    from pytc.inference import BlockPredictor
    from pytc.runtime import resolve_precision

    # resolve_precision: 16-mixed on a CPU runs in full precision.
    assert resolve_precision("16-mixed", torch.device("cpu")) == "32"
    # BlockPredictor.predict: a constant network blends to that constant (weights sum to one).
    cfg = load_config(None, ["data.patch_size=[4,8,8]", "inference.block_size=[4,8,8]", "inference.overlap=0.5",
                             "system.num_gpus=0"])  # fmt: skip

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros((x.shape[0], 1, *x.shape[2:]))  # logit 0: probability 0.5

    image = np.zeros((6, 12, 10), np.uint8)
    predictor = BlockPredictor(Constant(), image, cfg, torch.device("cpu"), stats=None)
    from pytc.inference.carries import Carries

    blocks = range(len(predictor.plan))
    carries = Carries(blocks, predictor.carry_budget)
    for i in blocks:
        pred = predictor.predict(i, predictor.read_block(i), carries)
        np.testing.assert_allclose(pred, 0.5, atol=1e-6)
    carries.close()
