"""The ``bc-watershed`` decoder: binary + contour, the standard mitochondria/nuclei decoder.

Seeds are the connected components of ``binary > seed_threshold and contour <
contour_threshold`` (:func:`seed_mask`) with at least ``min_seed_size`` voxels (smaller ones,
often noise, would split an object); :func:`flood_bc_watershed` floods, from them, the
elevation ``contour + (1 - binary)`` inside the mask ``binary > foreground_threshold``
(:func:`flood_landscape`) with scikit-image's seeded watershed (6-neighbourhood). The contour
term puts the ridges where the network saw borders, so two touching objects split on their
predicted contour rather than wherever the two floods happen to meet on a flat foreground; the
``1 - binary`` term makes the floods climb towards the background last. Foreground components
without a seed stay background.

:func:`decode_bc_watershed` decodes the whole volume in memory; :func:`bc_watershed_blocks` a
volume larger than a block, block by block. It takes its seeds from the exact blockwise
connected components (:mod:`pytc.decode.blocks`) with global ids, spilled to a scratch store
(:mod:`pytc.decode.scratch`); each block is flooded on the block plus a halo with the global
seeds found there as markers, and only the block itself is kept. Seeds being global, a region
keeps one id across borders; what can differ from a whole-volume flood is which seed claims a
voxel near a border, when the decisive competition happens beyond the halo. Regions go to a
second scratch store, are counted, then numbered like the components (min_size, raster order)
in a last pass.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from pytc.decode.blocks import NO_VOXEL, Creator, Stepper, StitchedComponents, block_grid, grow, number_by_first_voxel
from pytc.decode.labels import drop_small, finish_labels, label_components
from pytc.decode.prediction import read_channel
from pytc.decode.scratch import Scratch

__all__ = ["bc_watershed_blocks", "decode_bc_watershed", "flood_bc_watershed", "flood_landscape", "seed_mask"]


def seed_mask(binary: np.ndarray, contour: np.ndarray, cfg) -> np.ndarray:
    """Where seeds may be: ``binary > seed_threshold and contour < contour_threshold``."""
    return (binary > cfg.seed_threshold) & (contour < cfg.contour_threshold)


def flood_landscape(binary: np.ndarray, contour: np.ndarray, foreground_threshold: float):
    """``(mask, elevation)`` of the flood: ``binary > foreground_threshold`` and
    ``contour + (1 - binary)``, the elevation computed in ``contour``'s buffer (overwritten).

    The caller can then drop ``binary`` before flooding, which lowers the peak memory.
    """
    mask = binary > foreground_threshold
    contour += 1.0  # contour is the caller's own copy: turn it into the elevation in place
    contour -= binary
    return mask, contour


def flood_bc_watershed(elevation: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The seeded watershed flood of ``bc-watershed``: scikit-image's watershed over faces
    (6-neighbourhood) of ``elevation`` from the labelled ``seeds``, inside ``mask`` (both from
    :func:`flood_landscape`); voxels outside the mask or reached by no seed stay 0.

    The whole-volume decoder floods the volume here, the blockwise one each block plus its halo.
    """
    from skimage.segmentation import watershed

    return watershed(elevation, markers=seeds, mask=mask)


def decode_bc_watershed(pred, kinds: list[str], cfg) -> np.ndarray:
    """``bc-watershed`` on the whole volume in memory."""
    binary = read_channel(pred, kinds.index("binary"), kinds)
    contour = read_channel(pred, kinds.index("contour"), kinds)
    seeds = label_components(seed_mask(binary, contour, cfg))
    if cfg.min_seed_size > 1:
        seeds = drop_small(seeds, cfg.min_seed_size)
    mask, elevation = flood_landscape(binary, contour, cfg.foreground_threshold)
    del binary, contour
    return finish_labels(flood_bc_watershed(elevation, seeds, mask), None, cfg.min_size)


def bc_watershed_blocks(
    read_bc: Callable[[tuple], tuple[np.ndarray, np.ndarray]], shape, block, halo, cfg, create: Creator,
    step: Stepper, scratch: Scratch,
) -> int:
    """Seeded watershed of a binary + contour prediction, block by block (see the module docs).

    Args:
        read_bc: ``read_bc(sel)`` → ``(binary, contour)`` float32 arrays of the region ``sel``.
        shape, block, halo: Spatial shape of the volume, of a block, and the context (per side)
            each block's watershed sees.
        cfg: The :class:`~pytc.config.DecodingConfig` (seed, contour, foreground thresholds, min_size).
        create, step: As in :func:`pytc.decode.threshold.threshold_blocks`.
        scratch: Where the seed and region labels are kept between passes.

    Returns:
        The number of objects N (labels 1..N).
    """
    import fastremap

    grid = block_grid(shape, block)
    components = StitchedComponents(shape, block)
    local_dtype = np.uint32 if math.prod(block) < 2**32 else np.uint64
    seeds = scratch.array("seeds", shape, local_dtype, block)
    advance = step("seeds", len(grid))
    for idx, sel in grid:
        binary, contour = read_bc(sel)
        seeds[sel] = components.add(idx, sel, seed_mask(binary, contour, cfg))
        advance()
    seed_ids, n_seeds = components.table(cfg.min_seed_size)  # seeds under min_seed_size voxels are dropped
    luts = [components.lut(seed_ids, b) for b in range(len(grid))]
    del seed_ids

    def markers_of(region: tuple[slice, ...]) -> np.ndarray:
        """The global seed ids inside ``region``, from the blocks it overlaps."""
        out = np.zeros([s.stop - s.start for s in region], luts[0].dtype)
        ranges = [range(s.start // b, (s.stop - 1) // b + 1) for s, b in zip(region, block)]
        counts = [-(-n // b) for n, b in zip(shape, block)]
        for idx in itertools.product(*ranges):
            part = tuple(slice(max(s.start, i * b), min(s.stop, (i + 1) * b)) for s, i, b in zip(region, idx, block))
            block_index = int(np.ravel_multi_index(idx, counts))
            inside = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, region))
            out[inside] = luts[block_index][seeds[part]]
        return out

    regions = scratch.array("regions", shape, luts[0].dtype, block)
    counts = np.zeros(n_seeds + 1, np.int64)
    first = np.full(n_seeds + 1, NO_VOXEL, np.int64)
    advance = step("watershed", len(grid))
    for _, sel in grid:
        region = grow(sel, halo, shape)
        binary, contour = read_bc(region)
        markers, mapping = fastremap.renumber(markers_of(region), preserve_zero=True, in_place=True)
        mask, elevation = flood_landscape(binary, contour, cfg.foreground_threshold)
        del binary, contour
        flooded = flood_bc_watershed(elevation, markers, mask)
        del elevation, markers, mask
        back = np.zeros(max(mapping.values()) + 1, regions.dtype)
        back[list(mapping.values())] = list(mapping.keys())
        core = back[flooded[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sel, region))]]
        del flooded
        ids, at, voxels = fastremap.unique(core, return_index=True, return_counts=True)
        keep = ids != 0
        ids = ids[keep].astype(np.int64)
        where = tuple(c + s.start for c, s in zip(np.unravel_index(at[keep], core.shape), sel))
        counts[ids] += voxels[keep].astype(np.int64)
        first[ids] = np.minimum(first[ids], np.ravel_multi_index(where, shape))
        regions[sel] = core
        advance()
    final, count = number_by_first_voxel(counts, first, cfg.min_size)
    advance = step("write", len(grid))
    with create(final.dtype) as out:
        for _, sel in grid:
            out[sel] = final[regions[sel]]
            advance()
    return count
