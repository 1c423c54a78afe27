"""Format back-ends for :mod:`pytc.io` (private).

Each reader exposes ``shape dtype chunks compression voxel_size key``, ``read(sel)`` (``sel`` is a
full tuple of non-empty slices with positive steps, already normalised by :class:`pytc.io.Volume`),
``close()`` and ``disk_bytes()``. Each writer exposes ``chunks``, ``write(sel, value)``,
``finish()`` and ``abort()``; where and how the written data is swapped into place is
:mod:`pytc.io`'s job. h5py, zarr and tifffile are imported inside functions: importing this module
must stay cheap (``pytc --help``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import re
import shutil
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np

from pytc.errors import VolumeError

GZIP_LEVEL = 4  # h5py's default; higher levels barely shrink noisy EM data but cost time
ZSTD_LEVEL = 3  # zstd's own default
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_BIGTIFF_BYTES = 2**31  # classic TIFF offsets are 32-bit; switch early, compression can't shrink headers
_TIFF_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, struct.error, zlib.error)


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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (temporaries of live processes are not stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(final: Path) -> None:
    """Remove temporaries of ``final`` left by killed runs (restoring an original set aside)."""
    if not final.parent.is_dir():
        return
    for item in final.parent.iterdir():
        match = re.fullmatch(re.escape(f".{final.name}") + r"(\.pytc-(?:tmp|old)-)(\d+)", item.name)
        if not match or (int(match[2]) != os.getpid() and pid_alive(int(match[2]))):
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
            self._file = h5py.File(path, "r")
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
        self.key, self._ds = key.strip("/"), obj
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

    def close(self) -> None:
        self._file.close()


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
    """Writes one dataset into a fresh file at ``tmp``, first copying ``base``'s other objects.
    With ``resume``, reopens the dataset of an existing ``tmp`` instead (:class:`Incompatible` when
    it is unreadable or differs in shape, dtype or chunks)."""

    def __init__(self, tmp: Path, shape, dtype, chunks, compression, voxel_size, *, key: str, base=None,
                 resume=False):  # fmt: skip
        import h5py

        if resume:
            self._reopen(tmp, key, shape, dtype, chunks)
            return
        kwargs = _h5_filter_kwargs(compression)
        self._file = h5py.File(tmp, "w")
        try:
            if base is not None:  # keep the target file's other datasets (the whole file is replaced)
                with h5py.File(base, "r") as old:
                    self._file.attrs.update(old.attrs)
                    for name in old:
                        if name != key:
                            old.copy(old[name], self._file, name=name)
                if key in self._file:
                    del self._file[key]
            self._ds = self._file.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks, **kwargs)
            if voxel_size is not None:
                self._ds.attrs["voxel_size"] = np.asarray(voxel_size, dtype=np.float64)
        except BaseException:
            self._file.close()
            raise
        self.chunks = self._ds.chunks

    def _reopen(self, tmp: Path, key: str, shape, dtype, chunks) -> None:
        import h5py

        try:
            self._file = h5py.File(tmp, "r+")
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
        self._file.close()

    abort = finish


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
        return np.asarray(self._arr[sel])

    def disk_bytes(self) -> int:
        return _dir_bytes(self.path / self.key) if (self.path / self.key).exists() else _dir_bytes(self.path)

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


# --------------------------------------------------------------------------------------- TIFF --
def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
            series = tif.series[0]
            _ = series.shape, series.dtype, series.pages[-1]
        except (tifffile.TiffFileError, *_TIFF_READ_ERRORS) as err:
            errors.append(_first_line(err))
    if errors:
        if tif is not None:
            tif.close()
        raise VolumeError(f"{path} is not a readable TIFF file ({errors[0]}); is it truncated or corrupted?")
    return tif, series


def _tiff_compression(page) -> str | None:
    name = page.compression.name.lower()
    return None if name == "none" else "zlib" if name in ("adobe_deflate", "deflate") else name


class TiffReader:
    """Multi-page TIFF: memory-mapped when uncompressed and contiguous, else read page by page."""

    format = "tiff"
    attrs: dict = {}  # TIFF has no user attributes

    def __init__(self, path: Path):
        import tifffile

        self.path, self.key = path, None
        self._tif, series = _open_tiff(path)
        page = series.keyframe
        npages = int(np.prod(series.shape[: len(series.shape) - len(page.shape)], dtype=np.int64))
        self.shape = (npages, *page.shape)  # always a stack: a single image is (1, Y, X)
        self.dtype = _native(series.dtype)
        self.chunks = (1, *page.shape)
        self.compression = _tiff_compression(page)
        self.voxel_size = _tiff_voxel_size(self._tif)
        self._pages, self._memmap, self._lock = series.pages, None, threading.Lock()
        if series.dataoffset is not None:  # uncompressed and contiguous: let the OS page it in
            try:
                self._memmap = tifffile.memmap(path, mode="r").reshape(self.shape)
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


def natural_key(name: str):
    """Sort key that orders ``z2`` before ``z10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class SlicesReader:
    """A folder of 2D TIFF/PNG slices in natural order; only the requested slices are read."""

    format = "slices"
    attrs: dict = {}

    def __init__(self, path: Path):
        self.path, self.key = path, None
        files = [
            p
            for p in path.iterdir()
            if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ]
        if not files:
            raise VolumeError(f"{path} holds no .tif/.tiff/.png slices; point to a folder of 2D images")
        self._files = sorted(files, key=lambda p: natural_key(p.name))
        first = self._files[0]
        if first.suffix.lower() == ".png":
            plane = self._load(first)
            page_shape, self.dtype, self.compression, self.voxel_size = plane.shape, plane.dtype, "png", None
        else:
            tif, series = _open_tiff(first)
            with tif:
                page_shape, self.dtype = tuple(series.keyframe.shape), _native(series.dtype)
                self.compression, self.voxel_size = _tiff_compression(series.keyframe), _tiff_voxel_size(tif)
        self.shape = (len(self._files), *page_shape)
        self.chunks = (1, *page_shape)

    def _load(self, file: Path) -> np.ndarray:
        with _TiffLog() as errors:
            try:
                if file.suffix.lower() == ".png":
                    from PIL import Image

                    with Image.open(file) as img:
                        plane = np.asarray(img)
                else:
                    import tifffile

                    _ensure_tiff_zstd()
                    plane = tifffile.imread(file)
            except (*_TIFF_READ_ERRORS, SyntaxError) as err:  # PIL raises SyntaxError for some broken PNGs
                errors.append(_first_line(err))
        if errors:
            raise VolumeError(f"cannot read slice {file} ({errors[0]}); is it truncated or corrupted?")
        return plane

    def read(self, sel) -> np.ndarray:
        zs, rest = sel[0], sel[1:]
        idx = range(zs.start, zs.stop, zs.step)
        out = np.empty((len(idx), *(len(range(*s.indices(n))) for s, n in zip(rest, self.shape[1:]))), self.dtype)
        for k, z in enumerate(idx):
            plane = self._load(self._files[z])
            if plane.shape != self.shape[1:]:
                raise VolumeError(
                    f"slice {self._files[z].name} has shape {plane.shape} but {self._files[0].name} has "
                    f"{self.shape[1:]}; all slices in {self.path} must have the same size"
                )
            out[k] = plane[rest]
        return out

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self._files)

    def close(self) -> None:
        pass


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
            raise VolumeError(f"TIFF stacks and slice folders hold 3D volumes (Z,Y,X); got shape {tuple(shape)}")
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


class SlicesWriter(_PlaneWriter):
    """One ``slice_00000.tif`` per z-plane, written as soon as the plane is complete."""

    def __init__(self, folder: Path, shape, dtype, chunks, compression, voxel_size):
        super().__init__(shape, dtype)
        self._kwargs = _tiff_write_kwargs(compression, self.dtype, voxel_size, self.shape[1:], False)
        self._folder = folder
        self._digits = max(5, len(str(self.shape[0] - 1)))
        folder.mkdir(parents=True)

    def _emit(self, z, plane):
        import tifffile

        tifffile.imwrite(self._folder / f"slice_{z:0{self._digits}d}.tif", plane, **self._kwargs)

    def abort(self) -> None:
        pass


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
