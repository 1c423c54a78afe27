"""Checks :mod:`pytc.inference` makes before and while it predicts, each with a one-line message
that says what to do: window and block sizes, the output dtype, input values the network cannot
compute with, memory for one batch of windows, and a checkpoint with NaN weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from pytc.config import as_zyx, window_size
from pytc.errors import ConfigError, DataError, VolumeError

if TYPE_CHECKING:
    import torch

    from pytc.config import PytcConfig


def spatial_sizes(values: Sequence[int], spatial_dims: int, key: str) -> tuple[int, int, int]:
    """Window or block sizes of config ``key`` as (Z, Y, X) (:func:`pytc.config.as_zyx`); a 2D model
    may also take a (Z, Y, X) block: several sections at a time."""
    values = [int(v) for v in values]
    if any(v < 1 for v in values):
        raise ConfigError(f"{key} must be positive sizes, got {values}")
    if len(values) == 3 and spatial_dims == 2 and key == "inference.block_size":
        return values[0], values[1], values[2]
    return as_zyx(values, spatial_dims, key)


def check_output_dtype(dtype, targets) -> np.dtype:
    dtype = np.dtype(getattr(dtype, "value", dtype))
    if dtype not in (np.uint8, np.float16, np.float32):
        raise VolumeError(f"prediction outputs are uint8, float16 or float32; got {dtype}")
    if dtype == np.uint8 and any(t.name == "distance" and t.distance_mode == "signed" for t in targets):
        raise ConfigError("uint8 output cannot hold signed distances (-1..1); use inference.output_dtype=float16 "
                          "(--dtype float16)")
    return dtype


# The largest finite value of each compute dtype: inputs beyond it become inf inside the network.
COMPUTE_MAX = {"32": ("float32", float(np.finfo(np.float32).max)), "bf16-mixed": ("bfloat16", 3.3895e38),
                "16-mixed": ("float16", float(np.finfo(np.float16).max))}


def check_range(block: np.ndarray, name: str, origin: Sequence[int], limit: float, dtype_name: str) -> None:
    """Refuse values whose magnitude exceeds what the network computes in (``limit``), naming the
    largest; the caller has checked that they are finite."""
    if block.size == 0 or (block.dtype.kind in "iu" and max(abs(np.iinfo(block.dtype).min),
                                                          np.iinfo(block.dtype).max) <= limit):
        return  # this dtype cannot exceed the limit: no scan
    magnitude = np.abs(block.astype(np.float64, copy=False)) if block.dtype.kind in "iu" else np.abs(block)
    at = int(np.argmax(magnitude))
    if magnitude.flat[at] > limit:
        where = tuple(int(i) + int(o) for i, o in zip(np.unravel_index(at, block.shape), origin))
        raise DataError(f"{name} has values up to {float(block.flat[at]):.3g} (at voxel {where}), beyond the "
                        f"{dtype_name} range (±{limit:.3g}) the network computes in; rescale the input (e.g. "
                        "data.normalize=zscore, or divide it down) and rerun")


def check_input_values(vol, name: str, normalize: str, precision: str) -> None:
    """Scan a volume once, before any output exists: NaN/Inf voxels, and magnitudes the network
    cannot compute with (float32 for any input, as normalising casts to it first; the autocast
    dtype for inputs that normalising passes through unscaled). Per-block checks in
    :meth:`pytc.inference.predictor.BlockPredictor.read` catch the rest (z-scored values beyond float16)."""
    from pytc.data.volumes import BLOCK_VOXELS, block_shape, iter_blocks, raise_if_not_finite

    dtype = np.dtype(vol.dtype)
    dtype_name, limit = COMPUTE_MAX["32"]
    unscaled = normalize == "none" or normalize == "unit" and dtype.kind == "f"
    if unscaled and precision != "32":
        dtype_name, limit = COMPUTE_MAX.get(precision, COMPUTE_MAX["32"])
    scan_range = dtype.kind == "f" or dtype.kind in "iu" and unscaled and \
        max(abs(np.iinfo(dtype).min), np.iinfo(dtype).max) > limit
    if dtype.kind not in "fc" and not scan_range:
        return
    for sel in iter_blocks(vol.shape, block_shape(vol.shape, voxels=BLOCK_VOXELS)):
        block, origin = np.asarray(vol[sel]), [s.start for s in sel]
        raise_if_not_finite(block, name, origin)
        if scan_range:
            check_range(block, name, origin, limit, dtype_name)


def check_weights(model: "torch.nn.Module", folder: Path) -> None:
    """Refuse a checkpoint with NaN/Inf weights (a diverged run) before anything is written: every
    prediction would be NaN, stored as 0 in uint8."""
    from pytc.errors import CheckpointError

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"checkpoint {folder} has NaN or infinite weights (first in {name}); the "
                                  "training diverged before it was saved: use an earlier checkpoint")


def available_memory(device: "torch.device") -> Optional[int]:
    """Free bytes where the network runs (None when unknown)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:  # Linux: what can be allocated without swapping
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_window_memory(window: Sequence[int], cfg: "PytcConfig", device: "torch.device") -> None:
    """Refuse, before anything is allocated, a window whose batch cannot fit in memory.

    The estimate is a floor, in float32: the window weights, and one batch of input and output
    windows; the network's own activations need several times more. A window larger than the
    volume is not capped to it: the window decides what the network sees (and must suit the
    architecture), so a smaller one would silently predict something else.
    """
    voxels = math.prod(int(w) for w in window)
    batch = cfg.inference.sw_batch_size * (cfg.model.in_channels + cfg.model.out_channels)
    need = 4 * voxels * (1 + batch)
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"inference.window_size {list(window_size(cfg))} needs at least "
                          f"{_bytes(need)} of memory for one batch of windows but {device.type} has {_bytes(free)} "
                          f"free; use a smaller window (the training patch is {list(cfg.data.patch_size)})")


def _bytes(n: float) -> str:
    unit = 0
    while n >= 1024 and unit < 5:
        n, unit = n / 1024, unit + 1
    return f"{n:.3g} {('B', 'KB', 'MB', 'GB', 'TB', 'PB')[unit]}"



def check_window_fits(cfg) -> None:
    """A window other than the training patch must suit the architecture (e.g. divisible by its
    downsampling): ask its builder on the meta device (no weights allocated)."""
    from pytc.errors import ModelError
    from pytc.models.registry import count_parameters

    window = window_size(cfg)
    if list(window) == list(cfg.model.input_size):
        return
    try:
        count_parameters(cfg.model.model_copy(update={"input_size": list(window)}))
    except ModelError as err:
        raise ConfigError(f"inference.window_size {list(window)} does not fit {cfg.model.architecture}: {err}") from None
