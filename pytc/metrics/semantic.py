"""Semantic (foreground/background) metrics from the four confusion counts."""

from __future__ import annotations

from pytc.metrics.counts import confusion_counts
from pytc.metrics.counts import ratio as _ratio


def semantic_scores(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Metrics of foreground confusion counts; a ratio with a zero denominator is NaN.

    Returns:
        ``iou`` (foreground IoU, the headline), ``dice``, ``precision``, ``recall``,
        ``accuracy``, ``iou_background``, ``mean_iou`` (mean of the foreground and background
        IoU over those defined) and the counts ``tp``, ``fp``, ``fn``, ``tn``.
    """
    iou, iou_bg = _ratio(tp, tp + fp + fn), _ratio(tn, tn + fp + fn)
    defined = [v for v in (iou, iou_bg) if v == v]
    return {
        "iou": iou,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "iou_background": iou_bg,
        "mean_iou": sum(defined) / len(defined) if defined else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def semantic_metrics(
    pred, gt, threshold: float = 0.5, ignore_label: int | None = None, progress: bool = False, block_bytes=None
) -> dict:
    """Score a foreground prediction (probabilities or a mask) against ground truth, block by block.

    Args:
        pred: array-like of the ground truth's shape, or (C, *shape) with channels; float
            probabilities in [0, 1], a store with ``pytc_scale`` (uint8 → 255), or an
            integer/boolean mask or label volume (foreground ``> 0``). With channels the first
            ``binary`` channel named by ``pytc_channels`` is scored, else channel 0.
        gt: array-like; ``gt > 0`` is foreground.
        threshold: probabilities above it are foreground (compared with ``threshold · pytc_scale``).
        ignore_label: voxels whose ground truth has this value are not counted.
        progress: show a transient progress bar on stderr.
        block_bytes: memory budget of a block's temporaries.

    Returns:
        See :func:`semantic_scores`.

    Example:
        >>> import numpy as np
        >>> semantic_metrics(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 0, 0, 0]))["iou"]
        0.5
    """
    counts = confusion_counts(pred, gt, threshold, ignore_label, progress, block_bytes)
    return semantic_scores(**counts)
