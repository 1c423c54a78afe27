"""Counts that every metric is computed from, accumulated block by block.

Semantic metrics need four numbers (the 2×2 confusion counts); instance metrics need one sparse
contingency table: for every pair (ground-truth label, predicted label) that shares voxels, how
many voxels it shares. Both are sums over voxels, so they are accumulated over blocks of the
volumes (aligned to their chunks, a few blocks in flight on a small thread pool) and a volume
never has to fit in memory; only the table, whose size is the number of overlapping label pairs,
does. Inputs are any array-likes (numpy, h5py, zarr, :class:`pytc.io.Volume`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from pytc.errors import DataError

# Budget for the per-block temporaries (the packed uint64 pair keys dominate): 2 M voxels a block.
BLOCK_BYTES = 16 * 2**20
_MERGE_EVERY = 2**21  # merge partial tables once they hold this many pairs (bounded memory, few merges)
_MAX_UNIT_BLOCKS = 8  # a block aligned to both chunkings may be this many budgets, no more
_DEFAULT_CHUNK = 64  # block unit for inputs without chunks (numpy arrays)


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table of two label volumes.

    ``count[k]`` voxels carry ground-truth label ``gt[k]`` and predicted label ``pred[k]``. Rows
    are sorted by (gt, pred), each pair appears once, label 0 is kept on both sides, and voxels
    whose ground truth is the ignore label are not counted at all.
    """

    gt: np.ndarray  # uint64
    pred: np.ndarray  # uint64
    count: np.ndarray  # int64

    @property
    def n_voxels(self) -> int:
        """Voxels counted (the whole volume minus ignored voxels)."""
        return int(self.count.sum())


def ratio(num: float, den: float) -> float:
    """``num / den`` as a float; NaN (undefined) when ``den`` is 0."""
    return float(num) / float(den) if den else float("nan")


# --------------------------------------------------------------------------------- validation --
def spatial_shapes(pred, gt, names: tuple[str, str], channels_allowed: bool) -> bool:
    """Check that ``pred`` covers the voxels of ``gt``; return True when ``pred`` has a leading
    channel axis (only allowed for semantic evaluation of probability maps)."""
    pname, gname = names
    pshape, gshape = tuple(pred.shape), tuple(gt.shape)
    if pshape == gshape:
        return False
    if len(pshape) == len(gshape) + 1 and pshape[1:] == gshape:
        if channels_allowed:
            return True
        raise DataError(
            f"{pname} has {pshape[0]} channels {pshape}, a probability map; instance evaluation "
            f"needs a label volume of shape {gshape}: run `pytc decode` first"
        )
    raise DataError(
        f"{pname} has shape {pshape} but {gname} has shape {gshape}; "
        "they must cover the same voxels"
    )


def as_labels(block: np.ndarray, name: str, is_pred: bool) -> np.ndarray:
    """Labels as uint64, refusing what is not a label volume (negative, non-integral, non-numeric)."""
    kind = block.dtype.kind
    if kind in "bu":
        return block.astype(np.uint64, copy=False)
    if kind not in "if":
        raise DataError(f"{name} has dtype {block.dtype}; expected integer labels")
    if kind == "f" and not np.isfinite(block).all():
        raise DataError(f"{name} has NaN or infinite values; instance evaluation needs integer labels")
    if kind == "f" and block.size and not np.array_equal(block, np.floor(block)):
        hint = (
            "it looks like a probability map: run `pytc decode` first"
            if is_pred
            else "instance evaluation needs integer labels"
        )
        raise DataError(f"{name} has non-integral values ({block.dtype}); {hint}")
    if block.size and block.min() < 0:
        raise DataError(
            f"{name} has negative labels (min {block.min()}); labels must be >= 0 "
            "(pass --ignore-label for a negative ignore value in the ground truth)"
        )
    return block.astype(np.uint64)


# ------------------------------------------------------------------------------ pair counting --
def pair_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (gt, pred) pairs of two equally long uint64 label arrays and their voxel counts,
    sorted by (gt, pred).

    Both labels are packed into one uint64 key (gt · (max pred + 1) + pred) so a single
    ``np.unique`` does the work; labels too large to pack are first replaced by their rank.
    """
    gt, pred = gt.ravel(), pred.ravel()
    if gt.size == 0:
        empty = np.empty(0, np.uint64)
        return empty, empty, np.empty(0, np.int64)
    gmax, pmax = int(gt.max()), int(pred.max())
    if (gmax + 1) * (pmax + 1) <= 2**64:
        base = np.uint64(pmax + 1)
        keys, counts = np.unique(gt * base + pred, return_counts=True)
        return keys // base, keys % base, counts.astype(np.int64)
    g_ids, g_rank = np.unique(gt, return_inverse=True)
    p_ids, p_rank = np.unique(pred, return_inverse=True)
    base = np.int64(p_ids.size)
    keys, counts = np.unique(g_rank.astype(np.int64) * base + p_rank, return_counts=True)
    return g_ids[keys // base], p_ids[keys % base], counts.astype(np.int64)


def merge_pairs(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Sum partial tables: same (gt, pred) pairs are added; the result is sorted by (gt, pred)."""
    parts = list(parts)
    g = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.uint64)
    p = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.uint64)
    c = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int64)
    if g.size == 0:
        return g.astype(np.uint64), p.astype(np.uint64), c.astype(np.int64)
    order = np.lexsort((p, g))
    g, p, c = g[order], p[order], c[order]
    starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (p[1:] != p[:-1])])
    return g[starts], p[starts], np.add.reduceat(c, starts)


# ---------------------------------------------------------------------------------- streaming --
def _chunks(arr, ndim: int) -> tuple[int, ...] | None:
    chunks = getattr(arr, "chunks", None)
    try:
        chunks = tuple(int(c) for c in chunks)[-ndim:]
    except (TypeError, ValueError):
        return None
    return chunks if len(chunks) == ndim else None


def _blocks(pred, gt, block_bytes: int | None):
    """Blocks of the ground truth's spatial shape aligned to both inputs' chunks (each chunk is
    decoded once when the chunkings agree); at least one chunk, else about ``block_bytes``."""
    from pytc.io import iter_blocks

    shape = tuple(int(n) for n in gt.shape)
    g, p = _chunks(gt, len(shape)), _chunks(pred, len(shape))
    default = tuple(min(_DEFAULT_CHUNK, n) for n in shape)
    g, p = g or p or default, p or g or default
    unit = tuple(min(n, math.lcm(a, b)) for a, b, n in zip(g, p, shape))
    if math.prod(unit) * 8 > _MAX_UNIT_BLOCKS * (block_bytes or BLOCK_BYTES):  # chunkings far apart
        unit = g  # follow the ground truth's; prediction chunks are then decoded a few times
    return iter_blocks(shape, unit, 8, block_bytes or BLOCK_BYTES)


def stream(task: Callable, pred, gt, progress: bool, description: str, block_bytes: int | None):
    """Yield ``task(sel)`` for every block, computed on a small thread pool (reads and
    ``np.unique`` release the GIL) with a transient progress bar when ``progress``."""
    from pytc.io import map_blocks  # the package's bounded, ordered block pool with progress

    itemsize = np.dtype(gt.dtype).itemsize + np.dtype(pred.dtype).itemsize
    total = math.prod(int(n) for n in gt.shape) * itemsize
    yield from map_blocks(task, _blocks(pred, gt, block_bytes), itemsize, progress, description, total)


def contingency_table(
    pred_labels,
    gt_labels,
    ignore_label: int | None = None,
    progress: bool = False,
    block_bytes: int | None = None,
    names: tuple[str, str] = ("prediction", "ground truth"),
) -> Contingency:
    """Sparse contingency table of a predicted and a ground-truth label volume, block by block.

    Args:
        pred_labels, gt_labels: label array-likes of the same shape (integers >= 0; floats are
            accepted when every value is integral).
        ignore_label: voxels whose ground truth has this value are not counted.
        progress: show a transient progress bar on stderr.
        block_bytes: memory budget of a block's temporaries (default :data:`BLOCK_BYTES`).
        names: how error messages call the prediction and the ground truth.

    Raises:
        DataError: shape mismatch, a probability map as prediction, negative or non-integral labels.
    """
    pname, gname = names
    spatial_shapes(pred_labels, gt_labels, names, channels_allowed=False)
    if "pytc_scale" in getattr(pred_labels, "attrs", {}):  # the mark of a `pytc infer` store
        raise DataError(f"{pname} is a probability map (it has pytc_scale); run `pytc decode` first")

    def task(sel):
        g, p = np.asarray(gt_labels[sel]), np.asarray(pred_labels[sel])
        if ignore_label is not None:
            keep = g != ignore_label
            g, p = g[keep], p[keep]
        return pair_counts(as_labels(g, gname, False), as_labels(p, pname, True))

    parts, pending = [], 0
    for part in stream(task, pred_labels, gt_labels, progress, "evaluate", block_bytes):
        parts.append(part)
        pending += part[0].size
        if pending > _MERGE_EVERY:  # keep the partial tables small: merge now and then
            parts, pending = [merge_pairs(parts)], 0
    return Contingency(*merge_pairs(parts))


def confusion_counts(
    pred,
    gt,
    threshold: float = 0.5,
    ignore_label: int | None = None,
    progress: bool = False,
    block_bytes: int | None = None,
    names: tuple[str, str] = ("prediction", "ground truth"),
) -> dict[str, int]:
    """Foreground/background confusion counts ``{"tp", "fp", "fn", "tn"}``, block by block.

    Foreground in the ground truth is ``gt > 0``. The prediction's foreground (see
    :func:`foreground_rule`): probabilities above ``threshold`` (uint8 stores with ``pytc_scale``
    255 are compared with ``threshold · 255``), or ``> 0`` for integer/boolean masks and labels.
    A (C, *spatial) prediction is scored on its first ``binary`` channel (per ``pytc_channels``),
    else on channel 0. Voxels whose ground truth is ``ignore_label`` are not counted.
    """
    pname, gname = names
    has_channels = spatial_shapes(pred, gt, names, channels_allowed=True)
    channel = _binary_channel(pred, pname) if has_channels else None
    cut = foreground_rule(pred, threshold)

    def task(sel):
        g = np.asarray(gt[sel])
        p = np.asarray(pred[(channel, *sel)] if channel is not None else pred[sel])
        for name, block in ((pname, p), (gname, g)):  # NaN compares False: it would pass as background
            if block.dtype.kind == "f" and not np.isfinite(block).all():
                raise DataError(f"{name} has NaN or infinite values; replace them (e.g. with 0) and rerun")
        if cut is None and p.size and (p.min() < 0 or p.max() > 1):
            raise DataError(
                f"{pname} holds floats outside [0, 1] ({p.min():.3g}..{p.max():.3g}), not probabilities; "
                "apply the activation first, or evaluate a mask"
            )
        p_fg, g_fg = p > (threshold if cut is None else cut), g > 0
        if ignore_label is not None:
            keep = g != ignore_label
            p_fg, g_fg = p_fg[keep], g_fg[keep]
        tp = np.count_nonzero(p_fg & g_fg)
        n_p, n_g = np.count_nonzero(p_fg), np.count_nonzero(g_fg)
        return np.array([tp, n_p - tp, n_g - tp, g_fg.size - n_p - n_g + tp], np.int64)

    total = np.zeros(4, np.int64)
    for part in stream(task, pred, gt, progress, "evaluate", block_bytes):
        total += part
    return dict(zip(("tp", "fp", "fn", "tn"), (int(v) for v in total)))


def foreground_rule(pred, threshold: float) -> float | None:
    """The value a prediction voxel must exceed to count as foreground; None means ``threshold``
    after checking the values are probabilities in [0, 1] (float predictions without a scale)."""
    scale = getattr(pred, "attrs", {}).get("pytc_scale")
    if scale is not None:
        return float(threshold) * float(np.asarray(scale).ravel()[0])
    return None if np.dtype(pred.dtype).kind == "f" else 0


def _binary_channel(pred, name: str) -> int:
    from pytc.io import channel_kinds_attr

    kinds = channel_kinds_attr(getattr(pred, "attrs", {}))
    if kinds is None:
        return 0
    if "binary" not in kinds:
        raise DataError(
            f"{name} has channels {', '.join(kinds)}; semantic evaluation needs a binary channel "
            "(use --task instance on decoded labels)"
        )
    return kinds.index("binary")
