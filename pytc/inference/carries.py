"""Partial sums on their way from one block to later blocks (see :mod:`pytc.inference.grid`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to a temporary's name
        np.save(fh, array)


class Carries:
    """Partial sums on their way to later blocks (see :mod:`pytc.inference.grid`), keyed by
    (receiving block, source block): in memory up to ``budget`` bytes, beyond that the ones needed
    last go to ``.npy`` files in ``folder`` (a temporary folder when None), so memory stays bounded
    by the block size however wide the volume is. Only carries for ``wanted`` blocks are kept; a
    missing one is recomputed by its receiver, so losing them (an interrupted run) costs time, not
    correctness."""

    def __init__(self, wanted, budget: int, folder: Optional[Path] = None):
        self.wanted, self.budget, self._folder, self._tmp = set(wanted), int(budget), folder, None
        self._mem: dict[tuple[int, int], np.ndarray] = {}
        self._disk: set[tuple[int, int]] = set()
        self.bytes = 0

    def _dir(self) -> Path:
        if self._folder is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="pytc-carry-")
            self._folder = Path(self._tmp.name)
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def _path(self, key: tuple[int, int]) -> Path:
        return self._dir() / f"{key[0]}-{key[1]}.npy"

    def put(self, receiver: int, source: int, array: np.ndarray) -> None:
        from pytc.io import write_atomic

        if receiver not in self.wanted:
            return
        self._mem[receiver, source] = array
        self.bytes += array.nbytes
        while self.bytes > self.budget and self._mem:
            key = max(self._mem)  # the furthest receiver is needed last
            spill = self._mem.pop(key)
            self.bytes -= spill.nbytes
            write_atomic(self._path(key), lambda tmp, a=spill: _save_npy(tmp, a))
            self._disk.add(key)

    def take(self, receiver: int, source: int) -> Optional[np.ndarray]:
        """The carry from ``source`` to ``receiver`` (removed from the store), or None."""
        key = (receiver, source)
        array = self._mem.pop(key, None)
        if array is not None:
            self.bytes -= array.nbytes
            return array
        if key in self._disk:
            self._disk.discard(key)
            path = self._path(key)
            array = np.load(path, allow_pickle=False)
            path.unlink()
            return array
        return None

    def close(self) -> None:
        self._mem.clear()
        for key in self._disk:
            self._path(key).unlink(missing_ok=True)
        self._disk.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
