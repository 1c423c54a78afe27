"""Training volumes: open, validate, cache and scan for foreground (used by dataset.py).

Every volume is seen through a (channels, Z, Y, X) *view*: a 2D image (Y, X) becomes (1, Y, X) and
a single-channel volume gets channels = 1, so sampling code handles 2D and 3D data alike (a 2D
patch is a (1, Y, X) box of a 3D stack). Nothing here imports torch.

Big volumes are never read whole: the foreground scan walks blocks of about ``BLOCK_VOXELS``
voxels, and a volume over the cache budget is read patch by patch from a :mod:`pytc.io` handle that
each process (DataLoader worker) opens for itself. Normalisation, statistics, finiteness checks and
block tiling live in :mod:`pytc.data.intensity` and are re-exported here.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pytc.config import as_zyx
from pytc.data.intensity import (
    BLOCK_VOXELS,
    VolumeStats,
    block_shape,
    check_finite,
    iter_blocks,
    normalization_stats,
    normalize_image,
    raise_if_not_finite,
    volume_stats,
)
from pytc.errors import DataError, VolumeError

__all__ = [
    # re-exported from pytc.data.intensity
    "BLOCK_VOXELS", "VolumeStats", "block_shape", "check_finite", "iter_blocks", "normalization_stats",
    "normalize_image", "raise_if_not_finite", "volume_stats",
    # training volumes
    "GIB", "CELL_FRACTION", "VolumeSource", "Region", "TrainVolumes", "as_list", "check_pair",
    "check_label_values", "foreground_cells", "crop_box", "open_pairs", "load_train_volumes", "holdout_spans",
]

GIB = 2**30
CELL_FRACTION = 4  # foreground cells are patch/4 per axis: fine enough to vary the patch position a lot


def _open(spec: str):
    from pytc.io import open_volume

    return open_volume(spec)


class VolumeSource:
    """One volume seen as (C, Z, Y, X) (images) or (Z, Y, X) (labels, masks).

    In memory after :meth:`cache`; otherwise every :meth:`read` goes to a :mod:`pytc.io` handle.
    The handle is opened on first use in each process and never pickled or shared across a fork
    (h5py handles survive neither), so DataLoader workers each open their own.
    """

    def __init__(self, spec: str, role: str):
        self.spec, self.role = str(spec), role
        handle = _open(self.spec)
        self.raw_shape: tuple[int, ...] = tuple(int(s) for s in handle.shape)
        self.dtype = np.dtype(handle.dtype)
        self.has_channels = False  # set by the pair check: raw axis 0 is channels
        self.flat = False  # set by the pair check: a 2D (Y, X) volume viewed as (1, Y, X)
        self._handle, self._pid = handle, os.getpid()
        self._data: Optional[np.ndarray] = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.raw_shape) * self.dtype.itemsize

    @property
    def cached(self) -> bool:
        return self._data is not None

    @property
    def shape(self) -> tuple[int, ...]:
        """View shape: (C, Z, Y, X) for images, (Z, Y, X) otherwise."""
        shape = self.raw_shape
        if self.flat:
            shape = (*shape[:-2], 1, *shape[-2:])
        if self.role == "image" and not self.has_channels:
            shape = (1, *shape)
        return shape

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.shape[-3:]

    @property
    def raw(self) -> "_Raw":
        """Array-like over the stored (not view) voxels, cached or lazy; for chunk-wise passes."""
        return _Raw(self)

    def _reader(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = _open(self.spec), os.getpid()
        return self._handle

    def read(self, box: Sequence[slice]) -> np.ndarray:
        """Voxels of the spatial ``box`` (3 slices over Z, Y, X) in view layout."""
        z, y, x = box
        sel = (y, x) if self.flat else (z, y, x)
        if self.has_channels:
            sel = (slice(None), *sel)
        out = self.raw[sel]
        if self.flat:
            out = out[..., None, :, :]
        if self.role == "image" and not self.has_channels:
            out = out[None]
        return out

    def cache(self) -> None:
        """Read the whole volume into memory (once, in the main process, before workers fork)."""
        if self._data is None:
            self._data = np.asarray(self._reader()[...])
            self.release()

    def release(self) -> None:
        """Close the lazy handle; the next read reopens it (in whichever process reads)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}


class _Raw:
    def __init__(self, src: VolumeSource):
        self.src, self.shape, self.dtype = src, src.raw_shape, src.dtype

    def __getitem__(self, sel) -> np.ndarray:
        src = self.src
        return np.asarray(src._data[sel] if src._data is not None else src._reader()[sel])


@dataclass
class Region:
    """A sampleable part of one training volume: view z range [z0, z1) and all of Y, X."""

    image: VolumeSource
    label: VolumeSource
    mask: Optional[VolumeSource]
    z0: int
    z1: int
    stats: Optional[VolumeStats]
    fg_cells: np.ndarray  # (k, 3) int32 view starts of `cell`-sized boxes that hold labels
    cell: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        _, y, x = self.label.spatial_shape
        return (self.z1 - self.z0, y, x)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _count(n: int, noun: str) -> str:
    """``1 volume``, ``2 volumes``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _shape(t: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in t) + ")"


def check_pair(
    image: VolumeSource, label: VolumeSource, mask: Optional[VolumeSource], in_channels: int, spatial_dims: int
) -> None:
    """Validate one image/label(/mask) triple and set the view flags of the sources.

    Raises:
        DataError: wrong number of axes, channels, or shapes that do not match voxel for voxel.
    """
    lab = label.raw_shape
    allowed = (2, 3) if spatial_dims == 2 else (3,)
    if len(lab) not in allowed:
        want = "(Z, Y, X) or (Y, X)" if spatial_dims == 2 else "(Z, Y, X)"
        raise DataError(f"label {label.spec} has shape {_shape(lab)}; expected {want} for {spatial_dims}D patches")
    img = image.raw_shape
    if len(img) == len(lab) + 1:
        if in_channels == 1 and img[0] != 1:
            raise DataError(
                f"image {image.spec} has shape {_shape(img)} with {_count(img[0], 'channel')} but "
                f"model.in_channels is 1; set model.in_channels={img[0]} or give a single-channel volume"
            )
        if img[0] != in_channels:
            raise DataError(
                f"image {image.spec} has {_count(img[0], 'channel')} (shape {_shape(img)}) but "
                f"model.in_channels is {in_channels}"
            )
        image.has_channels = True
        img = img[1:]
    elif len(img) == len(lab) and in_channels > 1:
        raise DataError(
            f"model.in_channels is {in_channels} but image {image.spec} has no channel axis (shape {_shape(img)}); "
            f"give a (C, {'Z, ' if len(lab) == 3 else ''}Y, X) image or set model.in_channels=1"
        )
    if img != lab:
        raise DataError(
            f"image {image.spec} has shape {_shape(image.raw_shape)} but label {label.spec} has shape {_shape(lab)}; "
            "they must match voxel for voxel"
        )
    if mask is not None and mask.raw_shape != lab:
        raise DataError(
            f"mask {mask.spec} has shape {_shape(mask.raw_shape)} but label {label.spec} has shape {_shape(lab)}; "
            "they must match voxel for voxel"
        )
    for src in (image, label, mask):
        if src is not None:
            src.flat = len(lab) == 2


def check_label_values(block: np.ndarray, spec: str) -> None:
    """Labels are ids: 0 = background, positive integers = objects."""
    if block.dtype.kind == "f":
        bad = block[np.mod(block, 1) != 0]  # NaN lands here too
        if bad.size:
            raise DataError(
                f"label {spec} is {block.dtype} with non-integral values (e.g. {bad.flat[0]:g}); labels must be "
                "integer ids: round or threshold them and save as an integer dtype"
            )
    elif block.dtype.kind not in "uib":
        raise DataError(f"label {spec} has dtype {block.dtype}; labels must be integer ids")
    if block.dtype.kind in "if" and block.size and block.min() < 0:
        raise DataError(
            f"label {spec} has negative values (min {block.min():g}); labels must be 0 (background) or positive ids"
        )


def foreground_cells(label: VolumeSource, z0: int, z1: int, cell: Sequence[int]) -> np.ndarray:
    """Check the label values in view rows [z0, z1) and list the cells that hold labelled voxels.

    Cells tile the region from (z0, 0, 0); one pass, block by block (blocks are whole cells).

    Returns:
        (k, 3) int32 view coordinates of the first voxel of each cell with a label > 0.
    """
    _, ny, nx = label.spatial_shape
    region = (z1 - z0, ny, nx)
    found = []
    for sel in iter_blocks(region, block_shape(region, align=cell)):
        box = (slice(sel[0].start + z0, sel[0].stop + z0), sel[1], sel[2])
        block = label.read(box)
        check_label_values(block, label.spec)
        fg = block > 0
        if not fg.any():
            continue
        pad = [(0, -s % c) for s, c in zip(fg.shape, cell)]
        fg = np.pad(fg, pad)
        grid = [s // c for s, c in zip(fg.shape, cell)]
        coarse = fg.reshape(grid[0], cell[0], grid[1], cell[1], grid[2], cell[2]).any(axis=(1, 3, 5))
        origin = np.array([b.start for b in box])
        found.append(np.argwhere(coarse) * np.array(cell) + origin)
    return np.concatenate(found).astype(np.int32) if found else np.zeros((0, 3), np.int32)


def crop_box(shape: Sequence[int], max_voxels: int, minimum: Sequence[int]) -> tuple[slice, ...]:
    """A centred box of at most ``max_voxels`` voxels (never below ``minimum`` per axis)."""
    size = [int(s) for s in shape]
    floor = [min(int(m), s) for m, s in zip(minimum, size)]
    while math.prod(size) > max_voxels:
        shrinkable = [a for a in range(len(size)) if size[a] > floor[a]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: size[a] / floor[a])  # keep the box roughly patch-shaped
        size[axis] = max(floor[axis], int(size[axis] * 0.9))
    return tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(shape, size))


@dataclass
class TrainVolumes:
    """Validated training regions and the view patch (1, Y, X for 2D) they are sampled with."""

    regions: list[Region]
    patch: tuple[int, int, int]
    spatial_dims: int

    @property
    def sources(self) -> list[VolumeSource]:
        seen: dict[int, VolumeSource] = {}
        for r in self.regions:
            for src in (r.image, r.label, r.mask):
                if src is not None:
                    seen.setdefault(id(src), src)
        return list(seen.values())


def open_pairs(images: list[str], labels: list[str], masks: list[str], in_channels: int, spatial_dims: int, what: str):
    """Open and check image/label(/mask) triples; ``what`` ("train"/"val") names the config keys.

    Raises:
        DataError: missing images, count mismatches, or a triple :func:`check_pair` rejects.
        VolumeError: a volume that is missing or unreadable (the message starts with its config key).
    """
    if not images:
        raise DataError(f"data.{what}_image is not set; give the {what} image volume(s)")
    if len(labels) != len(images):
        raise DataError(
            f"data.{what}_image has {_count(len(images), 'volume')} but data.{what}_label has {len(labels)}; "
            "give one label per image"
        )
    if masks and len(masks) != len(images):
        raise DataError(
            f"data.{what}_image has {_count(len(images), 'volume')} but data.{what}_mask has {len(masks)}; "
            "give one mask per image"
        )
    triples = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        at = f"[{i}]" if len(images) > 1 else ""
        image, label = _source(img, "image", f"data.{what}_image", at), _source(lab, "label", f"data.{what}_label", at)
        triple = (image, label, _source(masks[i], "mask", f"data.{what}_mask", at) if masks else None)
        check_pair(*triple, in_channels=in_channels, spatial_dims=spatial_dims)
        triples.append(triple)
    return triples


# What else to do about a missing volume, besides fixing its path (validation and masks are optional).
_WITHOUT = {
    "data.val_image": "set data.val_image=null data.val_label=null to train without these validation volumes",
    "data.val_label": "set data.val_image=null data.val_label=null to train without these validation volumes",
    "data.train_mask": "set data.train_mask=null to sample everywhere",
}


def _source(spec: str, role: str, key: str, at: str = "") -> VolumeSource:
    """Open the volume ``spec`` of config key ``key`` (``at``: its index in a list); errors name the key.

    Raises:
        VolumeError: the volume is missing or unreadable, e.g. ``data.val_image: X does not exist; ...``.
    """
    from pytc.io import parse_spec

    try:
        path = parse_spec(spec).path
        if not path.exists():
            other = f" or {_WITHOUT[key]}" if key in _WITHOUT else ""
            raise VolumeError(f"{path} does not exist; check the path{other}")
        return VolumeSource(spec, role)
    except VolumeError as err:
        raise type(err)(f"{key}{at}: {err}") from None


def load_train_volumes(cfg) -> TrainVolumes:
    """Open, validate, cache and scan the training volumes of ``cfg`` (a :class:`PytcConfig`).

    Raises:
        DataError: count, shape, channel or label-value problems, or a patch that does not fit.
    """
    data = cfg.data
    spatial_dims = cfg.model.spatial_dims
    patch = as_zyx(data.patch_size, spatial_dims, "data.patch_size")
    triples = open_pairs(
        as_list(data.train_image), as_list(data.train_label), as_list(data.train_mask),
        cfg.model.in_channels, spatial_dims, "train",
    )
    for img, lab, _ in triples:
        if any(p > s for p, s in zip(patch, lab.spatial_shape)):
            fit = [min(p, s) for p, s in zip(patch, lab.spatial_shape)][3 - spatial_dims :]
            raise DataError(
                f"data.patch_size {list(data.patch_size)} is larger than {img.spec} (spatial shape "
                f"{_shape(lab.spatial_shape[3 - spatial_dims:])}); set data.patch_size to at most {fit}"
            )
    spans = [[(0, lab.spatial_shape[0])] for _, lab, _ in triples]
    if data.val_z_range is not None:
        spans[0] = holdout_spans(data, triples[0][1], patch)

    budget = data.cache_budget_gb * GIB if data.use_cache else 0
    used = 0
    for src in (s for triple in triples for s in triple if s is not None):
        if used + src.nbytes <= budget:  # first fit, in config order
            src.cache()
            used += src.nbytes

    cell = tuple(max(1, p // CELL_FRACTION) for p in patch)
    regions = []
    for (img, lab, mask), span in zip(triples, spans):
        check_finite(img.raw, f"image {img.spec}")  # NaN in, NaN loss out: refuse it up front
        stats = normalization_stats(img.raw, data.normalize)
        found = [Region(img, lab, mask, z0, z1, stats, foreground_cells(lab, z0, z1, cell), cell) for z0, z1 in span]
        if not any(len(r.fg_cells) for r in found):
            warnings.warn(
                f"label {lab.spec} has no labelled voxels where patches are sampled; its patches are all background",
                stacklevel=2,
            )
        regions += found
    vols = TrainVolumes(regions, patch, spatial_dims)
    for src in vols.sources:
        src.release()  # workers open their own handles; none is inherited across the fork
    return vols


def holdout_spans(data, label: VolumeSource, patch: Sequence[int]) -> list[tuple[int, int]]:
    """The z ranges of the first training volume left for training by ``data.val_z_range``.

    A part thinner than the patch is not sampled (a patch across the held-out range would leak it).

    Raises:
        DataError: val_image also set, a 2D image, a range outside the volume, or nothing left that fits.
    """
    z0, z1 = data.val_z_range
    depth = label.spatial_shape[0]
    if data.val_image is not None:
        raise DataError("data.val_image and data.val_z_range are both set; validate on one or the other")
    if label.flat:
        raise DataError(f"data.val_z_range needs a (Z, Y, X) stack but {label.spec} is a 2D image; use data.val_image")
    if not 0 <= z0 < z1 <= depth:
        raise DataError(
            f"data.val_z_range {[z0, z1]} is not a range [z0, z1) with 0 <= z0 < z1 <= {depth} (depth of {label.spec})"
        )
    spans = [(a, b) for a, b in ((0, z0), (z1, depth)) if b - a >= patch[0]]
    if not spans:
        raise DataError(
            f"data.val_z_range {[z0, z1]} leaves z ranges [0, {z0}) and [{z1}, {depth}) of {label.spec} for training; "
            f"neither is as deep as data.patch_size {list(data.patch_size)}: shrink the patch or the held-out range"
        )
    return spans
