"""Prediction → instance labels.

:func:`decode` turns probabilities ``(C, Z, Y, X)`` (any array-like: numpy, h5py, zarr, a
:class:`~pytc.io.Volume`) into instance labels; :func:`decode_volume` does the same from a
prediction store to a label volume (a store written by ``pytc infer`` says its channel kinds and
affinity offsets; for another, the caller gives them, :func:`parse_offsets` reading offsets from text). The decoders
(:class:`~pytc.choices.DecodeMethod`), one module per family:

* ``threshold`` (:mod:`~pytc.decode.threshold`) — the binary channel (or the only channel)
  ``> threshold``, connected components.
* ``bc-watershed`` (:mod:`~pytc.decode.bc_watershed`) — binary + contour, the standard
  mitochondria/nuclei decoder: seeds where binary is high and contour low, then a seeded
  watershed, :func:`~pytc.decode.bc_watershed.flood_bc_watershed`, of ``contour + (1 - binary)``
  inside ``binary > foreground_threshold``.
* ``affinity-waterz`` and ``mutex-watershed`` (:mod:`~pytc.decode.affinity`) — waterz
  agglomeration of the short-range affinities for each merge threshold, and mwatershed's mutex
  watershed of short- (attractive) and long-range (repulsive) affinities.

Common to all: connected components use 26-connectivity (:data:`CONNECTIVITY`); when an affinity
prediction also has a binary channel, voxels with ``binary <= threshold`` are set to background;
instances with fewer than ``min_size`` voxels are removed; labels are renumbered 1..N (0 =
background) in raster order of each instance's first voxel, uint32, or uint64 when N needs it
(:mod:`~pytc.decode.labels`). Parameter defaults live in :class:`pytc.config.DecodingConfig`.

Volumes of any size: ``threshold`` and ``bc-watershed`` decode a volume larger than
``block_size`` block by block (:mod:`~pytc.decode.blocks`: the block grid and exact stitched
connected components; :mod:`~pytc.decode.scratch`: the temporary label stores), holding one
block at a time. ``threshold`` is exact: the labels are identical to a whole-volume decode.
``bc-watershed`` has exact global seeds, so a region keeps one id across block borders, but
each block is flooded on the block plus ``halo`` voxels per side: where the flood's competition
between two seeds is decided beyond the halo, a voxel near a block border can go to another seed
than in a whole-volume flood (bench/decode.py's synthetic 128×512×512 prediction in 8 blocks
gives labels identical to the whole-volume ones with the default halo; 0.2% of the foreground
differs with no halo at all). The two affinity decoders agglomerate the whole volume at once
and have no blockwise form: they run in memory, and refuse (``DataError``) a volume whose
estimated peak memory exceeds the memory available, before reading it
(:mod:`~pytc.decode.memory`).

The other modules: :mod:`~pytc.decode.dispatch` (:func:`decode`, choosing the decoder and
blockwise or whole-volume), :mod:`~pytc.decode.volume` (:func:`decode_volume`: reading the
store's attributes, checking the outputs, writing them), :mod:`~pytc.decode.prediction`
(channel kinds, affinity offsets, reading a channel as checked probabilities).

Example:
    >>> import numpy as np
    >>> pred = np.zeros((1, 4, 8, 8), np.float32); pred[0, 1:3, 1:3, 1:3] = 0.9; pred[0, 1:3, 5:8, 5:8] = 0.8
    >>> labels = decode(pred, "threshold", min_size=2)
    >>> labels.dtype, int(labels.max())
    (dtype('uint32'), 2)
"""

from pytc.decode.affinity import WATERZ_SCORES
from pytc.decode.dispatch import decode, decoding_params
from pytc.decode.labels import CONNECTIVITY
from pytc.decode.prediction import group_kinds, parse_offsets
from pytc.decode.volume import decode_volume

__all__ = ["CONNECTIVITY", "WATERZ_SCORES", "decode", "decode_volume", "decoding_params", "group_kinds",
           "parse_offsets"]
