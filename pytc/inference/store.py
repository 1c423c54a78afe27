"""The prediction store of :func:`pytc.inference.infer`: its address, its attributes ("Prediction
stores" in docs/architecture.md), the probe of its lock and the HDF5 codec fallback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pytc.errors import VolumeError
from pytc.inference.tta import affinity_layout

log = logging.getLogger("pytc")

OUTPUT_FORMS = "out.zarr (the default), out.zarr/array or out.h5:dataset"


def output_spec(output) -> str:
    from pytc.io import parse_spec

    text = os.fspath(output)
    if text and not Path(text).suffix and not text.endswith(("/", os.sep)):
        text += ".zarr"  # Zarr is the default store
    if parse_spec(text).format not in ("zarr", "hdf5"):
        raise VolumeError(f"predictions are (C, Z, Y, X) arrays; write {OUTPUT_FORMS}, not {text}")
    return text


def check_output_free(out_spec: str) -> None:
    """Refuse at once, naming the holder (:class:`pytc.locks.LockedError`), when another process is
    writing ``out_spec``: a probe of the lock :func:`pytc.io.create_volume` takes later, held only for
    the check, so that a second run stops before loading the model and reading the input. Only a
    single process probes: the ranks of one multi-process run would meet each other's probe, and
    not every launcher says which rank a process is before the process group starts (Accelerate's
    ``debug_launcher`` sets no ``RANK``); there, rank 0's ``create_volume`` takes the lock. A run
    that starts between the probe and ``create_volume`` is refused there too."""
    from pytc.io import disk_errors, output_lock_path
    from pytc.locks import exclusive

    lock = output_lock_path(out_spec)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    if not lock.parent.is_dir():  # no folder yet: nobody writes there
        return
    with disk_errors(out_spec), exclusive(lock, f"output {out_spec}"):
        pass


def h5_codec(compression: str, explicit: bool = True) -> str:
    """The codec an HDF5 prediction store gets: HDF5 zstd/lz4 need the hdf5plugin package; without it
    gzip (HDF5's own), with a warning when the user asked for that codec (``explicit``), quietly for
    the config's default."""
    compression = getattr(compression, "value", compression)
    if compression in ("zstd", "lz4"):
        try:
            import hdf5plugin  # noqa: F401
        except ImportError:
            say = log.warning if explicit else log.info
            say(f"HDF5 {compression} compression needs hdf5plugin (pip install hdf5plugin); writing gzip")
            return "gzip"
    return compression


def store_attrs(cfg, kinds: list[str], vol, dtype: np.dtype) -> dict:
    """The attributes of "Prediction stores" (docs/architecture.md)."""
    from pytc.config import dump_config

    offsets, _ = affinity_layout(cfg.data.targets)
    attrs: dict[str, Any] = {
        "pytc_channels": list(kinds),
        "pytc_scale": 255 if dtype == np.uint8 else 1,
        "pytc_config": dump_config(cfg),
    }
    if "affinity" in kinds:
        attrs["pytc_offsets"] = [list(o) for o in offsets if o is not None]
    if vol.voxel_size is not None:
        attrs["voxel_size"] = [float(v) for v in vol.voxel_size]
    return attrs
