"""Label arrays every decoder shares: connected components and the finishing pass.

:func:`label_components` is cc3d with 26-connectivity (:data:`CONNECTIVITY`);
:func:`finish_labels` masks a label volume, drops small instances and renumbers 1..N in raster
order of each instance's first voxel, as uint32 (uint64 when N needs it).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["CONNECTIVITY", "drop_small", "finish_labels", "label_components"]

# 26 (faces, edges and corners) is the full neighbourhood scikit-image's `label` uses, which the
# PyTC decoders relied on: thin oblique processes and objects that shift between anisotropic
# sections stay in one piece. (The watershed itself floods over faces only, scikit-image's default.)
CONNECTIVITY = 26


def label_components(mask: np.ndarray, return_n: bool = False):
    """``cc3d.connected_components(mask, connectivity=26)``, also on line-shaped arrays.

    cc3d 4.1 with 26-connectivity fails ("maximum length exception") on (1, 1, k)-like arrays
    holding more than about k/4 pieces — edge blocks of a volume and thin 2D images produce them.
    On a line 26- and 6-connectivity are the same relation, and cc3d labels it with 6.
    """
    import cc3d

    connectivity = 6 if sum(n == 1 for n in mask.shape) >= 2 else CONNECTIVITY
    return cc3d.connected_components(mask, connectivity=connectivity, return_N=return_n)


def drop_small(seg: np.ndarray, min_size: int) -> np.ndarray:
    """Set the labels with fewer than ``min_size`` voxels to 0 (in place)."""
    import fastremap

    ids, counts = fastremap.unique(seg, return_counts=True)
    small = ids[(counts < min_size) & (ids != 0)]
    return fastremap.mask(seg, small, in_place=True) if small.size else seg


def finish_labels(seg: np.ndarray, mask: Optional[np.ndarray], min_size: int) -> np.ndarray:
    """Mask, drop instances under ``min_size`` voxels, renumber 1..N, narrowest of uint32/uint64."""
    import fastremap

    if mask is not None:
        seg[~mask] = 0
    if min_size > 1:
        seg = drop_small(seg, min_size)
    seg, mapping = fastremap.renumber(seg, preserve_zero=True, in_place=True)
    count = len(mapping) - (0 in mapping)
    return seg.astype(np.uint32 if count <= np.iinfo(np.uint32).max else np.uint64, copy=False)
