"""Blockwise machinery of :mod:`pytc.decode`: connected components and seeded watershed over
volumes larger than memory.

A volume is cut into blocks (``decoding.block_size``), visited in C order; each block is read,
decoded and written on its own, so memory holds one block (plus its halo) at a time, a few
planes of labels for stitching, and per-object tables.

Connected components (``threshold``, and the seeds of ``bc-watershed``) are exact:

1. Each block is labelled by cc3d; its ids are made provisional global ids by an offset (block
   ``b`` owns ids ``offset_b + 1 .. offset_b + n_b``). Voxel counts and the raster index of
   every component's first voxel are recorded (fastremap.unique).
2. Components that touch across a block border are paired. With 26-connectivity a voxel touches
   the 9 voxels of the neighbouring plane at in-plane offsets ``{-1, 0, 1}²``, including ones in
   blocks that meet this block only at an edge or a corner. Every such pair crosses a z border
   (the two voxels lie in consecutive z-slabs of blocks), or else a y border inside one slab, or
   else an x border inside one row of blocks; so comparing each block's first plane along each
   axis with the last plane of the slab / row / block before it (kept as full planes: the
   previous slab's last z-plane, the previous row's last y-plane, the previous block's last
   x-plane) finds every pair exactly once or more.
3. The pairs are merged with scipy's sparse-graph connected components (a union-find, run only
   over the ids that cross a border), counts are summed per object, objects under ``min_size``
   dropped, and the rest numbered 1..N in raster order of their first voxel — the numbering the
   whole-volume decoder gives (cc3d numbers in raster order, fastremap.renumber in order of first
   appearance), so the labels are identical, not just the same partition.
4. A second pass labels each block again (cc3d is deterministic) and writes ``table[id]``.

``bc-watershed`` takes its seeds from (1–3) with global ids, spilled to a scratch store; each
block is flooded (scikit-image) on the block plus a halo with the global seeds found there as
markers, and only the block itself is kept. Seeds being global, a region keeps one id across
borders; what can differ from a whole-volume flood is which seed claims a voxel near a border,
when the decisive competition happens beyond the halo. Regions go to a second scratch store,
are counted, then numbered like the components (min_size, raster order) in a last pass.

Scratch stores live in memory for numpy inputs and as Zarr stores in a temporary folder
otherwise (beside the output for :func:`pytc.decode.decode_volume`); they are deleted at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Optional

import numpy as np

__all__ = ["Scratch", "bc_watershed_blocks", "block_grid", "label_components", "threshold_blocks"]

CONNECTIVITY = 26  # the same as pytc.decode.CONNECTIVITY (kept here to avoid an import cycle)


def label_components(mask: np.ndarray, return_n: bool = False):
    """``cc3d.connected_components(mask, connectivity=26)``, also on line-shaped arrays.

    cc3d 4.1 with 26-connectivity fails ("maximum length exception") on (1, 1, k)-like arrays
    holding more than about k/4 pieces — edge blocks of a volume and thin 2D images produce them.
    On a line 26- and 6-connectivity are the same relation, and cc3d labels it with 6.
    """
    import cc3d

    connectivity = 6 if sum(n == 1 for n in mask.shape) >= 2 else CONNECTIVITY
    return cc3d.connected_components(mask, connectivity=connectivity, return_N=return_n)
_NO_VOXEL = np.iinfo(np.int64).max  # "first voxel" of an id that has none yet

# read(sel) -> array for the spatial selection sel; create(dtype) -> writer context for the labels;
# step(description, total) -> advance(), called once per block.
Reader = Callable[[tuple], np.ndarray]
Creator = Callable[[np.dtype], ContextManager]
Stepper = Callable[[str, int], Callable[[], None]]


# ------------------------------------------------------------------------------------ blocks --
def block_grid(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """``(index, slices)`` of every block of ``shape``, in C order (the last axis fastest)."""
    counts = [-(-n // b) for n, b in zip(shape, block)]
    return [
        (idx, tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(idx, block, shape)))
        for idx in itertools.product(*(range(c) for c in counts))
    ]


def _grow(sel: tuple[slice, ...], halo, shape) -> tuple[slice, ...]:
    """``sel`` widened by ``halo`` on each side, clipped to the volume."""
    return tuple(slice(max(s.start - h, 0), min(s.stop + h, n)) for s, h, n in zip(sel, halo, shape))


def _size(sel: tuple[slice, ...]) -> int:
    return math.prod(s.stop - s.start for s in sel)


# ------------------------------------------------------------------- connected components --
class _Components:
    """Connected components of a volume labelled block by block, stitched across block borders.

    Call :meth:`add` for every block in C order (the order of :func:`block_grid`), then
    :meth:`table`.
    """

    def __init__(self, shape: tuple[int, ...], block: tuple[int, ...]):
        self.shape, self.block = tuple(shape), tuple(block)
        self.offsets: list[int] = []  # block b owns provisional ids offsets[b] + 1 .. offsets[b] + sizes[b]
        self.sizes: list[int] = []
        self._counts: list[np.ndarray] = [np.zeros(1, np.int64)]  # id 0: background
        self._first: list[np.ndarray] = [np.full(1, _NO_VOXEL, np.int64)]
        self._pairs: list[np.ndarray] = []
        self._next = 0
        # Last planes of what came before the current block (provisional ids, 0 = background):
        # the previous z-slab's last z-plane, the previous row's last y-plane, the previous
        # block's last x-plane; and the current slab's and row's, being assembled.
        self._z_prev = self._z_cur = self._y_prev = self._y_cur = self._x_prev = None

    def add(self, idx: tuple[int, ...], sel: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
        """Label ``mask`` (the block at ``sel``) and stitch it to the blocks before it.

        Returns:
            The block's own labels 1..n (cc3d's, 0 = background); ``offsets[-1]`` turns them into
            provisional ids.
        """
        import cc3d
        import fastremap

        labels, n = label_components(mask, return_n=True)
        offset = self._next
        self.offsets.append(offset)
        self.sizes.append(int(n))
        self._next += int(n)
        if n:
            ids, first, counts = fastremap.unique(labels, return_index=True, return_counts=True)
            keep = ids != 0
            local = np.unravel_index(first[keep], labels.shape)
            where = tuple(c + s.start for c, s in zip(local, sel))
            self._counts.append(counts[keep].astype(np.int64))
            self._first.append(np.ravel_multi_index(where, self.shape).astype(np.int64))
        self._stitch(idx, sel, labels, offset)
        return labels

    def _stitch(self, idx, sel, labels, offset) -> None:
        iz, iy, ix = idx
        zs, ys, xs = sel
        Y, X = self.shape[1:]

        def global_ids(plane: np.ndarray) -> np.ndarray:
            out = plane.astype(np.uint64)
            out[plane != 0] += np.uint64(offset)
            return out

        if iy == 0 and ix == 0:  # a new z-slab
            self._z_prev, self._z_cur = self._z_cur, np.zeros((Y, X), np.uint64)
        if ix == 0:  # a new row of blocks in this slab
            self._y_prev = self._y_cur if iy > 0 else None
            self._y_cur = np.zeros((zs.stop - zs.start, X), np.uint64)
            self._x_prev = None
        found: list[np.ndarray] = []
        if iz > 0:  # first z-plane vs the previous slab's last z-plane
            _plane_pairs(global_ids(labels[0]), _window(self._z_prev, (ys.start, xs.start), labels.shape[1:]), found)
        if iy > 0:  # first y-plane vs the previous row's last y-plane (z stays in this slab)
            _plane_pairs(global_ids(labels[:, 0]), _window(self._y_prev, (0, xs.start), labels[:, 0].shape), found)
        if ix > 0:  # first x-plane vs the previous block's last x-plane (z, y stay in this row)
            _plane_pairs(global_ids(labels[:, :, 0]), _window(self._x_prev, (0, 0), labels[:, :, 0].shape), found)
        if found:
            self._pairs.append(np.unique(np.concatenate(found), axis=0))
        self._z_cur[ys, xs] = global_ids(labels[-1])
        self._y_cur[:, xs] = global_ids(labels[:, -1])
        self._x_prev = global_ids(labels[:, :, -1])

    def table(self, min_size: int) -> tuple[np.ndarray, int]:
        """Provisional id → final id (0 = background or removed), and the number of objects N.

        Objects are the stitched components; those with fewer than ``min_size`` voxels are
        removed and the rest numbered 1..N in raster order of their first voxel.
        """
        counts, first = np.concatenate(self._counts), np.concatenate(self._first)
        rep = _representatives(len(counts), self._pairs)
        merged = np.flatnonzero(rep != np.arange(len(rep)))
        if merged.size:  # fold every merged id into its representative
            np.add.at(counts, rep[merged], counts[merged])
            np.minimum.at(first, rep[merged], first[merged])
            counts[merged] = 0
        final, n = _numbering(counts, first, min_size)
        return final[rep], n

    def lut(self, table: np.ndarray, b: int) -> np.ndarray:
        """Block ``b``'s own labels 0..n → final ids (0 → 0).

        cc3d's ids are consecutive, so indexing this table with a block's labels is the remap
        (faster than fastremap.remap, which takes a dict, for every id of the block).
        """
        lut = table[self.offsets[b] : self.offsets[b] + self.sizes[b] + 1].copy()
        lut[0] = 0
        return lut


def _window(plane: np.ndarray, starts: tuple[int, int], sizes: tuple[int, int]) -> np.ndarray:
    """``plane[s-1 : s+n+1]`` on both axes, zeros where that reaches beyond the plane."""
    out = np.zeros([n + 2 for n in sizes], plane.dtype)
    src = tuple(slice(max(s - 1, 0), min(s + n + 1, m)) for s, n, m in zip(starts, sizes, plane.shape))
    dst = tuple(slice(a.start - s + 1, a.stop - s + 1) for a, s in zip(src, starts))
    out[dst] = plane[src]
    return out


def _plane_pairs(q: np.ndarray, window: np.ndarray, found: list) -> None:
    """Append the pairs ``(q[v], p[v + d])`` of foreground ids, for the 9 offsets ``d`` in
    ``{-1, 0, 1}²``; ``window`` is the neighbouring plane ``p`` with one voxel of margin."""
    h, w = q.shape
    fg = q != 0
    if not fg.any():
        return
    for dy, dx in itertools.product(range(3), range(3)):
        p = window[dy : dy + h, dx : dx + w]
        both = fg & (p != 0)
        if both.any():
            found.append(np.stack([q[both], p[both]], axis=1))


def _representatives(n_ids: int, pairs: list[np.ndarray]) -> np.ndarray:
    """Each id's representative (the smallest id of its group), groups joined by ``pairs``.

    A union-find over the ids that appear in a pair, done by scipy's sparse-graph connected
    components (cc3d works on images, not on graphs); the ids that cross no border keep
    themselves and never enter the graph.
    """
    rep = np.arange(n_ids, dtype=np.int64)
    if not pairs:
        return rep
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate(pairs)
    nodes, inverse = np.unique(edges, return_inverse=True)
    inverse = inverse.reshape(edges.shape)
    graph = coo_matrix((np.ones(len(inverse), np.int8), (inverse[:, 0], inverse[:, 1])), shape=(len(nodes),) * 2)
    _, group = connected_components(graph, directed=False)
    _, lowest = np.unique(group, return_index=True)  # nodes are sorted: a group's first node is its smallest
    rep[nodes.astype(np.int64)] = nodes[lowest][group].astype(np.int64)
    return rep


def _numbering(counts: np.ndarray, first: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """id → final id: ids with ``max(min_size, 1)`` voxels or more (id 0 never) numbered 1..N in
    order of their first voxel, others 0; uint32, or uint64 when N needs it."""
    keep = counts >= max(min_size, 1)
    keep[0] = False
    ids = np.flatnonzero(keep)
    n = len(ids)
    final = np.zeros(len(counts), np.uint32 if n <= np.iinfo(np.uint32).max else np.uint64)
    final[ids[np.argsort(first[ids], kind="stable")]] = np.arange(1, n + 1, dtype=final.dtype)
    return final, n


# ------------------------------------------------------------------------------- the decoders --
def threshold_blocks(read_fg: Reader, shape, block, min_size: int, create: Creator, step: Stepper) -> int:
    """Connected components of the foreground, block by block (exact; see the module docs).

    Args:
        read_fg: ``read_fg(sel)`` → the boolean foreground of the block at ``sel``.
        shape, block: Spatial shape of the volume and of a block.
        min_size: Objects with fewer voxels are removed.
        create: ``create(dtype)`` → a context manager giving the array-like the labels go to.
        step: Progress: ``step(description, total)`` → ``advance()`` once per block.

    Returns:
        The number of objects N (labels 1..N).
    """
    import cc3d

    grid = block_grid(shape, block)
    comps = _Components(shape, block)
    advance = step("label", len(grid))
    for idx, sel in grid:
        comps.add(idx, sel, read_fg(sel))
        advance()
    table, n = comps.table(min_size)
    advance = step("write", len(grid))
    with create(table.dtype) as out:
        for b, (_, sel) in enumerate(grid):
            labels = label_components(read_fg(sel))
            out[sel] = comps.lut(table, b)[labels]
            advance()
    return n


def bc_watershed_blocks(
    read_bc: Callable[[tuple], tuple[np.ndarray, np.ndarray]], shape, block, halo, cfg, create: Creator,
    step: Stepper, scratch: "Scratch",
) -> int:
    """Seeded watershed of a binary + contour prediction, block by block (see the module docs).

    Args:
        read_bc: ``read_bc(sel)`` → ``(binary, contour)`` float32 arrays of the region ``sel``.
        shape, block, halo: Spatial shape of the volume, of a block, and the context (per side)
            each block's watershed sees.
        cfg: The :class:`~pytc.config.DecodingConfig` (seed, contour, foreground thresholds, min_size).
        create, step: As in :func:`threshold_blocks`.
        scratch: Where the seed and region labels are kept between passes.

    Returns:
        The number of objects N (labels 1..N).
    """
    import fastremap
    from skimage.segmentation import watershed

    grid = block_grid(shape, block)
    comps = _Components(shape, block)
    local_dtype = np.uint32 if math.prod(block) < 2**32 else np.uint64
    seeds = scratch.array("seeds", shape, local_dtype, block)
    advance = step("seeds", len(grid))
    for idx, sel in grid:
        binary, contour = read_bc(sel)
        seeds[sel] = comps.add(idx, sel, (binary > cfg.seed_threshold) & (contour < cfg.contour_threshold))
        advance()
    seed_ids, n_seeds = comps.table(cfg.min_seed_size)  # seeds under min_seed_size voxels are dropped
    luts = [comps.lut(seed_ids, b) for b in range(len(grid))]
    del seed_ids

    def markers_of(region: tuple[slice, ...]) -> np.ndarray:
        """The global seed ids inside ``region``, from the blocks it overlaps."""
        out = np.zeros([s.stop - s.start for s in region], luts[0].dtype)
        ranges = [range(s.start // b, (s.stop - 1) // b + 1) for s, b in zip(region, block)]
        counts = [-(-n // b) for n, b in zip(shape, block)]
        for idx in itertools.product(*ranges):
            part = tuple(slice(max(s.start, i * b), min(s.stop, (i + 1) * b)) for s, i, b in zip(region, idx, block))
            b_index = int(np.ravel_multi_index(idx, counts))
            out[tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, region))] = luts[b_index][seeds[part]]
        return out

    regions = scratch.array("regions", shape, luts[0].dtype, block)
    counts = np.zeros(n_seeds + 1, np.int64)
    first = np.full(n_seeds + 1, _NO_VOXEL, np.int64)
    advance = step("watershed", len(grid))
    for _, sel in grid:
        region = _grow(sel, halo, shape)
        binary, elevation = read_bc(region)
        markers, mapping = fastremap.renumber(markers_of(region), preserve_zero=True, in_place=True)
        mask = binary > cfg.foreground_threshold
        elevation += 1.0  # contour + (1 - binary), in place as in the whole-volume decoder
        elevation -= binary
        del binary
        flooded = watershed(elevation, markers=markers, mask=mask)
        del elevation, markers, mask
        back = np.zeros(max(mapping.values()) + 1, regions.dtype)
        back[list(mapping.values())] = list(mapping.keys())
        core = back[flooded[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sel, region))]]
        del flooded
        ids, at, n = fastremap.unique(core, return_index=True, return_counts=True)
        keep = ids != 0
        ids = ids[keep].astype(np.int64)
        where = tuple(c + s.start for c, s in zip(np.unravel_index(at[keep], core.shape), sel))
        counts[ids] += n[keep].astype(np.int64)
        first[ids] = np.minimum(first[ids], np.ravel_multi_index(where, shape))
        regions[sel] = core
        advance()
    final, n = _numbering(counts, first, cfg.min_size)
    advance = step("write", len(grid))
    with create(final.dtype) as out:
        for _, sel in grid:
            out[sel] = final[regions[sel]]
            advance()
    return n


# ------------------------------------------------------------------------------- scratch space --
class Scratch:
    """Label arrays kept between passes: numpy arrays in memory (``beside=None``), or Zarr arrays
    in a temporary folder ``.<name>-scratch.pytc-tmp-<pid>`` beside the path ``beside`` (e.g.
    the output), or in a fresh system temporary folder (``temporary=True``), deleted on
    :meth:`close`; one left beside a path by a killed run is removed by the next run there."""

    def __init__(self, beside: Optional[os.PathLike] = None, temporary: bool = False):
        self._path: Optional[Path] = None
        self._target: Optional[Path] = None  # named in a disk error: the output, or the system's temporary folder
        if temporary:  # a folder of its own: decodes running side by side never share one
            self._target = Path(tempfile.gettempdir())
            with self.disk_errors():
                self._path = Path(tempfile.mkdtemp(prefix="pytc-decode-"))
        elif beside is not None:
            from pytc.io.common import TMP_TAG, clean_stale

            beside = Path(beside).absolute()
            base = beside.with_name(f"{beside.name}-scratch")
            clean_stale(base)
            self._path, self._target = base.with_name(f".{base.name}{TMP_TAG}{os.getpid()}"), beside
            with self.disk_errors():
                self._path.mkdir(parents=True, exist_ok=True)

    def disk_errors(self):
        """A full disk (or another disk error) under the scratch folder as pytc's one-line error."""
        from pytc.io import disk_errors

        return disk_errors(self._target) if self._target is not None else contextlib.nullcontext()

    def array(self, name: str, shape, dtype, block):
        """A zero-filled ``shape`` array; Zarr chunks of at most 64 voxels a side divide ``block``
        (a halo read then decompresses little more than it needs)."""
        if self._path is None:
            return np.zeros(shape, dtype)
        import zarr

        chunks = tuple(_scratch_chunk(b) for b in block)
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


def _scratch_chunk(b: int, cap: int = 64, floor: int = 16) -> int:
    """The largest divisor of the block edge ``b`` up to ``cap``; when that is tiny (``b`` prime,
    say) ``min(b, cap)`` instead: blocks then straddle chunks, which costs less than a million
    one-voxel chunk files."""
    d = max(k for k in range(1, min(b, cap) + 1) if b % k == 0)
    return d if d >= floor or d == b else min(b, cap)
