""":func:`decode`: probabilities (any array-like) → instance labels, by the chosen method.

``threshold`` and ``bc-watershed`` go through :func:`decode_blockwise`, which decodes a volume
larger than ``block_size`` block by block and a smaller one with the whole-volume decoder; the
affinity decoders (:mod:`pytc.decode.affinity`) always decode the whole volume in memory.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from pytc.choices import DecodeMethod
from pytc.decode.affinity import decode_mutex_watershed, decode_waterz
from pytc.decode.bc_watershed import bc_watershed_blocks, decode_bc_watershed
from pytc.decode.prediction import affinity_offsets, channel_kinds, missing_channels, read_channel, spatial_shape
from pytc.decode.scratch import Scratch
from pytc.decode.threshold import decode_threshold, threshold_blocks, threshold_channel
from pytc.errors import ConfigError
from pytc.progress import block_bars

if TYPE_CHECKING:
    from pytc.config import DecodingConfig

__all__ = ["BLOCKWISE", "decode", "decode_blockwise", "decode_method", "decoding_params"]

BLOCKWISE = (DecodeMethod.threshold, DecodeMethod.bc_watershed)  # the methods decoded block by block


def decode(
    pred: Any,
    method: DecodeMethod | str,
    channels: Optional[Sequence[str]] = None,
    offsets: Optional[Sequence[Sequence[int]]] = None,
    **params: Any,
) -> np.ndarray | dict[float, np.ndarray]:
    """Turn probabilities into instance labels.

    ``threshold`` and ``bc-watershed`` decode a volume larger than ``block_size`` block by block
    (a numpy result is still returned: pass a Zarr/HDF5 array-like, or use
    :func:`pytc.decode.decode_volume`, for volumes larger than memory); the affinity decoders
    decode the whole volume in memory and check first that it fits (see :mod:`pytc.decode`).

    Args:
        pred: Probabilities in [0, 1], ``(C, Z, Y, X)``, or ``(Z, Y, X)`` for one channel; any
            array-like. Only the channels the method needs are read, one at a time.
        method: A :class:`~pytc.choices.DecodeMethod` or its value (``"bc-watershed"``, ...).
        channels: Kind of every channel (``binary``, ``contour``, ``affinity``, ``distance``);
            ``None`` is allowed for a one-channel prediction (taken as binary).
        offsets: ``(dz, dy, dx)`` of every affinity channel, in channel order; ``None`` means the
            default ``(1,0,0), (0,1,0), (0,0,1)`` when there are exactly three.
        **params: :class:`~pytc.config.DecodingConfig` fields (``threshold``, ``min_size``,
            ``seed_threshold``, ``contour_threshold``, ``foreground_threshold``,
            ``merge_thresholds``, ``merge_function``, ``block_size``, ``halo``); unset ones take
            the config defaults.

    Returns:
        uint32 (uint64 when needed) labels ``(Z, Y, X)``, 1..N, 0 = background; for
        ``affinity-waterz`` with several merge thresholds, ``{threshold: labels}`` in increasing
        threshold order.

    Raises:
        DataError: The prediction lacks the channels the method needs, the offsets do not match
            the affinity channels, the values are not probabilities, or an affinity decoder would
            need more memory than is available.
        ConfigError: Unknown method or parameter, or a value out of range.

    Example:
        >>> import numpy as np
        >>> pred = np.zeros((1, 4, 8, 8), np.float32); pred[0, 1:3, 1:3, 1:3] = 0.9; pred[0, 1:3, 5:8, 5:8] = 0.8
        >>> labels = decode(pred, "threshold", min_size=2)
        >>> labels.dtype, int(labels.max())
        (dtype('uint32'), 2)
    """
    method = decode_method(method)
    cfg = decoding_params(params)
    kinds = channel_kinds(pred, channels)
    if method in BLOCKWISE:
        return decode_blockwise(pred, method, kinds, cfg)[0]
    offsets = affinity_offsets(kinds, offsets, method)
    if method is DecodeMethod.affinity_waterz:
        return decode_waterz(pred, kinds, offsets, cfg)
    return decode_mutex_watershed(pred, kinds, offsets, cfg)


def decoding_params(params: Mapping[str, Any]) -> "DecodingConfig":
    """Validate decoder parameters against :class:`~pytc.config.DecodingConfig` (defaults filled in).

    Raises:
        ConfigError: An unknown key (with a did-you-mean) or a value out of range.
    """
    from pytc.config import config_from_dict

    return config_from_dict({"decoding": dict(params)}, origin="decoding parameters").decoding


def decode_method(method) -> DecodeMethod:
    """A :class:`~pytc.choices.DecodeMethod` from itself or its value.

    Raises:
        ConfigError: Not a decode method (the message lists them).
    """
    try:
        return DecodeMethod(getattr(method, "value", method))
    except ValueError:
        names = ", ".join(m.value for m in DecodeMethod)
        raise ConfigError(f"unknown decode method {method!r}; choose one of {names}") from None


def decode_blockwise(pred, method: DecodeMethod, kinds: list[str], cfg, create=None, show: bool = False,
                     scratch_beside=None) -> tuple[Optional[np.ndarray], int]:
    """``threshold`` or ``bc-watershed``, block by block when the volume is larger than a block.

    Args:
        create: ``create(dtype)`` → a context manager giving the array-like the labels are written
            to; None returns them as a numpy array.
        show: Progress bars on a terminal.
        scratch_beside: bc-watershed's temporary label stores go to a folder beside this path
            (the output); None keeps them in memory for a numpy prediction and puts them in the
            system's temporary folder otherwise.

    Returns:
        ``(labels or None when written to create's array, number of instances)``.
    """
    shape = spatial_shape(pred)
    block = tuple(min(b, n) for b, n in zip(cfg.block_size, shape))
    if method is DecodeMethod.threshold:
        channel = threshold_channel(kinds)
    elif "binary" not in kinds or "contour" not in kinds:
        raise missing_channels("bc-watershed", "a binary and a contour channel", kinds)
    if block == shape:  # one block: the whole-volume decoder, as it always was
        decode_whole = decode_threshold if method is DecodeMethod.threshold else decode_bc_watershed
        labels = decode_whole(pred, kinds, cfg)
        count = int(labels.max()) if labels.size else 0
        if create is None:
            return labels, count
        with create(labels.dtype) as out:
            out[...] = labels
        return None, count

    kept: dict[str, np.ndarray] = {}
    if create is None:

        def create(dtype):
            kept["labels"] = np.zeros(shape, dtype)
            return contextlib.nullcontext(kept["labels"])

    with block_bars(show) as step:
        if method is DecodeMethod.threshold:
            count = threshold_blocks(
                lambda sel: read_channel(pred, channel, kinds, sel) > cfg.threshold,
                shape, block, cfg.min_size, create, step,
            )
        else:
            binary_channel, contour_channel = kinds.index("binary"), kinds.index("contour")
            temporary = scratch_beside is None and not isinstance(pred, np.ndarray)
            with Scratch(scratch_beside, temporary=temporary) as scratch:
                count = bc_watershed_blocks(
                    lambda sel: (read_channel(pred, binary_channel, kinds, sel),
                                 read_channel(pred, contour_channel, kinds, sel)),
                    shape, block, tuple(cfg.halo), cfg, create, step, scratch,
                )
    return kept.get("labels"), count
