"""Shared helpers and the HDF5 and Zarr back-ends for :mod:`pytc.io` (private).

Each reader exposes ``shape dtype chunks compression voxel_size key``, ``read(sel)`` (``sel`` is a
full tuple of non-empty slices with positive steps, already normalised by :class:`pytc.io.Volume`),
``close()`` and ``disk_bytes()``. Each writer exposes ``chunks``, ``write(sel, value)``,
``finish()`` and ``abort()``; where and how the written data is swapped into place is
:mod:`pytc.io`'s job. TIFF stacks and slice folders live in :mod:`pytc._io_tiff`, which uses the
helpers here. h5py and zarr are imported inside functions: importing this module must stay cheap
(``pytc --help``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import weakref
import zlib
from pathlib import Path

import numpy as np

from pytc.errors import VolumeError
from pytc.locks import pid_alive

GZIP_LEVEL = 4  # h5py's default; higher levels barely shrink noisy EM data but cost time
ZSTD_LEVEL = 3  # zstd's own default


# Attributes that carry the voxel size (HDF5 conventions, then OME-NGFF group metadata).
VOXEL_SIZE_ATTRS = ("voxel_size", "resolution", "element_size_um", "multiscales", "ome")

def as_voxel_size(value) -> tuple[float, float, float] | None:
    """Last three entries of ``value`` as floats (z, y, x), or None if it is not a size."""
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    if arr.size == 0:
        return None
    arr = np.concatenate([np.ones(max(0, 3 - arr.size)), arr])[-3:]
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        return None
    return tuple(float(v) for v in arr)


def _native(dtype) -> np.dtype:
    """Same numeric dtype in this machine's byte order and canonical spelling (zarr rejects '=', 'Q')."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc":
        return dtype
    return np.dtype(dtype.newbyteorder("<" if sys.byteorder == "little" else ">").str)


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _dtype_text(dtype, limit: int = 80) -> str:
    text = str(dtype)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum((Path(root) / f).stat().st_size for root, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------------------------- attributes --
class Incompatible(Exception):
    """A partial store cannot be resumed (other shape/dtype/chunks, or unreadable); start it over."""


def to_h5_attr(value):
    """A JSON-able value as an HDF5 attribute: strings, numbers, bools and regular numeric or string
    lists natively; anything else (None, dicts, ragged or mixed lists) as its JSON text."""
    import h5py

    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and value:
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged
            arr = None
        if arr is not None and arr.dtype.kind in "biuf":
            return arr
        if arr is not None and arr.ndim == 1 and all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=h5py.string_dtype())
    return json.dumps(value)


def from_h5_attr(value):
    """An HDF5 attribute as a plain Python value (lists, str, int, float, bool)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [from_h5_attr(v) for v in value] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------- indexing and commit helpers --
TMP_TAG, OLD_TAG = ".pytc-tmp-", ".pytc-old-"


def normalize_index(index, shape: tuple[int, ...]):
    """numpy basic index → (positive-step slices, axes to flip, output shape)."""
    index = index if isinstance(index, tuple) else (index,)
    if sum(i is Ellipsis for i in index) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - len(index) + 1) + index[at + 1 :]
    if len(index) > len(shape):
        raise IndexError(f"too many indices for a volume of shape {shape}")
    index = index + (slice(None),) * (len(shape) - len(index))
    sel, flip, out_shape = [], [], []
    for axis, (i, n) in enumerate(zip(index, shape)):
        if isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)):
            j = int(i) + n if i < 0 else int(i)
            if not 0 <= j < n:
                raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
            sel.append(slice(j, j + 1, 1))
        elif isinstance(i, slice):
            r = range(*i.indices(n))
            if r.step < 0 and len(r):
                r, flip = r[::-1], flip + [axis]
            sel.append(slice(r.start, min(r.stop, n), r.step) if len(r) else slice(0, 0, 1))
            out_shape.append(len(r))
        else:
            raise TypeError(f"volumes take ints, slices and '...' as indices, not {type(i).__name__}")
    return tuple(sel), flip, tuple(out_shape)


def flip(data: np.ndarray, axes: list[int]) -> np.ndarray:
    return data[tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(data.ndim))] if axes else data


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)




# Temporaries and partial stores of this process's open writers: a temporary named with this
# process's pid is stale only when no writer of this process still writes it (two outputs may
# name their temporaries alike: f.h5.k.h5 and f.h5:k.h5).
LIVE_TEMPS: set[Path] = set()


def clean_stale(final: Path) -> None:
    """Remove temporaries of ``final`` left by killed runs (restoring an original set aside)."""
    if not final.parent.is_dir():
        return
    for item in final.parent.iterdir():
        match = re.fullmatch(re.escape(f".{final.name}") + r"(\.pytc-(?:tmp|old)-)(\d+)", item.name)
        if not match or (int(match[2]) != os.getpid() and pid_alive(int(match[2]))) or item.absolute() in LIVE_TEMPS:
            continue
        if match[1] == OLD_TAG and not final.exists():  # killed between the two renames of a replace
            os.rename(item, final)
        else:
            remove_path(item)


def swap_in(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing what is there (atomically for files)."""
    if not final.exists() and not final.is_symlink():
        os.rename(tmp, final)
    elif final.is_dir() or tmp.is_dir():  # directories can't be replaced in one rename
        old = final.with_name(f".{final.name}{OLD_TAG}{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)


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


# --------------------------------------------------------------------------------------- Zarr --
def ome_multiscales(attrs) -> list | None:
    """OME-NGFF ``multiscales`` of a group: v0.5 keeps it under ``ome``, v0.4 at the top."""
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    return found if isinstance(found, list) and found else None


def _ome_voxel_size(multiscale: dict, dataset_path: str):
    scale = None
    for ds in multiscale.get("datasets", []):
        if str(ds.get("path")).strip("/") == dataset_path:
            for t in ds.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = np.asarray(t["scale"], dtype=np.float64)
    if scale is None:
        return None
    for t in multiscale.get("coordinateTransformations", []):  # optional multiscale-wide scale
        if t.get("type") == "scale":
            scale = scale * np.asarray(t["scale"], dtype=np.float64)
    axes = multiscale.get("axes")
    if isinstance(axes, list) and len(axes) == len(scale):
        spatial = [i for i, a in enumerate(axes) if not isinstance(a, dict) or a.get("type", "space") == "space"]
        scale = scale[spatial] if spatial else scale
    return as_voxel_size(scale)


def ome_metadata(ndim: int, voxel_size, name: str) -> dict:
    """OME-NGFF 0.5 group attributes (the Zarr v3 flavour) for one scale-0 array at ``0``."""
    spatial = ["z", "y", "x"][-min(ndim, 3) :]
    extra = ["t", "c"][-(ndim - len(spatial)) :] if ndim > len(spatial) else []
    if len(extra) < ndim - len(spatial):
        raise VolumeError(f"OME-Zarr holds at most 5 dimensions (t,c,z,y,x); got {ndim}: write to out.zarr/array")
    axes = [{"name": a, "type": "time" if a == "t" else "channel"} for a in extra]
    axes += [{"name": a, "type": "space"} for a in spatial]
    vs = list(voxel_size) if voxel_size is not None else [1.0, 1.0, 1.0]
    scale = [1.0] * len(extra) + [float(v) for v in vs[-len(spatial) :]]
    return {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": axes,
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
                }
            ],
        }
    }


def _codec_name(codec) -> str:
    cname = getattr(codec, "cname", None)
    name = type(codec).__name__.removesuffix("Codec").lower()
    name = getattr(codec, "codec_id", None) or name
    return f"{name}-{getattr(cname, 'value', cname)}" if cname is not None else name


class ZarrReader:
    format = "zarr"

    def __init__(self, path: Path, key: str | None):
        import zarr

        self.path = path
        try:
            node = zarr.open(store=str(path), mode="r", path=key or "")
        except (FileNotFoundError, ValueError, KeyError) as err:
            self._raise_not_found(path, key, err)
        self.voxel_size = None
        if isinstance(node, zarr.Group):
            multiscales = ome_multiscales(node.attrs)
            members = [] if multiscales else sorted(
                k for k, v in node.members(max_depth=None) if isinstance(v, zarr.Array)
            )
            if multiscales:  # OME-NGFF image: scale 0 is the full-resolution array
                inner = str(multiscales[0]["datasets"][0]["path"]).strip("/")
                self.voxel_size = _ome_voxel_size(multiscales[0], inner)
            elif len(members) == 1:
                inner = members[0]
            else:
                where = f"{path}/{key}" if key else str(path)
                if not members:
                    raise VolumeError(f"{where} is a Zarr group without arrays; check the path")
                raise VolumeError(
                    f"{where} holds several arrays ({_listing(members)}): name one as {where}/{members[0]}"
                )
            node = node[inner]
            key = f"{key}/{inner}" if key else inner
        self.key, self._arr = key, node
        self.attrs = dict(node.attrs)
        self.shape, self.dtype = tuple(node.shape), np.dtype(node.dtype)
        self.chunks = tuple(getattr(node, "shards", None) or node.chunks)
        codecs = [c for c in (node.compressors or ()) if c is not None]
        self.compression = ",".join(_codec_name(c) for c in codecs) or None
        if self.voxel_size is None:
            self.voxel_size = as_voxel_size(node.attrs["voxel_size"]) if "voxel_size" in node.attrs else None
        if self.voxel_size is None and key:  # e.g. vol.zarr/0 inside an OME-NGFF image
            self.voxel_size = self._parent_ome_voxel_size(zarr, path, key)

    @staticmethod
    def _parent_ome_voxel_size(zarr, path: Path, key: str):
        parent, _, name = key.strip("/").rpartition("/")
        try:
            group = zarr.open_group(store=str(path), mode="r", path=parent)
        except (FileNotFoundError, ValueError, KeyError):
            return None
        multiscales = ome_multiscales(group.attrs)
        return _ome_voxel_size(multiscales[0], name) if multiscales else None

    @staticmethod
    def _raise_not_found(path: Path, key: str | None, err: Exception):
        import zarr

        if not key:
            if any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")):
                raise VolumeError(  # e.g. an object dtype: zarr refuses its pickle codec, and so do we
                    f"{path} has Zarr metadata pytc cannot read ({_first_line(err)}); pytc reads numeric arrays"
                ) from None
            raise VolumeError(
                f"{path} is not a Zarr store (no zarr.json/.zgroup/.zarray found); check the path"
            ) from None
        try:
            root = zarr.open_group(store=str(path), mode="r")
            names = sorted(k for k, v in root.members(max_depth=None) if isinstance(v, zarr.Array))
        except (FileNotFoundError, ValueError, KeyError):
            raise VolumeError(
                f"{path} is not a Zarr store (no zarr.json/.zgroup/.zarray found); check the path"
            ) from None
        hint = f"it holds: {_listing(names)}" if names else "it holds no arrays"
        raise VolumeError(f"{path} has no array '{key}'; {hint}") from None

    def read(self, sel) -> np.ndarray:
        try:
            return np.asarray(self._arr[sel])
        except (OSError, EOFError, ValueError, RuntimeError, zlib.error) as err:  # gzip, zstd, blosc, a short chunk
            raise VolumeError(
                f"cannot read {self.path}/{self.key} ({type(err).__name__}: {_first_line(err)}); a chunk file is "
                "corrupted or truncated: copy the store again"
            ) from None

    def disk_bytes(self) -> int:
        inner = self.path / self.key if self.key else self.path  # a store that is itself an array has no key
        return _dir_bytes(inner) if inner.exists() else _dir_bytes(self.path)

    def close(self) -> None:
        pass


def _zarr_compressors(compression: str, zarr_format: int):
    if compression == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        return {
            "gzip": lambda: numcodecs.GZip(GZIP_LEVEL),
            "zstd": lambda: numcodecs.Zstd(ZSTD_LEVEL),
            "lz4": lambda: numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
        }[compression]()
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    return {
        "gzip": lambda: GzipCodec(level=GZIP_LEVEL),
        "zstd": lambda: ZstdCodec(level=ZSTD_LEVEL),
        # Zarr v3 has no bare lz4 codec; Blosc-lz4 with byte shuffle is the fast standard choice.
        "lz4": lambda: BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }[compression]()


class ZarrWriter:
    """Writes one array: at ``name`` inside a new store at ``tmp`` (an OME-NGFF image called
    ``ome`` when given), or, with ``store``, at ``tmp`` itself inside that existing store."""

    def __init__(self, tmp: Path, shape, dtype, chunks, compression, voxel_size, *, name="0", ome=None, store=None,
                 zarr_format=3, resume=False):  # fmt: skip
        import zarr

        root, name = (store, tmp.relative_to(store).as_posix()) if store is not None else (tmp, name)
        if resume:  # reopen the array of an existing partial store
            try:
                self._arr = zarr.open_array(store=str(root), path=name, mode="r+")
            except (FileNotFoundError, ValueError, KeyError, zarr.errors.BaseZarrError) as err:
                raise Incompatible(_first_line(err)) from None
            if (self._arr.shape, np.dtype(self._arr.dtype), self._arr.chunks) != (tuple(shape), dtype, tuple(chunks)):
                raise Incompatible(f"{root}/{name} has another layout")
            self.chunks = tuple(self._arr.chunks)
            return
        kwargs = dict(shape=shape, dtype=dtype, chunks=chunks, fill_value=0)
        kwargs["compressors"] = _zarr_compressors(compression, zarr_format)
        if zarr_format == 3 and len(shape) <= 3:
            kwargs["dimension_names"] = ["z", "y", "x"][-len(shape) :]
        try:
            if ome is not None:
                attrs = ome_metadata(len(shape), voxel_size, ome)
                group = zarr.open_group(store=str(root), mode="w", zarr_format=3, attributes=attrs)
                self._arr = group.create_array(name, **kwargs)
            else:
                attrs = {"voxel_size": [float(v) for v in voxel_size]} if voxel_size is not None else None
                self._arr = zarr.create_array(str(root), name=name, attributes=attrs, zarr_format=zarr_format, **kwargs)
        except zarr.errors.BaseZarrError as err:
            raise VolumeError(f"cannot create {root}/{name} ({_first_line(err)}); choose another path") from None
        self.chunks = tuple(self._arr.chunks)

    def write(self, sel, value) -> None:
        self._arr[sel] = value

    def read(self, sel) -> np.ndarray:
        return np.asarray(self._arr[sel])

    def get_attrs(self) -> dict:
        return dict(self._arr.attrs)

    def set_attrs(self, attrs: dict) -> None:
        self._arr.attrs.update(attrs)

    def flush(self) -> None:
        pass  # every chunk is a file of its own, written when assigned

    def finish(self) -> None:
        pass

    abort = finish
