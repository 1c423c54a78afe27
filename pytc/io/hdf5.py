"""HDF5 back-end: :class:`H5Reader`, :class:`H5Writer`, and :func:`h5_commit`, which copies a dataset
written into a file of its own into the target file under that file's lock. h5py is imported
inside functions: importing this module must stay cheap (``pytc --help``)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import weakref
from pathlib import Path
import numpy as np

from pytc.errors import VolumeError
from pytc.io.common import (
    GZIP_LEVEL,
    VOXEL_SIZE_ATTRS,
    ZSTD_LEVEL,
    Incompatible,
    _dtype_text,
    _first_line,
    _listing,
    _native,
    as_voxel_size,
    from_h5_attr,
    remove_path,
    swap_in,
    to_h5_attr,
)

# --------------------------------------------------------------------------------------- HDF5 --
_H5_PLUGIN_NAMES = {32015: "zstd", 32004: "lz4", 32001: "blosc", 307: "bzip2", 32008: "bitshuffle"}


class H5Reader:
    format = "hdf5"

    def __init__(self, path: Path, key: str | None):
        import h5py

        self.path = path
        try:
            self._file = h5_open_read(path)
        except OSError as err:
            raise VolumeError(
                f"{path} is not a readable HDF5 file ({_first_line(err)}); is it truncated or still being copied?"
            ) from None
        names: list[str] = []
        obj = self._file.get(key) if key is not None else None
        if not isinstance(obj, h5py.Dataset):  # list the datasets only when choosing or explaining
            self._file.visititems(lambda name, o: names.append(name) if isinstance(o, h5py.Dataset) else None)
        if key is None:
            if len(names) != 1:
                self._file.close()
                if not names:
                    raise VolumeError(f"{path} holds no datasets; check that it is the right file")
                raise VolumeError(f"{path} holds several datasets ({_listing(names)}): name one as {path}:{names[0]}")
            key = names[0]
        obj = self._file.get(key)
        if not isinstance(obj, h5py.Dataset):
            self._file.close()
            what = "a group, not a dataset" if obj is not None else "no such dataset"
            hint = f"it holds: {_listing(names)}" if names else "it holds no datasets"
            raise VolumeError(f"{path}:{key} is {what}; {hint}")
        if obj.dtype.kind not in "biufc":  # compound records, strings, objects: not an image
            self._file.close()
            what = "a compound" if obj.dtype.names else "a non-numeric"
            raise VolumeError(f"{path}:{key.strip('/')} has {what} dtype ({_dtype_text(obj.dtype)}); pytc reads "
                              "numeric volumes: name a dataset of numbers")
        self.key, self._ds = key.strip("/"), obj
        _OPEN_READERS.add(self)
        self.shape, self.dtype, self.chunks = tuple(obj.shape), _native(obj.dtype), obj.chunks
        self.compression = obj.compression or next(
            (_H5_PLUGIN_NAMES.get(int(f), str(f)) for f in obj._filters if str(f).isdigit()), None
        )
        self.attrs = {str(k): from_h5_attr(v) for k, v in obj.attrs.items()}
        self.voxel_size = None
        for attrs in (obj.attrs, self._file.attrs):
            for name in VOXEL_SIZE_ATTRS[:3]:
                if name in attrs and self.voxel_size is None:
                    self.voxel_size = as_voxel_size(attrs[name])

    def read(self, sel: tuple[slice, ...]) -> np.ndarray:
        try:
            return self._ds[sel]
        except OSError as err:
            raise VolumeError(
                f"cannot read {self.path}:{self.key} ({_first_line(err)}); the file may be truncated, or "
                "compressed with a filter that is not installed (pip install hdf5plugin)"
            ) from None

    def disk_bytes(self) -> int:
        return int(self._ds.id.get_storage_size())

    def _open(self) -> None:
        """Reopen after :func:`_readers_closed` (a dataset was added to this file meanwhile)."""
        import h5py

        self._file = h5_open_read(self.path)
        self._ds = self._file[self.key]

    def close(self) -> None:
        _OPEN_READERS.discard(self)
        self._file.close()


# No raw-data chunk cache in writers: chunks go to disk as they are assigned, so a full disk fails
# the write itself. With a cache, the failure comes at close() with up to a cache of dirty chunks
# that can never be written, and HDF5 then crashes the process when it exits (a segfault). Writers
# assign whole chunks (blocks are aligned to them), which the cache would not speed up anyway.
_H5_CHUNK_CACHE = 0


def _h5_close_quietly(file) -> None:
    """Close an h5py file whose data is being discarded: a failure (a full disk refusing the last
    flush) changes nothing, and the file is never closed a second time (HDF5 crashes on that)."""
    try:
        file.close()
    except Exception:  # noqa: BLE001 - the file is deleted next; the error that led here is reported
        pass


def _h5_filter_kwargs(compression: str) -> dict:
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL}
    try:
        import hdf5plugin
    except ImportError:
        raise VolumeError(
            f"HDF5 {compression} compression needs the hdf5plugin package: use --compression gzip "
            "or pip install hdf5plugin"
        ) from None
    return dict(hdf5plugin.Zstd(clevel=ZSTD_LEVEL) if compression == "zstd" else hdf5plugin.LZ4())


class H5Writer:
    """Writes one dataset ``key`` into a file of its own at ``tmp`` (never into the target file: see
    :func:`h5_commit`). With ``resume``, reopens the dataset of an existing ``tmp`` instead
    (:class:`Incompatible` when it is unreadable or differs in shape, dtype or chunks)."""

    def __init__(self, tmp: Path, shape, dtype, chunks, compression, voxel_size, *, key: str, resume=False):
        import h5py

        if resume:
            self._reopen(tmp, key, shape, dtype, chunks)
            return
        kwargs = _h5_filter_kwargs(compression)
        self._path = tmp
        self._file = h5py.File(tmp, "w", rdcc_nbytes=_H5_CHUNK_CACHE)
        try:
            self._ds = self._file.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks, **kwargs)
            if voxel_size is not None:
                self._ds.attrs["voxel_size"] = np.asarray(voxel_size, dtype=np.float64)
        except BaseException:
            _h5_close_quietly(self._file)
            raise
        self.chunks = self._ds.chunks

    def _reopen(self, tmp: Path, key: str, shape, dtype, chunks) -> None:
        import h5py

        self._path = tmp
        try:
            self._file = h5py.File(tmp, "r+", rdcc_nbytes=_H5_CHUNK_CACHE)
        except OSError as err:  # e.g. a process killed in the middle of an HDF5 write
            raise Incompatible(_first_line(err)) from None
        ds = self._file.get(key)
        if not isinstance(ds, h5py.Dataset) or (ds.shape, ds.dtype, ds.chunks) != (tuple(shape), dtype, tuple(chunks)):
            self._file.close()
            raise Incompatible(f"{tmp}:{key} has another layout")
        self._ds, self.chunks = ds, ds.chunks

    def write(self, sel, value) -> None:
        self._ds[sel] = value

    def read(self, sel) -> np.ndarray:
        return self._ds[sel]

    def get_attrs(self) -> dict:
        return {str(k): from_h5_attr(v) for k, v in self._ds.attrs.items()}

    def set_attrs(self, attrs: dict) -> None:
        for name, value in attrs.items():
            self._ds.attrs[name] = to_h5_attr(value)

    def flush(self) -> None:
        self._file.flush()

    def finish(self) -> None:
        """Flush and close; after a failure (a full disk refusing the last flush) the file is closed
        quietly and this writer is done: a later finish() or abort() does nothing."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.flush()  # a full disk fails here, before the close
        except BaseException:
            _h5_close_quietly(file)  # never twice: closing again after a close that failed segfaults
            raise
        file.close()

    def abort(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # frees the disk, so that the close's last writes fit
                os.truncate(self._path, 0)
            _h5_close_quietly(file)


# A keyed HDF5 write adds one dataset to a file other programs (and other pytc runs) may be adding
# to as well, so it must never replace the file. The data is written into a file of its own (the
# long part: the target stays closed meanwhile); the commit then, under an exclusive lock on the
# target file, copies that dataset in (H5Ocopy: compressed chunks are copied raw, so it is quick)
# under a temporary name and renames it to the key. Only an HDF5 write without a key, whose output
# is the whole file, renames its file into place.
COMMIT_WAIT_S = 600.0  # commits take seconds; a queue of a few writers of one file clears long before this
_COMMIT_PREFIX = ".pytc-commit-"  # + the key in hex; a dataset of a killed commit, complete once linked


def _commit_name(key: str) -> str:
    return _COMMIT_PREFIX + key.strip("/").encode().hex()


def _finish_killed_commits(file) -> None:
    """Roll forward what a commit killed after its copy left: the copy is complete (HDF5 links a
    copied object only once it is copied), so it becomes the key unless the key is there."""
    for name in [n for n in file if n.startswith(_COMMIT_PREFIX)]:
        try:
            key = bytes.fromhex(name[len(_COMMIT_PREFIX):]).decode()
        except ValueError:
            key = None
        if key and key not in file:
            file.move(name, key)
        else:
            del file[name]


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def h5_open_read(path: Path):
    """``path`` opened read-only. While another process writes it (a commit, which takes seconds)
    HDF5's file lock refuses readers: wait for it, with a note on stderr, up to :data:`COMMIT_WAIT_S`.

    Raises:
        VolumeError: the other process kept writing for longer than that.
        OSError: the file cannot be opened for another reason (not HDF5, truncated, missing).
    """
    import time

    import h5py

    deadline = None
    while True:
        try:
            return h5py.File(path, "r")
        except BlockingIOError:  # "unable to lock file": another process has it open read-write
            now = time.monotonic()
            if deadline is None:
                deadline = now + COMMIT_WAIT_S
                _note(f"waiting for another process to finish writing {path} (HDF5 file lock) ...")
            elif now >= deadline:
                raise VolumeError(f"another process is writing {path}; wait for it to finish (or close the "
                                  "program that keeps it open), then rerun") from None
            time.sleep(0.2)


def h5_key_conflict(file, key: str, path: Path) -> str | None:
    """Why dataset ``key`` cannot be written into the open HDF5 ``file`` (a one-line message), or None:
    a parent of the key is a dataset, or the key itself names a group (replacing it would delete
    everything inside)."""
    import h5py

    parts = key.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        name = "/".join(parts[:depth])
        obj = file.get(name)
        if obj is None:
            if file.get(name, getlink=True) is not None:  # a soft or external link to nothing
                return f"{path}:{name} is a link to nothing; choose another key"
            return None
        if depth < len(parts) and not isinstance(obj, h5py.Group):
            return f"{path}:{name} is a dataset, so {path}:{key.strip('/')} cannot be made inside it; choose another key"
        if depth == len(parts) and isinstance(obj, h5py.Group):
            return f"{path}:{name} is a group, not a dataset (replacing it would delete all it holds); choose another key"
    return None


def _open_for_commit(path: Path, deadline: float, what: str):
    """``path`` opened read-write; waits while other processes have it open (HDF5's own file lock)."""
    import time

    import h5py

    told = False
    while True:
        try:
            return h5py.File(path, "r+")
        except BlockingIOError:  # "unable to lock file": another process reads or writes it
            if time.monotonic() >= deadline:
                raise VolumeError(f"cannot add {what}: another process keeps {path} open; close it, then rerun") \
                    from None
            if not told:
                _note(f"waiting for other processes to close {path} (HDF5 file lock) ...")
                told = True
            time.sleep(0.2)


def h5_commit(tmp: Path, final: Path, key: str, *, whole_file: bool, force: bool, what: str,
              keep_tmp: bool = False) -> None:
    """Move the dataset ``key`` of the finished file ``tmp`` into ``final`` (see the note above);
    ``tmp`` is removed (on failure too, unless ``keep_tmp``: a resumable partial file). With
    ``whole_file``, ``tmp`` replaces ``final`` (an existing one only with ``force``).

    Raises:
        OutputExistsError: without ``force``, ``final`` got ``key`` (or became a non-HDF5 file)
            meanwhile; for ``whole_file``, ``final`` appeared meanwhile.
        VolumeError: another process kept ``final`` open for longer than :data:`COMMIT_WAIT_S`; the
            key cannot be a dataset of ``final`` (a parent became a dataset, the key a group).
        LockedError: another commit held ``final`` for longer than that.
    """
    import time

    import h5py

    from pytc.errors import OutputExistsError
    from pytc.locks import exclusive, lock_path_for

    deadline = time.monotonic() + COMMIT_WAIT_S
    on_wait = lambda holder: _note(f"waiting for {holder} to finish writing {final} ...")  # noqa: E731
    with exclusive(lock_path_for(final), f"HDF5 file {final}", wait_s=COMMIT_WAIT_S, on_wait=on_wait):
        exists = final.exists() or final.is_symlink()
        if whole_file and exists and not force:  # create_volume refused an existing file: this one is new
            raise OutputExistsError(f"{final} appeared while {what} was written; pass --force to replace it, or "
                                    f"write a dataset into it ({final}:KEY)")
        if whole_file or not exists:
            swap_in(tmp, final)
            return
        if not h5py.is_hdf5(final):
            if not force:
                raise OutputExistsError(f"{final} is not an HDF5 file; pass --force to replace it with {what}")
            swap_in(tmp, final)
            return
        need = tmp.stat().st_size + 2**16  # the copy: its chunks, index and header, as in tmp
        disk = os.statvfs(final.parent)
        if disk.f_bavail * disk.f_frsize < need:  # a copy that fails half-way leaves HDF5 unable to close
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))
        with _readers_closed(final):  # this process may be reading another dataset of the file
            target = _open_for_commit(final, deadline, what)
            try:
                _finish_killed_commits(target)
                conflict = h5_key_conflict(target, key, final)
                if conflict:
                    raise VolumeError(conflict)
                if key.strip("/") in target and not force:
                    raise OutputExistsError(f"{what} was written by another program meanwhile; pass --force to "
                                            "replace it")
                name = _commit_name(key)
                with h5py.File(tmp, "r") as src:
                    target.copy(src[key], target, name=name)
                target.flush()  # the copy is on disk before the old dataset goes
                if key in target:
                    del target[key]
                target.move(name, key)
                target.flush()
            except BaseException as err:
                with contextlib.suppress(Exception):
                    if _commit_name(key) in target:
                        del target[_commit_name(key)]
                if not keep_tmp:  # room for the close's last writes (HDF5 crashes at exit if it fails)
                    with contextlib.suppress(OSError):
                        os.truncate(tmp, 0)
                _h5_close_quietly(target)
                if isinstance(err, (ValueError, KeyError)):  # h5py refusing a link, a name or an object
                    raise VolumeError(f"cannot add {what} to {final} ({_first_line(err)}); choose another "
                                      "key") from None
                raise
            target.close()
    remove_path(tmp)


_OPEN_READERS: "weakref.WeakSet[H5Reader]" = weakref.WeakSet()


@contextlib.contextmanager
def _readers_closed(path: Path):
    """Close this process's readers of ``path`` for the block and reopen them after: HDF5 refuses
    to open a file for writing that the same process has open for reading."""
    closed = []
    for reader in list(_OPEN_READERS):
        with contextlib.suppress(OSError):
            if os.path.samefile(reader.path, path):
                reader._file.close()
                closed.append(reader)
    try:
        yield
    finally:
        for reader in closed:
            reader._open()

