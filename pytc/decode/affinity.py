"""The affinity decoders, on the whole volume in memory: ``affinity-waterz`` and ``mutex-watershed``.

* ``affinity-waterz`` (:func:`decode_waterz`) — waterz: watershed fragments from the short-range
  affinities, then agglomeration by ``merge_function`` for every threshold in
  ``merge_thresholds``. Only the channels with offsets ``(1,0,0), (0,1,0), (0,0,1)`` (waterz's
  own order, found by offset, not by position) feed waterz; long-range channels are ignored.
  Fragments come from waterz's own watershed with its default affinity bounds (voxels with no
  affinity above 0.0001 stay background; edges above 0.9999 are merged at once). The score of a
  boundary is ``1 - f(affinities on it)`` (f = mean or a quantile) and regions merge while it is
  below the threshold: a higher threshold merges more. Several thresholds give several label
  volumes (a dict ``{threshold: labels}``). Only the scoring functions the waterz wheel ships
  compiled are offered (:data:`WATERZ_SCORES`); the others would need a C++ compiler and Boost
  at run time.
* ``mutex-watershed`` (:func:`decode_mutex_watershed`) — mwatershed, the original mutex
  watershed formulation (Wolf et al. 2018): short-range channels (offsets with ``max |o| == 1``)
  are attractive edges of weight ``a``, long-range channels repulsive edges of weight ``1 - a``;
  all edges are processed greedily by decreasing weight. In mwatershed's signed encoding this is
  ``mwatershed.agglom(w, offsets=[-o for o in offsets])`` with ``w = a`` (short) and
  ``w = a - 1`` (long), float64. The offsets are negated because pytc's channel for ``o`` links
  ``v`` with ``v - o`` (see :mod:`pytc.data.targets`) and mwatershed links ``v`` with ``v + o``.
  Offsets at least as long as an axis link nothing and are left out. The mutex watershed has no
  notion of background: it breaks background into fragments of its own (voxels that join
  nothing come back as 0); a binary channel masks them, or ``min_size`` removes the small ones.

Both agglomerate the whole volume at once and have no blockwise form: they refuse
(``DataError``, :func:`pytc.decode.memory.check_memory`) a volume whose estimated peak memory
exceeds the memory available, before reading it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import numpy as np

from pytc.choices import MERGE_QUANTILES
from pytc.decode.labels import finish_labels
from pytc.decode.memory import check_memory
from pytc.decode.prediction import channels_of, foreground_mask, read_channel, spatial_shape
from pytc.errors import DataError

__all__ = ["WATERZ_SCORES", "decode_mutex_watershed", "decode_waterz"]

# The scoring functions compiled into the waterz 0.10 wheel, by the names DecodingConfig uses.
# Quantiles initialise new edges with the max affinity (waterz's InitWithMax default).
WATERZ_SCORES = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>",
    **{
        f"quantile-{q}": f"OneMinus<HistogramQuantileAffinity<RegionGraphType,{q},ScoreValue,256,true>>"
        for q in MERGE_QUANTILES
    },
}

_UNIT_OFFSETS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))  # waterz's channel order: z, y, x neighbours

# Peak memory of the in-memory decoders, bytes per voxel, measured as the rise of VmHWM while
# decoding 32x128x128 and 64x256x256 synthetic predictions (bench/decode.py's) held in memory,
# rounded up: waterz 43-53 (float32 affinities, uint64 fragments, region graph) and 8 more for
# every further threshold's labels; mwatershed 81-83 per affinity channel it is given (float64
# weights and its sorted edge list).
_WATERZ_BYTES, _WATERZ_BYTES_PER_THRESHOLD = 56, 8
_MWS_BYTES_PER_CHANNEL, _MWS_BYTES = 84, 16


def decode_waterz(pred, kinds: list[str], offsets: list[tuple[int, ...]], cfg) -> np.ndarray | dict[float, np.ndarray]:
    """``affinity-waterz`` on the whole volume: labels, or ``{threshold: labels}`` for several
    merge thresholds (see the module docs)."""
    import waterz

    missing = [list(offset) for offset in _UNIT_OFFSETS if offset not in offsets]
    if missing:
        raise DataError(
            f"affinity-waterz needs the short-range offsets [1, 0, 0], [0, 1, 0], [0, 0, 1]; the prediction's "
            f"affinity offsets are {[list(o) for o in offsets]} (missing {missing}); use --method mutex-watershed"
        )
    thresholds = sorted(set(float(t) for t in cfg.merge_thresholds))
    shape = spatial_shape(pred)
    check_memory("affinity-waterz", shape,
                 _WATERZ_BYTES + _WATERZ_BYTES_PER_THRESHOLD * (len(thresholds) - 1),
                 f"3 affinity channels, {len(thresholds)} merge threshold{'s' if len(thresholds) > 1 else ''}")
    affinity_channels = channels_of(kinds, "affinity")
    affs = np.empty((3, *shape), np.float32)  # C-contiguous float32, as waterz wants
    for j, offset in enumerate(_UNIT_OFFSETS):
        affs[j] = read_channel(pred, affinity_channels[offsets.index(offset)], kinds)
    mask = foreground_mask(pred, kinds, cfg)
    results: dict[float, np.ndarray] = {}
    with _quiet_stdout():  # waterz's C++ core prints its progress with std::cout
        segs = waterz.agglomerate(affs, thresholds=thresholds, scoring_function=WATERZ_SCORES[cfg.merge_function])
        for threshold, seg in zip(thresholds, segs):
            # waterz hands out the same buffer for every threshold and keeps merging into it.
            results[threshold] = finish_labels(seg.copy(), mask, cfg.min_size)
    return results if len(results) > 1 else results[thresholds[0]]


def decode_mutex_watershed(pred, kinds: list[str], offsets: list[tuple[int, ...]], cfg) -> np.ndarray:
    """``mutex-watershed`` on the whole volume (see the module docs)."""
    import mwatershed

    short = [max(abs(v) for v in offset) == 1 for offset in offsets]
    if all(short) or not any(short):
        raise DataError(
            "mutex-watershed needs short-range (max |o| == 1) and long-range affinity offsets; the prediction's "
            f"offsets are {[list(o) for o in offsets]}; train with long-range offsets or use --method affinity-waterz"
        )
    shape = spatial_shape(pred)
    # An offset as long as an axis links nothing (and mwatershed panics on it): leave it out.
    used = [(channel, offset, is_short)
            for channel, offset, is_short in zip(channels_of(kinds, "affinity"), offsets, short)
            if all(abs(v) < n for v, n in zip(offset, shape))]
    if all(is_short for _, _, is_short in used):
        raise DataError(
            f"mutex-watershed: every long-range offset is as long as an axis of the {'×'.join(map(str, shape))} "
            f"volume (offsets {[list(o) for o in offsets]}); decode a larger volume or use --method affinity-waterz"
        )
    check_memory("mutex-watershed", shape, _MWS_BYTES + _MWS_BYTES_PER_CHANNEL * len(used),
                 f"{len(used)} affinity channels")
    weights = np.empty((len(used), *shape), np.float64)  # mwatershed takes float64 only
    for j, (channel, _, attractive) in enumerate(used):
        weights[j] = read_channel(pred, channel, kinds)
        if not attractive:
            weights[j] -= 1.0  # repulsive weight 1 - a, negative = mutex in mwatershed
    seg = mwatershed.agglom(weights, offsets=[[-v for v in offset] for _, offset, _ in used])
    del weights
    return finish_labels(seg, foreground_mask(pred, kinds, cfg), cfg.min_size)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence ``sys.stdout`` and file descriptor 1 (C++ ``std::cout`` bypasses ``sys.stdout``)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real stdout (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # and its Python prints
            yield
    finally:
        _flush_c_stdio()  # whatever the C++ side buffered goes to /dev/null, not to the restored fd
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _flush_c_stdio() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
