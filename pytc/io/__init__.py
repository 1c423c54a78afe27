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

Modules: :mod:`~pytc.io.addresses` (:func:`parse_spec`), :mod:`~pytc.io.volume` (reading),
:mod:`~pytc.io.write` (writing, output locks), :mod:`~pytc.io.disk` (disk errors, small atomic files,
checks before the work), :mod:`~pytc.io.blocks` (block tiling, the block pool, :func:`convert`),
:mod:`~pytc.io.info` (:func:`volume_info`, :func:`list_volumes`), one module per format
(:mod:`~pytc.io.hdf5`, :mod:`~pytc.io.zarr_store`, :mod:`~pytc.io.tiff`, :mod:`~pytc.io.slices`) and the helpers they share
(:mod:`~pytc.io.common`: temporaries and stale files, attributes, index normalisation).

Example:
    >>> from pytc.io import convert, open_volume
    >>> convert("raw.h5:main", "raw.zarr", progress=False)["shape"]    # doctest: +SKIP
    [100, 1024, 1024]
    >>> with open_volume("raw.zarr") as vol:                             # doctest: +SKIP
    ...     block = vol[10:20, :256, :256]                               # reads only these chunks
"""

from pytc.io.addresses import DEFAULT_CHUNK, DEFAULT_H5_KEY, VolumeSpec, parse_spec
from pytc.io.blocks import convert, iter_blocks, map_blocks
from pytc.io.common import json_attrs
from pytc.io.disk import FULL_BELOW, check_not_input, check_writable, disk_errors, disk_is_full, errno_of, write_atomic
from pytc.io.info import list_volumes, volume_info
from pytc.io.volume import Volume, channel_kinds_attr, open_volume
from pytc.io.write import VolumeWriter, create_volume, output_exists, output_lock_path
from pytc.progress import terminal_console  # re-exported: where it lived before pytc.progress

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_H5_KEY",
    "FULL_BELOW",
    "Volume",
    "VolumeSpec",
    "VolumeWriter",
    "channel_kinds_attr",
    "check_not_input",
    "check_writable",
    "convert",
    "create_volume",
    "disk_errors",
    "disk_is_full",
    "errno_of",
    "iter_blocks",
    "json_attrs",
    "list_volumes",
    "map_blocks",
    "open_volume",
    "output_exists",
    "output_lock_path",
    "parse_spec",
    "terminal_console",
    "volume_info",
    "write_atomic",
]
