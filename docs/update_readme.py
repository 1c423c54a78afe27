"""Regenerate the generated blocks of README.md (config reference). Run: `make docs`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(text: str) -> str:
    from pytc.config import reference_markdown

    block = f"{START}\n{reference_markdown()}{END}"
    new, count = re.subn(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if count != 1:
        sys.exit(f"README.md must contain exactly one {START} ... {END} block")
    return new


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    print(f"updated {README}")
