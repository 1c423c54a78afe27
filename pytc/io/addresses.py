"""Volume addresses: one scheme for every command (``file.h5:key``, ``vol.zarr/array``, ``stack.tif``,
``slices/``), parsed into a :class:`VolumeSpec` by :func:`parse_spec`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pytc.errors import VolumeError

DEFAULT_CHUNK = 64  # 64³ voxels: the usual EM chunk, small enough for random patch reads
DEFAULT_H5_KEY = "main"  # dataset name used when an HDF5 destination names none

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

