"""What a prediction holds and how the decoders read it.

A prediction is ``(C, Z, Y, X)`` probabilities, or ``(Z, Y, X)`` for one channel, in any
array-like (numpy, h5py, zarr, a :class:`~pytc.io.Volume`). Each channel has a kind
(``binary``, ``contour``, ``affinity``, ``distance``: :func:`channel_kinds` checks them) and each
affinity channel an offset (:func:`affinity_offsets`; :func:`parse_offsets` reads them from text).
:func:`read_channel` reads one channel, or a region of it, as a float32 array of the caller's own,
checked to hold probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, get_args

import numpy as np

from pytc.choices import ChannelOrder
from pytc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pytc.choices import DecodeMethod

__all__ = [
    "affinity_offsets", "channel_kinds", "channels_of", "describe_kinds", "foreground_mask", "group_kinds",
    "missing_channels", "parse_offsets", "read_channel", "spatial_shape",
]


def group_kinds(kinds: Sequence[str]) -> str:
    """['binary', 'affinity', 'affinity'] → 'binary, affinity x2'."""
    groups: list[list] = []
    for kind in kinds:
        if groups and groups[-1][0] == kind:
            groups[-1][1] += 1
        else:
            groups.append([kind, 1])
    return ", ".join(kind if count == 1 else f"{kind} x{count}" for kind, count in groups)


def describe_kinds(kinds: Sequence[str]) -> str:
    """['binary', 'affinity', 'affinity'] → '3 channels: binary, affinity x2'."""
    return f"{len(kinds)} channel{'s' if len(kinds) != 1 else ''}: {group_kinds(kinds)}"


def missing_channels(method: str, needed: str, kinds: Sequence[str]) -> DataError:
    """The error for a prediction that lacks the channels ``method`` needs."""
    return DataError(
        f"{method} needs {needed}; the prediction has {describe_kinds(kinds)}; "
        "predict those targets (data.targets) or choose another --method"
    )


def channel_kinds(pred, channels: Optional[Sequence[str]]) -> list[str]:
    """The kind of every channel of ``pred``, checked; ``None`` is allowed for one channel
    (taken as binary).

    Raises:
        DataError: Not 3D/4D, kinds unknown for several channels, an unknown kind, or not one
            kind per channel.
    """
    from pytc.config import TargetConfig

    ndim = len(pred.shape)
    if ndim not in (3, 4):
        raise DataError(
            f"a prediction must be (C, Z, Y, X) or (Z, Y, X), got shape {tuple(pred.shape)}; "
            "give 2D data a z axis of 1"
        )
    count = pred.shape[0] if ndim == 4 else 1
    if channels is None:
        if count != 1:
            raise DataError(
                f"the prediction has {count} channels but their kinds are unknown; "
                "give them, e.g. --channels binary,contour (pytc infer stores them as pytc_channels)"
            )
        return ["binary"]
    kinds = [str(kind).strip() for kind in channels]
    valid = get_args(TargetConfig.model_fields["name"].annotation)
    unknown = [kind for kind in kinds if kind not in valid]
    if unknown:
        raise DataError(f"unknown channel kind {unknown[0]!r}; each channel is one of {', '.join(valid)}")
    if len(kinds) != count:
        raise DataError(
            f"{len(kinds)} channel kinds given ({', '.join(kinds)}) for a prediction with {count} channel"
            f"{'s' if count != 1 else ''}; give one kind per channel"
        )
    return kinds


def parse_offsets(text: str, option: str = "--offsets") -> list[list[int]]:
    """``'[[1,0,0],[0,1,0],[0,0,1]]'`` (a YAML or JSON list, read with ``yaml.safe_load``) → a list of
    non-zero integer triples; which axis each entry is, and whether their count fits the
    prediction, :func:`affinity_offsets` decides.

    Raises:
        ConfigError: Not a non-empty list of non-zero integer triples (the message names ``option``).
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    # type() is int: YAML's true/false are bools, not offsets.
    if isinstance(value, list) and value and all(
        isinstance(t, list) and len(t) == 3 and all(type(v) is int for v in t) and any(t) for t in value
    ):
        return [list(t) for t in value]
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise ConfigError(
        f"{option} expects a list of non-zero integer triples, one per affinity channel, "
        f"e.g. [[1,0,0],[0,1,0],[0,0,1]]; got {shown!r}"
    )


def affinity_offsets(kinds: list[str], offsets, method: "DecodeMethod",
                     order: ChannelOrder | str = ChannelOrder.zyx) -> list[tuple[int, ...]]:
    """``(dz, dy, dx)`` of every affinity channel, in channel order, checked; ``None`` means the
    default ``(1,0,0), (0,1,0), (0,0,1)`` when there are exactly three affinity channels.

    With ``order="xyz"`` the offsets (given or default) are read as ``(dx, dy, dz)`` and each triple
    is reversed; the channels keep their order (channel i still goes with offset i), so the default
    then means channels x, y, z.
    """
    try:
        xyz = ChannelOrder(getattr(order, "value", order)) is ChannelOrder.xyz
    except ValueError:
        names = " or ".join(o.value for o in ChannelOrder)
        raise ConfigError(f"unknown channel order {order!r}; choose {names}") from None
    count = kinds.count("affinity")
    if count == 0:
        raise missing_channels(method.value, "affinity channels", kinds)
    if offsets is None:
        from pytc.config import TargetConfig

        if count != 3:
            raise DataError(
                f"the prediction has {count} affinity channels but no offsets; give their offsets with "
                "--offsets (pytc infer stores them as pytc_offsets)"
            )
        offsets = TargetConfig.model_fields["offsets"].default
    try:
        result = [tuple(int(v) for v in offset) for offset in offsets]
    except (TypeError, ValueError):
        result = []
    if not result or any(len(offset) != 3 or not any(offset) for offset in result):
        axes = "dx, dy, dz" if xyz else "dz, dy, dx"
        raise DataError(f"affinity offsets must be non-zero ({axes}) triples, got {offsets!r}")
    if len(result) != count:
        raise DataError(
            f"{len(result)} affinity offsets for {count} affinity channels ({describe_kinds(kinds)}); "
            "give one offset per affinity channel"
        )
    return [offset[::-1] for offset in result] if xyz else result


def channels_of(kinds: Sequence[str], kind: str) -> list[int]:
    """The indices of the channels of kind ``kind``."""
    return [i for i, k in enumerate(kinds) if k == kind]


def spatial_shape(pred) -> tuple[int, ...]:
    """``(Z, Y, X)`` of a ``(C, Z, Y, X)`` or ``(Z, Y, X)`` prediction."""
    return tuple(pred.shape[1:] if pred.ndim == 4 else pred.shape)


def read_channel(pred, channel: int, kinds: Sequence[str], sel: Optional[tuple] = None) -> np.ndarray:
    """Channel ``channel`` (the spatial region ``sel``, default all) as a float32 array of our own,
    checked to hold probabilities."""
    sel = (slice(None),) * 3 if sel is None else tuple(sel)
    data = pred[(channel, *sel)] if pred.ndim == 4 else pred[sel]
    # Callers modify the result in place: copy unless the reader handed us a fresh array.
    fresh = isinstance(data, np.ndarray) and data.base is None and data is not pred
    array = np.asarray(data, dtype=np.float32) if fresh else np.array(data, dtype=np.float32)
    if array.size:
        lo, hi = float(array.min()), float(array.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise DataError(
                f"channel {channel} ({kinds[channel]}) holds values in [{lo:.3g}, {hi:.3g}], not probabilities "
                "in [0, 1]; decode sigmoid outputs (pytc infer writes them)"
            )
    return array


def foreground_mask(pred, kinds: Sequence[str], cfg) -> Optional[np.ndarray]:
    """``binary > threshold`` when the prediction has a binary channel, else None."""
    return read_channel(pred, kinds.index("binary"), kinds) > cfg.threshold if "binary" in kinds else None
