"""Volume I/O: one addressing scheme, lazy reads, all-or-nothing writes, and conversion.

Addresses (the same in every command)::

    data.h5 / data.hdf5        HDF5; a file holding exactly one dataset needs no key
    data.h5:volumes/raw        HDF5 dataset by path
    vol.zarr                   Zarr v2/v3 store; an OME-NGFF image opens its scale 0
    vol.zarr/some/array        Zarr array inside a store
    stack.tif / stack.tiff     multi-page TIFF
    slices_dir/                folder of 2D TIFF/PNG slices in natural order (z2 before z10)

:func:`open_volume` returns a lazy :class:`Volume` (nothing is read until it is sliced, so
volumes of many GB can be streamed); :func:`create_volume` returns a :class:`VolumeWriter` that
writes to a temporary sibling (``.out.zarr.pytc-tmp-<pid>``) and renames it into place only when
closed without error. Voxel sizes are always ordered (z, y, x). User attributes (HDF5 dataset
attributes, Zarr array attributes; JSON-able values) are read with ``Volume.attrs`` and written
with ``VolumeWriter.set_attrs``. ``create_volume(..., resumable=True)`` writes to a deterministic
partial store (``.out.zarr.pytc-partial``) that a later run with the same destination reopens,
with a record folder for the caller's bookkeeping (e.g. finished blocks), dropped on commit.

Example:
    >>> from pytc.io import convert, open_volume
    >>> convert("raw.h5:main", "raw.zarr", progress=False)["shape"]    # doctest: +SKIP
    [100, 1024, 1024]
    >>> with open_volume("raw.zarr") as vol:                             # doctest: +SKIP
    ...     block = vol[10:20, :256, :256]                               # reads only these chunks
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import re
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pytc import _io_formats as fmt
from pytc import _io_tiff as tiff
from pytc.choices import Compression
from pytc.errors import OutputExistsError, PytcError, VolumeError
from pytc.locks import exclusive, lock_path_for

__all__ = [
    "Volume",
    "VolumeSpec",
    "VolumeWriter",
    "check_not_input",
    "check_writable",
    "convert",
    "create_volume",
    "disk_errors",
    "iter_blocks",
    "list_volumes",
    "open_volume",
    "output_lock_path",
    "parse_spec",
    "volume_info",
]

DEFAULT_CHUNK = 64  # 64³ voxels: the usual EM chunk, small enough for random patch reads
DEFAULT_H5_KEY = "main"  # dataset name used when an HDF5 destination names none
PARTIAL_TAG = ".pytc-partial"  # suffix of a resumable writer's partial store (no pid: a rerun finds it)
RECORD_DIR = ".pytc-record"  # the bookkeeping folder of a partial store
BLOCK_BYTES = 16 * 2**20  # one copy block: big enough to keep every core compressing, small in RAM
MAX_BLOCK_BYTES = 128 * 2**20  # ...unless source and destination chunks disagree (see _copy_plan)
SLAB_BYTES = 4 * 2**20  # one write inside a copy block: the most a copy writes after Ctrl-C
WORKERS = max(2, min(4, os.cpu_count() or 2))  # reads overlap writes even on 2 cores

_ZARR_RE = re.compile(r"^(?P<path>.*?\.zarr)(?:[/:](?P<key>.*))?$", re.IGNORECASE)
_H5_RE = re.compile(r"^(?P<path>.*?\.(?:h5|hdf5|hdf))(?::(?P<key>.*))?$", re.IGNORECASE)
_SPEC_FORMS = "file.h5[:dataset], vol.zarr[/array], stack.tif or a folder of slices/"


@dataclass(frozen=True)
class VolumeSpec:
    """A parsed volume address: ``format`` is 'hdf5', 'zarr', 'tiff' or 'slices'."""

    text: str
    format: str
    path: Path
    key: str | None = None


def parse_spec(spec: str | os.PathLike) -> VolumeSpec:
    """Split a volume address into format, path on disk and inner key (see the module docs).

    Raises:
        VolumeError: the address has an extension pytc does not read or write.
    """
    text = os.fspath(spec)
    if not text.strip():
        raise VolumeError(f"empty volume path; give {_SPEC_FORMS}")
    for name, regex in (("zarr", _ZARR_RE), ("hdf5", _H5_RE)):
        match = regex.match(text)
        if match:
            path, key = match["path"], match["key"]
            if key is not None and text[len(path)] == ":":  # a file or folder named "z.zarr:x" itself?
                slash = text.find("/", len(path))  # a Zarr key may go on inside such a folder
                whole = text if name == "hdf5" or slash < 0 else text[:slash]
                if os.path.lexists(whole):
                    path, key = whole, text[len(whole) + 1 :]
            key = (key or "").strip("/") or None
            if key is not None and any(part in (".", "..") for part in key.split("/")):
                raise VolumeError(f"{text}: {'a dataset' if name == 'hdf5' else 'an array'} path may not contain "
                                  "'.' or '..'; name it from the top of the file or store")
            return VolumeSpec(text, name, Path(path), key)
    path = Path(text)
    if path.suffix.lower() in (".tif", ".tiff"):
        return VolumeSpec(text, "tiff", path)
    if path.is_dir() or text.endswith(("/", os.sep)) or not path.suffix:
        return VolumeSpec(text, "slices", path)
    raise VolumeError(f"cannot tell the format of {text} ({path.suffix} is not supported); use {_SPEC_FORMS}")


class Volume:
    """Lazy, read-only, array-like view of a volume on disk (see :func:`open_volume`).

    Attributes: ``shape dtype ndim chunks compression voxel_size format spec path key attrs``
    (``attrs``: the user attributes of an HDF5 dataset or Zarr array as plain JSON-able values;
    empty for TIFF and slices). Indexing with ints, slices and ``...`` reads only the requested
    region and returns numpy.
    """

    def __init__(self, reader, spec: VolumeSpec):
        self._reader, self._spec = reader, spec
        self.shape: tuple[int, ...] = tuple(int(n) for n in reader.shape)
        self.dtype: np.dtype = np.dtype(reader.dtype)
        self.chunks: tuple[int, ...] | None = tuple(reader.chunks) if reader.chunks else None
        self.compression: str | None = reader.compression
        self.voxel_size: tuple[float, float, float] | None = reader.voxel_size
        self.format: str = reader.format
        self.path: Path = reader.path
        self.key: str | None = reader.key
        self._closed = False

    spec = property(lambda self: self._spec.text, doc="The address this volume was opened with.")
    attrs = property(lambda self: dict(self._reader.attrs), doc="User attributes (a copy; JSON-able values).")
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __getitem__(self, index) -> np.ndarray:
        if self._closed:
            raise ValueError(f"volume {self.spec} is closed")
        sel, flip, out_shape = fmt.normalize_index(index, self.shape)
        if any(s.stop <= s.start for s in sel):
            return np.empty(out_shape, self.dtype)
        return fmt.flip(np.asarray(self._reader.read(sel), dtype=self.dtype), flip).reshape(out_shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Volume({self.spec!r}, shape={self.shape}, dtype={self.dtype}, format={self.format!r})"

    def __reduce__(self):  # re-open by address in another process (e.g. data-loader workers)
        return open_volume, (self.spec,)

    def disk_bytes(self) -> int:
        """Bytes the stored (compressed) data takes on disk."""
        return int(self._reader.disk_bytes())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._reader.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_volume(spec: str | os.PathLike) -> Volume:
    """Open a volume lazily: only metadata is read until the volume is sliced.

    Args:
        spec: a volume address, e.g. ``"data.h5:raw"``, ``"vol.zarr"``, ``"stack.tif"``, ``"slices/"``.

    Returns:
        A :class:`Volume`; use it as a context manager or call ``close()``.

    Raises:
        VolumeError: missing or unreadable file, unknown extension, missing/ambiguous dataset key.
    """
    vs = parse_spec(spec)
    if not vs.path.exists():
        raise VolumeError(f"{vs.path} does not exist; check the path")
    if vs.format in ("hdf5", "tiff") and vs.path.is_dir():
        raise VolumeError(
            f"{vs.path} is a folder, not {'an HDF5' if vs.format == 'hdf5' else 'a TIFF'} file; check the path"
        )
    if vs.format in ("zarr", "slices") and not vs.path.is_dir():
        what = "a Zarr store (a folder)" if vs.format == "zarr" else "a folder of slices"
        raise VolumeError(f"{vs.path} is a file, not {what}; use {_SPEC_FORMS}")
    if vs.format == "hdf5":
        reader = fmt.H5Reader(vs.path, vs.key)
    elif vs.format == "zarr":
        reader = fmt.ZarrReader(vs.path, vs.key)
    elif vs.format == "tiff":
        reader = tiff.TiffReader(vs.path)
    else:
        reader = tiff.SlicesReader(vs.path)
    return Volume(reader, vs)


# ------------------------------------------------------------------------------------ writing --
# Errors of the disk rather than of pytc: reported as one line (VolumeError), never as a traceback.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_ERRNOS = _FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


FULL_BELOW = 16 * 2**20  # free bytes under which a write that failed without saying why failed for want of space


def _disk_errno(err: BaseException, target: str | os.PathLike | None = None) -> int | None:
    """The errno of a failed write. h5py puts it only into the message ("errno = 28"); numpy's
    ``tofile`` (tifffile, zarr) raises ``OSError("N requested and M written")`` without one, and
    h5py some ``RuntimeError`` without one: those count as a full disk only when the disk of
    ``target`` is really (nearly) full."""
    code = getattr(err, "errno", None)
    if isinstance(err, OSError) and code in _DISK_ERRNOS:
        return code
    if not isinstance(err, (OSError, RuntimeError)):
        return None
    found = re.search(r"errno = (\d+)", str(err))
    if found and int(found[1]) in _DISK_ERRNOS:
        return int(found[1])
    if code is None and target is not None and _free_bytes(target) < FULL_BELOW:
        return errno.ENOSPC
    return None


def _free_bytes(target: str | os.PathLike) -> float:
    """Free bytes on the file system of ``target`` (an address or a path; inf when unknown)."""
    try:
        here = parse_spec(target).path.absolute()
    except VolumeError:
        here = Path(os.fspath(target)).absolute()
    while not here.is_dir() and here != here.parent:
        here = here.parent
    try:
        disk = os.statvfs(here)
    except OSError:
        return math.inf
    return disk.f_bavail * disk.f_frsize


@contextlib.contextmanager
def disk_errors(target: str | os.PathLike):
    """Turn a disk-full / read-only / permission error while writing ``target`` into a one-line
    :class:`VolumeError`; other errors pass through."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        code = _disk_errno(err, target)
        if code is None:
            raise
        advice = "free some space or choose another output" if code in _FULL_ERRNOS else "choose another output"
        raise VolumeError(f"cannot write {target} ({os.strerror(code)}); {advice}, then rerun") from None


def channel_kinds_attr(attrs: dict) -> list[str] | None:
    """The ``pytc_channels`` attribute of a prediction store as a list of kinds (None when absent).

    Accepts what the formats hand back: a list (Zarr), an array of bytes or str (HDF5), a JSON list
    or a comma-separated string (written by hand).
    """
    kinds = attrs.get("pytc_channels")
    if kinds is None:
        return None
    if isinstance(kinds, bytes):
        kinds = kinds.decode()
    if isinstance(kinds, str):
        kinds = json.loads(kinds) if kinds.strip().startswith("[") else kinds.split(",")
    return [k.decode() if isinstance(k, bytes) else str(k).strip() for k in np.ravel(np.asarray(kinds, dtype=object))]


def write_atomic(path: str | os.PathLike, data: "str | bytes | Callable[[Path], object]") -> Path:
    """Write ``path`` all or nothing: into a temporary beside it, then renamed over it.

    Args:
        path: The file to write.
        data: Text, bytes, or a function that writes the temporary path it is given (e.g. an image's
            ``save``).

    Raises:
        VolumeError: the disk is full or the folder is not writable (one line); no temporary is left.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{fmt.TMP_TAG}{os.getpid()}")
    try:
        with disk_errors(path):
            if callable(data):
                data(tmp)
            elif isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(data)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Fail fast, before any long work, when ``path`` cannot be written.

    The nearest existing folder on the way to ``path`` (``path`` itself when ``folder`` and it
    exists) must be a folder that this process may write. A regular file in the way fails even for
    root, who ignores permission bits.

    Raises:
        VolumeError: a file where a folder is needed, or a folder without write permission.
    """
    import tempfile

    path = Path(os.fspath(path)).absolute()
    here = path if folder else path.parent
    while not here.exists() and here != here.parent:
        if here.is_symlink():  # a link to an unmounted share, say: mkdir would fail with "File exists"
            raise VolumeError(f"cannot write {path}: {here} links to {os.readlink(here)}, which does not exist; "
                              "fix the link or choose another output path")
        here = here.parent
    if not here.is_dir():
        raise VolumeError(f"cannot write {path}: {here} is a file, not a folder; choose another output path")
    if not os.access(here, os.W_OK | os.X_OK):
        raise VolumeError(f"cannot write {path}: folder {here} is not writable; choose another output path")
    try:  # what permission bits do not tell: read-only mounts, /proc and /sys, full quotas
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as err:
        raise VolumeError(f"cannot write {path}: folder {here} takes no new files ({err.strerror or err}); "
                          "choose another output path") from None


def check_not_input(output: str | os.PathLike, inputs, what: str = "output") -> None:
    """Refuse an output that is (or holds, or lies inside) one of ``inputs``: with ``--force`` it
    would replace the data being read. Different datasets of one HDF5 file, or different arrays of
    one Zarr group, are distinct.

    Raises:
        VolumeError: ``output`` and an input are the same file, store, dataset or array.
    """
    out = _address(output)
    for given in inputs:
        if given is None:
            continue
        src = _address(given)
        if src[1] is None:  # the dataset or array a key-less address reads (the file's only one, OME's "0")
            try:
                with open_volume(given) as vol:
                    src = (src[0], vol.key.strip("/") if vol.key else None)
            except PytcError:
                pass  # unreadable: the command says why when it opens it
        if out[0] == src[0]:
            same = out[1] is None or src[1] is None or out[1] == src[1] or \
                out[1].startswith(src[1] + "/") or src[1].startswith(out[1] + "/")
        else:  # a file inside an input store (a JSON report in a Zarr folder, say), or a store around an input
            same = (out[0] in src[0].parents and out[0].is_dir()) or (src[0] in out[0].parents and src[0].is_dir())
        if same:
            raise VolumeError(f"{what} {os.fspath(output)} is also the input {os.fspath(given)}; writing it would "
                              "replace what is being read: choose another output")


def _address(spec) -> tuple[Path, str | None]:
    """(resolved path, inner key) of a volume address or a plain file path."""
    try:
        vs = parse_spec(spec)
        path, key = vs.path, (vs.key.strip("/") if vs.key else None)
    except VolumeError:  # not a volume (a .json report): a plain file
        path, key = Path(os.fspath(spec)), None
    return path.expanduser().resolve(), key


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
        fmt.LIVE_TEMPS.add(tmp.absolute())

    def _release(self) -> None:
        fmt.LIVE_TEMPS.discard(self._tmp.absolute())
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
        sel, flip, out_shape = fmt.normalize_index(index, self.shape)
        sel_shape = tuple(len(range(s.start, s.stop, s.step)) for s in sel)
        if 0 in sel_shape:
            return
        value = np.broadcast_to(np.asarray(value), out_shape).reshape(sel_shape)
        with disk_errors(self.spec):
            self._backend.write(sel, fmt.flip(value, flip))

    def __getitem__(self, index) -> np.ndarray:
        if not hasattr(self._backend, "read"):
            raise TypeError(f"{self.format} outputs are write-only while being written")
        sel, flip, out_shape = fmt.normalize_index(index, self.shape)
        if any(s.stop <= s.start for s in sel):
            return np.empty(out_shape, self.dtype)
        return fmt.flip(np.asarray(self._backend.read(sel)), flip).reshape(out_shape)

    def commit(self) -> None:
        """Finish writing and move the data to its final name (replacing the old one)."""
        if self._done:
            return
        with disk_errors(self.spec):
            try:
                self._backend.finish()
                if self.format == "hdf5":  # see h5_commit: a dataset is added to the file, never the file replaced
                    fmt.h5_commit(self._tmp, self._final, self._spec.key or DEFAULT_H5_KEY,
                                  whole_file=self._spec.key is None, force=self._force, what=self.spec,
                                  keep_tmp=self.resumable)
                else:
                    fmt.swap_in(self._tmp, self._final)
            except BaseException:
                self.suspend()  # a resumable partial store and its record survive a failed commit; others go
                raise
        self._done = True
        try:  # only now: until the data is in place, a rerun needs the record to finish just the commit
            fmt.remove_path(_record_dir(self._final if self.format == "zarr" else self._tmp, self.format))
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
            fmt.remove_path(_record_dir(self._tmp, self.format))
            fmt.remove_path(self._tmp)
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
    size = fmt.as_voxel_size(voxel_size)
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
        with fmt.h5_open_read(path) as f:
            conflict = fmt.h5_key_conflict(f, key, path)
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
    fmt.clean_stale(final)
    # The temporary of a new dataset in an HDF5 file is a file of its own named after the key
    # (.f.h5.KEY.pytc-tmp-PID / .f.h5.KEY.pytc-partial), so writers of f.h5:A and f.h5:B never share one.
    stem = final.with_name(f"{final.name}.{_safe_key(vs.key)}") if vs.format == "hdf5" and vs.key else final
    if stem != final:
        fmt.clean_stale(stem)

    exists = output_exists(vs)
    if vs.format == "hdf5":
        writer, extra = fmt.H5Writer, {"key": vs.key or DEFAULT_H5_KEY}
    elif vs.format == "zarr" and in_store:
        v2 = not (path / "zarr.json").exists() and any((path / f).exists() for f in (".zgroup", ".zarray"))
        writer, extra = fmt.ZarrWriter, {"store": path, "zarr_format": 2 if v2 else 3}
    elif vs.format == "zarr":
        ome = path.name[: -len(".zarr")] if vs.key is None else None  # a bare out.zarr is an OME image
        writer, extra = fmt.ZarrWriter, {"name": vs.key or "0", "ome": ome}
    else:
        writer, extra = tiff.TiffWriter if vs.format == "tiff" else tiff.SlicesWriter, {}
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
            except fmt.Incompatible:
                pass
        fmt.remove_path(_record_dir(tmp, vs.format))
    else:
        tmp = stem.with_name(f".{stem.name}{fmt.TMP_TAG}{os.getpid()}")
        _check_not_live(tmp, vs)
    fmt.remove_path(tmp)
    try:
        with disk_errors(vs.text):
            backend = writer(tmp, shape, dtype, chunks, compression, voxel_size, **extra)
    except BaseException:
        fmt.remove_path(tmp)
        raise
    return VolumeWriter(backend, vs, shape, dtype, voxel_size, tmp, final, resumable, force=force)


def _check_not_live(tmp: Path, vs: VolumeSpec) -> None:
    if tmp.absolute() in fmt.LIVE_TEMPS:  # e.g. f.h5.k.h5 and f.h5:k.h5 (or f.h5:a/b and f.h5:a_b without locks)
        raise VolumeError(f"the temporary {tmp} of {vs.text} is in use by another writer of this process; "
                          "finish that one first or choose another output name")


def _safe_key(key: str) -> str:
    """An HDF5 key or Zarr path as a file-name part (``a/b`` → ``a_b``)."""
    return re.sub(r"[^\w.-]", "_", key.strip("/"))


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


def terminal_console(show: bool = True):
    """A rich console on stderr when ``show`` and stderr is a terminal, else None (progress bars
    and spinners in a log file or pipe are only noise)."""
    if not show:
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None


@contextlib.contextmanager
def _progress(show: bool, description: str, total: int):
    console = terminal_console(show)
    if console is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True, console=console) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _map_blocks(task: Callable, blocks, itemsize: int, show: bool, description: str, total: int,
                stop: threading.Event | None = None):
    """Run ``task(sel)`` over blocks on a small thread pool (reads overlap compression, which
    releases the GIL); yields results in order. At most 2×WORKERS blocks are queued at once.

    When the caller stops early (an error, Ctrl-C) the queued blocks are cancelled and ``stop`` is
    set, so that tasks that check it return at once: the pool waits for its running tasks before
    the caller may delete what they write to."""
    pending: deque = deque()
    with _progress(show, description, total) as advance, ThreadPoolExecutor(WORKERS, "pytc-io") as pool:
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
            for _ in _map_blocks(copy, blocks, itemsize, progress, label, source.nbytes, stop):
                pass
    return {
        "src": os.fspath(src),
        "dst": os.fspath(dst),
        "shape": list(shape),
        "dtype": str(source.dtype),
        "bytes": int(source.nbytes),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _block_stats(block: np.ndarray, labels: bool) -> dict:
    return {
        "min": block.min(),
        "max": block.max(),
        "sum": block.sum(dtype=np.float64),
        "labels": np.unique(block) if labels else None,
    }


def json_attrs(attrs: dict) -> tuple[dict, list[str]]:
    """The user attributes that are plain JSON values (voxel-size keys left out, they travel as the
    voxel size), and the names of the others (HDF5 object references, empty or binary data)."""
    kept, odd = {}, []
    for k, v in attrs.items():
        if k in fmt.VOXEL_SIZE_ATTRS:
            continue
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            odd.append(str(k))
            continue
        kept[k] = v
    return kept, odd


def list_volumes(spec: str | os.PathLike) -> list[str]:
    """Addresses of the arrays in an HDF5 file or Zarr group given without a dataset or array
    (``file.h5`` → ``["file.h5:image", "file.h5:label"]``); ``[]`` for any other address,
    including an OME-Zarr image (it reads as one volume).

    Raises:
        VolumeError: the address has an unknown extension.
    """
    vs = parse_spec(spec)
    if vs.format == "hdf5" and vs.key is None and vs.path.is_file():
        import h5py

        names: list[str] = []
        try:  # datasets with data (a null dataspace, h5py.Empty, holds none)
            with fmt.h5_open_read(vs.path) as f:
                f.visititems(lambda name, o: names.append(name)
                             if isinstance(o, h5py.Dataset) and o.shape is not None else None)
        except OSError:
            return []  # open_volume explains what is wrong with the file
        return [f"{vs.path}:{n}" for n in names]
    if vs.format == "zarr" and vs.path.is_dir():
        import zarr

        try:
            node = zarr.open(store=str(vs.path), mode="r", path=vs.key or "")
        except (FileNotFoundError, ValueError, KeyError):
            return []
        if not isinstance(node, zarr.Group) or fmt.ome_multiscales(node.attrs):
            return []
        where = f"{vs.path}/{vs.key}" if vs.key else str(vs.path)
        return [f"{where}/{k}" for k, v in sorted(node.members(max_depth=None)) if isinstance(v, zarr.Array)]
    return []


def volume_info(spec: str | os.PathLike, stats: bool = False, progress: bool = False) -> dict:
    """Describe a volume: format, path, key, shape, dtype, chunks, compression, voxel size, sizes.

    Args:
        spec: a volume address.
        stats: also compute ``min``, ``max``, ``mean`` (float64 accumulation) and, for integer
            volumes, ``n_labels`` (distinct non-zero values: the objects of a label volume) — chunk by
            chunk, in bounded memory.
        progress: show a progress bar while computing stats.

    Returns:
        A JSON-serialisable dict; ``nbytes`` is the uncompressed size, ``disk_bytes`` the stored one,
        ``attributes`` the user attributes (``pytc_channels``, ``pytc_scale``, ...; not ``pytc_config``).
    """
    with open_volume(spec) as vol:
        info = {
            "format": vol.format,
            "path": str(vol.path),
            "key": vol.key,
            "shape": list(vol.shape),
            "dtype": str(vol.dtype),
            "chunks": list(vol.chunks) if vol.chunks else None,
            "compression": vol.compression,
            "voxel_size": list(vol.voxel_size) if vol.voxel_size else None,
            "nbytes": int(vol.nbytes),
            "disk_bytes": vol.disk_bytes(),
            # a prediction's channel kinds and scale, say (pytc_config, a whole YAML file, is left out)
            "attributes": {k: v for k, v in json_attrs(vol.attrs)[0].items() if k != "pytc_config"},
        }
        if stats:
            info.update(_volume_stats(vol, progress))
    return info


def _volume_stats(vol: Volume, progress: bool) -> dict:
    count_labels = vol.dtype.kind in "iub"
    result: dict = {"min": None, "max": None, "mean": None}
    if count_labels:
        result["n_labels"] = 0
    if vol.size == 0:
        return result
    unit = vol.chunks or _check_chunks(None, vol.shape)
    blocks = iter_blocks(vol.shape, unit, vol.dtype.itemsize)
    lo, hi, total = None, None, 0.0
    labels, fresh = np.empty(0, vol.dtype), []
    for part in _map_blocks(
        lambda sel: _block_stats(vol[sel], count_labels), blocks, vol.dtype.itemsize, progress, "stats", vol.nbytes
    ):
        lo = part["min"] if lo is None else min(lo, part["min"])
        hi = part["max"] if hi is None else max(hi, part["max"])
        total += float(part["sum"])
        if count_labels:
            fresh.append(part["labels"])
            if sum(len(f) for f in fresh) > len(labels) + 2**20:  # merge in batches, not per block
                labels, fresh = np.unique(np.concatenate([labels, *fresh])), []
    result.update(min=np.asarray(lo).item(), max=np.asarray(hi).item(), mean=total / vol.size)
    if count_labels:
        ids = np.unique(np.concatenate([labels, *fresh]))
        result["n_labels"] = int(np.count_nonzero(ids))  # objects: 0 is background
    return result
