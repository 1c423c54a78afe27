"""`pytc evaluate` — score a prediction or segmentation against ground truth."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pytc.choices import EvalTask
from pytc.commands.convert import VOLUME_FORMS

# Rows of the on-screen table: (metric key, label). Every number also goes to --json.
ROWS = {
    EvalTask.semantic: [
        ("iou", "foreground IoU"),
        ("dice", "Dice"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("accuracy", "accuracy"),
        ("mean_iou", "mean IoU (fg+bg)"),
    ],
    EvalTask.instance: [
        ("adapted_rand", "adapted Rand error (SNEMI3D)"),
        ("are_precision", "  Rand precision (merges)"),
        ("are_recall", "  Rand recall (splits)"),
        ("voi", "VOI (bits)"),
        ("voi_split", "  VOI split H(pred|gt)"),
        ("voi_merge", "  VOI merge H(gt|pred)"),
        ("cremi_score", "CREMI score"),
        ("ap_50", "AP@0.50"),
        ("ap_75", "AP@0.75"),
        ("map", "mAP@0.50:0.95"),
        ("precision_50", "precision@0.50"),
        ("recall_50", "recall@0.50"),
        ("f1_50", "F1@0.50"),
        ("n_gt", "GT objects"),
        ("n_pred", "predicted objects"),
    ],
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4f}"
    return f"{value:,}"


def evaluate(
    pred: Annotated[
        str,
        typer.Argument(
            metavar="PRED", help=f"Prediction: probabilities, mask or labels ({VOLUME_FORMS}).", show_default=False
        ),
    ],
    gt: Annotated[str, typer.Argument(metavar="GT", help="Ground-truth labels, same forms.", show_default=False)],
    task: Annotated[
        EvalTask, typer.Option("--task", help="semantic: IoU/Dice of the foreground; instance: ARAND/VOI/AP of labels.")
    ] = EvalTask.semantic,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="Probability threshold (semantic task).")
    ] = 0.5,
    ignore_label: Annotated[
        Optional[int], typer.Option("--ignore-label", help="Ground-truth value whose voxels are not counted.")
    ] = None,
    json_out: Annotated[
        Optional[str],
        typer.Option("--json", metavar="OUT", help="Write every number, the inputs and the definitions to OUT."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the --json file if it exists.")] = False,
) -> None:
    """Score a prediction or segmentation against ground truth.

    Definitions (SNEMI3D/CREMI adapted Rand, VOI in bits, MitoEM-style AP): docs/metrics.md.
    """
    from pathlib import Path

    from pytc.errors import OutputExistsError
    from pytc.io import check_not_input, check_writable
    from pytc.metrics import evaluate_volumes, write_report

    if json_out:
        check_not_input(json_out, [pred, gt], what="--json")
    if json_out and Path(json_out).exists() and not force:  # refuse before the (long) evaluation
        raise OutputExistsError(f"{json_out} exists; pass --force to overwrite")
    if json_out:
        check_writable(json_out)
    report = evaluate_volumes(pred, gt, task=task, threshold=threshold, ignore_label=ignore_label, progress=True)
    if json_out:
        write_report(report, json_out, force=force)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{task.value} evaluation", title_justify="left", show_header=False, box=None)
    for key, label in ROWS[task]:
        table.add_row(label, _fmt(report["metrics"][key]))
    console = Console()
    console.print(table)
    console.print(f"[dim]{pred} vs {gt}, {report['seconds']:.1f} s" + (f"; wrote {json_out}" if json_out else ""))
