"""`pytc convert` — copy a volume into another format or layout, voxel for voxel."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pytc.choices import Compression
from pytc.errors import PytcError

VOLUME_FORMS = "file.h5, file.h5:dataset, vol.zarr, vol.zarr/array, stack.tif or slices_dir/"


def parse_numbers(text: Optional[str], option: str, cast: type = int) -> Optional[tuple]:
    """'64,64,64' → (64, 64, 64); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(cast(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        example = "64,64,64" if cast is int else "30,4,4"
        raise PytcError(f"{option} expects positive numbers separated by commas, e.g. {example}; got {text!r}")
    return values


def convert(
    src: Annotated[str, typer.Argument(help=f"Volume to read: {VOLUME_FORMS}.", show_default=False)],
    dst: Annotated[
        str, typer.Argument(help="Volume to write, same forms (out.zarr writes OME-Zarr).", show_default=False)
    ],
    chunks: Annotated[
        Optional[str],
        typer.Option(
            "--chunks", metavar="Z,Y,X", help="HDF5/Zarr chunk shape; default 64,64,64 clipped to the volume."
        ),
    ] = None,
    compression: Annotated[Compression, typer.Option("--compression", help="Chunk compression.")] = Compression.gzip,
    voxel_size: Annotated[
        Optional[str],
        typer.Option("--voxel-size", metavar="Z,Y,X", help="Voxel size Z,Y,X to record; default: the source's."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
) -> None:
    """Convert a volume between HDF5, Zarr, TIFF and slice folders, voxel for voxel. Attributes (a
    prediction's channel kinds and scale, ...) are copied between HDF5 and Zarr."""
    from pytc.io import convert as convert_volume

    summary = convert_volume(
        src,
        dst,
        chunks=parse_numbers(chunks, "--chunks"),
        compression=compression,
        voxel_size=parse_numbers(voxel_size, "--voxel-size", float),
        force=force,
        progress=True,
    )
    shape = "×".join(str(n) for n in summary["shape"])
    mb = summary["bytes"] / 1e6
    typer.echo(f"Wrote {dst}: {shape} {summary['dtype']}, {mb:.1f} MB in {summary['seconds']:.2f} s")
