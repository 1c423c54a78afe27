"""Per-window prediction of :mod:`pytc.inference`: the network on a batch of windows, the activation
of each channel, and test-time augmentation (TTA).

:class:`WindowPredictor` turns (N, C_in, Z, Y, X) windows into activated (N, C_out, Z, Y, X) float32
predictions: sigmoid on the {0, 1} channels (binary, contour, affinity), none on distances. With
``inference.tta_flips`` / ``inference.tta_rot90`` it runs every augmentation (:func:`build_augs`),
inverts each prediction and averages them; affinity channels are re-pointed on the way back
(:func:`channel_routes`: a flip along z turns the z-affinity into "v to v + o", which is shifted
back by o). An augmentation that maps an offset to one the target does not predict is refused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from pytc.choices import BINARY_KINDS
from pytc.errors import ConfigError

if TYPE_CHECKING:
    import torch


def affinity_layout(targets) -> tuple[list, list]:
    """Per output channel: its affinity offset as (z, y, x) (None otherwise) and its target index."""
    offsets, groups = [], []
    for t_index, t in enumerate(targets):
        for c in range(t.channels):
            groups.append(t_index)
            if t.name == "affinity":
                o = [int(v) for v in t.offsets[c]]
                offsets.append(tuple([0] * (3 - len(o)) + o))
            else:
                offsets.append(None)
    return offsets, groups



@dataclass(frozen=True)
class Aug:
    """One test-time augmentation of a (N, C, Z, Y, X) window: flip ``flips`` (spatial axes), then
    rotate ``k`` quarter turns in the (y, x) plane. ``routes``: (source channel, target channel,
    shift (z, y, x)) for the inverted prediction — see :func:`channel_routes`."""

    flips: tuple[int, ...]
    k: int
    routes: tuple[tuple[int, int, tuple[int, int, int]], ...] = ()

    def apply(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self.flips:
            x = torch.flip(x, [2 + a for a in self.flips])
        return torch.rot90(x, self.k, dims=(3, 4)) if self.k else x

    def invert(self, y: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self.k:
            y = torch.rot90(y, -self.k, dims=(3, 4))
        return torch.flip(y, [2 + a for a in self.flips]) if self.flips else y

    @property
    def identity(self) -> bool:
        return not self.flips and not self.k

    def describe(self) -> str:
        parts = [f"flip {list(self.flips)}"] if self.flips else []
        return " + ".join(parts + ([f"rot90 x{self.k}"] if self.k else [])) or "identity"


def coordinate_map(aug: Aug) -> np.ndarray:
    """Linear part ``L`` of the voxel map of ``aug``: the inverted prediction of a channel that
    predicts ``[label(u) == label(u - o)]`` on the augmented input predicts offset ``L @ o``."""
    import torch

    n, c = 5, 2
    grid = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"))[None].float()  # (1, 3, n, n, n)
    phi = aug.apply(grid)[0]  # phi[:, u] = the input voxel that lands on u
    centre = phi[:, c, c, c]
    cols = [centre - phi[(slice(None), *(c - (a == k) for a in range(3)))] for k in range(3)]
    return torch.stack(cols, 1).round().long().numpy()


def channel_routes(aug: Aug, kinds: Sequence[str], offsets: Sequence[Optional[tuple[int, int, int]]],
                   groups: Sequence[int]) -> tuple:  # fmt: skip
    """Where each channel of the inverted prediction goes.

    Scalar channels (binary, contour, distance) stay in place. An affinity channel of offset ``o``
    predicts ``[v ~ v - p]`` with ``p = L @ o`` after inversion. If ``p`` is an offset of the same
    target it is that channel; if ``-p = q`` is one, ``[v ~ v + q]`` is channel ``q`` read at
    ``v + q``, so it is shifted by ``q`` (``aff_q(v) = g(v - q)``; voxels whose source lies outside
    the window keep the other augmentations' average). A flip along an axis therefore shifts the
    axis-aligned affinities on that axis by their own offset.

    Raises:
        ConfigError: ``p`` and ``-p`` are both missing from the target's offsets.
    """
    L = coordinate_map(aug)
    routes = []
    for c, kind in enumerate(kinds):
        if kind != "affinity":
            routes.append((c, c, (0, 0, 0)))
            continue
        p = tuple(int(v) for v in L @ np.asarray(offsets[c]))
        q = tuple(-v for v in p)
        same = [j for j in range(len(kinds)) if groups[j] == groups[c]]
        direct = next((j for j in same if offsets[j] == p), None)
        mirrored = next((j for j in same if offsets[j] == q), None)
        if direct is not None:
            routes.append((c, direct, (0, 0, 0)))
        elif mirrored is not None:
            routes.append((c, mirrored, q))
        else:
            present = [list(offsets[j]) for j in same]
            raise ConfigError(
                f"test-time augmentation {aug.describe()} turns affinity offset {list(offsets[c])} into "
                f"{list(p)}, which its target does not predict (offsets {present}); drop that entry of "
                f"inference.tta_flips / inference.tta_rot90 or add offset {list(q)} to the target"
            )
    return tuple(routes)


def build_augs(flips: Sequence[Sequence[int]], rot90: Sequence[int], kinds, offsets, groups) -> list[Aug]:
    """Identity first, then every (flip set or none) x (quarter turns or none), without repeats."""
    flip_sets = [()]
    for axes in flips:
        bad = [a for a in axes if a not in (0, 1, 2)]
        if bad:
            raise ConfigError(f"inference.tta_flips entry {list(axes)}: axes are 0 (z), 1 (y), 2 (x); got {bad}")
        key = tuple(sorted(set(a for a in axes if list(axes).count(a) % 2)))  # flipping twice is no flip
        flip_sets.append(key)
    idle = [k for k in rot90 if k % 4 == 0]
    if idle:
        raise ConfigError(f"inference.tta_rot90 entry {idle[0]} is a full turn (the identity, always included); "
                          "use quarter turns 1, 2 or 3")
    turns = [0] + [k % 4 for k in rot90]
    seen, augs = set(), []
    for f, k in itertools.product(flip_sets, turns):
        if (f, k) not in seen:
            seen.add((f, k))
            aug = Aug(f, k)
            augs.append(Aug(f, k, channel_routes(aug, kinds, offsets, groups)))
    return augs


class WindowPredictor:
    """``predictor(x)``: (N, C_in, Z, Y, X) windows → activated (N, C_out, Z, Y, X) float32.

    Runs every augmentation (identity only without TTA) under autocast, applies sigmoid to the
    {0, 1} channels, inverts, routes affinity channels (see :func:`channel_routes`) and averages.
    A 2D network sees (N, C, Y, X): the window's single z-section.
    """

    def __init__(self, model, kinds: Sequence[str], augs: Sequence[Aug], spatial_dims: int,
                 autocast: "Optional[torch.dtype]", device: "torch.device"):  # fmt: skip
        import torch

        self.model, self.augs, self.flat = model, list(augs), spatial_dims == 2
        sig = [i for i, k in enumerate(kinds) if k in BINARY_KINDS]  # {0, 1} targets: logits
        self.sigmoid = None if not sig else slice(None) if len(sig) == len(kinds) else torch.tensor(sig, device=device)
        self.autocast, self.device_type = autocast, device.type
        self.shifted = any(any(r[2] != (0, 0, 0) for r in a.routes) for a in self.augs)

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self.autocast is None:
            y = self.model(x[:, :, 0])[:, :, None] if self.flat else self.model(x)
        else:
            with torch.autocast(self.device_type, dtype=self.autocast):
                y = self.model(x[:, :, 0])[:, :, None] if self.flat else self.model(x)
            y = y.float()
        if isinstance(self.sigmoid, slice):
            return torch.sigmoid(y)
        if self.sigmoid is not None:
            y[:, self.sigmoid] = torch.sigmoid(y[:, self.sigmoid])
        return y

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if len(self.augs) == 1:
            return self._forward(x)
        total, count = None, None
        for aug in self.augs:
            y = aug.invert(self._forward(aug.apply(x)))
            if aug.identity and not self.shifted and total is None:
                total = y  # a fresh tensor: accumulate into it
                continue
            if total is None:
                total = torch.zeros_like(y)
            if count is None and self.shifted:
                count = torch.zeros((1, *y.shape[1:]), device=y.device)
            for src, dst, q in aug.routes:
                out_sel, in_sel = _shift_slices(q, y.shape[2:])
                total[(slice(None), dst, *out_sel)] += y[(slice(None), src, *in_sel)]
                if count is not None:
                    count[(0, dst, *out_sel)] += 1
        return total / (count if count is not None else len(self.augs))


def _shift_slices(q, shape) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """``out[v] = in[v - q]`` where both are inside ``shape``."""
    out_sel = tuple(slice(max(0, d), n + min(0, d)) for d, n in zip(q, shape))
    in_sel = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(q, shape))
    return out_sel, in_sel
