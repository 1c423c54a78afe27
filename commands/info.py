"""`pytc info` — describe a volume (format, shape, dtype, chunks, voxel size, optional stats)."""

from __future__ import annotations

from typing import Annotated

import typer

from pytc.commands.convert import VOLUME_FORMS


def _render(value) -> str:
    if isinstance(value, list):
        return " × ".join(str(v) for v in value) if value else "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def info(
    volume: Annotated[str, typer.Argument(metavar="VOL", help=f"Volume: {VOLUME_FORMS}.", show_default=False)],
    stats: Annotated[
        bool, typer.Option("--stats", help="Also compute min, max, mean and label count (reads every chunk once).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a volume: format, shape, dtype, chunks, compression, voxel size (--stats: values)."""
    from pytc.io import volume_info

    result = volume_info(volume, stats=stats, progress=stats)
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    for name, value in result.items():
        text = _render(value)
        if name.endswith("bytes"):
            text = f"{value:,} ({value / 2**20:.1f} MiB)"
        table.add_row(f"[bold]{name}[/bold]", text)
    Console().print(table)
