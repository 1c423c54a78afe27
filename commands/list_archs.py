"""``pytc list-archs``: the registered network architectures."""

from __future__ import annotations

import json
from typing import Optional

import typer


def list_archs(
    pattern: Optional[str] = typer.Argument(None, help="Shell-style filter on names, e.g. 'mednext*'."),
    json_: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the registered network architectures.

    Parameter counts are at the default settings; pick one with model.architecture=NAME.
    """
    from pytc.errors import ModelError
    from pytc.models import architecture_table, list_architectures

    rows = architecture_table(pattern)
    if not rows:  # a filter that matches nothing is a typo, as an unknown model.architecture is
        raise ModelError(f"no architecture matches {pattern!r}; the names are {', '.join(list_architectures())}")
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("name", no_wrap=True)  # names are copied into configs: never truncate them
    table.add_column("family", no_wrap=True)
    table.add_column("good for")
    table.add_column("deep sup.")
    table.add_column("params", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["name"], row["family"], row["good_for"], "yes" if row["deep_supervision"] else "",
            f"{row['params'] / 1e6:.1f}M",
        )
    Console().print(table)
