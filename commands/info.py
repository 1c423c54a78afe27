"""`pytc info` — describe a volume (format, shape, dtype, chunks, voxel size, optional stats)."""

from __future__ import annotations

from typing import Annotated

import typer

from pytc.commands.convert import VOLUME_FORMS


def _render(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_render(v) if not isinstance(v, list) else v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return " × ".join(str(v) for v in value) if value else "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def info(
    volume: Annotated[str, typer.Argument(metavar="VOL", help=f"Volume: {VOLUME_FORMS}.", show_default=False)],
    stats: Annotated[
        bool,
        typer.Option("--stats", help="Also compute min, max, mean and, for integer volumes, the number of non-zero "
                                     "labels (reads every chunk once)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a volume: format, shape, dtype, chunks, compression, voxel size (--stats: values).
    An HDF5 file or Zarr group holding several arrays lists each of them."""
    from pytc.io import list_volumes, volume_info

    members = list_volumes(volume)
    if len(members) > 1:
        _list_members(volume, members, stats, as_json)
        return
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


def _list_members(volume: str, members: list[str], stats: bool, as_json: bool) -> None:
    """One row per array of a container (no --stats: that reads everything; name one array)."""
    from pytc.errors import PytcError
    from pytc.io import volume_info

    if stats:
        raise PytcError(f"{volume} holds {len(members)} volumes; name one for --stats, e.g. {members[0]}")
    infos = [volume_info(m) for m in members]
    if as_json:
        import json

        typer.echo(json.dumps({"path": volume, "volumes": infos}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{volume}: {len(members)} volumes", title_justify="left", box=None, pad_edge=False)
    for column in ("address", "shape", "dtype", "chunks", "compression", "voxel_size", "size"):
        table.add_column(column)
    for spec, i in zip(members, infos):
        table.add_row(spec, *(_render(i[k]) for k in ("shape", "dtype", "chunks", "compression", "voxel_size")),
                      f"{i['nbytes'] / 2**20:.1f} MiB")
    import sys

    Console(width=None if sys.stdout.isatty() else 200).print(table)  # pipes: one row per line
