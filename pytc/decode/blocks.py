"""The block grid and exact connected components over volumes larger than memory.

A volume is cut into blocks (``decoding.block_size``, :func:`block_grid`), visited in C order;
each block is read, decoded and written on its own, so memory holds one block (plus its halo)
at a time, a few planes of labels for stitching, and per-object tables.

Connected components (``threshold``, and the seeds of ``bc-watershed``) are exact
(:class:`StitchedComponents`):

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
   dropped, and the rest numbered 1..N in raster order of their first voxel
   (:func:`number_by_first_voxel`) — the numbering the whole-volume decoder gives (cc3d numbers
   in raster order, fastremap.renumber in order of first appearance), so the labels are
   identical, not just the same partition.
4. A second pass labels each block again (cc3d is deterministic) and writes ``table[id]``
   (:func:`pytc.decode.threshold.threshold_blocks`).
"""

from __future__ import annotations

import itertools
from typing import Callable, ContextManager

import numpy as np

from pytc.decode.labels import label_components

__all__ = [
    "NO_VOXEL", "Creator", "Reader", "Stepper", "StitchedComponents", "block_grid", "grow", "number_by_first_voxel",
]

NO_VOXEL = np.iinfo(np.int64).max  # "first voxel" of an id that has none yet

# read(sel) -> array for the spatial selection sel; create(dtype) -> writer context for the labels;
# step(description, total) -> advance(), called once per block.
Reader = Callable[[tuple], np.ndarray]
Creator = Callable[[np.dtype], ContextManager]
Stepper = Callable[[str, int], Callable[[], None]]


def block_grid(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """``(index, slices)`` of every block of ``shape``, in C order (the last axis fastest)."""
    counts = [-(-n // b) for n, b in zip(shape, block)]
    return [
        (idx, tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(idx, block, shape)))
        for idx in itertools.product(*(range(c) for c in counts))
    ]


def grow(sel: tuple[slice, ...], halo, shape) -> tuple[slice, ...]:
    """``sel`` widened by ``halo`` on each side, clipped to the volume."""
    return tuple(slice(max(s.start - h, 0), min(s.stop + h, n)) for s, h, n in zip(sel, halo, shape))


class StitchedComponents:
    """Connected components of a volume labelled block by block, stitched across block borders.

    Call :meth:`add` for every block in C order (the order of :func:`block_grid`), then
    :meth:`table`.
    """

    def __init__(self, shape: tuple[int, ...], block: tuple[int, ...]):
        self.shape, self.block = tuple(shape), tuple(block)
        self.offsets: list[int] = []  # block b owns provisional ids offsets[b] + 1 .. offsets[b] + sizes[b]
        self.sizes: list[int] = []
        self._counts: list[np.ndarray] = [np.zeros(1, np.int64)]  # id 0: background
        self._first: list[np.ndarray] = [np.full(1, NO_VOXEL, np.int64)]
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
        import fastremap

        labels, count = label_components(mask, return_n=True)
        offset = self._next
        self.offsets.append(offset)
        self.sizes.append(int(count))
        self._next += int(count)
        if count:
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
        final, count = number_by_first_voxel(counts, first, min_size)
        return final[rep], count

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


def _plane_pairs(plane: np.ndarray, window: np.ndarray, found: list) -> None:
    """Append the pairs ``(plane[v], neighbour[v + d])`` of foreground ids, for the 9 offsets ``d``
    in ``{-1, 0, 1}²``; ``window`` is the neighbouring plane with one voxel of margin."""
    h, w = plane.shape
    foreground = plane != 0
    if not foreground.any():
        return
    for dy, dx in itertools.product(range(3), range(3)):
        neighbour = window[dy : dy + h, dx : dx + w]
        both = foreground & (neighbour != 0)
        if both.any():
            found.append(np.stack([plane[both], neighbour[both]], axis=1))


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


def number_by_first_voxel(counts: np.ndarray, first: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """id → final id: ids with ``max(min_size, 1)`` voxels or more (id 0 never) numbered 1..N in
    order of their first voxel, others 0; uint32, or uint64 when N needs it."""
    keep = counts >= max(min_size, 1)
    keep[0] = False
    ids = np.flatnonzero(keep)
    count = len(ids)
    final = np.zeros(len(counts), np.uint32 if count <= np.iinfo(np.uint32).max else np.uint64)
    final[ids[np.argsort(first[ids], kind="stable")]] = np.arange(1, count + 1, dtype=final.dtype)
    return final, count
