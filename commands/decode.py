"""`pytc decode` — turn a prediction into instance labels."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pytc.choices import ChannelOrder, DecodeMethod
from pytc.commands.convert import VOLUME_FORMS
from pytc.errors import PytcError


def _floats(text: Optional[str], option: str) -> Optional[list[float]]:
    """'0.3,0.5' → [0.3, 0.5]; None stays None."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise PytcError(f"{option} expects numbers separated by commas, e.g. 0.3,0.5; got {text!r}") from None


def _sizes(text: Optional[str], option: str) -> Optional[list[int]]:
    """'128,512,512' → [128, 512, 512]; None stays None."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise PytcError(f"{option} expects three whole numbers Z,Y,X, e.g. 128,512,512; got {text!r}") from None


def decode(
    pred: Annotated[
        str, typer.Argument(metavar="PRED", help=f"Prediction (pytc infer's, or float probabilities): {VOLUME_FORMS}.",
                            show_default=False)
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="SEG", help="Labels to write, same forms.", show_default=False)
    ],
    method: Annotated[
        Optional[DecodeMethod],
        typer.Option("--method", "-m", help="Decoder; default: the checkpoint's decoding.method, else threshold.",
                     show_default=False),
    ] = None,
    threshold: Annotated[
        Optional[float], typer.Option("--threshold", help="threshold (and affinity masks): foreground cut-off.")
    ] = None,
    min_size: Annotated[
        Optional[int], typer.Option("--min-size", help="Remove instances smaller than this many voxels.")
    ] = None,
    seed_threshold: Annotated[
        Optional[float], typer.Option("--seed-threshold", help="bc-watershed: foreground needed for a seed.")
    ] = None,
    contour_threshold: Annotated[
        Optional[float], typer.Option("--contour-threshold", help="bc-watershed: seeds need contour below this.")
    ] = None,
    foreground_threshold: Annotated[
        Optional[float], typer.Option("--foreground-threshold", help="bc-watershed: mask of the watershed.")
    ] = None,
    min_seed_size: Annotated[
        Optional[int], typer.Option("--min-seed-size", help="bc-watershed: drop seeds smaller than this many voxels.")
    ] = None,
    merge_thresholds: Annotated[
        Optional[str],
        typer.Option("--merge-thresholds", metavar="T,T,...",
                     help="affinity-waterz: thresholds; several write SEG_t<T> each."),
    ] = None,
    merge_function: Annotated[
        Optional[str],
        typer.Option("--merge-function", metavar="mean|quantile-N",
                     help="affinity-waterz: boundary score, mean or quantile-N (N = 10, 15, ..., 95)."),
    ] = None,
    block_size: Annotated[
        Optional[str],
        typer.Option("--block-size", metavar="Z,Y,X",
                     help="threshold, bc-watershed: decode larger volumes block by block, this size.",
                     show_default=False),
    ] = None,
    halo: Annotated[
        Optional[str],
        typer.Option("--halo", metavar="Z,Y,X", help="bc-watershed: context each block's flood sees beyond it.",
                     show_default=False),
    ] = None,
    channels: Annotated[
        Optional[str],
        typer.Option("--channels", metavar="KIND,KIND,...",
                     help="Channel kinds (binary, contour, affinity, distance) when PRED does not record them."),
    ] = None,
    offsets: Annotated[
        Optional[str],
        typer.Option("--offsets", metavar="[[DZ,DY,DX],...]",
                     help="affinity-waterz, mutex-watershed: one offset per affinity channel, in channel order, "
                          "as a YAML/JSON list; replaces PRED's pytc_offsets (with a warning when they differ). "
                          "Default: PRED's, else [[1,0,0],[0,1,0],[0,0,1]] for three affinity channels.",
                     show_default=False),
    ] = None,
    channel_order: Annotated[
        ChannelOrder,
        typer.Option("--channel-order",
                     help="Axis order of the offsets (given, stored or default): zyx = (dz, dy, dx); xyz = "
                          "(dx, dy, dz), each triple reversed before decoding. The channels are not reordered: "
                          "channel i keeps offset i, so xyz with the default offsets reads x, y, z channels."),
    ] = ChannelOrder.zyx,
    force: Annotated[bool, typer.Option("--force", help="Replace SEG if it exists.")] = False,
) -> None:
    """Turn a prediction into instance labels (threshold, bc-watershed, waterz, mutex watershed).

    Unset parameters come from the decoding section of the checkpoint's config stored in PRED,
    else from the defaults (pytc config show).

    threshold and bc-watershed work on volumes of any size: a volume larger than --block-size
    (default 128,512,512) is read, decoded and written one block at a time. threshold gives
    exactly the whole-volume labels; bc-watershed floods each block with --halo voxels of context
    around it, so a voxel near a block border can go to another seed than in one whole-volume
    flood (regions keep one id across borders). affinity-waterz and mutex-watershed agglomerate
    the whole volume in memory and refuse, before reading it, a volume whose estimated peak memory
    exceeds what is available.

    A prediction written by other tools (no pytc_channels / pytc_offsets attributes) decodes with
    --channels and, for affinities, --offsets (and --channel-order xyz when its offsets are (dx, dy, dz)),
    e.g. --method affinity-waterz --channels affinity,affinity,affinity --offsets "[[1,0,0],[0,1,0],[0,0,1]]".
    """
    from pytc.decode import decode_volume, parse_offsets

    given = {
        "threshold": threshold,
        "min_size": min_size,
        "seed_threshold": seed_threshold,
        "contour_threshold": contour_threshold,
        "foreground_threshold": foreground_threshold,
        "min_seed_size": min_seed_size,
        "merge_thresholds": _floats(merge_thresholds, "--merge-thresholds"),
        "merge_function": merge_function,
        "block_size": _sizes(block_size, "--block-size"),
        "halo": _sizes(halo, "--halo"),
    }
    summary = decode_volume(
        pred,
        output,
        method=method,
        params={k: v for k, v in given.items() if v is not None},
        channels=channels.replace(" ", "").split(",") if channels else None,
        force=force,
        progress=True,
        offsets=None if offsets is None else parse_offsets(offsets, "--offsets"),
        channel_order=channel_order,
    )
    shape = "×".join(str(n) for n in summary["shape"])
    for out in summary["outputs"]:
        at = "" if out["threshold"] is None else f" (merge threshold {out['threshold']:g})"
        n = out["instances"]
        typer.echo(f"Wrote {out['path']}: {n} instance{'s' if n != 1 else ''}{at}")
    typer.echo(f"{summary['method']}: {shape} {summary['dtype']} labels in {summary['seconds']:.2f} s")
