"""Segmentation metrics: semantic (foreground IoU, Dice, ...) and instance (adapted Rand error,
VOI, CREMI score, MitoEM-style AP), computed from counts accumulated block by block so volumes
larger than memory can be scored. Definitions: ``docs/metrics.md``.

Example:
    >>> from pytc.metrics import evaluate_volumes
    >>> report = evaluate_volumes("seg.zarr", "gt.h5:labels", task="instance")  # doctest: +SKIP
    >>> report["metrics"]["adapted_rand"], report["metrics"]["map"]             # doctest: +SKIP
    (0.083, 0.71)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from pytc.choices import EvalTask
from pytc.errors import DataError, OutputExistsError
from pytc.metrics.counts import Contingency, confusion_counts, contingency_table
from pytc.metrics.instance import (
    AP_THRESHOLDS,
    adapted_rand,
    average_precision,
    instance_metrics,
    instance_scores,
    match_instances,
    true_positives,
    variation_of_information,
)
from pytc.metrics.semantic import semantic_metrics, semantic_scores

__all__ = [
    "AP_THRESHOLDS",
    "Contingency",
    "DEFINITIONS",
    "adapted_rand",
    "average_precision",
    "confusion_counts",
    "contingency_table",
    "evaluate",
    "evaluate_volumes",
    "instance_metrics",
    "instance_scores",
    "match_instances",
    "semantic_metrics",
    "semantic_scores",
    "true_positives",
    "variation_of_information",
    "write_report",
]

# Which convention each number follows (written into every JSON report; details in docs/metrics.md).
DEFINITIONS = {
    EvalTask.semantic.value: {
        "foreground": "prediction > threshold × pytc_scale (probabilities) or > 0 (masks); ground truth > 0",
        "iou": "foreground IoU (Jaccard) TP/(TP+FP+FN)",
        "mean_iou": "mean of foreground and background IoU",
    },
    EvalTask.instance.value: {
        "adapted_rand": "SNEMI3D/CREMI challenge evaluator "
        "(n² pairs, GT 0 ignored, prediction 0 inside objects = single-voxel segments)",
        "voi": "variation of information in bits, GT 0 ignored; split = H(pred|gt), merge = H(gt|pred)",
        "cremi_score": "sqrt(adapted_rand × (voi_split + voi_merge))",
        "ap": "MitoEM-style AP: rank by size, best-IoU match, TP at IoU >= t (one TP per GT object), "
        "monotone precision at 101 recall points; map over IoU 0.50:0.05:0.95",
    },
}


def _name(arr, what: str) -> str:
    spec = getattr(arr, "spec", None)
    return f"{what} {spec}" if isinstance(spec, str) else what


def evaluate(
    pred,
    gt,
    task: EvalTask | str = EvalTask.semantic,
    threshold: float = 0.5,
    ignore_label: int | None = None,
    progress: bool = False,
    block_bytes: int | None = None,
) -> dict:
    """Score array-likes (numpy, h5py, zarr, :class:`pytc.io.Volume`) with the task's metrics.

    Args:
        pred: probabilities/mask (semantic) or instance labels (instance).
        gt: ground-truth labels.
        task: ``semantic`` (see :func:`semantic_metrics`) or ``instance`` (:func:`instance_metrics`).
        threshold: probability threshold (semantic only).
        ignore_label: ground-truth value whose voxels are not counted.
        progress: show a transient progress bar on stderr.
        block_bytes: memory budget of a block's temporaries.

    Returns:
        The metrics as a flat dict of numbers (plus ``ap_by_iou`` for instances).
    """
    task = _task(task)
    names = (_name(pred, "prediction"), _name(gt, "ground truth"))
    if task is EvalTask.instance:
        table = contingency_table(pred, gt, ignore_label, progress, block_bytes, names)
        return instance_scores(table)
    if not 0 <= float(threshold) <= 1:
        raise DataError(f"threshold must lie in [0, 1]; got {threshold}")
    return semantic_scores(**confusion_counts(pred, gt, threshold, ignore_label, progress, block_bytes, names))


def _task(task) -> EvalTask:
    try:
        return EvalTask(getattr(task, "value", task))
    except ValueError:
        raise DataError(f"unknown task {task!r}; choose {' or '.join(t.value for t in EvalTask)}") from None


def evaluate_volumes(
    pred_spec: str | os.PathLike,
    gt_spec: str | os.PathLike,
    task: EvalTask | str = EvalTask.semantic,
    threshold: float = 0.5,
    ignore_label: int | None = None,
    progress: bool = True,
) -> dict:
    """Open two volumes by address and score them (see :func:`evaluate`), streaming blocks.

    Returns:
        A JSON-ready report: ``task``, ``pred``, ``gt`` (the addresses), ``shape``,
        ``threshold`` (semantic), ``ignore_label``, ``metrics``, ``definitions``, ``seconds``.
    """
    from pytc.io import open_volume

    start = time.perf_counter()
    task = _task(task)
    with open_volume(pred_spec) as pred, open_volume(gt_spec) as gt:
        metrics = evaluate(pred, gt, task, threshold, ignore_label, progress)
        shape = list(gt.shape)
    report = {
        "task": task.value,
        "pred": os.fspath(pred_spec),
        "gt": os.fspath(gt_spec),
        "shape": shape,
        "threshold": float(threshold) if task is EvalTask.semantic else None,
        "ignore_label": ignore_label,
        "metrics": metrics,
        "definitions": DEFINITIONS[task.value],
    }
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(report: dict, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a report as JSON (undefined numbers as ``null``), all or nothing: a temporary file
    renamed into place.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is False.
        VolumeError: ``path`` is the report's prediction or ground truth.
    """
    from pytc.io import check_not_input, check_writable, disk_errors, write_atomic

    path = Path(path)
    check_not_input(path, [report.get("pred"), report.get("gt")], what="report")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite")
    check_writable(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(_nan_to_none(report), indent=2, allow_nan=False) + "\n")
