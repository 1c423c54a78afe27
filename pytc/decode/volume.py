""":func:`decode_volume`: a prediction store written by ``pytc infer`` → label volume(s) on disk.

It reads what the store's attributes say (channel kinds, affinity offsets, the uint8 scale, the
``decoding`` section of the stored config) or what the caller gives for a store without them
(channel kinds, affinity offsets and their axis order), checks every output before decoding, then decodes
``threshold`` and ``bc-watershed`` block by block straight into the output and the affinity
decoders in memory (one output per waterz merge threshold).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from pytc.choices import ChannelOrder, DecodeMethod
from pytc.decode.dispatch import BLOCKWISE, decode, decode_blockwise, decode_method, decoding_params
from pytc.decode.prediction import affinity_offsets, channel_kinds
from pytc.errors import ConfigError, DataError, OutputExistsError
from pytc.progress import status_line

if TYPE_CHECKING:
    from pytc.io import VolumeWriter

__all__ = ["decode_volume"]


class _Dequantized:
    """Array-like over a stored prediction: ``pred[c]`` reads one channel as float32 / scale."""

    def __init__(self, vol, scale: float):
        self._vol, self._scale = vol, float(scale)
        self.shape, self.ndim = tuple(vol.shape), len(vol.shape)

    def __getitem__(self, index) -> np.ndarray:
        a = np.array(self._vol[index], dtype=np.float32)  # a fresh array: decode may modify it
        if self._scale != 1.0:
            a /= np.float32(self._scale)
        return a


def decode_volume(
    pred_spec: str | os.PathLike,
    out_spec: str | os.PathLike,
    method: DecodeMethod | str | None = None,
    params: Optional[Mapping[str, Any]] = None,
    channels: Optional[Sequence[str]] = None,
    force: bool = False,
    progress: bool = True,
    offsets: Optional[Sequence[Sequence[int]]] = None,
    channel_order: ChannelOrder | str = ChannelOrder.zyx,
) -> dict:
    """Decode a stored prediction into a label volume.

    The prediction's attributes (see docs/architecture.md, "Prediction stores") supply what the
    file alone can: ``pytc_channels`` (kinds), ``pytc_offsets``, ``pytc_scale`` (uint8 stores are
    divided by 255) and ``pytc_config`` (its ``decoding`` section gives the method and parameter
    defaults). ``threshold`` and ``bc-watershed`` read, decode and write a volume larger than
    ``block_size`` one block at a time (bc-watershed keeps seed and region labels in a temporary
    store beside the output, deleted at the end); peak memory is then a few times one block's
    float32 size plus two z-planes of uint64 labels, whatever the volume. The affinity decoders
    decode the whole volume in memory and refuse, before reading it, a volume whose estimated
    peak exceeds the memory available (see :mod:`pytc.decode.affinity`).

    Args:
        pred_spec: The prediction, any :func:`pytc.io.open_volume` address.
        out_spec: Where the labels go, any :func:`pytc.io.create_volume` address. Several
            waterz merge thresholds write one volume each: ``seg.zarr`` → ``seg_t0.3.zarr``,
            ``seg_t0.5.zarr``; ``seg.h5:main`` → datasets ``main_t0.3``, ``main_t0.5`` in
            ``seg.h5`` (likewise ``seg_t0.3.tif``, ``seg_t0.3/`` for slices).
        method: Overrides the config's ``decoding.method``.
        params: :class:`~pytc.config.DecodingConfig` fields; override the stored config.
        channels: Channel kinds; override ``pytc_channels`` (needed when it is absent and the
            prediction has several channels).
        force: Replace existing outputs.
        progress: Show the current step on a terminal.
        offsets: The affinity channels' offsets, one triple per affinity channel in channel order
            (the affinity decoders only); override ``pytc_offsets`` (a warning names both when
            they differ). Neither: ``(1,0,0), (0,1,0), (0,0,1)`` for three affinity channels.
        channel_order: ``zyx`` (pytc's own): each offset is ``(dz, dy, dx)``. ``xyz``: each offset
            (given, stored or the default) is ``(dx, dy, dz)`` and is reversed before decoding;
            the array is read as it is, channel i with offset i, so with the default offsets
            the three affinity channels are taken as x, y, z.

    Returns:
        ``{"method", "params", "shape", "dtype", "seconds", "outputs": [{"path", "threshold",
        "instances"}, ...]}``.

    Raises:
        OutputExistsError: An output exists and ``force`` is False (checked before decoding).
        DataError, ConfigError, VolumeError: As :func:`pytc.decode.decode` and
            :func:`pytc.io.open_volume`.

    Example:
        >>> decode_volume("pred.zarr", "seg.zarr", "bc-watershed", {"min_size": 50})  # doctest: +SKIP
        {'method': 'bc-watershed', ..., 'outputs': [{'path': 'seg.zarr', 'threshold': None, 'instances': 17}]}
    """
    from pytc.io import channel_kinds_attr, check_not_input, create_volume, open_volume, parse_spec

    start = time.perf_counter()
    with open_volume(pred_spec) as vol:
        attrs = vol.attrs
        stored = _stored_decoding(attrs, str(pred_spec))
        if method is not None:
            stored["method"] = getattr(method, "value", method)
        cfg = decoding_params({**stored, **dict(params or {})})
        method = decode_method(cfg.method)
        if channels is None:
            channels = channel_kinds_attr(attrs)
        if method not in BLOCKWISE:  # check the channels and offsets before any output is touched
            channels = channel_kinds(vol, channels)
            offsets = affinity_offsets(channels, _chosen_offsets(offsets, attrs, vol.spec), method, channel_order)
        scale = _scale(vol, attrs)
        spatial = tuple(vol.shape[1:] if vol.ndim == 4 else vol.shape)
        thresholds = sorted(set(cfg.merge_thresholds)) if method is DecodeMethod.affinity_waterz else [None]
        output_specs = {
            threshold: str(out_spec) if len(thresholds) == 1 else _threshold_spec(out_spec, threshold)
            for threshold in thresholds
        }
        for spec in output_specs.values():  # fail now, not after minutes of decoding
            check_not_input(spec, [pred_spec])
            _check_output(spec, spatial, force)

        values = cfg.model_dump(exclude={"method"})
        voxel_size = vol.voxel_size if vol.voxel_size is not None and len(vol.voxel_size) == 3 else None
        pred = _Dequantized(vol, scale)
        outputs, dtypes = [], []

        def create(spec: str, dtype) -> "VolumeWriter":
            dtypes.append(np.dtype(dtype))
            return create_volume(spec, spatial, dtype, voxel_size=voxel_size, force=force)

        if method in BLOCKWISE:  # block by block, straight into the output
            spec = output_specs[None]
            _, count = decode_blockwise(pred, method, channel_kinds(pred, channels),
                                        cfg, lambda dtype: create(spec, dtype), progress, parse_spec(spec).path)
            outputs.append({"path": spec, "threshold": None, "instances": count})
        else:
            with status_line(progress) as step:
                step(f"decoding {vol.spec} ({method.value})")
                result = decode(pred, method, channels, offsets, **values)
                labels = result if isinstance(result, dict) else {thresholds[0]: result}
                for threshold, spec in output_specs.items():
                    step(f"writing {spec}")
                    seg = labels.pop(threshold)
                    with create(spec, seg.dtype) as out:
                        out[...] = seg
                    outputs.append({"path": spec, "threshold": threshold,
                                    "instances": int(seg.max()) if seg.size else 0})
    return {
        "method": method.value,
        "params": values,
        "shape": list(spatial),
        "dtype": str(dtypes[0]),
        "seconds": time.perf_counter() - start,
        "outputs": outputs,
    }


def _check_output(spec: str, shape: tuple[int, ...], force: bool) -> None:
    """Raise now what :func:`pytc.io.create_volume` would raise for ``spec`` after decoding."""
    from pytc.io import create_volume, output_exists, parse_spec

    address = parse_spec(spec)
    if address.format == "hdf5" and address.key is not None and address.path.is_file():
        # A trial writer would copy the file's other datasets: look the dataset up instead.
        if not force and output_exists(address):
            raise OutputExistsError(f"{spec} exists; pass --force to overwrite")
        return
    create_volume(spec, shape, np.uint32, force=force).abort()  # an empty trial store, deleted at once


def _threshold_spec(out_spec, threshold: float) -> str:
    """The address of the labels for waterz merge threshold ``threshold`` (see :func:`decode_volume`)."""
    from pytc.io import DEFAULT_H5_KEY, parse_spec

    address = parse_spec(out_spec)
    tag = f"_t{threshold:g}"
    if address.format == "hdf5":
        return f"{address.path}:{address.key or DEFAULT_H5_KEY}{tag}"
    if address.format == "slices":
        return f"{address.path.with_name(address.path.name + tag)}{os.sep}"
    path = address.path.with_name(address.path.stem + tag + address.path.suffix)
    return f"{path}/{address.key}" if address.key else str(path)


def _as_list(value) -> list:
    if isinstance(value, str):  # "binary,contour" or a JSON list
        import json

        return json.loads(value) if value.strip().startswith("[") else value.split(",")
    return list(value)


def _chosen_offsets(given, attrs: dict, spec: str):
    """The given offsets, else the store's ``pytc_offsets``, else None; warns when both differ."""
    value = attrs.get("pytc_offsets")
    stored = None if value is None else _as_list(value)
    if given is None:
        return stored
    if stored is not None and _triples(stored) != _triples(given):
        import warnings

        shown = _triples(stored) or stored
        warnings.warn(f"{spec}: decoding with the given offsets {_triples(given) or given} instead of its "
                      f"pytc_offsets attribute {shown}", stacklevel=3)
    return given


def _triples(offsets) -> Optional[list[list[int]]]:
    """Offsets as lists of ints for comparing and showing; None when they are not numbers."""
    try:
        return [[int(v) for v in offset] for offset in offsets]
    except (TypeError, ValueError):
        return None


def _scale(vol, attrs: dict) -> float:
    scale = attrs.get("pytc_scale")
    if scale is None:
        if vol.dtype.kind in "iu" and vol.dtype != np.uint8:
            raise DataError(
                f"{vol.spec} holds {vol.dtype} values and no pytc_scale attribute; "
                "a prediction is float probabilities or uint8 (probability x 255)"
            )
        if vol.dtype == np.uint8:
            import warnings

            warnings.warn(f"{vol.spec} has no pytc_scale attribute: reading its uint8 values as probability x 255 "
                          "(a 0/1 mask decodes to nothing; pytc infer writes the attribute)", stacklevel=3)
            return 255.0
        return 1.0
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        scale = float("nan")
    if not scale > 0:
        raise DataError(f"{vol.spec}: pytc_scale must be a positive number, got {attrs.get('pytc_scale')!r}")
    return scale


def _stored_decoding(attrs: dict, origin: str) -> dict:
    """The ``decoding`` section of the prediction's ``pytc_config`` (YAML text), or {}."""
    text = attrs.get("pytc_config")
    if not text:
        return {}
    from pytc.config import parse_yaml  # the bounded, strict reader every config goes through

    try:
        data = parse_yaml(text, f"{origin} pytc_config attribute") if isinstance(text, str) else text
    except ConfigError as err:
        raise ConfigError(f"{err}; fix or remove the attribute") from None
    section = data.get("decoding") if isinstance(data, dict) else None
    return dict(section) if isinstance(section, dict) else {}
