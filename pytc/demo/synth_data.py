"""``pytc demo synth``: a synthetic EM volume (:func:`pytc.synth.make_em_volume`) written as one HDF5
file or Zarr store, atomically and under the output's lock (:func:`write_synth`)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from pytc.errors import ConfigError, OutputExistsError

SYNTH_KEYS = ("image", "mito_mask", "mito_instances", "cell_instances")


def write_synth(path: str | os.PathLike, shape: Sequence[int] = (64, 256, 256), seed: int = 0,
                anisotropy: float = 1.0, force: bool = False) -> dict:
    """Generate a synthetic EM volume (:func:`pytc.synth.make_em_volume`) and write it as HDF5 or Zarr.

    Args:
        path: The ``.h5`` file or ``.zarr`` store to write; datasets ``image`` (uint8), ``mito_mask``
            (uint8 0/1), ``mito_instances`` and ``cell_instances`` (uint32 ids, 0 = background /
            membrane), each with its ``voxel_size`` attribute.
        shape: (Z, Y, X) voxels, each at least 1.
        seed: Random seed (0 or more); the same seed gives the same volume.
        anisotropy: z voxel size relative to y/x (0.1 to 10).
        force: Replace an existing file or store (once the new one is complete: the volume is
            written in a temporary folder beside ``path`` and renamed into place).

    Returns:
        ``{"path", "shape", "seed", "voxel_size", "datasets", "volumes", "mitochondria", "cells",
        "seconds"}``; ``volumes`` holds the address of each dataset (``out.h5:image``,
        ``out.zarr/image``).

    Raises:
        ConfigError: ``path`` is not ``.h5``/``.zarr``, or an option is out of range.
        OutputExistsError: ``path`` exists and ``force`` is False.
    """
    import numpy as np

    from pytc.io.common import TMP_TAG, clean_stale, remove_path, swap_in
    from pytc.io import check_writable, create_volume, disk_errors
    from pytc.locks import exclusive, lock_path_for
    from pytc.synth import check_options, make_em_volume

    start = time.perf_counter()
    path = Path(path)
    _synth_address(path)  # a .h5 or .zarr path
    shape = check_options(tuple(shape), seed, anisotropy)  # before anything on disk is touched
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
    check_writable(path)
    with contextlib.ExitStack() as held:
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive(lock_path_for(path), f"output {path}"))  # a second writer is refused
        if path.exists() and not force:  # made while this process waited for nothing: still not ours
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        vol = make_em_volume(shape, seed=seed, anisotropy=anisotropy)
        # The whole file is written in a temporary folder beside it and renamed over the old one only
        # when complete: a killed run leaves the old file (or none), never a half-written one.
        clean_stale(path)  # the temporary folder of a killed run
        tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
        remove_path(tmp)
        staged = tmp / path.name
        try:
            with disk_errors(path):
                tmp.mkdir()
            for key in SYNTH_KEYS:
                data = getattr(vol, key)
                with create_volume(_synth_address(staged)(key), data.shape, data.dtype, voxel_size=vol.voxel_size,
                                   lock=False) as out:
                    out[...] = data
            with disk_errors(path):
                swap_in(staged, path)
        finally:
            remove_path(tmp)
    address = _synth_address(path)
    return {
        "path": str(path), "shape": list(vol.image.shape), "seed": seed, "voxel_size": list(vol.voxel_size),
        "datasets": list(SYNTH_KEYS), "volumes": [address(key) for key in SYNTH_KEYS],
        "mitochondria": int(vol.mito_instances.max()),
        "cells": int(np.count_nonzero(np.unique(vol.cell_instances))),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _synth_address(path: Path) -> Callable[[str], str]:
    """How a dataset of the synthetic file ``path`` is addressed: ``file.h5:key`` or ``store.zarr/key``."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        return lambda key: f"{path}:{key}"
    if suffix == ".zarr":
        return lambda key: f"{path}/{key}"
    raise ConfigError(f"cannot write {path}: synth writes an HDF5 file (.h5) or a Zarr store (.zarr), "
                      "e.g. my_synth.h5")

