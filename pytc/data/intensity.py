"""Intensities: normalisation to network input, whole-volume statistics, finiteness checks, and the
block tiling these passes walk (re-exported by :mod:`pytc.data.volumes`).

Big volumes are never read whole: statistics and checks walk blocks of about ``BLOCK_VOXELS``
voxels of any array-like (numpy, h5py, zarr, a :mod:`pytc.io` volume). Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

from pytc.errors import DataError

BLOCK_VOXELS = 2**23  # ~8M voxels per chunk-wise read: 64 MiB even for uint64 labels


class VolumeStats(NamedTuple):
    """Intensity statistics of a whole image volume (all channels together)."""

    mean: float
    std: float


def normalize_image(
    x: np.ndarray, mode: str, source_dtype=None, stats: Optional[VolumeStats] = None
) -> np.ndarray:
    """Scale raw intensities to float32 network input (a new array; ``x`` is never modified).

    Args:
        x: raw voxels (any shape).
        mode: ``"unit"``: unsigned integers / dtype max (uint8 / 255, uint16 / 65535), signed
            integers mapped from their dtype range to [0, 1], floats passed through;
            ``"zscore"``: ``(x - mean) / std`` with ``stats``, always passed in (the whole volume's
            :func:`normalization_stats`: a patch or block never normalises with its own);
            ``"none"``: cast only.
        source_dtype: dtype the values were stored as, when ``x`` was already cast (defaults to
            ``x.dtype``); "unit" scales by its range.
        stats: volume statistics for "zscore" (required there).

    Returns:
        float32 array of ``x``'s shape.

    Example:
        >>> normalize_image(np.array([0, 51, 255], np.uint8), "unit")
        array([0. , 0.2, 1. ], dtype=float32)
    """
    dtype = np.dtype(source_dtype if source_dtype is not None else np.asarray(x).dtype)
    out = np.array(x, dtype=np.float32)  # always a copy: callers may hold cached volumes
    if mode == "none":
        return out
    if mode == "unit":
        if dtype.kind == "u":
            out /= np.float32(np.iinfo(dtype).max)
        elif dtype.kind == "i":
            info = np.iinfo(dtype)
            out -= np.float32(info.min)
            out /= np.float32(float(info.max) - float(info.min))
        return out  # floats and bools are already in their working range
    if mode == "zscore":
        if stats is None:
            raise ValueError("zscore normalisation needs the volume's statistics: pass stats=normalization_stats(...)")
        mean, std = stats
        out -= np.float32(mean)
        out /= np.float32(std if std > 0 else 1.0)  # a constant volume stays 0, not NaN
        return out
    raise ValueError(f"unknown normalisation {mode!r}; expected unit, zscore or none")


def block_shape(shape: Sequence[int], align: Optional[Sequence[int]] = None, voxels: int = BLOCK_VOXELS) -> tuple:
    """About ``voxels`` voxels per block, trailing axes kept whole first (contiguous reads).

    Each axis of the block is a multiple of ``align`` (or the whole axis).
    """
    shape = [int(s) for s in shape]
    align = [1] * len(shape) if align is None else [int(a) for a in align]
    block = list(shape)
    for axis in range(len(shape)):
        if math.prod(block) <= voxels:
            break
        rest = math.prod(block[axis + 1 :])
        block[axis] = max(align[axis], (voxels // rest) // align[axis] * align[axis])
        block[axis] = min(block[axis], shape[axis])
    return tuple(block)


def iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Slices tiling ``shape`` with ``block``-sized boxes (the last ones clipped)."""
    ranges = [range(0, s, b) for s, b in zip(shape, block)]
    for origin in np.ndindex(*[len(r) for r in ranges]):
        yield tuple(slice(r[i], min(r[i] + b, s)) for r, i, b, s in zip(ranges, origin, block, shape))


def volume_stats(vol, block_voxels: int = BLOCK_VOXELS) -> VolumeStats:
    """Mean and standard deviation of an array-like (numpy, h5py, zarr, ``pytc.io`` volume).

    Read block by block (Chan et al.'s parallel update in float64), so volumes larger than memory
    work and the result does not depend on the block size beyond rounding.
    """
    n, mean, m2 = 0, 0.0, 0.0
    for sel in iter_blocks(vol.shape, block_shape(vol.shape, voxels=block_voxels)):
        block = np.asarray(vol[sel], dtype=np.float64)
        k = block.size
        if k == 0:
            continue
        b_mean = float(block.mean())
        b_m2 = float(((block - b_mean) ** 2).sum())
        delta = b_mean - mean
        total = n + k
        mean += delta * k / total
        m2 += b_m2 + delta * delta * n * k / total
        n = total
    return VolumeStats(mean, math.sqrt(m2 / n) if n else 0.0)


def normalization_stats(volume, normalize: str) -> Optional[VolumeStats]:
    """The statistics :func:`normalize_image` needs for the mode ``normalize``, of the whole ``volume``.

    Args:
        volume: The whole image, an array-like (numpy, h5py, zarr, ``pytc.io`` volume).
        normalize: ``data.normalize``: ``"unit"``, ``"zscore"`` or ``"none"``.

    Returns:
        ``volume_stats(volume)`` for ``"zscore"``; None for the other modes (no pass over the volume).
    """
    return volume_stats(volume) if normalize == "zscore" else None


def check_finite(vol, name: str, block_voxels: int = BLOCK_VOXELS) -> None:
    """Refuse NaN/Inf voxels in a float array-like, block by block (integer volumes cannot hold them).

    Raises:
        DataError: naming the first non-finite voxel.
    """
    if np.dtype(vol.dtype).kind not in "fc":
        return
    for sel in iter_blocks(vol.shape, block_shape(vol.shape, voxels=block_voxels)):
        raise_if_not_finite(np.asarray(vol[sel]), name, [s.start for s in sel])


def raise_if_not_finite(block: np.ndarray, name: str, origin: Sequence[int]) -> None:
    """:func:`check_finite` for one block in memory whose first voxel is at ``origin``."""
    if block.dtype.kind in "fc" and not np.isfinite(block).all():
        first = tuple(int(i) + int(o) for i, o in zip(np.argwhere(~np.isfinite(block))[0], origin))
        raise DataError(
            f"{name} has NaN or infinite values (first at voxel {first}); replace them (e.g. with 0) "
            "or mask them out, then rerun"
        )
