"""Reading: :func:`open_volume` returns a lazy, read-only :class:`Volume` over any format's reader;
:func:`channel_kinds_attr` reads the channel kinds a prediction store carries."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import numpy as np

from pytc.errors import VolumeError
from pytc.io import common, hdf5, slices, tiff, zarr_store
from pytc.io.addresses import VolumeSpec, _SPEC_FORMS, parse_spec

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
        sel, flip, out_shape = common.normalize_index(index, self.shape)
        if any(s.stop <= s.start for s in sel):
            return np.empty(out_shape, self.dtype)
        return common.flip(np.asarray(self._reader.read(sel), dtype=self.dtype), flip).reshape(out_shape)

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
        reader = hdf5.H5Reader(vs.path, vs.key)
    elif vs.format == "zarr":
        reader = zarr_store.ZarrReader(vs.path, vs.key)
    elif vs.format == "tiff":
        reader = tiff.TiffReader(vs.path)
    else:
        reader = slices.SlicesReader(vs.path)
    return Volume(reader, vs)


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

