"""Regenerate the generated blocks of README.md (metrics, reliability, CLI and config reference). Run: `make docs`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

# Every command whose --help goes into the README, in the order a user meets them.
COMMANDS = [
    ["demo"], ["demo", "synth"], ["train"], ["infer"], ["decode"], ["evaluate"], ["convert"], ["info"],
    ["list-archs"], ["config", "show"], ["config", "schema"],
]


def cli_reference() -> str:
    import os

    from typer.testing import CliRunner

    from pytc.cli import app

    os.environ["COLUMNS"] = "100"  # the same wrapping wherever the README is regenerated
    runner = CliRunner()
    parts = []
    for argv in COMMANDS:
        result = runner.invoke(app, [*argv, "--help"], terminal_width=100)
        if result.exit_code != 0:
            raise SystemExit(f"pytc {' '.join(argv)} --help failed:\n{result.output}")
        parts.append(f"#### `pytc {' '.join(argv)}`\n\n```text\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


def config_reference() -> str:
    from pytc.config import reference_markdown

    return reference_markdown()


def _include(name: str):
    """A block that is a copy of docs/NAME (the single source; the README shows it in full)."""
    return lambda: (README.parent / "docs" / name).read_text().rstrip() + "\n"


BLOCKS = {
    "metrics": _include("metrics.md"),
    "reliability": _include("reliability.md"),
    "cli-reference": cli_reference,
    "config-reference": config_reference,
}


def render(text: str, blocks: dict | None = None, name: str = "README.md") -> str:
    """Replace every ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->`` block of ``text`` by what
    ``blocks[NAME]()`` makes (the README's blocks by default); ``name`` is the file, for errors."""
    for block_name, make in (BLOCKS if blocks is None else blocks).items():
        start, end = f"<!-- {block_name}:start -->", f"<!-- {block_name}:end -->"
        block = f"{start}\n{make()}{end}"
        text, count = re.subn(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
        if count != 1:
            sys.exit(f"{name} must contain exactly one {start} ... {end} block")
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    print(f"updated {README}")
