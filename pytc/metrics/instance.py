"""Instance metrics from one contingency table: adapted Rand error, VOI, CREMI score, AP.

Conventions (formulas in ``docs/metrics.md``):

* ``adapted_rand`` is the SNEMI3D/CREMI challenge evaluator, reproduced exactly: pairs counted
  n², ground-truth label 0 ignored, prediction label 0 inside ground-truth objects treated as
  segments that merge with nothing. waterz's ``evaluate`` gives the same number when the
  prediction has no label 0 inside objects; scikit-image's ``adapted_rand_error`` counts pairs
  n(n−1), keeps prediction 0 as an ordinary segment and returns precision/recall swapped.
* VOI in bits, ground-truth label 0 ignored, prediction label 0 an ordinary segment (as in
  scikit-image, waterz and CREMI): split = H(pred|gt), merge = H(gt|pred).
* AP follows the MitoEM evaluator: predictions ranked by score (size by default, ties by label
  id), each matched to its highest-IoU ground-truth object, 101-point interpolated precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pytc.errors import DataError
from pytc.metrics.counts import Contingency, contingency_table
from pytc.metrics.counts import ratio as _ratio

AP_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.50:0.05:0.95, as COCO and MitoEM
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO/MitoEM recall sampling


def _sizes(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``ids`` (sorted), the summed ``counts`` of each and each row's index into them."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=uniq.size), inverse


def adapted_rand(table: Contingency) -> dict[str, float]:
    """Adapted Rand error as the SNEMI3D/CREMI evaluator computes it (see the module docs).

    With a_i the ground-truth object sizes, b_j the sizes of predicted segments inside ground-truth
    objects, n_ij their overlaps, c the prediction-0 voxels inside objects and n all counted voxels:
    precision = (Σn_ij² + c/n) / (Σb_j² + c/n), recall = (Σn_ij² + c/n) / Σa_i²,
    error = 1 − 2·precision·recall / (precision + recall). Precision drops with merges, recall
    with splits.

    Returns:
        ``{"adapted_rand", "are_precision", "are_recall"}`` (NaN without ground-truth objects).
    """
    n = float(table.count.sum())
    fg = table.gt > 0
    counts = table.count[fg].astype(np.float64)
    pred = table.pred[fg]
    _, a, _ = _sizes(table.gt[fg], counts)
    on = pred > 0
    # The evaluator adds c/n (not c, as true single-voxel segments would) — reproduced exactly.
    extra = float(counts[~on].sum()) / n if n else 0.0
    _, b, _ = _sizes(pred[on], counts[on])
    sum_ab = counts[on] @ counts[on] + extra
    precision = _ratio(sum_ab, b @ b + extra)
    recall = _ratio(sum_ab, a @ a)
    f_score = _ratio(2.0 * precision * recall, precision + recall)
    error = float("nan") if np.isnan(f_score) else max(0.0, 1.0 - f_score)  # no −1e−16 from rounding
    return {"adapted_rand": error, "are_precision": precision, "are_recall": recall}


def variation_of_information(table: Contingency) -> dict[str, float]:
    """Split and merge parts of the variation of information, in bits (ground-truth 0 ignored).

    With p_ij = n_ij / N over voxels inside ground-truth objects (N of them):
    split = H(pred|gt) = −Σ p_ij log2(n_ij / a_i), merge = H(gt|pred) = −Σ p_ij log2(n_ij / b_j),
    where a_i, b_j are row and column sums (prediction 0 is an ordinary column here).

    Returns:
        ``{"voi_split", "voi_merge", "voi"}`` (NaN without ground-truth objects).
    """
    fg = table.gt > 0
    counts = table.count[fg].astype(np.float64)
    total = counts.sum()
    if not total:
        return {"voi_split": float("nan"), "voi_merge": float("nan"), "voi": float("nan")}
    _, a, gi = _sizes(table.gt[fg], counts)
    _, b, pi = _sizes(table.pred[fg], counts)
    split = max(0.0, float(-(counts @ np.log2(counts / a[gi])) / total))  # max: no −0.0 for perfect
    merge = max(0.0, float(-(counts @ np.log2(counts / b[pi])) / total))
    return {"voi_split": split, "voi_merge": merge, "voi": split + merge}


def match_instances(table: Contingency, scores: Mapping[int, float] | None = None):
    """Rank the predicted objects and find each one's best ground-truth match.

    Sizes count every voxel of an object (also where the other volume is 0). Each prediction's
    match is the ground-truth object of highest IoU (ties: the lower label id), found once for all
    thresholds, as in the MitoEM evaluator.

    Returns:
        ``(pred_ids, best_gt, best_iou, n_gt)`` with predictions in rank order: score descending
        (default: size), ties by label id ascending; ``best_gt`` 0 / ``best_iou`` 0 when a
        prediction touches no object.
    """
    counts = table.count.astype(np.float64)
    pred_ids, pred_size, p_row = _sizes(table.pred, counts)
    gt_ids, gt_size, g_row = _sizes(table.gt, counts)
    both = (table.gt > 0) & (table.pred > 0)
    inter = counts[both]
    iou = inter / (pred_size[p_row[both]] + gt_size[g_row[both]] - inter)
    p_idx, g = p_row[both], table.gt[both]
    order = np.lexsort((g, -iou, p_idx))  # per prediction: highest IoU first, then lowest GT id
    first = order[np.r_[True, p_idx[order][1:] != p_idx[order][:-1]]] if order.size else order
    best_gt = np.zeros(pred_ids.size, np.uint64)
    best_iou = np.zeros(pred_ids.size, np.float64)
    best_gt[p_idx[first]], best_iou[p_idx[first]] = g[first], iou[first]

    keep = pred_ids > 0
    pred_ids, pred_size, best_gt, best_iou = pred_ids[keep], pred_size[keep], best_gt[keep], best_iou[keep]
    if scores is None:
        score = pred_size
    else:
        missing = [int(i) for i in pred_ids if int(i) not in scores]
        if missing:
            raise DataError(f"no score for predicted labels {missing[:5]}; give one score per predicted object")
        score = np.array([float(scores[int(i)]) for i in pred_ids], np.float64)
    rank = np.lexsort((pred_ids, -score))
    return pred_ids[rank], best_gt[rank], best_iou[rank], int(np.count_nonzero(gt_ids > 0))


def true_positives(best_gt: np.ndarray, best_iou: np.ndarray, threshold: float) -> np.ndarray:
    """Ranked predictions that are true positives at ``threshold``: best IoU >= threshold and
    their object not already taken by a higher-ranked true positive (a later claimant is a false
    positive). For thresholds above 0.5 no two predictions can reach one object, so the second
    rule only acts at IoU <= 0.5 (e.g. an object split into two exact halves at t = 0.5)."""
    hits = np.flatnonzero(best_iou >= threshold)
    _, first = np.unique(best_gt[hits], return_index=True)  # earliest (best-ranked) claim wins
    tp = np.zeros(best_iou.size, bool)
    tp[hits[first]] = True
    return tp


def average_precision(tp: np.ndarray, n_gt: int) -> float:
    """COCO/MitoEM AP of ranked true-positive flags: precision made monotone (running max from
    the end), read at recall 0, 0.01, ..., 1 (first rank reaching each recall; 0 if never
    reached) and averaged. NaN without ground-truth objects."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    tp_sum = np.cumsum(tp)
    recall = tp_sum / n_gt
    precision = np.maximum.accumulate((tp_sum / np.arange(1, tp.size + 1))[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < tp.size, precision[np.minimum(idx, tp.size - 1)], 0.0)
    return float(sampled.mean())


def instance_scores(
    table: Contingency, iou_thresholds: Sequence[float] = AP_THRESHOLDS, scores: Mapping[int, float] | None = None
) -> dict:
    """Every instance metric from one contingency table (see :func:`instance_metrics`)."""
    if not len(iou_thresholds) or any(not 0 < float(t) <= 1 for t in iou_thresholds):
        raise DataError(f"IoU thresholds must lie in (0, 1]; got {list(iou_thresholds)}")
    thresholds = sorted({round(float(t), 4) for t in (*iou_thresholds, 0.5, 0.75)})
    rand, voi = adapted_rand(table), variation_of_information(table)
    pred_ids, best_gt, best_iou, n_gt = match_instances(table, scores)
    tps = {t: true_positives(best_gt, best_iou, t) for t in thresholds}
    ap = {t: average_precision(tps[t], n_gt) for t in thresholds}
    tp50 = int(tps[0.5].sum())
    return {
        **rand,
        **voi,
        "cremi_score": float(np.sqrt(rand["adapted_rand"] * voi["voi"])),
        "ap_50": ap[0.5],
        "ap_75": ap[0.75],
        "map": float(np.mean([ap[round(float(t), 4)] for t in iou_thresholds])),
        "precision_50": _ratio(tp50, pred_ids.size),
        "recall_50": _ratio(tp50, n_gt),
        "f1_50": _ratio(2 * tp50, pred_ids.size + n_gt),
        "n_gt": n_gt,
        "n_pred": int(pred_ids.size),
        "tp_50": tp50,
        "ap_by_iou": {f"{t:.2f}": ap[round(float(t), 4)] for t in iou_thresholds},
    }


def instance_metrics(
    pred_labels,
    gt_labels,
    ignore_label: int | None = None,
    iou_thresholds: Sequence[float] = AP_THRESHOLDS,
    scores: Mapping[int, float] | None = None,
    progress: bool = False,
    block_bytes: int | None = None,
) -> dict:
    """Score a predicted label volume against ground-truth labels.

    Args:
        pred_labels, gt_labels: label array-likes (numpy, h5py, zarr, Volume) of one shape;
            streamed block by block into one sparse contingency table.
        ignore_label: voxels whose ground truth has this value are dropped before counting
            (ground-truth 0 is always ignored by the Rand error and VOI).
        iou_thresholds: thresholds averaged into ``map`` (default 0.50:0.05:0.95).
        scores: optional ``{label: confidence}`` ranking the predictions for AP (default: size).
        progress, block_bytes: as in :func:`pytc.metrics.counts.contingency_table`.

    Returns:
        ``adapted_rand`` (headline), ``are_precision``, ``are_recall``, ``voi_split``,
        ``voi_merge``, ``voi``, ``cremi_score``, ``ap_50``, ``ap_75``, ``map``, ``precision_50``,
        ``recall_50``, ``f1_50``, ``n_gt``, ``n_pred``, ``tp_50`` and ``ap_by_iou``.

    Example:
        >>> import numpy as np
        >>> gt = np.array([[1, 1, 2, 2]], np.uint32)
        >>> m = instance_metrics(gt, gt)
        >>> m["adapted_rand"], m["voi"], m["map"]
        (0.0, 0.0, 1.0)
    """
    table = contingency_table(pred_labels, gt_labels, ignore_label, progress, block_bytes)
    return instance_scores(table, iou_thresholds, scores)
