"""The resume record of a prediction store (:func:`pytc.inference.infer`).

It lives in the partial store's record folder (:attr:`pytc.io.VolumeWriter.record_dir`): ``run.json``
holds the fingerprint of everything that decides the output and the z-score statistics (computed
once, by rank 0); ``done/<i>`` is an empty file per finished block, created after the block's data
is flushed. Empty files are atomic and safe to create from several processes. A rerun with other
arguments is refused, naming what changed (:func:`changed`, :func:`refuse_changed`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from pytc.errors import VolumeError

DONE_DIR = "done"  # record folder: one empty file per finished block, named by its index
CARRY_DIR = "carry"  # record folder: partial sums spilled on their way to later blocks, per process
RUN_FILE = "run.json"  # record folder: fingerprint of the arguments and the z-score statistics


def mark_done(done_dir: Path, index: int) -> None:
    """Record block ``index`` as finished (an empty file: atomic, and safe from several processes)."""
    (done_dir / str(index)).touch()



SAMPLE_EDGE = 16  # voxels per axis of each box hashed from a chunked input: about one chunk decode each
SAMPLE_PLANES = 3  # whole planes hashed from a page-based input (TIFF, slices): the first, middle and last


def _digest(facts) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _h5_dataset(path: Path, key: str) -> list:
    """The dataset itself, not its file (other datasets may be added to the file meanwhile, e.g. the
    prediction committed beside its input): its object address in the file, which a dataset
    written anew changes (HDF5 never moves one that is only read), the bytes its data take
    (compressed data that changes changes size, nearly always) and its layout and filters."""
    import h5py

    from pytc.io.hdf5 import h5_open_read

    with h5_open_read(path) as f:  # waits while another process commits a dataset into the file
        ds = f[key]
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
        return [getattr(h5py.h5o.get_info(ds.id), "addr", None), ds.id.get_storage_size(), ds.chunks, filters]


def _zarr_metadata(path: Path, key: Optional[str]) -> list:
    """The array's own metadata files (an array written anew rewrites them); its groups' are left out:
    they change when a sibling array or an attribute is added to them."""
    here = path / key.strip("/") if key else path
    return [_stat(here / m) for m in ("zarr.json", ".zarray", ".zattrs") if (here / m).is_file()]


def _sample(vol) -> str:
    """sha256 of what is read of the volume. Page-based formats (TIFF stacks, slice folders) decode
    a whole plane to read any part of it: there, ``SAMPLE_PLANES`` whole planes (first, middle,
    last), each decoded once. Chunked formats (HDF5, Zarr): ``SAMPLE_EDGE``-voxel boxes at the 8
    corners and the centre, a chunk decode or so each."""
    shape, sample = [int(n) for n in vol.shape], hashlib.sha256()
    if vol.format in ("tiff", "slices"):
        for z in sorted({0, shape[0] // 2, shape[0] - 1}):
            sample.update(np.ascontiguousarray(vol[z]).tobytes())
        return sample.hexdigest()
    starts = [[0, max(0, n // 2 - SAMPLE_EDGE // 2), max(0, n - SAMPLE_EDGE)] for n in shape]
    picks = [[0] * len(shape), [2] * len(shape), [1] * len(shape)]  # first corner, last corner, centre
    picks += [[(c >> a) & 1 and 2 for a in range(len(shape))] for c in range(1, 2 ** len(shape) - 1)]  # other corners
    for pick in picks:
        box = tuple(slice(starts[a][p], starts[a][p] + SAMPLE_EDGE) for a, p in enumerate(pick))
        sample.update(np.ascontiguousarray(vol[box]).tobytes())
    return sample.hexdigest()


def input_identity(vol) -> dict:
    """What identifies the input's contents, cheaply for huge volumes.

    * What changes when it is rewritten: for an HDF5 dataset, the dataset itself (object address,
      stored bytes, chunks and filters; not the file's size or modification time, which change when
      other datasets are added to it); for a Zarr array, its own metadata files (size and
      modification time); for a TIFF stack, the file; for a slice folder, each slice file.
    * A hash of samples read through the volume (:func:`_sample`), so that new contents are noticed
      even where the modification times were kept (a copy with ``cp -p``, chunks replaced in place).

    Not noticed: an in-place edit that no sample reads and, for HDF5, that keeps the stored size
    (uncompressed data, or compressed data that compresses to the same size).
    """
    path = Path(vol.path).resolve()
    if vol.format == "hdf5":
        stored = _h5_dataset(path, vol.key)
    elif vol.format == "zarr":
        stored = _zarr_metadata(path, vol.key)
    elif vol.format == "tiff":
        stored = [_stat(path)]
    else:  # a slice folder: one small stat per section (other files in the folder are not the input)
        from pytc.io.slices import SLICE_SUFFIXES

        stored = [_stat(p) for p in sorted(path.iterdir())
                  if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    shape = [int(n) for n in vol.shape]
    return {"address": [str(path), vol.key, shape, str(vol.dtype)], "stored": stored, "sample": _sample(vol)}


def checkpoint_identity(folder: Path) -> str:
    """sha256 of the weights file the network is built from: the checkpoint's identity wherever it
    lies (a copied or moved checkpoint resumes). The whole file is hashed: it was just read in
    full to load the model, so this costs about a second per GB, from the page cache."""
    from pytc.engine.checkpoint import WEIGHTS

    digest = hashlib.sha256()
    with open(folder / WEIGHTS, "rb") as fh:
        for piece in iter(lambda: fh.read(2**22), b""):
            digest.update(piece)
    return digest.hexdigest()


def fingerprint(folder: Path, vol, cfg, layout: dict) -> dict[str, str]:
    """Hashes of everything that decides the output, by what a user may have changed: ``input``,
    ``checkpoint``, ``config`` (with the output layout) and ``pytc version``. The ``system``
    section (devices, threads) is left out: a run may resume on other hardware."""
    from pytc import __version__

    config = {"config": cfg.model_dump(mode="json", exclude={"system"}),
              "output": [list(layout["shape"]), str(layout["dtype"]), list(layout["chunks"])]}
    return {"input": _digest(input_identity(vol)), "checkpoint": checkpoint_identity(folder),
            "config": _digest(config), "pytc version": _digest(__version__)}


def changed(run: dict, fingerprint: dict[str, str]) -> list[str]:
    """What differs between a partial store's record and this run (``input``, ``checkpoint``, ...);
    a record without a fingerprint of this form counts as written by another pytc version."""
    recorded = run.get("fingerprint")
    if not isinstance(recorded, dict) or set(recorded) != set(fingerprint):
        return ["pytc version"]
    return [what for what in fingerprint if recorded[what] != fingerprint[what]]


def refuse_changed(writer, what: list[str], input_spec: str, done: int) -> None:
    """Refuse to resume a partial store written with other arguments (its blocks would be mixed
    into this output), naming what changed and offering ``--restart``."""
    names = " and ".join(what)
    detail = f" ({input_spec} changed since)" if "input" in what else ""
    blocks = f"{done} finished block{'s' if done != 1 else ''}"
    raise VolumeError(f"the partial store {writer.partial_path} holds {blocks} written with another {names}{detail}; "
                    "rerun with --restart to start over, or with what it was written with to resume")


def read_run(writer) -> Optional[dict]:
    try:
        return json.loads((writer.record_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_run(writer, run: dict) -> None:
    from pytc.io import write_atomic

    write_atomic(writer.record_dir / RUN_FILE, json.dumps(run))
