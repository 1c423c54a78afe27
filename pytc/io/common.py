"""Helpers shared by the format back-ends and the readers/writers of :mod:`pytc.io`.

Each reader exposes ``shape dtype chunks compression voxel_size key``, ``read(sel)`` (``sel`` is a
full tuple of non-empty slices with positive steps, already normalised by :class:`pytc.io.Volume`),
``close()`` and ``disk_bytes()``. Each writer exposes ``chunks``, ``write(sel, value)``,
``finish()`` and ``abort()``; where and how the written data is swapped into place is
:mod:`pytc.io.write`'s job. Back-ends: :mod:`pytc.io.hdf5`, :mod:`pytc.io.zarr_store`,
:mod:`pytc.io.tiff`, :mod:`pytc.io.slices`. Here: voxel sizes, attribute conversion, index normalisation, and the
temporary/stale-file handling (:data:`TMP_TAG`, :func:`clean_stale`, :func:`swap_in`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
import numpy as np

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



def json_attrs(attrs: dict) -> tuple[dict, list[str]]:
    """The user attributes that are plain JSON values (voxel-size keys left out, they travel as the
    voxel size), and the names of the others (HDF5 object references, empty or binary data)."""
    kept, odd = {}, []
    for k, v in attrs.items():
        if k in VOXEL_SIZE_ATTRS:
            continue
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            odd.append(str(k))
            continue
        kept[k] = v
    return kept, odd

