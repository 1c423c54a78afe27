"""`pytc demo` — the whole pipeline on built-in synthetic EM; `pytc demo synth` writes such a volume.

The work is done by :func:`pytc.demo.run_demo` / :func:`pytc.demo.write_synth`; this file parses the
options and renders the result (a table of metrics, the files written, the commands to try next).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pytc.choices import DEMO_MINUTES, DemoTask  # not pytc.demo: the CLI starts without importing it

app = typer.Typer(
    invoke_without_command=True,  # `pytc demo` runs the demo; `pytc demo synth` is a sub-command
    no_args_is_help=False,
    rich_markup_mode=None,
)


@app.callback()
def demo(
    ctx: typer.Context,
    out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")] = "demo_out",
    task: Annotated[
        DemoTask, typer.Option("--task", help="mito: binary + contour → bc-watershed; neuron: affinities → waterz.")
    ] = DemoTask.mito,
    minutes: Annotated[
        float, typer.Option("--minutes", min=0.1, help="Training time budget; the whole demo takes ~15 s more.")
    ] = DEMO_MINUTES,
    steps: Annotated[
        Optional[int], typer.Option("--steps", min=1, help="Train exactly this many steps instead (reproducible).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the demo's outputs in a non-empty DIR.")] = False,
) -> None:
    """Run the whole pipeline on synthetic EM in a few minutes (no download, no GPU needed).

    Generates a train and a test volume, trains a small model for --minutes, predicts the test volume,
    decodes instances, scores them, saves a figure and prints what to try next on your own data.
    `pytc demo synth OUT.h5` writes a synthetic volume to look at.
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from pytc.demo import run_demo

    console = Console(highlight=False)
    result = run_demo(out, task, minutes=minutes, steps=steps, force=force,
                      report=lambda line: console.print(f"[bold cyan]›[/] {line}"))
    _render(console, result)


@app.command("synth")
def synth(
    out: Annotated[
        str, typer.Argument(metavar="OUT.h5", help="HDF5 file (or OUT.zarr: Zarr store) to write.", show_default=False)
    ],
    shape: Annotated[
        tuple[int, int, int], typer.Option("--shape", metavar="Z Y X", help="Volume size in voxels, each at least 1.")
    ] = (64, 256, 256),
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed (0 or more); the same seed gives the same volume.")
    ] = 0,
    anisotropy: Annotated[
        float, typer.Option("--anisotropy", help="z voxel size relative to y/x, 0.1 to 10 (e.g. 5 for 40×8×8 nm).")
    ] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT.h5 (or OUT.zarr) if it exists.")] = False,
) -> None:
    """Write a synthetic EM volume with ground truth as HDF5 (or Zarr: OUT.zarr).

    Datasets: image (uint8), mito_mask, mito_instances, cell_instances (0 = membrane).
    """
    from pytc.demo import write_synth

    s = write_synth(out, shape, seed=seed, anisotropy=anisotropy, force=force)
    mito = f"{s['mitochondria']} mitochondri{'on' if s['mitochondria'] == 1 else 'a'}"
    cells = f"{s['cells']} cell{'' if s['cells'] == 1 else 's'}"
    typer.echo(f"Wrote {s['path']}: {'×'.join(map(str, s['shape']))} voxels, {mito}, {cells} ({s['seconds']:.1f} s)")
    typer.echo(f"Datasets: {', '.join(s['datasets'])}; e.g. pytc info {s['volumes'][0]}")


# Headline metrics per task: (key, label, format); ↓ = lower is better.
_SHOWN = {
    "mito": [("iou", "foreground IoU", "{:.3f}"), ("dice", "foreground Dice", "{:.3f}"),
             ("ap_50", "instance AP@0.50", "{:.3f}"), ("ap_75", "instance AP@0.75", "{:.3f}"),
             ("adapted_rand", "adapted Rand error ↓", "{:.3f}"), ("voi", "VOI split + merge (bits) ↓", "{:.3f}")],
    "neuron": [("adapted_rand", "adapted Rand error ↓", "{:.3f}"), ("voi_split", "VOI split (bits) ↓", "{:.3f}"),
               ("voi_merge", "VOI merge (bits) ↓", "{:.3f}"), ("ap_50", "instance AP@0.50", "{:.3f}")],
}


def _render(console, result) -> None:
    from rich.table import Table

    m, t = result.metrics, result.training
    table = Table(title=f"Results on the synthetic test volume ({result.task})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, fmt in _SHOWN[result.task]:
        if m.get(key) is not None:
            table.add_row(label, fmt.format(m[key]))
    table.add_row("instances found / true", f"{m['n_pred']} / {m['n_gt']}")
    threads = f", {t['threads']} thread{'s' if t['threads'] != 1 else ''}" if t["device"] == "cpu" else ""
    table.add_row("training", f"{t['steps']} steps, {t['seconds']:.0f} s ({t['device']}{threads})")
    table.add_row("total time", f"{result.timings['total']:.0f} s")
    console.print()
    console.print(table)
    console.print("\n[bold]Written:[/]")
    for name, path in result.paths.items():
        console.print(f"  {name:<13} {path}")
    console.print("\n[bold]Next, on your own data:[/]")
    for command, what in result.next_steps:
        console.print(f"  [dim]# {what}[/]")
        console.print(f"  {command}", soft_wrap=True)
