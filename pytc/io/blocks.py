"""Blockwise work: :func:`iter_blocks` tiles a volume into chunk-aligned blocks, :func:`map_blocks`
runs a task over them on a small thread pool with a progress bar, and :func:`convert` copies a
volume between formats block by block."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from pytc.choices import Compression
from pytc.io.common import json_attrs
from pytc.io.disk import check_not_input
from pytc.io.volume import open_volume
from pytc.io.write import create_volume
from pytc.progress import byte_bar

BLOCK_BYTES = 16 * 2**20  # one copy block: big enough to keep every core compressing, small in RAM
MAX_BLOCK_BYTES = 128 * 2**20  # ...unless source and destination chunks disagree (see _copy_plan)
SLAB_BYTES = 4 * 2**20  # one write inside a copy block: the most a copy writes after Ctrl-C
WORKERS = max(2, min(4, os.cpu_count() or 2))  # reads overlap writes even on 2 cores


# --------------------------------------------------------------------------- blockwise copies --
def iter_blocks(
    shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int, max_bytes: int | None = None
) -> Iterator[tuple[slice, ...]]:
    """Tile ``shape`` with blocks that are whole multiples of ``chunks`` and at most ``max_bytes``.

    Blocks grow along the last axes first (contiguous rows read fastest), but never below one
    chunk, so each chunk is read or written exactly once. Yields tuples of slices in C order.
    """
    max_bytes = BLOCK_BYTES if max_bytes is None else max_bytes
    chunks = tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))
    block = list(chunks)
    for axis in reversed(range(len(shape))):
        n_chunks = -(-shape[axis] // chunks[axis])
        others = itemsize * math.prod(block[:axis] + block[axis + 1 :])
        fit = max(1, max_bytes // max(1, others * chunks[axis]))
        block[axis] = chunks[axis] * min(n_chunks, fit)
        if fit < n_chunks:
            break
    for start in itertools.product(*(range(0, n, b) for n, b in zip(shape, block))):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))


def _copy_plan(src_chunks, dst_chunks, shape, itemsize) -> tuple[tuple[int, ...], int]:
    """Block unit and byte budget for copying: blocks aligned to both chunkings, so each source
    chunk (or compressed TIFF page) is decoded once and each destination chunk written once.
    When that unit is huge (e.g. 4096² pages into 64³ chunks), align to the destination only and
    use bigger blocks, so that source chunks are decoded a few times rather than many."""
    unit = tuple(min(n, math.lcm(s, d)) for s, d, n in zip(src_chunks or dst_chunks, dst_chunks, shape))
    size = math.prod(unit) * itemsize
    if size <= BLOCK_BYTES:
        return unit, BLOCK_BYTES
    return (unit, size) if size <= MAX_BLOCK_BYTES else (tuple(dst_chunks), MAX_BLOCK_BYTES)


def map_blocks(task: Callable, blocks, itemsize: int, show: bool, description: str, total: int,
                stop: threading.Event | None = None):
    """Run ``task(sel)`` over blocks on a small thread pool (reads overlap compression, which
    releases the GIL); yields results in order. At most 2×WORKERS blocks are queued at once.

    When the caller stops early (an error, Ctrl-C) the queued blocks are cancelled and ``stop`` is
    set, so that tasks that check it return at once: the pool waits for its running tasks before
    the caller may delete what they write to."""
    pending: deque = deque()
    with byte_bar(show, description, total) as advance, ThreadPoolExecutor(WORKERS, "pytc-io") as pool:
        try:
            for sel in blocks:
                pending.append((pool.submit(task, sel), sel))
                while len(pending) >= 2 * WORKERS:
                    future, done = pending.popleft()
                    yield future.result()
                    advance(math.prod(s.stop - s.start for s in done) * itemsize)
            while pending:
                future, done = pending.popleft()
                yield future.result()
                advance(math.prod(s.stop - s.start for s in done) * itemsize)
        finally:
            if stop is not None:
                stop.set()
            for future, _ in pending:
                future.cancel()


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    chunks: tuple[int, ...] | None = None,
    compression: Compression | str = "gzip",
    voxel_size: tuple[float, float, float] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Copy a volume to another format or layout, bit-exact, in bounded memory.

    Blocks aligned to the destination chunks (usually :data:`BLOCK_BYTES`, a few in flight)
    are copied on a small thread pool; the whole volume is never loaded. A 2D source is written
    as one z-slice, (1, Y, X), the way TIFF files and slice folders always read. The voxel size
    is kept unless ``voxel_size`` is given; the other attributes of an HDF5 dataset or Zarr array
    (e.g. a prediction's ``pytc_channels`` and ``pytc_scale``) are copied to Zarr and HDF5 outputs
    (TIFF and slices have none: a warning names what is dropped).

    Args:
        src, dst: volume addresses (see the module docs); ``src`` is only read.
        chunks, compression, voxel_size, force: as in :func:`create_volume`.
        progress: show a transient progress bar on stderr.

    Returns:
        ``{"src", "dst", "shape", "dtype", "bytes", "seconds"}`` (bytes = uncompressed size).

    Example:
        >>> convert("cremi.h5:volumes/raw", "raw.zarr", chunks=(32, 256, 256))  # doctest: +SKIP
    """
    start = time.perf_counter()
    check_not_input(dst, [src], what="destination")
    with open_volume(src) as source:
        flat = source.ndim == 2  # a 2D image becomes one z-slice
        shape = (1, *source.shape) if flat else source.shape
        src_chunks = source.chunks and ((1, *source.chunks) if flat else source.chunks)
        vsize = voxel_size if voxel_size is not None else source.voxel_size
        itemsize = source.dtype.itemsize
        with create_volume(dst, shape, source.dtype, chunks, compression, vsize, force) as out:
            attrs, odd = json_attrs(source.attrs)
            if odd:
                warnings.warn(f"attributes {', '.join(odd)} of {source.spec} are not plain JSON values (object "
                              "references, empty data, NaN) and are not copied", stacklevel=2)
            if attrs and out.format in ("zarr", "hdf5"):
                out.set_attrs(attrs)  # pytc_channels / pytc_scale: a converted prediction reads the same
            elif attrs:
                warnings.warn(f"{out.format} has no attributes: {', '.join(sorted(attrs))} of {source.spec} are "
                              "not copied; convert to Zarr or HDF5 to keep them", stacklevel=2)

            stop = threading.Event()  # set on Ctrl-C or an error: running copies end after their current slab

            def copy(sel):
                if stop.is_set():
                    return
                data = source[sel[1:]][None] if flat else source[sel]
                # A block is read at once (each source chunk decoded once) but written slab by slab,
                # so that Ctrl-C stops a copy of a 128 MB block within a fraction of a second.
                for part in iter_blocks(data.shape, out.chunks, itemsize, SLAB_BYTES):
                    if stop.is_set():
                        return
                    out[tuple(slice(s.start + p.start, s.start + p.stop) for s, p in zip(sel, part))] = data[part]

            unit, max_bytes = _copy_plan(src_chunks, out.chunks, shape, itemsize)
            blocks = iter_blocks(shape, unit, itemsize, max_bytes)
            label = f"convert → {Path(os.fspath(dst)).name}"
            for _ in map_blocks(copy, blocks, itemsize, progress, label, source.nbytes, stop):
                pass
    return {
        "src": os.fspath(src),
        "dst": os.fspath(dst),
        "shape": list(shape),
        "dtype": str(source.dtype),
        "bytes": int(source.nbytes),
        "seconds": round(time.perf_counter() - start, 3),
    }

