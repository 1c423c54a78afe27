"""What is in a volume: :func:`list_volumes` (the arrays of a file or group) and :func:`volume_info`
(shape, dtype, chunks, compression, voxel size, attributes and, on request, statistics)."""

from __future__ import annotations

import os
import numpy as np

from pytc.errors import VolumeError
from pytc.io import hdf5, zarr_store
from pytc.io.addresses import parse_spec
from pytc.io.blocks import map_blocks, iter_blocks
from pytc.io.common import json_attrs
from pytc.io.volume import Volume, open_volume
from pytc.io.write import _check_chunks

def _block_stats(block: np.ndarray, labels: bool) -> dict:
    return {
        "min": block.min(),
        "max": block.max(),
        "sum": block.sum(dtype=np.float64),
        "labels": np.unique(block) if labels else None,
    }



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
            with hdf5.h5_open_read(vs.path) as f:
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
        if not isinstance(node, zarr.Group) or zarr_store.ome_multiscales(node.attrs):
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
    for part in map_blocks(
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
