"""Prediction → instance labels.

:func:`decode` turns probabilities ``(C, Z, Y, X)`` (any array-like: numpy, h5py, zarr, a
:class:`~pytc.io.Volume`) into instance labels; :func:`decode_volume` does the same from a
prediction store written by ``pytc infer`` to a label volume. The decoders
(:class:`~pytc.choices.DecodeMethod`):

* ``threshold`` — the binary channel (or the only channel) ``> threshold``, connected components.
* ``bc-watershed`` — binary + contour, the standard mitochondria/nuclei decoder. Seeds are the
  connected components of ``binary > seed_threshold and contour < contour_threshold`` with at
  least ``min_seed_size`` voxels (smaller ones, often noise, would split an object); a seeded
  watershed (scikit-image, 6-neighbourhood) floods the elevation ``contour + (1 - binary)`` inside
  the mask ``binary > foreground_threshold``. The contour term puts the ridges where the network
  saw borders, so two touching objects split on their predicted contour rather than wherever the
  two floods happen to meet on a flat foreground; the ``1 - binary`` term makes the floods climb
  towards the background last. Foreground components without a seed stay background.
* ``affinity-waterz`` — waterz: watershed fragments from the short-range affinities, then
  agglomeration by ``merge_function`` for every threshold in ``merge_thresholds``. Only the
  channels with offsets ``(1,0,0), (0,1,0), (0,0,1)`` (waterz's own order, found by offset, not
  by position) feed waterz; long-range channels are ignored. Fragments come from waterz's own
  watershed with its default affinity bounds (voxels with no affinity above 0.0001 stay
  background; edges above 0.9999 are merged at once). The score of a boundary is
  ``1 - f(affinities on it)`` (f = mean or a quantile) and regions merge while it is below the
  threshold: a higher threshold merges more. Several thresholds give several label volumes
  (a dict ``{threshold: labels}``). Only the scoring functions the waterz wheel ships compiled
  are offered (:data:`WATERZ_SCORES`); the others would need a C++ compiler and Boost at run time.
* ``mutex-watershed`` — mwatershed, the original mutex watershed formulation (Wolf et al. 2018):
  short-range channels (offsets with ``max |o| == 1``) are attractive edges of weight ``a``,
  long-range channels repulsive edges of weight ``1 - a``; all edges are processed greedily by
  decreasing weight. In mwatershed's signed encoding this is
  ``mwatershed.agglom(w, offsets=[-o for o in offsets])`` with ``w = a`` (short) and
  ``w = a - 1`` (long), float64. The offsets are negated because pytc's channel for ``o`` links
  ``v`` with ``v - o`` (see :mod:`pytc.data.targets`) and mwatershed links ``v`` with ``v + o``.
  Offsets at least as long as an axis link nothing and are left out.
  The mutex watershed has no notion of background: it breaks background into fragments of its
  own (voxels that join nothing come back as 0); a binary channel masks them (below), or
  ``min_size`` removes the small ones.

Common to all: connected components use 26-connectivity (:data:`CONNECTIVITY`); when an affinity
prediction also has a binary channel, voxels with ``binary <= threshold`` are set to background;
instances with fewer than ``min_size`` voxels are removed; labels are renumbered 1..N (0 =
background) in raster order of each instance's first voxel, uint32, or uint64 when N needs it.
Parameter defaults live in :class:`pytc.config.DecodingConfig`.

Volumes of any size: ``threshold`` and ``bc-watershed`` decode a volume larger than
``block_size`` block by block (:mod:`pytc._decode_blocks`), holding one block at a time.
``threshold`` is exact: the labels are identical to a whole-volume decode. ``bc-watershed`` has
exact global seeds, so a region keeps one id across block borders, but each block is flooded
on the block plus ``halo`` voxels per side: where the flood's competition between two seeds is
decided beyond the halo, a voxel near a block border can go to another seed than in a
whole-volume flood (bench/decode.py's synthetic 128×512×512 prediction in 8 blocks gives labels
identical to the whole-volume ones with the default halo; 0.2% of the foreground differs with no
halo at all). The two affinity decoders agglomerate the whole volume at once and have no
blockwise form: they run in memory, and refuse (``DataError``) a volume whose estimated peak
memory exceeds the memory available, before reading it.

Example:
    >>> import numpy as np
    >>> pred = np.zeros((1, 4, 8, 8), np.float32); pred[0, 1:3, 1:3, 1:3] = 0.9; pred[0, 1:3, 5:8, 5:8] = 0.8
    >>> labels = decode(pred, "threshold", min_size=2)
    >>> labels.dtype, int(labels.max())
    (dtype('uint32'), 2)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, get_args

import numpy as np

from pytc import _decode_blocks as blocks
from pytc.choices import MERGE_QUANTILES, DecodeMethod
from pytc.errors import ConfigError, DataError, OutputExistsError
from pytc.progress import block_bars, status_line

if TYPE_CHECKING:
    from pytc.config import DecodingConfig
    from pytc.io import VolumeWriter

__all__ = ["CONNECTIVITY", "WATERZ_SCORES", "decode", "decode_volume", "decoding_params"]

# 26 (faces, edges and corners) is the full neighbourhood scikit-image's `label` uses, which the
# PyTC decoders relied on: thin oblique processes and objects that shift between anisotropic
# sections stay in one piece. (The watershed itself floods over faces only, scikit-image's default.)
CONNECTIVITY = 26

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
_BLOCKWISE = (DecodeMethod.threshold, DecodeMethod.bc_watershed)

# Peak memory of the in-memory decoders, bytes per voxel, measured as the rise of VmHWM while
# decoding 32x128x128 and 64x256x256 synthetic predictions (bench/decode.py's) held in memory,
# rounded up: waterz 43-53 (float32 affinities, uint64 fragments, region graph) and 8 more for
# every further threshold's labels; mwatershed 81-83 per affinity channel it is given (float64
# weights and its sorted edge list).
_WATERZ_BYTES, _WATERZ_BYTES_PER_THRESHOLD = 56, 8
_MWS_BYTES_PER_CHANNEL, _MWS_BYTES = 84, 16


def decode(
    pred: Any,
    method: DecodeMethod | str,
    channels: Optional[Sequence[str]] = None,
    offsets: Optional[Sequence[Sequence[int]]] = None,
    **params: Any,
) -> np.ndarray | dict[float, np.ndarray]:
    """Turn probabilities into instance labels.

    ``threshold`` and ``bc-watershed`` decode a volume larger than ``block_size`` block by block
    (a numpy result is still returned: pass a Zarr/HDF5 array-like, or use :func:`decode_volume`,
    for volumes larger than memory); the affinity decoders decode the whole volume in memory
    and check first that it fits (see the module docs).

    Args:
        pred: Probabilities in [0, 1], ``(C, Z, Y, X)``, or ``(Z, Y, X)`` for one channel; any
            array-like. Only the channels the method needs are read, one at a time.
        method: A :class:`~pytc.choices.DecodeMethod` or its value (``"bc-watershed"``, ...).
        channels: Kind of every channel (``binary``, ``contour``, ``affinity``, ``distance``);
            ``None`` is allowed for a one-channel prediction (taken as binary).
        offsets: ``(dz, dy, dx)`` of every affinity channel, in channel order; ``None`` means the
            default ``(1,0,0), (0,1,0), (0,0,1)`` when there are exactly three.
        **params: :class:`~pytc.config.DecodingConfig` fields (``threshold``, ``min_size``,
            ``seed_threshold``, ``contour_threshold``, ``foreground_threshold``,
            ``merge_thresholds``, ``merge_function``, ``block_size``, ``halo``); unset ones take
            the config defaults.

    Returns:
        uint32 (uint64 when needed) labels ``(Z, Y, X)``, 1..N, 0 = background; for
        ``affinity-waterz`` with several merge thresholds, ``{threshold: labels}`` in increasing
        threshold order.

    Raises:
        DataError: The prediction lacks the channels the method needs, the offsets do not match
            the affinity channels, the values are not probabilities, or an affinity decoder would
            need more memory than is available.
        ConfigError: Unknown method or parameter, or a value out of range.
    """
    method = _method(method)
    cfg = decoding_params(params)
    kinds = _channel_kinds(pred, channels)
    if method in _BLOCKWISE:
        return _blockwise(pred, method, kinds, cfg)[0]
    offsets = _affinity_offsets(kinds, offsets, method)
    if method is DecodeMethod.affinity_waterz:
        return _waterz(pred, kinds, offsets, cfg)
    return _mutex_watershed(pred, kinds, offsets, cfg)


def decoding_params(params: Mapping[str, Any]) -> "DecodingConfig":
    """Validate decoder parameters against :class:`~pytc.config.DecodingConfig` (defaults filled in).

    Raises:
        ConfigError: An unknown key (with a did-you-mean) or a value out of range.
    """
    from pytc.config import config_from_dict

    return config_from_dict({"decoding": dict(params)}, origin="decoding parameters").decoding


# ------------------------------------------------------------------------------- the decoders --
def _blockwise(pred, method: DecodeMethod, kinds: list[str], cfg, create=None, show: bool = False,
               scratch_beside=None) -> tuple[Optional[np.ndarray], int]:
    """``threshold`` or ``bc-watershed``, block by block when the volume is larger than a block.

    Args:
        create: ``create(dtype)`` → a context manager giving the array-like the labels are written
            to; None returns them as a numpy array.
        show: Progress bars on a terminal.
        scratch_beside: bc-watershed's temporary label stores go to a folder beside this path
            (the output); None keeps them in memory for a numpy prediction and puts them in the
            system's temporary folder otherwise.

    Returns:
        ``(labels or None when written to create's array, number of instances)``.
    """
    shape = _spatial_shape(pred)
    block = tuple(min(b, n) for b, n in zip(cfg.block_size, shape))
    if method is DecodeMethod.threshold:
        c = _threshold_channel(kinds)
    elif "binary" not in kinds or "contour" not in kinds:
        raise _needs("bc-watershed", "a binary and a contour channel", kinds)
    if block == shape:  # one block: the whole-volume decoder, as it always was
        labels = _threshold(pred, kinds, cfg) if method is DecodeMethod.threshold else _bc_watershed(pred, kinds, cfg)
        n = int(labels.max()) if labels.size else 0
        if create is None:
            return labels, n
        with create(labels.dtype) as out:
            out[...] = labels
        return None, n

    kept: dict[str, np.ndarray] = {}
    if create is None:

        def create(dtype):
            kept["labels"] = np.zeros(shape, dtype)
            return contextlib.nullcontext(kept["labels"])

    with block_bars(show) as step:
        if method is DecodeMethod.threshold:
            n = blocks.threshold_blocks(
                lambda sel: _read(pred, c, kinds, sel) > cfg.threshold, shape, block, cfg.min_size, create, step
            )
        else:
            b, k = kinds.index("binary"), kinds.index("contour")
            temporary = scratch_beside is None and not isinstance(pred, np.ndarray)
            with blocks.Scratch(scratch_beside, temporary=temporary) as scratch:
                n = blocks.bc_watershed_blocks(
                    lambda sel: (_read(pred, b, kinds, sel), _read(pred, k, kinds, sel)),
                    shape, block, tuple(cfg.halo), cfg, create, step, scratch,
                )
    return kept.get("labels"), n


def _threshold_channel(kinds: list[str]) -> int:
    if "binary" in kinds:
        return kinds.index("binary")
    if len(kinds) == 1:
        return 0
    raise _needs("threshold", "a binary channel (or a single-channel prediction)", kinds)


def _threshold(pred, kinds: list[str], cfg) -> np.ndarray:
    fg = _read(pred, _threshold_channel(kinds), kinds) > cfg.threshold
    return _finish(blocks.label_components(fg), None, cfg.min_size)


def _bc_watershed(pred, kinds: list[str], cfg) -> np.ndarray:
    from skimage.segmentation import watershed

    fg = _read(pred, kinds.index("binary"), kinds)
    contour = _read(pred, kinds.index("contour"), kinds)
    seeds = blocks.label_components((fg > cfg.seed_threshold) & (contour < cfg.contour_threshold))
    if cfg.min_seed_size > 1:
        seeds = _drop_small(seeds, cfg.min_seed_size)
    mask = fg > cfg.foreground_threshold
    contour += 1.0  # contour is our own copy: turn it into the elevation in place
    contour -= fg
    del fg
    return _finish(watershed(contour, markers=seeds, mask=mask), None, cfg.min_size)


def _waterz(pred, kinds: list[str], offsets: list[tuple[int, ...]], cfg) -> np.ndarray | dict[float, np.ndarray]:
    import waterz

    missing = [list(o) for o in _UNIT_OFFSETS if o not in offsets]
    if missing:
        raise DataError(
            f"affinity-waterz needs the short-range offsets [1, 0, 0], [0, 1, 0], [0, 0, 1]; the prediction's "
            f"affinity offsets are {[list(o) for o in offsets]} (missing {missing}); use --method mutex-watershed"
        )
    thresholds = sorted(set(float(t) for t in cfg.merge_thresholds))
    shape = _spatial_shape(pred)
    _check_memory("affinity-waterz", shape,
                  _WATERZ_BYTES + _WATERZ_BYTES_PER_THRESHOLD * (len(thresholds) - 1),
                  f"3 affinity channels, {len(thresholds)} merge threshold{'s' if len(thresholds) > 1 else ''}")
    aff_channels = _channels_of(kinds, "affinity")
    affs = np.empty((3, *shape), np.float32)  # C-contiguous float32, as waterz wants
    for j, o in enumerate(_UNIT_OFFSETS):
        affs[j] = _read(pred, aff_channels[offsets.index(o)], kinds)
    mask = _foreground_mask(pred, kinds, cfg)
    results: dict[float, np.ndarray] = {}
    with _quiet_stdout():  # waterz's C++ core prints its progress with std::cout
        segs = waterz.agglomerate(affs, thresholds=thresholds, scoring_function=WATERZ_SCORES[cfg.merge_function])
        for t, seg in zip(thresholds, segs):
            # waterz hands out the same buffer for every threshold and keeps merging into it.
            results[t] = _finish(seg.copy(), mask, cfg.min_size)
    return results if len(results) > 1 else results[thresholds[0]]


def _mutex_watershed(pred, kinds: list[str], offsets: list[tuple[int, ...]], cfg) -> np.ndarray:
    import mwatershed

    short = [max(abs(v) for v in o) == 1 for o in offsets]
    if all(short) or not any(short):
        raise DataError(
            "mutex-watershed needs short-range (max |o| == 1) and long-range affinity offsets; the prediction's "
            f"offsets are {[list(o) for o in offsets]}; train with long-range offsets or use --method affinity-waterz"
        )
    shape = _spatial_shape(pred)
    # An offset as long as an axis links nothing (and mwatershed panics on it): leave it out.
    used = [(c, o, s) for c, o, s in zip(_channels_of(kinds, "affinity"), offsets, short)
            if all(abs(v) < n for v, n in zip(o, shape))]
    if all(s for _, _, s in used):
        raise DataError(
            f"mutex-watershed: every long-range offset is as long as an axis of the {'×'.join(map(str, shape))} "
            f"volume (offsets {[list(o) for o in offsets]}); decode a larger volume or use --method affinity-waterz"
        )
    _check_memory("mutex-watershed", shape, _MWS_BYTES + _MWS_BYTES_PER_CHANNEL * len(used),
                  f"{len(used)} affinity channels")
    weights = np.empty((len(used), *shape), np.float64)  # mwatershed takes float64 only
    for j, (c, _, attractive) in enumerate(used):
        weights[j] = _read(pred, c, kinds)
        if not attractive:
            weights[j] -= 1.0  # repulsive weight 1 - a, negative = mutex in mwatershed
    seg = mwatershed.agglom(weights, offsets=[[-v for v in o] for _, o, _ in used])
    del weights
    return _finish(seg, _foreground_mask(pred, kinds, cfg), cfg.min_size)


# ------------------------------------------------------------------------------------ helpers --
def _drop_small(seg: np.ndarray, min_size: int) -> np.ndarray:
    """Set the labels with fewer than ``min_size`` voxels to 0 (in place)."""
    import fastremap

    ids, counts = fastremap.unique(seg, return_counts=True)
    small = ids[(counts < min_size) & (ids != 0)]
    return fastremap.mask(seg, small, in_place=True) if small.size else seg


def _finish(seg: np.ndarray, mask: Optional[np.ndarray], min_size: int) -> np.ndarray:
    """Mask, drop instances under ``min_size`` voxels, renumber 1..N, narrowest of uint32/uint64."""
    import fastremap

    if mask is not None:
        seg[~mask] = 0
    if min_size > 1:
        seg = _drop_small(seg, min_size)
    seg, mapping = fastremap.renumber(seg, preserve_zero=True, in_place=True)
    n = len(mapping) - (0 in mapping)
    return seg.astype(np.uint32 if n <= np.iinfo(np.uint32).max else np.uint64, copy=False)


def _method(method) -> DecodeMethod:
    try:
        return DecodeMethod(getattr(method, "value", method))
    except ValueError:
        names = ", ".join(m.value for m in DecodeMethod)
        raise ConfigError(f"unknown decode method {method!r}; choose one of {names}") from None


def group_kinds(kinds: Sequence[str]) -> str:
    """['binary', 'affinity', 'affinity'] → 'binary, affinity x2'."""
    groups: list[list] = []
    for k in kinds:
        if groups and groups[-1][0] == k:
            groups[-1][1] += 1
        else:
            groups.append([k, 1])
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in groups)


def _describe(kinds: Sequence[str]) -> str:
    """['binary', 'affinity', 'affinity'] → '3 channels: binary, affinity x2'."""
    return f"{len(kinds)} channel{'s' if len(kinds) != 1 else ''}: {group_kinds(kinds)}"


def _needs(method: str, needed: str, kinds: Sequence[str]) -> DataError:
    return DataError(
        f"{method} needs {needed}; the prediction has {_describe(kinds)}; "
        "predict those targets (data.targets) or choose another --method"
    )


def _channel_kinds(pred, channels: Optional[Sequence[str]]) -> list[str]:
    from pytc.config import TargetConfig

    ndim = len(pred.shape)
    if ndim not in (3, 4):
        raise DataError(
            f"a prediction must be (C, Z, Y, X) or (Z, Y, X), got shape {tuple(pred.shape)}; "
            "give 2D data a z axis of 1"
        )
    n = pred.shape[0] if ndim == 4 else 1
    if channels is None:
        if n != 1:
            raise DataError(
                f"the prediction has {n} channels but their kinds are unknown; "
                "give them, e.g. --channels binary,contour (pytc infer stores them as pytc_channels)"
            )
        return ["binary"]
    kinds = [str(k).strip() for k in channels]
    valid = get_args(TargetConfig.model_fields["name"].annotation)
    unknown = [k for k in kinds if k not in valid]
    if unknown:
        raise DataError(f"unknown channel kind {unknown[0]!r}; each channel is one of {', '.join(valid)}")
    if len(kinds) != n:
        raise DataError(
            f"{len(kinds)} channel kinds given ({', '.join(kinds)}) for a prediction with {n} channel"
            f"{'s' if n != 1 else ''}; give one kind per channel"
        )
    return kinds


def _affinity_offsets(kinds: list[str], offsets, method: DecodeMethod) -> list[tuple[int, ...]]:
    n = kinds.count("affinity")
    if n == 0:
        raise _needs(method.value, "affinity channels", kinds)
    if offsets is None:
        from pytc.config import TargetConfig

        if n != 3:
            raise DataError(
                f"the prediction has {n} affinity channels but no offsets; give their offsets "
                "(pytc infer stores them as pytc_offsets)"
            )
        offsets = TargetConfig.model_fields["offsets"].default
    try:
        result = [tuple(int(v) for v in o) for o in offsets]
    except (TypeError, ValueError):
        result = []
    if not result or any(len(o) != 3 or not any(o) for o in result):
        raise DataError(f"affinity offsets must be non-zero (dz, dy, dx) triples, got {offsets!r}")
    if len(result) != n:
        raise DataError(
            f"{len(result)} affinity offsets for {n} affinity channels ({_describe(kinds)}); "
            "give one offset per affinity channel"
        )
    return result


def _channels_of(kinds: Sequence[str], kind: str) -> list[int]:
    return [i for i, k in enumerate(kinds) if k == kind]


def _spatial_shape(pred) -> tuple[int, ...]:
    return tuple(pred.shape[1:] if pred.ndim == 4 else pred.shape)


def _read(pred, c: int, kinds: Sequence[str], sel: Optional[tuple] = None) -> np.ndarray:
    """Channel ``c`` (the spatial region ``sel``, default all) as a float32 array of our own,
    checked to hold probabilities."""
    sel = (slice(None),) * 3 if sel is None else tuple(sel)
    data = pred[(c, *sel)] if pred.ndim == 4 else pred[sel]
    # Callers modify the result in place: copy unless the reader handed us a fresh array.
    fresh = isinstance(data, np.ndarray) and data.base is None and data is not pred
    a = np.asarray(data, dtype=np.float32) if fresh else np.array(data, dtype=np.float32)
    if a.size:
        lo, hi = float(a.min()), float(a.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise DataError(
                f"channel {c} ({kinds[c]}) holds values in [{lo:.3g}, {hi:.3g}], not probabilities in [0, 1]; "
                "decode sigmoid outputs (pytc infer writes them)"
            )
    return a


def _check_memory(method: str, shape: tuple[int, ...], bytes_per_voxel: int, what: str) -> None:
    """Refuse an in-memory decode whose estimated peak exceeds the memory available now."""
    need = math.prod(shape) * bytes_per_voxel
    available = _available_memory()
    if available is not None and need > available:
        raise DataError(
            f"{method} decodes the whole volume in memory and needs about {_size(need)} for "
            f"{'×'.join(map(str, shape))} voxels ({what}), but {_size(available)} is available; "
            "decode a crop of the prediction, use a machine with more memory, or use --method threshold or "
            "bc-watershed (decoded block by block)"
        )


def _size(n: int) -> str:
    """2.5 GiB, 1.0 MiB, 4 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}" if unit == "KiB" else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _available_memory() -> Optional[int]:
    """Bytes this process can still allocate: MemAvailable (Linux), capped by a cgroup v2 limit
    (containers); psutil elsewhere; None when unknown (no check)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except Exception:  # not installed, or no answer on this platform
            return None
    try:  # cgroup v2: the limit minus what is used, not counting page cache it can drop
        cgroup = "/sys/fs/cgroup/"
        with open(cgroup + "memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open(cgroup + "memory.current") as f:
                used = int(f.read())
            with open(cgroup + "memory.stat") as f:
                cache = next((int(ln.split()[1]) for ln in f if ln.startswith("inactive_file ")), 0)
            available = min(available, max(int(limit) - used + cache, 0))
    except (OSError, ValueError):
        pass
    return available


def _foreground_mask(pred, kinds: Sequence[str], cfg) -> Optional[np.ndarray]:
    return _read(pred, kinds.index("binary"), kinds) > cfg.threshold if "binary" in kinds else None


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


# ---------------------------------------------------------------------------- volumes on disk --
class _Dequantized:
    """Array-like over a stored prediction: ``pred[c]`` reads one channel as float32 / scale."""

    def __init__(self, vol, scale: float):
        self._vol, self._scale = vol, float(scale)
        self.shape, self.ndim = tuple(vol.shape), len(vol.shape)

    def __getitem__(self, index) -> np.ndarray:
        a = np.array(self._vol[index], dtype=np.float32)  # a fresh array: decode may modify it
        if self._scale != 1.0:
            a /= np.float32(self._scale)
        return a


def decode_volume(
    pred_spec: str | os.PathLike,
    out_spec: str | os.PathLike,
    method: DecodeMethod | str | None = None,
    params: Optional[Mapping[str, Any]] = None,
    channels: Optional[Sequence[str]] = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Decode a stored prediction into a label volume.

    The prediction's attributes (see docs/architecture.md, "Prediction stores") supply what the
    file alone can: ``pytc_channels`` (kinds), ``pytc_offsets``, ``pytc_scale`` (uint8 stores are
    divided by 255) and ``pytc_config`` (its ``decoding`` section gives the method and parameter
    defaults). ``threshold`` and ``bc-watershed`` read, decode and write a volume larger than
    ``block_size`` one block at a time (bc-watershed keeps seed and region labels in a temporary
    store beside the output, deleted at the end); peak memory is then a few times one block's
    float32 size plus two z-planes of uint64 labels, whatever the volume. The affinity decoders
    decode the whole volume in memory and refuse, before reading it, a volume whose estimated
    peak exceeds the memory available (see the module docs).

    Args:
        pred_spec: The prediction, any :func:`pytc.io.open_volume` address.
        out_spec: Where the labels go, any :func:`pytc.io.create_volume` address. Several
            waterz merge thresholds write one volume each: ``seg.zarr`` → ``seg_t0.3.zarr``,
            ``seg_t0.5.zarr``; ``seg.h5:main`` → datasets ``main_t0.3``, ``main_t0.5`` in
            ``seg.h5`` (likewise ``seg_t0.3.tif``, ``seg_t0.3/`` for slices).
        method: Overrides the config's ``decoding.method``.
        params: :class:`~pytc.config.DecodingConfig` fields; override the stored config.
        channels: Channel kinds; override ``pytc_channels`` (needed when it is absent and the
            prediction has several channels).
        force: Replace existing outputs.
        progress: Show the current step on a terminal.

    Returns:
        ``{"method", "params", "shape", "dtype", "seconds", "outputs": [{"path", "threshold",
        "instances"}, ...]}``.

    Raises:
        OutputExistsError: An output exists and ``force`` is False (checked before decoding).
        DataError, ConfigError, VolumeError: As :func:`decode` and :func:`pytc.io.open_volume`.

    Example:
        >>> decode_volume("pred.zarr", "seg.zarr", "bc-watershed", {"min_size": 50})  # doctest: +SKIP
        {'method': 'bc-watershed', ..., 'outputs': [{'path': 'seg.zarr', 'threshold': None, 'instances': 17}]}
    """
    from pytc.io import channel_kinds_attr, check_not_input, create_volume, open_volume, parse_spec

    start = time.perf_counter()
    with open_volume(pred_spec) as vol:
        attrs = vol.attrs
        stored = _stored_decoding(attrs, str(pred_spec))
        if method is not None:
            stored["method"] = getattr(method, "value", method)
        cfg = decoding_params({**stored, **dict(params or {})})
        method = _method(cfg.method)
        if channels is None:
            channels = channel_kinds_attr(attrs)
        scale = _scale(vol, attrs)
        spatial = tuple(vol.shape[1:] if vol.ndim == 4 else vol.shape)
        thresholds = sorted(set(cfg.merge_thresholds)) if method is DecodeMethod.affinity_waterz else [None]
        targets = {t: str(out_spec) if len(thresholds) == 1 else _threshold_spec(out_spec, t) for t in thresholds}
        for spec in targets.values():  # fail now, not after minutes of decoding
            check_not_input(spec, [pred_spec])
            _check_output(spec, spatial, force)

        values = cfg.model_dump(exclude={"method"})
        voxel_size = vol.voxel_size if vol.voxel_size is not None and len(vol.voxel_size) == 3 else None
        pred = _Dequantized(vol, scale)
        outputs, dtypes = [], []

        def create(spec: str, dtype) -> "VolumeWriter":
            dtypes.append(np.dtype(dtype))
            return create_volume(spec, spatial, dtype, voxel_size=voxel_size, force=force)

        if method in _BLOCKWISE:  # block by block, straight into the output
            spec = targets[None]
            _, n = _blockwise(pred, method, _channel_kinds(pred, channels), cfg, lambda dtype: create(spec, dtype),
                              progress, parse_spec(spec).path)
            outputs.append({"path": spec, "threshold": None, "instances": n})
        else:
            with status_line(progress) as step:
                step(f"decoding {vol.spec} ({method.value})")
                result = decode(pred, method, channels, _offsets_attr(attrs), **values)
                labels = result if isinstance(result, dict) else {thresholds[0]: result}
                for t, spec in targets.items():
                    step(f"writing {spec}")
                    seg = labels.pop(t)
                    with create(spec, seg.dtype) as out:
                        out[...] = seg
                    outputs.append({"path": spec, "threshold": t, "instances": int(seg.max()) if seg.size else 0})
    return {
        "method": method.value,
        "params": values,
        "shape": list(spatial),
        "dtype": str(dtypes[0]),
        "seconds": time.perf_counter() - start,
        "outputs": outputs,
    }


def _check_output(spec: str, shape: tuple[int, ...], force: bool) -> None:
    """Raise now what :func:`pytc.io.create_volume` would raise for ``spec`` after decoding."""
    from pytc.io import create_volume, output_exists, parse_spec

    vs = parse_spec(spec)
    if vs.format == "hdf5" and vs.key is not None and vs.path.is_file():
        # A trial writer would copy the file's other datasets: look the dataset up instead.
        if not force and output_exists(vs):
            raise OutputExistsError(f"{spec} exists; pass --force to overwrite")
        return
    create_volume(spec, shape, np.uint32, force=force).abort()  # an empty trial store, deleted at once


def _threshold_spec(out_spec, t: float) -> str:
    """The address of the labels for waterz threshold ``t`` (see :func:`decode_volume`)."""
    from pytc.io import DEFAULT_H5_KEY, parse_spec

    vs = parse_spec(out_spec)
    tag = f"_t{t:g}"
    if vs.format == "hdf5":
        return f"{vs.path}:{vs.key or DEFAULT_H5_KEY}{tag}"
    if vs.format == "slices":
        return f"{vs.path.with_name(vs.path.name + tag)}{os.sep}"
    path = vs.path.with_name(vs.path.stem + tag + vs.path.suffix)
    return f"{path}/{vs.key}" if vs.key else str(path)


def _as_list(value) -> list:
    if isinstance(value, str):  # "binary,contour" or a JSON list
        import json

        return json.loads(value) if value.strip().startswith("[") else value.split(",")
    return list(value)


def _offsets_attr(attrs: dict):
    value = attrs.get("pytc_offsets")
    return None if value is None else _as_list(value)


def _scale(vol, attrs: dict) -> float:
    scale = attrs.get("pytc_scale")
    if scale is None:
        if vol.dtype.kind in "iu" and vol.dtype != np.uint8:
            raise DataError(
                f"{vol.spec} holds {vol.dtype} values and no pytc_scale attribute; "
                "a prediction is float probabilities or uint8 (probability x 255)"
            )
        if vol.dtype == np.uint8:
            import warnings

            warnings.warn(f"{vol.spec} has no pytc_scale attribute: reading its uint8 values as probability x 255 "
                          "(a 0/1 mask decodes to nothing; pytc infer writes the attribute)", stacklevel=3)
            return 255.0
        return 1.0
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        scale = float("nan")
    if not scale > 0:
        raise DataError(f"{vol.spec}: pytc_scale must be a positive number, got {attrs.get('pytc_scale')!r}")
    return scale


def _stored_decoding(attrs: dict, origin: str) -> dict:
    """The ``decoding`` section of the prediction's ``pytc_config`` (YAML text), or {}."""
    text = attrs.get("pytc_config")
    if not text:
        return {}
    from pytc.config import parse_yaml  # the bounded, strict reader every config goes through

    try:
        data = parse_yaml(text, f"{origin} pytc_config attribute") if isinstance(text, str) else text
    except ConfigError as err:
        raise ConfigError(f"{err}; fix or remove the attribute") from None
    section = data.get("decoding") if isinstance(data, dict) else None
    return dict(section) if isinstance(section, dict) else {}
