"""Scratch stores: label arrays ``bc-watershed`` keeps between its blockwise passes.

They live in memory for numpy inputs and as Zarr stores in a temporary folder otherwise (beside
the output for :func:`pytc.decode.decode_volume`); they are deleted at the end, and a disk error
under them is reported as pytc's one-line error naming the output (or the system's temporary
folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["Scratch", "scratch_chunk"]


class Scratch:
    """Label arrays kept between passes: numpy arrays in memory (``beside=None``), or Zarr arrays
    in a temporary folder ``.<name>-scratch.pytc-tmp-<pid>`` beside the path ``beside`` (e.g.
    the output), or in a fresh system temporary folder (``temporary=True``), deleted on
    :meth:`close`; one left beside a path by a killed run is removed by the next run there."""

    def __init__(self, beside: Optional[os.PathLike] = None, temporary: bool = False):
        self._path: Optional[Path] = None
        self._named_in_errors: Optional[Path] = None  # the output, or the system's temporary folder
        if temporary:  # a folder of its own: decodes running side by side never share one
            self._named_in_errors = Path(tempfile.gettempdir())
            with self.disk_errors():
                self._path = Path(tempfile.mkdtemp(prefix="pytc-decode-"))
        elif beside is not None:
            from pytc.io.common import TMP_TAG, clean_stale

            beside = Path(beside).absolute()
            base = beside.with_name(f"{beside.name}-scratch")
            clean_stale(base)
            self._path, self._named_in_errors = base.with_name(f".{base.name}{TMP_TAG}{os.getpid()}"), beside
            with self.disk_errors():
                self._path.mkdir(parents=True, exist_ok=True)

    def disk_errors(self):
        """A full disk (or another disk error) under the scratch folder as pytc's one-line error."""
        from pytc.io import disk_errors

        return disk_errors(self._named_in_errors) if self._named_in_errors is not None else contextlib.nullcontext()

    def array(self, name: str, shape, dtype, block):
        """A zero-filled ``shape`` array; Zarr chunks of at most 64 voxels a side divide ``block``
        (a halo read then decompresses little more than it needs)."""
        if self._path is None:
            return np.zeros(shape, dtype)
        import zarr

        chunks = tuple(scratch_chunk(b) for b in block)
        with self.disk_errors():
            return _ScratchArray(zarr.create_array(
                store=str(self._path / f"{name}.zarr"), shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                compressors=zarr.codecs.ZstdCodec(level=1),
            ), self)

    def close(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ScratchArray:
    """A scratch Zarr array whose reads and writes report a full disk as one line."""

    def __init__(self, array, scratch: Scratch):
        self._array, self._scratch = array, scratch
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, index) -> np.ndarray:
        with self._scratch.disk_errors():
            return self._array[index]

    def __setitem__(self, index, value) -> None:
        with self._scratch.disk_errors():
            self._array[index] = value


def scratch_chunk(b: int, cap: int = 64, floor: int = 16) -> int:
    """The Zarr chunk edge of a scratch array for the block edge ``b``: the largest divisor of
    ``b`` up to ``cap``; when that is tiny (``b`` prime, say) ``min(b, cap)`` instead: blocks then
    straddle chunks, which costs less than a million one-voxel chunk files."""
    d = max(k for k in range(1, min(b, cap) + 1) if b % k == 0)
    return d if d >= floor or d == b else min(b, cap)
