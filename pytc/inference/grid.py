"""The window grid and the block plan of :mod:`pytc.inference`: where every window lies, which block
runs it, and which blocks hand partial sums to which.

Every window is evaluated once, however the volume is cut into blocks
---------------------------------------------------------------------
Windows are placed as MONAI's ``sliding_window_inference`` places them (so predictions match it): a
window of size ``w`` along an axis of length ``n`` starts at ``0, s, 2s, ...`` with ``s = int(w * (1 - overlap))``, the last one moved back to ``n - w`` (an axis
shorter than the window is replicate-padded to ``w``, ``(w - n) // 2`` voxels in front), and blends
every voxel as ``sum_W g(x - W) p_W(x) / sum_W g(x - W)`` over the windows ``W`` covering it.

:class:`BlockPlan` keeps that whole-volume window grid and tiles the volume into output blocks
("cores"). Each window is *owned* by the block holding its first voxel. A block evaluates the
windows it owns and accumulates ``g · p`` over its *extent* (its core plus the part of its windows
that reaches past it, at most ``w - 1`` voxels on the far side of each axis); the part beyond the
core is *carried* to the later blocks it covers. A block's prediction is the sum of the partial
sums of its *sources* (the blocks owning a window that touches it, itself last), in block order,
divided by the summed weights of those windows (which depend on the geometry alone). So the
blocked run evaluates exactly the whole-volume windows, and its result differs from a
whole-volume run only by the order of the floating-point additions (< 1e-6).

A partial sum that was not carried — its source block belongs to another process, or was finished
by an interrupted run — is recomputed from the source's windows that touch the block, in the
source's own window batches. Every voxel then receives the same products in the same order as
when the source ran itself, so the output does not depend on how blocks were shared or resumed
(bit for bit, given a network whose output for a window does not depend on the other windows in
its batch, as on CPU).

Test-time augmentation runs inside each window (:mod:`pytc.inference.tta`), so it keeps the same
window grid and the same guarantees. The blending itself is
:meth:`pytc.inference.predictor.BlockPredictor.predict`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Sequence

CHUNK_MAX, CHUNK_MIN = 64, 16  # output chunk edge: io's usual 64, and never tiny (files per chunk)

Box = tuple[slice, ...]


def window_starts(n: int, w: int, overlap: float) -> list[int]:
    """Start of every window along an axis of length ``n``, exactly as MONAI places them."""
    if n <= w:
        return [0]  # n < w: MONAI pads the axis up to one window
    step = max(int(w * (1 - overlap)), 1)
    starts = []
    for s in range(0, n, step):
        if s + w >= n:
            starts.append(n - w)
            break
        starts.append(s)
    return starts


@dataclass(frozen=True)
class _Axis:
    """The window grid and block cuts along one axis. Window starts are in volume coordinates:
    ``-pad`` for the one window of an axis shorter than the window (MONAI's front padding)."""

    n: int
    w: int
    block: int
    overlap: float
    starts: tuple[int, ...] = field(init=False)
    owner: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        pad = max(self.w - self.n, 0) // 2
        starts = tuple(s - pad for s in window_starts(self.n, self.w, self.overlap))
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "owner", tuple(max(s, 0) // self.block for s in starts))

    @property
    def pad(self) -> tuple[int, int]:
        """Replicate padding (front, back) the window needs when the axis is shorter than it."""
        diff = max(self.w - self.n, 0)
        return diff // 2, diff - diff // 2

    def core(self, j: int) -> tuple[int, int]:
        return j * self.block, min((j + 1) * self.block, self.n)

    def span(self, k: int) -> tuple[int, int]:
        """Voxels of window ``k`` inside the volume."""
        s = self.starts[k]
        return max(s, 0), min(s + self.w, self.n)

    def owned(self, j: int) -> range:
        """Windows starting in block ``j`` (owners never decrease along the axis: one run)."""
        lo, hi = bisect.bisect_left(self.owner, j), bisect.bisect_right(self.owner, j)
        return range(lo, hi)

    def touching(self, lo: int, hi: int) -> list[int]:
        """Windows meeting [lo, hi)."""
        first = bisect.bisect_right(self.starts, lo - self.w)  # windows end at start + w, capped at n
        return [k for k in range(first, len(self.starts)) if self.starts[k] < hi]

    def extent(self, j: int) -> tuple[int, int]:
        """Core ``j`` and the voxels its windows reach beyond it."""
        lo, hi = self.core(j)
        ks = self.owned(j)
        return lo, max([hi, *(self.span(k)[1] for k in ks)])

    def blocks(self, lo: int, hi: int) -> range:
        """Blocks whose core meets [lo, hi)."""
        return range(lo // self.block, (hi - 1) // self.block + 1) if hi > lo else range(0)


def intersect(a: Box, b: Box) -> Optional[Box]:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.stop > s.start for s in out) else None


def relative(box: Box, origin: Box) -> Box:
    """``box`` in the coordinates of an array that starts at ``origin``."""
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, origin))


@dataclass(frozen=True)
class BlockPlan:
    """Output blocks (C order) of a (Z, Y, X) volume, the windows each one owns and the blocks it
    sends partial sums to and receives them from (see the module docs)."""

    shape: tuple[int, int, int]
    window: tuple[int, int, int]
    block: tuple[int, int, int]
    overlap: float

    @cached_property
    def axes(self) -> tuple[_Axis, ...]:
        return tuple(_Axis(n, w, b, self.overlap) for n, w, b in zip(self.shape, self.window, self.block))

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def _pos(self, index: int) -> tuple[int, int, int]:
        _, gy, gx = self.grid
        return index // (gy * gx), index // gx % gy, index % gx

    def _index(self, pos: Sequence[int]) -> int:
        _, gy, gx = self.grid
        return (pos[0] * gy + pos[1]) * gx + pos[2]

    def core(self, index: int) -> Box:
        return tuple(slice(*a.core(j)) for a, j in zip(self.axes, self._pos(index)))

    def extent(self, index: int) -> Box:
        """The core and the voxels the block's own windows reach beyond it: its partial sum."""
        if not self.owned(index):  # a block narrower than the window step may own no window
            return self.core(index)
        return tuple(slice(*a.extent(j)) for a, j in zip(self.axes, self._pos(index)))

    def owned(self, index: int) -> list[tuple[int, int, int]]:
        """The windows (one index per axis) whose first voxel lies in the block, in C order."""
        return list(itertools.product(*(a.owned(j) for a, j in zip(self.axes, self._pos(index)))))

    def window_box(self, k: Sequence[int]) -> Box:
        """Window ``k`` in volume coordinates, padding included (a window of a padded axis starts
        before 0): ``relative(part, window_box(k))`` indexes a part of it in the window's prediction."""
        return tuple(slice(a.starts[i], a.starts[i] + a.w) for a, i in zip(self.axes, k))

    def span(self, k: Sequence[int]) -> Box:
        """Voxels of window ``k`` inside the volume."""
        return tuple(slice(*a.span(i)) for a, i in zip(self.axes, k))

    def sources(self, index: int) -> list[int]:
        """Blocks owning a window that touches this block's core, in increasing order (itself last
        when it owns one)."""
        per_axis = []
        for a, j in zip(self.axes, self._pos(index)):
            per_axis.append(sorted({a.owner[k] for k in a.touching(*a.core(j))}))
        return sorted(self._index(p) for p in itertools.product(*per_axis))

    def receivers(self, index: int) -> list[int]:
        """Later blocks that the block's windows reach: they receive part of its partial sum."""
        ext = self.extent(index)
        per_axis = [a.blocks(e.start, e.stop) for a, e in zip(self.axes, ext)]
        return [r for r in sorted(self._index(p) for p in itertools.product(*per_axis)) if r != index]

    def input_box(self, windows: Sequence[Sequence[int]]) -> Box:
        """The input voxels these windows read (before padding)."""
        spans = [self.span(k) for k in windows]
        return tuple(slice(min(s[a].start for s in spans), max(s[a].stop for s in spans)) for a in range(3))

    def window_in(self, k: Sequence[int], box: Box) -> Box:
        """Window ``k`` within an input read over ``box`` and padded by :attr:`pads`."""
        return tuple(slice(a.starts[i] + a.pad[0] - b.start, a.starts[i] + a.pad[0] - b.start + a.w)
                     for a, i, b in zip(self.axes, k, box))

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        return tuple(a.pad for a in self.axes)

    def largest_extent(self) -> tuple[int, int, int]:
        """An upper bound of every block's extent, axis by axis."""
        return tuple(max(a.extent(j)[1] - a.extent(j)[0] for j in range(g)) for a, g in zip(self.axes, self.grid))

    def count_windows(self) -> int:
        """Windows of the whole-volume grid (each evaluated once by a blocked run)."""
        return math.prod(len(a.starts) for a in self.axes)



def output_chunks(block: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Spatial chunk shape that divides the block (no two blocks share a chunk, so processes can
    write one store side by side): the largest divisor <= 64, or the block edge if that is < 16."""
    out = []
    for b, n in zip(block, shape):
        if b >= n:  # one block along this axis: any chunk is aligned
            out.append(min(CHUNK_MAX, n))
            continue
        d = max(k for k in range(1, min(b, CHUNK_MAX) + 1) if b % k == 0)
        out.append(d if d >= CHUNK_MIN or d == b else b)
    return tuple(out)
