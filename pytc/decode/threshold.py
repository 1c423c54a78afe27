"""The ``threshold`` decoder: the binary channel (or the only channel) ``> threshold``, connected
components (26-connectivity), on the whole volume (:func:`decode_threshold`) or block by block
(:func:`threshold_blocks`, exact: the labels are identical to a whole-volume decode; see
:mod:`pytc.decode.blocks`).
"""

from __future__ import annotations

import numpy as np

from pytc.decode.blocks import Creator, Reader, Stepper, StitchedComponents, block_grid
from pytc.decode.labels import finish_labels, label_components
from pytc.decode.prediction import missing_channels, read_channel

__all__ = ["decode_threshold", "threshold_blocks", "threshold_channel"]


def threshold_channel(kinds: list[str]) -> int:
    """The channel ``threshold`` reads: the binary one, or the only one."""
    if "binary" in kinds:
        return kinds.index("binary")
    if len(kinds) == 1:
        return 0
    raise missing_channels("threshold", "a binary channel (or a single-channel prediction)", kinds)


def decode_threshold(pred, kinds: list[str], cfg) -> np.ndarray:
    """``threshold`` on the whole volume in memory."""
    foreground = read_channel(pred, threshold_channel(kinds), kinds) > cfg.threshold
    return finish_labels(label_components(foreground), None, cfg.min_size)


def threshold_blocks(read_fg: Reader, shape, block, min_size: int, create: Creator, step: Stepper) -> int:
    """Connected components of the foreground, block by block (exact; see :mod:`pytc.decode.blocks`).

    Args:
        read_fg: ``read_fg(sel)`` → the boolean foreground of the block at ``sel``.
        shape, block: Spatial shape of the volume and of a block.
        min_size: Objects with fewer voxels are removed.
        create: ``create(dtype)`` → a context manager giving the array-like the labels go to.
        step: Progress: ``step(description, total)`` → ``advance()`` once per block.

    Returns:
        The number of objects N (labels 1..N).
    """
    grid = block_grid(shape, block)
    components = StitchedComponents(shape, block)
    advance = step("label", len(grid))
    for idx, sel in grid:
        components.add(idx, sel, read_fg(sel))
        advance()
    table, count = components.table(min_size)
    advance = step("write", len(grid))
    with create(table.dtype) as out:
        for b, (_, sel) in enumerate(grid):
            labels = label_components(read_fg(sel))
            out[sel] = components.lut(table, b)[labels]
            advance()
    return count
