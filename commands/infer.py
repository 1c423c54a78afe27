"""`pytc infer` — predict a volume with a checkpoint into a Zarr/HDF5 prediction store.

Several processes share the blocks of one volume (Zarr output) when started by Accelerate or
torchrun, e.g. ``accelerate launch --multi_gpu --num_processes 4 $(which pytc) infer --ckpt RUN
--input raw.zarr --output pred.zarr`` (``torchrun --nproc_per_node 4 $(which pytc) infer ...`` on CPUs).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pytc.choices import OutputDtype


def infer(
    ckpt: Annotated[
        str, typer.Option("--ckpt", metavar="CKPT", help="Checkpoint folder, last/best pointer or run directory.", show_default=False)
    ],
    input: Annotated[
        str, typer.Option("--input", "-i", metavar="VOL", help="Volume to predict: raw.h5:key, raw.zarr, stack.tif, ...", show_default=False)
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="OUT", help="Prediction store: out.zarr (default), out.zarr/array or out.h5:key.",
                          show_default=False)
    ],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="OVERRIDES", help="Dotted overrides of the checkpoint's config, e.g. inference.overlap=0.5.", show_default=False),
    ] = None,
    dtype: Annotated[
        Optional[OutputDtype], typer.Option("--dtype", help="Stored dtype; default inference.output_dtype (uint8).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the finished blocks of an interrupted run instead of resuming.")
    ] = False,
) -> None:
    """Predict a volume with a trained checkpoint (sliding window, out of core).

    An interrupted run resumes where it stopped when rerun with the same arguments; if the input's
    contents, the checkpoint or the config changed since, the rerun is refused (--restart starts over).
    """
    from pytc.decode import group_kinds
    from pytc.inference import infer as predict  # imports torch: only when predicting

    try:
        s = predict(ckpt, input, output, overrides, force=force, progress=True, resume=not restart,
                    dtype=dtype.value if dtype is not None else None)
    except KeyboardInterrupt:
        how = "rerun without --restart to resume" if restart else "rerun the same command to resume"
        typer.echo(f"Interrupted: the finished blocks are kept; {how}.", err=True)
        raise typer.Exit(130) from None
    if s["rank"] != 0:
        return
    shape = "×".join(str(n) for n in s["shape"])
    typer.echo(f"Wrote {s['output']}: {shape} {s['dtype']} ({group_kinds(s['channels'])})")
    done = s["blocks"] - s["blocks_skipped"]
    skipped = f", {s['blocks_skipped']} skipped (finished by an earlier run)" if s["blocks_skipped"] else ""
    typer.echo(f"{s['blocks']} block{'s' if s['blocks'] != 1 else ''}: {done} computed{skipped}; {s['processes']} process{'es' if s['processes'] != 1 else ''} on "
               f"{s['device']}, "
               f"{s['voxels_per_s'] / 1e6:.2f} Mvoxel/s, {s['seconds']:.1f} s")

