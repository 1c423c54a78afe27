"""Multi-page TIFF stacks for :mod:`pytc.io`, and the TIFF helpers slice folders share
(:mod:`pytc.io.slices`).

Readers and writers follow the protocol described in :mod:`pytc.io.common`, whose shared helpers
they use. A multi-page TIFF is read page by page (or memory-mapped) and written as a stream.
tifffile is imported inside functions: importing this module must stay cheap (``pytc --help``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from pytc.errors import VolumeError
from pytc.io.common import GZIP_LEVEL, ZSTD_LEVEL, _first_line, _native, as_voxel_size

_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_BIGTIFF_BYTES = 2**31  # classic TIFF offsets are 32-bit; switch early, compression can't shrink headers
_TIFF_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, struct.error, zlib.error)


@functools.cache  # idempotent; called on every slice read
def _ensure_tiff_zstd() -> None:
    """Let tifffile read/write zstd TIFFs without imagecodecs, using numcodecs (a zarr dependency)."""
    import tifffile

    try:
        import imagecodecs  # noqa: F401  (tifffile uses it when present)

        return
    except ImportError:
        pass
    try:
        from compression import zstd  # noqa: F401  (Python >= 3.14: tifffile's own fallback works)

        return
    except ImportError:
        pass
    import numcodecs

    def encode(data, level=None, *, out=None):
        return numcodecs.Zstd(level=level or ZSTD_LEVEL).encode(np.ascontiguousarray(data))

    def decode(data, *, out=None):
        return numcodecs.Zstd().decode(data)

    # tifffile caches codec functions per TIFF compression tag (50000, and legacy 34926)
    for table, func in ((tifffile.TIFF.COMPRESSORS, encode), (tifffile.TIFF.DECOMPRESSORS, decode)):
        cache = getattr(table, "_codecs", None)
        if isinstance(cache, dict):
            cache.setdefault(50000, func)
            cache.setdefault(34926, func)


def _tiff_voxel_size(tif):
    """(z, y, x) from ImageJ ``spacing`` + X/YResolution, or from tifffile's JSON ``voxel_size``."""
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        tags = tif.pages.first.tags

        def size(tag):
            value = tags[tag].value if tag in tags else None
            return value[1] / value[0] if value and value[0] else None

        x, y, z = size("XResolution"), size("YResolution"), meta.get("spacing")
        if z is None and x in (None, 1.0) and y in (None, 1.0):
            return None
        return as_voxel_size([z or 1.0, y or 1.0, x or 1.0])
    shaped = tif.shaped_metadata
    if shaped and isinstance(shaped[0], dict) and "voxel_size" in shaped[0]:
        return as_voxel_size(shaped[0]["voxel_size"])
    return None


class _TiffLog(logging.Filter):
    """While active, silences tifffile's log and keeps its errors: on a truncated or corrupted file
    tifffile logs an error and carries on with what it could read, rather than raising."""

    def __enter__(self) -> list[str]:
        self.errors: list[str] = []
        logging.getLogger("tifffile").addFilter(self)
        return self.errors

    def __exit__(self, *exc) -> None:
        logging.getLogger("tifffile").removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage().split("> ", 1)[-1])
        return record.levelno < logging.WARNING


def _open_tiff(path: Path):
    import tifffile

    _ensure_tiff_zstd()
    tif = None
    with _TiffLog() as errors:
        try:
            tif = tifffile.TiffFile(path)
            series = _image_series(tif)[0]
            _ = series.shape, series.dtype, series.pages[-1]
        except (tifffile.TiffFileError, *_TIFF_READ_ERRORS) as err:
            errors.append(_first_line(err))
    if errors:
        if tif is not None:
            tif.close()
        raise VolumeError(f"{path} is not a readable TIFF file ({errors[0]}); is it truncated or corrupted?")
    return tif, series


def _image_series(tif) -> list:
    """The series that hold the image: thumbnails and previews (reduced-resolution pages, which
    microscope TIFFs such as Zeiss LSM carry beside the stack) are not part of it."""
    full = [s for s in tif.series if not s.keyframe.is_reduced]
    return full or list(tif.series)


def _page_count(series) -> int:
    return int(np.prod(series.shape[: len(series.shape) - len(series.keyframe.shape)], dtype=np.int64))


def _all_pages(tif, path: Path) -> list:
    """The pages of every series of ``tif``, in file order, as one stack. tifffile makes a series of
    each page written by its own ``write`` call, and of each run of pages alike; pytc reads them
    all, and refuses pages of another shape or dtype rather than silently reading only the first.

    Raises:
        VolumeError: a page of another shape or dtype than the first (naming it), or an unreadable page.
    """
    first = _image_series(tif)[0]
    want = (tuple(first.keyframe.shape), _native(first.dtype))
    pages: list = []
    with _TiffLog() as errors:
        try:
            for series in _image_series(tif):
                got = (tuple(series.keyframe.shape), _native(series.dtype))
                if got != want:
                    raise VolumeError(
                        f"page {len(pages)} of {path} has shape {got[0]} {got[1]} but page 0 has shape {want[0]} "
                        f"{want[1]}; a TIFF stack needs pages of one shape and dtype: save them alike, or split "
                        "the file"
                    )
                count = _page_count(series)
                if len(series.pages) != count:  # pages without an IFD of their own (ImageJ > 4 GB)
                    raise VolumeError(f"{path} holds several image series, one of them stored ImageJ-style "
                                      "without page headers; save it as one stack")
                pages.extend(series.pages[i] for i in range(count))
        except _TIFF_READ_ERRORS as err:
            errors.append(_first_line(err))
    if errors:
        tif.close()
        raise VolumeError(f"{path} is not a readable TIFF file ({errors[0]}); is it truncated or corrupted?")
    return pages


def _tiff_compression(page) -> str | None:
    name = page.compression.name.lower()
    return None if name == "none" else "zlib" if name in ("adobe_deflate", "deflate") else name


class TiffReader:
    """Multi-page TIFF: memory-mapped when uncompressed and contiguous, else read page by page. A
    file of several series (pages written one ``write`` call each) is one stack of all their pages."""

    format = "tiff"
    attrs: dict = {}  # TIFF has no user attributes

    def __init__(self, path: Path):
        import tifffile

        self.path, self.key = path, None
        self._tif, series = _open_tiff(path)
        page = series.keyframe
        npages = _page_count(series)
        self.dtype = _native(series.dtype)
        self._pages, self._memmap, self._lock = series.pages, None, threading.Lock()
        several = len(_image_series(self._tif)) > 1
        if several:  # written page by page (a series per page), or several stacks
            self._pages = _all_pages(self._tif, path)
            npages = len(self._pages)
        self.shape = (npages, *page.shape)  # always a stack: a single image is (1, Y, X)
        self.chunks = (1, *page.shape)
        self.compression = _tiff_compression(page)
        self.voxel_size = _tiff_voxel_size(self._tif)
        if series.dataoffset is not None and not several:  # uncompressed, contiguous: memory-map
            try:
                index = self._tif.series.index(series)
                self._memmap = tifffile.memmap(path, series=index, mode="r").reshape(self.shape)
            except ValueError as err:
                self._tif.close()
                raise VolumeError(
                    f"{path} is not a readable TIFF file ({_first_line(err)}); is it truncated?"
                ) from None
        else:
            self._tif.filehandle.set_lock(True)  # pages may be decoded from several threads

    def read(self, sel) -> np.ndarray:
        if self._memmap is not None:
            return np.array(self._memmap[sel], dtype=self.dtype)  # a copy: callers may write to it
        zs, rest = sel[0], sel[1:]
        idx = range(zs.start, zs.stop, zs.step)
        out = np.empty((len(idx), *(len(range(*s.indices(n))) for s, n in zip(rest, self.shape[1:]))), self.dtype)
        for k, z in enumerate(idx):
            out[k] = self._page(z)[rest]
        return out

    def _page(self, z: int) -> np.ndarray:
        with _TiffLog() as errors:
            try:
                with self._lock:  # tifffile parses a page's IFD from the shared file handle
                    page = self._pages[z]
                page = page.asarray()
            except _TIFF_READ_ERRORS as err:
                errors.append(_first_line(err))
        if errors:
            raise VolumeError(f"cannot read page {z} of {self.path} ({errors[0]}); is it truncated or corrupted?")
        return page

    def disk_bytes(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        self._memmap = None
        self._tif.close()


def _tiff_write_kwargs(compression: str, dtype: np.dtype, voxel_size, shape: tuple, bigtiff: bool) -> dict:
    if compression == "lz4":
        raise VolumeError("TIFF has no lz4 compression; use --compression zstd, gzip or none")
    if compression == "zstd":
        _ensure_tiff_zstd()
    codec = {"gzip": ("zlib", {"level": GZIP_LEVEL}), "zstd": ("zstd", {"level": ZSTD_LEVEL}), "none": (None, None)}
    name, args = codec[compression]
    kwargs: dict = {"compression": name, "compressionargs": args, "photometric": "minisblack"}
    kwargs["maxworkers"] = min(4, os.cpu_count() or 1)  # tifffile compresses a page's strips in parallel
    # Fiji reads calibration from ImageJ metadata, which holds only these dtypes, no BigTIFF, and
    # (like tifffile's own JSON metadata) mistakes a trailing axis of size 1 for colour samples.
    if dtype in _IMAGEJ_DTYPES and not bigtiff and shape[-1] > 1:
        kwargs["imagej"] = True
        kwargs["metadata"] = {"axes": "ZYX"[-len(shape) :]}
        if voxel_size is not None:
            kwargs["resolution"] = (1.0 / voxel_size[2], 1.0 / voxel_size[1])
            kwargs["metadata"]["spacing"] = float(voxel_size[0])
    else:  # a hand-written tifffile "shaped" description keeps the exact shape and the voxel size
        description = {"shape": list(shape)} | ({"voxel_size": list(voxel_size)} if voxel_size is not None else {})
        kwargs |= {"metadata": None, "description": json.dumps(description)}
    return kwargs


class _PlaneWriter:
    """Assembles arbitrary slice writes into whole z-planes and passes each finished plane to
    ``_emit`` (in z order when ``ordered``). Unwritten planes are emitted as zeros on finish."""

    ordered = False

    def __init__(self, shape, dtype):
        if len(shape) != 3:
            raise VolumeError(f"TIFF stacks and slice folders hold 3D volumes (Z,Y,X); got shape {tuple(shape)}: "
                              "write .zarr or .h5 for a volume with channels")
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), (1, *shape[1:])
        self._partial: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ready: dict[int, np.ndarray] = {}
        self._emitted: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()

    def write(self, sel, value) -> None:
        zs, ys, xs = sel
        full = all(s.step == 1 and s.start == 0 and s.stop == n for s, n in zip((ys, xs), self.shape[1:]))
        with self._lock:
            for k, z in enumerate(range(zs.start, zs.stop, zs.step)):
                if z in self._emitted:
                    raise ValueError(f"plane {z} was already written; TIFF output is written page by page")
                if full and z not in self._partial:
                    self._complete(z, np.array(value[k], dtype=self.dtype))
                    continue
                plane, mask = self._partial.setdefault(
                    z, (np.zeros(self.shape[1:], self.dtype), np.zeros(self.shape[1:], bool))
                )
                plane[ys, xs], mask[ys, xs] = value[k], True
                if mask.all():
                    del self._partial[z]
                    self._complete(z, plane)

    def _complete(self, z: int, plane: np.ndarray) -> None:
        self._emitted.add(z)
        if not self.ordered:
            self._emit(z, plane)
            return
        self._ready[z] = plane
        while self._next in self._ready:
            self._emit(self._next, self._ready.pop(self._next))
            self._next += 1

    def finish(self) -> None:
        for z in range(self.shape[0]):
            if z not in self._emitted:
                plane = self._partial.pop(z, (np.zeros(self.shape[1:], self.dtype),))[0]
                self._complete(z, plane)

    def _emit(self, z: int, plane: np.ndarray) -> None:
        raise NotImplementedError



_END, _ABORT = object(), object()


class TiffWriter(_PlaneWriter):
    """Streams a multi-page TIFF page by page: tifffile pulls planes from a small queue that
    :meth:`write` fills, so at most a few planes are held in memory."""

    ordered = True

    def __init__(self, file: Path, shape, dtype, chunks, compression, voxel_size):
        super().__init__(shape, dtype)
        bigtiff = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize > _BIGTIFF_BYTES
        kwargs = _tiff_write_kwargs(compression, self.dtype, voxel_size, self.shape, bigtiff)
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        imagej = kwargs.pop("imagej", False)
        self._thread = threading.Thread(
            target=self._run, args=(file, bigtiff, imagej, kwargs), name="pytc-tiff-writer", daemon=True
        )
        self._thread.start()

    def _run(self, file, bigtiff, imagej, kwargs) -> None:
        import tifffile

        def planes():
            for _ in range(self.shape[0]):
                item = self._queue.get()
                if item is _ABORT:
                    raise _Aborted
                yield item

        try:
            with tifffile.TiffWriter(file, bigtiff=bigtiff, imagej=imagej) as tw:
                tw.write(planes(), shape=self.shape, dtype=self.dtype, **kwargs)
        except _Aborted:
            pass
        except BaseException as err:  # re-raised in the writing thread
            self._error = err

    def _put(self, item) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                return
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _emit(self, z, plane):
        self._put(plane)

    def finish(self) -> None:
        super().finish()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put_nowait(_ABORT)
            except queue.Full:  # drain so the writer thread sees the abort marker
                while not self._queue.empty():
                    self._queue.get_nowait()
                self._queue.put_nowait(_ABORT)
            self._thread.join()


class _Aborted(Exception):
    pass
