"""Folders of 2D slices for :mod:`pytc.io`: one TIFF/PNG image per z-plane, read in natural order
(``z2`` before ``z10``), only the requested slices decoded. tifffile and PIL are imported inside
functions: importing this module must stay cheap (``pytc --help``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from pytc.errors import VolumeError
from pytc.io.common import _first_line, _native
from pytc.io.tiff import (
    _TIFF_READ_ERRORS,
    _ensure_tiff_zstd,
    _open_tiff,
    _PlaneWriter,
    _tiff_compression,
    _tiff_voxel_size,
    _tiff_write_kwargs,
    _TiffLog,
)

SLICE_SUFFIXES = (".tif", ".tiff", ".png")


def natural_key(name: str):
    """Sort key that orders ``z2`` before ``z10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class SlicesReader:
    """A folder of 2D TIFF/PNG slices in natural order; only the requested slices are read (when
    opened, the headers of all are, so that slices of mixed size or dtype are refused at once: pytc
    never casts one slice to another's dtype)."""

    format = "slices"
    attrs: dict = {}

    def __init__(self, path: Path):
        self.path, self.key = path, None
        files = [
            p
            for p in path.iterdir()
            if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ]
        if not files:
            raise VolumeError(f"{path} holds no .tif/.tiff/.png slices; point to a folder of 2D images")
        self._files = sorted(files, key=lambda p: natural_key(p.name))
        first = self._files[0]
        if first.suffix.lower() == ".png":
            plane = self._load(first)
            page_shape, self.dtype, self.compression, self.voxel_size = plane.shape, _native(plane.dtype), "png", None
        else:
            tif, series = _open_tiff(first)
            with tif:
                page_shape, self.dtype = tuple(series.keyframe.shape), _native(series.dtype)
                self.compression, self.voxel_size = _tiff_compression(series.keyframe), _tiff_voxel_size(tif)
        self.shape = (len(self._files), *page_shape)
        self.chunks = (1, *page_shape)
        for file in self._files[1:]:  # headers only: a mixed folder is refused before anything is read
            header = _slice_header(file)
            if header is not None:
                self._check(file, *header)

    def _check(self, file: Path, shape: tuple, dtype: np.dtype) -> None:
        first = self._files[0].name
        if tuple(shape) != self.shape[1:]:
            raise VolumeError(f"slice {file.name} has shape {tuple(shape)} but {first} has {self.shape[1:]}; "
                              f"all slices in {self.path} must have the same size")
        if _native(dtype) != self.dtype:  # never cast: uint16 into uint8 would keep the values modulo 256
            raise VolumeError(f"slice {file.name} has dtype {_native(dtype)} but {first} has {self.dtype}; all "
                              f"slices in {self.path} must have one dtype and shape (pytc does not convert "
                              "them): save them alike")

    def _load(self, file: Path) -> np.ndarray:
        with _TiffLog() as errors:
            try:
                if file.suffix.lower() == ".png":
                    from PIL import Image

                    with Image.open(file) as img:
                        plane = np.asarray(img)
                else:
                    import tifffile

                    _ensure_tiff_zstd()
                    plane = tifffile.imread(file)
            except (*_TIFF_READ_ERRORS, SyntaxError) as err:  # PIL raises SyntaxError for some broken PNGs
                errors.append(_first_line(err))
        if errors:
            raise VolumeError(f"cannot read slice {file} ({errors[0]}); is it truncated or corrupted?")
        return plane

    def read(self, sel) -> np.ndarray:
        zs, rest = sel[0], sel[1:]
        idx = range(zs.start, zs.stop, zs.step)
        out = np.empty((len(idx), *(len(range(*s.indices(n))) for s, n in zip(rest, self.shape[1:]))), self.dtype)
        for k, z in enumerate(idx):
            plane = self._load(self._files[z])
            self._check(self._files[z], plane.shape, plane.dtype)  # a slice replaced since the folder was opened
            out[k] = plane[rest]
        return out

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self._files)

    def close(self) -> None:
        pass


@functools.cache
def _pil_mode(mode: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and trailing (colour) axes numpy gives an image of this PIL mode."""
    from PIL import Image

    sample = np.asarray(Image.new(mode, (1, 1)))
    return sample.dtype, sample.shape[2:]


def _slice_header(file: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of a slice's first image, from its header (~1 ms a file), or None when the
    header is unreadable: that slice fails when it is read, as does a slice of several pages."""
    import tifffile

    with _TiffLog():
        try:
            if file.suffix.lower() == ".png":
                from PIL import Image

                with Image.open(file) as img:
                    dtype, extra = _pil_mode(img.mode)
                    return (img.height, img.width, *extra), dtype
            with tifffile.TiffFile(file) as tif:
                page = tif.pages.first
                return tuple(page.shape), page.dtype
        except (tifffile.TiffFileError, *_TIFF_READ_ERRORS, SyntaxError):
            return None



class SlicesWriter(_PlaneWriter):
    """One ``slice_00000.tif`` per z-plane, written as soon as the plane is complete."""

    def __init__(self, folder: Path, shape, dtype, chunks, compression, voxel_size):
        super().__init__(shape, dtype)
        self._kwargs = _tiff_write_kwargs(compression, self.dtype, voxel_size, self.shape[1:], False)
        self._folder = folder
        self._digits = max(5, len(str(self.shape[0] - 1)))
        folder.mkdir(parents=True)

    def _emit(self, z, plane):
        import tifffile

        tifffile.imwrite(self._folder / f"slice_{z:0{self._digits}d}.tif", plane, **self._kwargs)

    def abort(self) -> None:
        pass

