"""Writing volumes: :func:`create_volume` returns a :class:`VolumeWriter` that writes to a temporary
(or, when resumable, a partial store) and swaps it into place on commit, holding the output's lock
(:func:`output_lock_path`) from creation until commit or abort."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any
import numpy as np

from pytc.choices import Compression
from pytc.errors import OutputExistsError, VolumeError
from pytc.io import common, hdf5, slices, tiff, zarr_store
from pytc.io.addresses import DEFAULT_CHUNK, DEFAULT_H5_KEY, VolumeSpec, parse_spec
from pytc.io.disk import check_writable, disk_errors
from pytc.locks import exclusive, lock_path_for

PARTIAL_TAG = ".pytc-partial"  # suffix of a resumable writer's partial store (no pid: a rerun finds it)
RECORD_DIR = ".pytc-record"  # the bookkeeping folder of a partial store


class VolumeWriter:
    """Writable handle from :func:`create_volume`; data lands under its final name on commit.

    Assign with numpy-style indices (``out[0:64, :, :] = block``). ``commit()``/``close()`` (or
    leaving a ``with`` block normally) renames the temporary into place; ``abort()`` (or an
    exception inside the ``with`` block) deletes it. TIFF outputs are streamed page by page, so
    reading back (``out[...]``) works only for HDF5 and Zarr.

    A resumable writer (``create_volume(..., resumable=True)``) keeps its partial store when an
    exception leaves the ``with`` block (or on :meth:`suspend`), so a later run can reopen it;
    ``resumed`` tells whether this one did, and ``record_dir`` is a folder that travels with the
    partial store (inside a Zarr store, beside an HDF5 file) and is removed on commit.
    """

    def __init__(self, backend, spec: VolumeSpec, shape, dtype, voxel_size, tmp: Path, final: Path,
                 resumable: bool = False, resumed: bool = False, force: bool = False):  # fmt: skip
        self._backend, self._spec, self._tmp, self._final = backend, spec, tmp, final
        self._force = force
        self.shape, self.dtype, self.voxel_size = tuple(shape), np.dtype(dtype), voxel_size
        self.chunks: tuple[int, ...] = tuple(backend.chunks)
        self.format = spec.format
        self.resumable, self.resumed = resumable, resumed
        self._done = False
        self._lock = contextlib.ExitStack()  # the output's lock (create_volume), released when done
        common.LIVE_TEMPS.add(tmp.absolute())

    def _release(self) -> None:
        common.LIVE_TEMPS.discard(self._tmp.absolute())
        self._lock.close()

    spec = property(lambda self: self._spec.text)
    ndim = property(lambda self: len(self.shape))
    partial_path = property(lambda self: self._tmp, doc="Where the data is written until commit.")

    @property
    def record_dir(self) -> Path:
        """A folder kept with the partial data (created on first use) and dropped on commit."""
        path = _record_dir(self._tmp, self.format)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def attrs(self) -> dict:
        """The user attributes written so far (a copy)."""
        return self._backend.get_attrs() if hasattr(self._backend, "get_attrs") else {}

    def set_attrs(self, attrs: dict) -> None:
        """Write user attributes now (JSON-able values). Zarr keeps them as they are; HDF5 keeps
        strings, numbers and regular lists of numbers or strings natively and stores anything else
        (dicts, ``None``, empty, ragged or mixed lists) as its JSON text.

        Raises:
            VolumeError: the format has no attributes (TIFF, slices).
        """
        if not hasattr(self._backend, "set_attrs"):
            raise VolumeError(f"{self.format} outputs have no attributes; write Zarr or HDF5")
        self._backend.set_attrs(dict(attrs))

    def flush(self) -> None:
        """Make everything written so far durable in the partial store (HDF5 buffers writes)."""
        if hasattr(self._backend, "flush"):
            self._backend.flush()

    def __setitem__(self, index, value) -> None:
        sel, flip, out_shape = common.normalize_index(index, self.shape)
        sel_shape = tuple(len(range(s.start, s.stop, s.step)) for s in sel)
        if 0 in sel_shape:
            return
        value = np.broadcast_to(np.asarray(value), out_shape).reshape(sel_shape)
        with disk_errors(self.spec):
            self._backend.write(sel, common.flip(value, flip))

    def __getitem__(self, index) -> np.ndarray:
        if not hasattr(self._backend, "read"):
            raise TypeError(f"{self.format} outputs are write-only while being written")
        sel, flip, out_shape = common.normalize_index(index, self.shape)
        if any(s.stop <= s.start for s in sel):
            return np.empty(out_shape, self.dtype)
        return common.flip(np.asarray(self._backend.read(sel)), flip).reshape(out_shape)

    def commit(self) -> None:
        """Finish writing and move the data to its final name (replacing the old one)."""
        if self._done:
            return
        with disk_errors(self.spec):
            try:
                self._backend.finish()
                if self.format == "hdf5":  # see h5_commit: a dataset is added to the file, never the file replaced
                    hdf5.h5_commit(self._tmp, self._final, self._spec.key or DEFAULT_H5_KEY,
                                  whole_file=self._spec.key is None, force=self._force, what=self.spec,
                                  keep_tmp=self.resumable)
                else:
                    common.swap_in(self._tmp, self._final)
            except BaseException:
                self.suspend()  # a resumable partial store and its record survive a failed commit; others go
                raise
        self._done = True
        try:  # only now: until the data is in place, a rerun needs the record to finish just the commit
            common.remove_path(_record_dir(self._final if self.format == "zarr" else self._tmp, self.format))
        finally:
            self._release()

    close = commit

    def suspend(self) -> None:
        """Close without committing: a resumable partial store stays for a later run (any other
        writer is aborted)."""
        if not self.resumable:
            self.abort()
        elif not self._done:
            self._done = True
            try:
                self._backend.finish()
            finally:
                self._release()

    def abort(self) -> None:
        """Discard everything written; the destination is left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self._backend.abort()
        finally:
            common.remove_path(_record_dir(self._tmp, self.format))
            common.remove_path(self._tmp)
            self._release()

    def __enter__(self) -> VolumeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        elif self.resumable:
            self.suspend()
        else:
            self.abort()


def _record_dir(tmp: Path, format: str) -> Path:
    # Inside a Zarr store (zarr ignores folders without metadata); beside a file store (HDF5).
    return tmp / RECORD_DIR if format == "zarr" else tmp.with_name(tmp.name + RECORD_DIR)


def _check_shape(shape) -> tuple[int, ...]:
    try:
        out = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        out = ()
    if not out or any(n < 1 for n in out):
        raise VolumeError(f"shape must be a tuple of positive integers; got {shape!r}")
    return out


def _check_chunks(chunks, shape: tuple[int, ...]) -> tuple[int, ...]:
    if chunks is None:
        return tuple([1] * (len(shape) - 3) + [max(1, min(DEFAULT_CHUNK, n)) for n in shape[-3:]])
    try:
        out = tuple(int(c) for c in chunks)
    except (TypeError, ValueError):
        out = ()
    if len(out) != len(shape) or any(c < 1 for c in out):
        raise VolumeError(
            f"chunks must be {len(shape)} positive integers (one per axis of shape {shape}); got {chunks!r}"
        )
    return tuple(max(1, min(c, n)) for c, n in zip(out, shape))


def _check_compression(compression) -> str:
    try:
        return Compression(getattr(compression, "value", compression)).value
    except ValueError:
        choices = ", ".join(c.value for c in Compression)
        raise VolumeError(f"unknown compression {compression!r}; choose one of {choices}") from None


def _check_voxel_size(voxel_size) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    size = common.as_voxel_size(voxel_size)
    if size is None or len(np.ravel(voxel_size)) != 3:
        raise VolumeError(f"voxel size must be three positive numbers (z, y, x); got {voxel_size!r}")
    return size


def output_exists(spec: "str | os.PathLike | VolumeSpec") -> bool:
    """Whether writing ``spec`` would replace something (and so needs ``force``).

    A new dataset in an existing HDF5 file, a new array in an existing Zarr store and an empty slice
    folder replace nothing; a file that is not HDF5 where an HDF5 file is wanted does.
    """
    vs = spec if isinstance(spec, VolumeSpec) else parse_spec(spec)
    path = vs.path.absolute()
    final = path / vs.key if vs.format == "zarr" and vs.key is not None and path.is_dir() else path
    if final.is_symlink() and not final.exists():
        return True  # a link to nothing (an unmounted share, say): writing would replace the link
    exists = final.exists() and not (vs.format == "slices" and final.is_dir() and not any(final.iterdir()))
    if exists and vs.format == "hdf5" and vs.key is not None and final.is_file():
        exists = _h5_has_key(final, vs.key) is not False
    return exists


def _h5_has_key(path: Path, key: str) -> bool | None:
    """True/False if the HDF5 file has dataset ``key``; None if it is not a readable HDF5 file.

    Raises:
        VolumeError: the key cannot be a dataset of this file (a parent is a dataset, the key a
            group), or another process kept writing the file for longer than a commit takes.
    """
    try:
        with hdf5.h5_open_read(path) as f:
            conflict = hdf5.h5_key_conflict(f, key, path)
            if conflict:
                raise VolumeError(conflict)
            return key in f
    except OSError:
        return None


def create_volume(
    spec: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...] | None = None,
    compression: Compression | str = "gzip",
    voxel_size: tuple[float, float, float] | None = None,
    force: bool = False,
    resumable: bool = False,
    lock: bool = True,
) -> VolumeWriter:
    """Create a volume for writing; it appears under ``spec`` only once committed.

    Args:
        spec: destination address. ``out.zarr`` writes an OME-NGFF 0.5 image (array ``0``),
            ``out.zarr/path`` a plain array, ``out.h5[:key]`` a dataset (default key ``main``;
            ``out.h5:key`` adds it to an existing file, whose other datasets are never touched:
            it is copied in at commit under a brief lock on the file), ``out.tif`` a multi-page TIFF,
            ``out_dir/`` one ``slice_00000.tif`` per z-plane.
        shape, dtype: of the volume. TIFF and slice folders hold 3D volumes.
        chunks: HDF5/Zarr chunk shape (default 64 per spatial axis, clipped to the shape);
            TIFF outputs are written page by page and ignore it.
        compression: gzip, zstd, lz4 or none (HDF5 zstd/lz4 need ``hdf5plugin``; TIFF has no lz4).
        voxel_size: (z, y, x), stored in the format's usual place.
        force: replace an existing destination (only when the new one is committed).
        resumable: (HDF5/Zarr) write to ``.<name>.pytc-partial`` beside the destination
            (``.f.h5.<key>.pytc-partial`` for a dataset of an HDF5 file) and keep it
            when the writer is left by an exception; if such a partial store exists with the same
            shape, dtype and chunks it is reopened with its data (``writer.resumed``), otherwise
            it is started over. Several processes may open the same Zarr partial store and write
            disjoint chunks (all but one pass ``lock=False``).
        lock: hold an exclusive lock on the destination (:func:`output_lock_path`) until the
            writer is committed, aborted or suspended, so that a second writer of the same output
            (another process, or this one) is refused with a line naming the holder.

    Returns:
        A :class:`VolumeWriter`; use it as a context manager.

    Raises:
        OutputExistsError: the destination exists and ``force`` is False.
        VolumeError: invalid shape/chunks/compression/voxel size for this format.
        LockedError: another writer holds the destination.
    """
    vs = parse_spec(spec)
    shape, dtype = _check_shape(shape), np.dtype(dtype)
    compression, voxel_size = _check_compression(compression), _check_voxel_size(voxel_size)
    chunks = _check_chunks(chunks, shape)
    path = vs.path.absolute()
    check_writable(path)
    with disk_errors(vs.text):
        path.parent.mkdir(parents=True, exist_ok=True)
    in_store = vs.format == "zarr" and vs.key is not None and path.is_dir()  # new array, existing store
    final = path / vs.key if in_store else path
    held = contextlib.ExitStack()
    if lock:  # before anything is cleaned or created: the holder's temporaries are not stale
        with disk_errors(vs.text):
            held.enter_context(exclusive(output_lock_path(vs), f"output {vs.text}"))
    try:
        writer = _create(vs, path, final, in_store, shape, dtype, chunks, compression, voxel_size, force, resumable)
    except BaseException:
        held.close()
        raise
    writer._lock = held
    return writer


def output_lock_path(spec: "str | os.PathLike | VolumeSpec") -> Path:
    """The lock file of an output: ``.NAME.pytc-lock`` beside it (``.f.h5.KEY.pytc-lock`` for a
    dataset of an HDF5 file, so different datasets of one file have different locks)."""
    vs = spec if isinstance(spec, VolumeSpec) else parse_spec(spec)
    path = vs.path.absolute()
    if vs.format == "zarr" and vs.key is not None and path.is_dir():  # at the store's top: a/b may not exist
        return lock_path_for(path / _safe_key(vs.key))
    if vs.format == "hdf5":
        return lock_path_for(path.with_name(f"{path.name}.{_safe_key(vs.key or DEFAULT_H5_KEY)}"))
    return lock_path_for(path)


def _create(vs, path, final, in_store, shape, dtype, chunks, compression, voxel_size, force, resumable) -> VolumeWriter:
    common.clean_stale(final)
    # The temporary of a new dataset in an HDF5 file is a file of its own named after the key
    # (.f.h5.KEY.pytc-tmp-PID / .f.h5.KEY.pytc-partial), so writers of f.h5:A and f.h5:B never share one.
    stem = final.with_name(f"{final.name}.{_safe_key(vs.key)}") if vs.format == "hdf5" and vs.key else final
    if stem != final:
        common.clean_stale(stem)

    exists = output_exists(vs)
    if vs.format == "hdf5":
        writer, extra = hdf5.H5Writer, {"key": vs.key or DEFAULT_H5_KEY}
    elif vs.format == "zarr" and in_store:
        v2 = not (path / "zarr.json").exists() and any((path / f).exists() for f in (".zgroup", ".zarray"))
        writer, extra = zarr_store.ZarrWriter, {"store": path, "zarr_format": 2 if v2 else 3}
    elif vs.format == "zarr":
        ome = path.name[: -len(".zarr")] if vs.key is None else None  # a bare out.zarr is an OME image
        writer, extra = zarr_store.ZarrWriter, {"name": vs.key or "0", "ome": ome}
    else:
        writer, extra = tiff.TiffWriter if vs.format == "tiff" else slices.SlicesWriter, {}
    if exists and not force:
        raise OutputExistsError(f"{vs.text} exists; pass --force to overwrite")

    if resumable:
        if vs.format not in ("hdf5", "zarr"):
            raise VolumeError(f"resumable writes need a Zarr or HDF5 destination; got {vs.text}")
        tmp = stem.with_name(f".{stem.name}{PARTIAL_TAG}")
        _check_not_live(tmp, vs)
        if tmp.exists():
            try:
                backend = writer(tmp, shape, dtype, chunks, compression, voxel_size, **extra, resume=True)
                return VolumeWriter(backend, vs, shape, dtype, voxel_size, tmp, final, True, True, force=force)
            except common.Incompatible:
                pass
        common.remove_path(_record_dir(tmp, vs.format))
    else:
        tmp = stem.with_name(f".{stem.name}{common.TMP_TAG}{os.getpid()}")
        _check_not_live(tmp, vs)
    common.remove_path(tmp)
    try:
        with disk_errors(vs.text):
            backend = writer(tmp, shape, dtype, chunks, compression, voxel_size, **extra)
    except BaseException:
        common.remove_path(tmp)
        raise
    return VolumeWriter(backend, vs, shape, dtype, voxel_size, tmp, final, resumable, force=force)


def _check_not_live(tmp: Path, vs: VolumeSpec) -> None:
    if tmp.absolute() in common.LIVE_TEMPS:  # e.g. f.h5.k.h5 and f.h5:k.h5 (or f.h5:a/b and f.h5:a_b without locks)
        raise VolumeError(f"the temporary {tmp} of {vs.text} is in use by another writer of this process; "
                          "finish that one first or choose another output name")


def _safe_key(key: str) -> str:
    """An HDF5 key or Zarr path as a file-name part (``a/b`` → ``a_b``)."""
    return re.sub(r"[^\w.-]", "_", key.strip("/"))


