"""Sliding-window prediction over volumes of any size (`pytc infer`'s engine).

:func:`predict_volume` takes any array-like image — numpy, h5py, zarr or a :mod:`pytc.io` volume,
(Z, Y, X) or (C, Z, Y, X) — and writes activated predictions (C, Z, Y, X) into an array-like
``output`` (or returns a float32 array). :func:`infer` is the file-to-file command: checkpoint +
input volume → a resumable, multi-process prediction store (Zarr or HDF5).

How a volume is predicted:

* **Windows.** MONAI's ``sliding_window_inference`` with window ``inference.window_size`` (default:
  the training patch), ``inference.overlap``, ``inference.blending`` (gaussian/constant) and
  ``inference.sw_batch_size``; a volume thinner than the window is padded by edge replication
  (MONAI ``padding_mode="replicate"``) and the padding cropped off again. 2D networks predict each
  z-section with a (1, Y, X) window.
* **Input.** Normalised as in training (``data.normalize``); z-score statistics are computed once,
  chunk-wise, over the whole input.
* **Output.** Sigmoid on binary/contour/affinity channels, none on distance channels (per
  ``channel_kinds(data.targets)``), applied per window before blending, so windows and TTA average
  probabilities. Stored as float32, float16 or uint8 = ``round(clip(p, 0, 1) * 255)``; uint8 keeps
  normalised distances the same way (they live in [0, 1]) and is refused for signed distances
  (-1..1), which need a float dtype.
* **Blocks (out of core).** The volume is processed in output blocks of ``inference.block_size``
  over the whole-volume window grid: each window runs once, in the block holding its first voxel,
  and the part of its weighted prediction that reaches into later blocks is carried to them (see
  :mod:`pytc._inference_windows`). Blocked and whole-volume predictions differ only by rounding
  (< 1e-6). Memory is bounded by the block plus one window on each far side and a budget of
  carried partial sums (one block's; the rest wait in files); the next block is read and the
  previous one written on helper threads while the network runs.
* **TTA.** ``inference.tta_flips`` (lists of axes) and ``inference.tta_rot90`` (quarter turns in the
  y-x plane), identity always included; each is inverted before averaging and affinity channels are
  re-pointed (a flip along z turns the z-affinity into "v to v + o", which is shifted back by o).
  An augmentation that maps an offset to one the target does not predict is refused.

:func:`infer` writes to ``.<output>.pytc-partial`` beside the output, marks every finished block in
the store's record folder and renames the store into place only when all blocks are done. Rerun
with the same arguments, it skips the finished blocks; a partial store written with another
checkpoint, input (its contents: see :func:`pytc._inference_store.input_identity`) or config is
refused, naming what changed (``resume=False``, ``--restart``, starts it over). Processes started by
``accelerate launch`` (``WORLD_SIZE`` > 1) share the blocks in contiguous runs (rank ``r`` of ``W``
takes blocks ``r·n/W`` up to ``(r+1)·n/W``) and write into one Zarr store whose chunks divide the
block; rank 0 prepares the store and renames it at the end. A block whose neighbour was predicted
by another process or an earlier run recomputes that neighbour's windows reaching into it, in the
neighbour's own batches, so the output is the same however the blocks were shared or resumed (bit for
bit on CPU; on GPU each process lets cuDNN pick its kernels, so expect float rounding differences).

Example:
    >>> from pytc.inference import infer, predict_volume
    >>> summary = infer("runs/lucchi/checkpoints/best", "test.h5:raw", "pred.zarr")  # doctest: +SKIP
    >>> prob = predict_volume(model, image, cfg, progress=False)  # numpy in, float32 (C, Z, Y, X) out  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

from pytc import _inference_store as store
from pytc._inference_windows import BlockPlan, WindowPredictor, affinity_layout, build_augs, output_chunks
from pytc.progress import block_bars
from pytc.errors import ConfigError, DataError, OutputExistsError, VolumeError

if TYPE_CHECKING:
    import torch

    from pytc.config import PytcConfig

__all__ = ["infer", "predict_volume"]

log = logging.getLogger("pytc")


# -------------------------------------------------------------------------------------- engine --
class _InputView:
    """(C_in, Z, Y, X) reads of an array-like image, for a model with ``in_channels``/``spatial_dims``."""

    def __init__(self, image, in_channels: int, spatial_dims: int, name: str = "the input"):
        shape, nd = tuple(int(n) for n in image.shape), len(image.shape)
        self.image, self.dtype = image, np.dtype(image.dtype)
        given = f"{name} has shape {shape}"
        if spatial_dims == 3:
            if nd == 2:
                raise DataError(f"{given}, a 2D image, but the model is 3D; give a (Z, Y, X) stack")
            if nd == 3 and in_channels == 1:
                self.layout = "zyx"
            elif nd == 4 and shape[0] == in_channels:
                self.layout = "czyx"
            elif nd in (3, 4):
                raise DataError(f"{given} but the model takes {in_channels} channel{'s' if in_channels != 1 else ''}; give "
                                f"{'(Z, Y, X)' if in_channels == 1 else f'({in_channels}, Z, Y, X)'}")
            else:
                raise DataError(f"{given}; give a (Z, Y, X) or (C, Z, Y, X) volume")
        else:
            if nd == 2 and in_channels == 1:
                self.layout = "yx"
            elif nd == 3 and in_channels == 1:
                self.layout = "zyx"  # a stack of sections, predicted one by one
            elif nd == 3 and shape[0] == in_channels:
                self.layout = "cyx"
            elif nd == 4 and shape[0] == in_channels:
                self.layout = "czyx"
            else:
                raise DataError(f"{given} but the 2D model takes {in_channels} channel{'s' if in_channels != 1 else ''}; "
                                f"give (Y, X), (Z, Y, X) or ({in_channels}, Z, Y, X)")
        spatial = {"zyx": shape, "czyx": shape[1:], "yx": (1, *shape), "cyx": (1, *shape[1:])}[self.layout]
        self.shape: tuple[int, int, int] = tuple(spatial)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        z, y, x = box
        get = lambda sel: np.asarray(self.image[sel])  # noqa: E731
        if self.layout == "zyx":
            return get((z, y, x))[None]
        if self.layout == "czyx":
            return get((slice(None), z, y, x))
        if self.layout == "yx":
            return get((y, x))[None, None]
        return get((slice(None), y, x))[:, None]


def _spatial(values: Sequence[int], spatial_dims: int, key: str, what: str) -> tuple[int, int, int]:
    values = [int(v) for v in values]
    if any(v < 1 for v in values):
        raise ConfigError(f"{key} must be positive sizes, got {values}")
    if len(values) == 3 and spatial_dims == 3 or len(values) == 2 and spatial_dims == 2:
        return tuple(values) if spatial_dims == 3 else (1, *values)
    if len(values) == 3 and spatial_dims == 2 and key == "inference.block_size":
        return tuple(values)  # 2D model: a block of several sections
    want = "(Z, Y, X)" if spatial_dims == 3 else "(Y, X)"
    raise ConfigError(f"{key} {values} does not fit the {spatial_dims}D model; give {what} as {want}")


def _check_output_dtype(dtype, targets) -> np.dtype:
    dtype = np.dtype(getattr(dtype, "value", dtype))
    if dtype not in (np.uint8, np.float16, np.float32):
        raise VolumeError(f"prediction outputs are uint8, float16 or float32; got {dtype}")
    if dtype == np.uint8 and any(t.name == "distance" and t.distance_mode == "signed" for t in targets):
        raise ConfigError("uint8 output cannot hold signed distances (-1..1); use inference.output_dtype=float16 "
                          "(--dtype float16)")
    return dtype


# The largest finite value of each compute dtype: inputs beyond it become inf inside the network.
_COMPUTE_MAX = {"32": ("float32", float(np.finfo(np.float32).max)), "bf16-mixed": ("bfloat16", 3.3895e38),
                "16-mixed": ("float16", float(np.finfo(np.float16).max))}


def _check_range(block: np.ndarray, name: str, origin: Sequence[int], limit: float, dtype_name: str) -> None:
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


def _check_input_values(vol, name: str, normalize: str, precision: str) -> None:
    """Scan a volume once, before any output exists: NaN/Inf voxels, and magnitudes the network
    cannot compute with (float32 for any input, as normalising casts to it first; the autocast
    dtype for inputs that normalising passes through unscaled). Per-block checks in
    :meth:`_Engine.read` catch the rest (z-scored values beyond float16)."""
    from pytc.data.volumes import BLOCK_VOXELS, block_shape, iter_blocks, raise_if_not_finite

    dtype = np.dtype(vol.dtype)
    dtype_name, limit = _COMPUTE_MAX["32"]
    unscaled = normalize == "none" or normalize == "unit" and dtype.kind == "f"
    if unscaled and precision != "32":
        dtype_name, limit = _COMPUTE_MAX.get(precision, _COMPUTE_MAX["32"])
    scan_range = dtype.kind == "f" or dtype.kind in "iu" and unscaled and \
        max(abs(np.iinfo(dtype).min), np.iinfo(dtype).max) > limit
    if dtype.kind not in "fc" and not scan_range:
        return
    for sel in iter_blocks(vol.shape, block_shape(vol.shape, voxels=BLOCK_VOXELS)):
        block, origin = np.asarray(vol[sel]), [s.start for s in sel]
        raise_if_not_finite(block, name, origin)
        if scan_range:
            _check_range(block, name, origin, limit, dtype_name)


def _check_weights(model: "torch.nn.Module", folder: Path) -> None:
    """Refuse a checkpoint with NaN/Inf weights (a diverged run) before anything is written: every
    prediction would be NaN, stored as 0 in uint8."""
    from pytc.errors import CheckpointError

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"checkpoint {folder} has NaN or infinite weights (first in {name}); the "
                                  "training diverged before it was saved: use an earlier checkpoint")


def _available_memory(device: "torch.device") -> Optional[int]:
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


def _check_window_memory(window: Sequence[int], cfg: "PytcConfig", device: "torch.device") -> None:
    """Refuse, before anything is allocated, a window whose batch cannot fit in memory.

    The estimate is a floor, in float32: the window weights, and one batch of input and output
    windows; the network's own activations need several times more. A window larger than the
    volume is not capped to it: the window decides what the network sees (and must suit the
    architecture), so a smaller one would silently predict something else.
    """
    voxels = math.prod(int(w) for w in window)
    batch = cfg.inference.sw_batch_size * (cfg.model.in_channels + cfg.model.out_channels)
    need = 4 * voxels * (1 + batch)
    free = _available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"inference.window_size {list(cfg.inference.window_size or window)} needs at least "
                          f"{_bytes(need)} of memory for one batch of windows but {device.type} has {_bytes(free)} "
                          f"free; use a smaller window (the training patch is {list(cfg.data.patch_size)})")


def _bytes(n: float) -> str:
    unit = 0
    while n >= 1024 and unit < 5:
        n, unit = n / 1024, unit + 1
    return f"{n:.3g} {('B', 'KB', 'MB', 'GB', 'TB', 'PB')[unit]}"


class _Engine:
    """What one prediction needs: input view, window/block plan, normalisation and the predictor."""

    def __init__(self, model, image, cfg: "PytcConfig", device: "torch.device", stats=..., name: str = "the input"):
        import torch
        from monai.data.utils import compute_importance_map

        from pytc.data.targets import channel_kinds, check_out_channels
        from pytc.data.volumes import volume_stats
        from pytc.runtime import autocast_dtype, resolve_precision

        check_out_channels(cfg.model.out_channels, cfg.data.targets)
        inf, dims = cfg.inference, cfg.model.spatial_dims
        self.cfg, self.device, self.kinds, self.name = cfg, device, channel_kinds(cfg.data.targets), name
        self.view = _InputView(image, cfg.model.in_channels, dims, name)
        window = _spatial(inf.window_size or cfg.data.patch_size, dims, "inference.window_size", "the window")
        block = _spatial(inf.block_size, dims, "inference.block_size", "the block")
        _check_window_memory(window, cfg, device)  # before the window weights are allocated
        self.plan = BlockPlan(self.view.shape, window, block, inf.overlap)
        offsets, groups = affinity_layout(cfg.data.targets)
        flips = inf.tta_flips if dims == 3 else [[a for a in f if a != 0] for f in inf.tta_flips]  # z: one section
        self.augs = build_augs(flips, inf.tta_rot90, self.kinds, offsets, groups)
        self.precision = resolve_precision(cfg.training.precision, device)
        model = model.to(device).eval()
        self.predictor = WindowPredictor(model, self.kinds, self.augs, dims, autocast_dtype(self.precision), device)
        zscore = cfg.data.normalize == "zscore"
        self.stats = (volume_stats(image) if zscore else None) if stats is ... else stats
        self.importance = compute_importance_map(window, mode=inf.blending, sigma_scale=0.125, device=device,
                                                 dtype=torch.float32)  # MONAI's window weights
        self.windows_run = 0  # network evaluations of windows (each batch counts its windows)

    @property
    def carry_budget(self) -> int:
        """Bytes of carried partial sums kept in memory: one block's partial sum (the carries to the
        next block along x, usually; those to the next row and layer wait in files)."""
        return 4 * len(self.kinds) * math.prod(self.plan.largest_extent())

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (len(self.kinds), *self.plan.shape)

    def read(self, box) -> np.ndarray:
        """Normalised float32 input (C_in, *box), replicate-padded where the volume is thinner than
        the window."""
        from pytc.data.volumes import normalize_image, raise_if_not_finite

        raw = self.view.read(box)
        origin = [0, *(r.start for r in box)]
        raise_if_not_finite(raw, self.name, origin)  # NaN would spread over windows
        if raw.dtype.kind == "f":  # normalising casts to float32 first
            _check_range(raw, self.name, origin, *_COMPUTE_MAX["32"][::-1])
        x = normalize_image(raw, self.cfg.data.normalize, source_dtype=self.view.dtype, stats=self.stats)
        if self.precision != "32":  # under autocast the network computes in a narrower dtype
            dtype_name, limit = _COMPUTE_MAX.get(self.precision, _COMPUTE_MAX["32"])
            _check_range(x, f"{self.name} (normalised)", origin, limit, dtype_name)
        pads = self.plan.pads
        if any(any(p) for p in pads):
            x = np.pad(x, ((0, 0), *pads), mode="edge")  # = MONAI's padding_mode="replicate"
        return x

    def read_block(self, index: int) -> Optional[np.ndarray]:
        """The input of the windows block ``index`` owns (None if it owns none)."""
        owned = self.plan.owned(index)
        return self.read(self.plan.input_box(owned)) if owned else None

    def _accumulate(self, source: int, box, x: Optional[np.ndarray] = None) -> "torch.Tensor":
        """``sum g · p`` over ``box`` of the windows block ``source`` owns: (C, *box) on the device.

        Windows run in the source's own batches (``inference.sw_batch_size`` consecutive owned
        windows); only the batches with a window meeting ``box`` run, and each window adds its
        weighted prediction where it meets ``box``. ``x``: the source's input
        (:meth:`read_block`); read here when None (a recomputed carry).
        """
        import torch

        from pytc._inference_windows import intersect, relative

        plan, bs = self.plan, self.cfg.inference.sw_batch_size
        owned = plan.owned(source)
        batches = [owned[i:i + bs] for i in range(0, len(owned), bs)]
        batches = [b for b in batches if any(intersect(plan.span(k), box) for k in b)]
        in_box = plan.input_box(owned if x is not None else [k for b in batches for k in b])
        if x is None:
            x = self.read(in_box)
        xt = torch.from_numpy(x).to(self.device)  # once: windows overlap, so per-window copies would repeat voxels
        acc = torch.zeros((len(self.kinds), *(s.stop - s.start for s in box)), device=self.device)
        imp = self.importance
        for batch in batches:
            win = torch.stack([xt[(slice(None), *plan.window_in(k, in_box))] for k in batch])
            y = self.predictor(win)
            self.windows_run += len(batch)
            for k, yk in zip(batch, y):
                span = plan.span(k)
                meet = intersect(span, box)
                if meet is None:
                    continue
                local = relative(meet, plan.window_box(k))
                acc[(slice(None), *relative(meet, box))] += yk[(slice(None), *local)] * imp[local]
        return acc

    def _weight(self, index: int) -> "torch.Tensor":
        """``sum g`` over the core of block ``index``: every window touching it, sources in order."""
        import torch

        from pytc._inference_windows import intersect, relative

        plan, core = self.plan, self.plan.core(index)
        weight = torch.zeros(tuple(s.stop - s.start for s in core), device=self.device)
        for source in plan.sources(index):
            for k in plan.owned(source):
                meet = intersect(plan.span(k), core)
                if meet is not None:
                    local = relative(meet, plan.window_box(k))
                    weight[relative(meet, core)] += self.importance[local]
        return weight

    def predict(self, index: int, x: Optional[np.ndarray], carries) -> np.ndarray:
        """Activated float32 prediction (C, *core) of block ``index``: its own windows on ``x``
        (from :meth:`read_block`), the partial sums carried from earlier blocks (recomputed when
        missing), and its own carries handed to ``carries`` for later blocks."""
        import torch

        from pytc._inference_windows import intersect, relative

        plan, core = self.plan, self.plan.core(index)
        with torch.inference_mode():
            own, extent = None, plan.extent(index)
            if x is not None:
                own = self._accumulate(index, extent, x)
                for t in plan.targets(index):
                    if t in carries.wanted:
                        part = own[(slice(None), *relative(intersect(extent, plan.core(t)), extent))]
                        carries.put(t, index, part.cpu().numpy() if part.is_cuda else part.clone().numpy())
            sources = plan.sources(index)
            if sources == [index] and own is not None:
                total = own[(slice(None), *relative(core, extent))]
            else:
                total = torch.zeros((len(self.kinds), *(s.stop - s.start for s in core)), device=self.device)
                for source in sources:
                    meet = intersect(plan.extent(source), core)
                    if source == index:
                        part = own[(slice(None), *relative(meet, extent))]
                    else:
                        carried = carries.take(index, source)
                        part = (torch.from_numpy(carried).to(self.device) if carried is not None
                                else self._accumulate(source, meet))
                    total[(slice(None), *relative(meet, core))] += part
            pred = total / self._weight(index)
            if not bool(torch.isfinite(pred).all()):  # would be stored as 0 (uint8) or NaN, silently
                box = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", core))
                raise DataError(f"the prediction of block {index} (voxels {box}) has NaN or infinite values: likely "
                                "NaN weights in the checkpoint (use an earlier one) or an overflow in the network "
                                "(run in full precision: training.precision=32, or rescale the input)")
            return pred.cpu().numpy()


def _quantise(pred: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.rint(np.clip(pred, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pred.astype(dtype, copy=False)


def _run_blocks(engine: _Engine, indices: Iterable[int], out, progress: bool,
                on_done: Optional[Callable[[int], None]] = None, dtype: Optional[np.dtype] = None,
                scratch: Optional[Path] = None) -> None:  # fmt: skip
    """Predict blocks ``indices`` (in increasing order) into ``out``. A reader thread fetches the
    next block's input and a writer thread stores the previous block (then calls ``on_done``)
    while the network runs. Partial sums for later blocks among ``indices`` are carried (spilled
    to ``scratch`` beyond the memory budget); the others are recomputed by their receivers."""
    indices = sorted(indices)
    if not indices:
        return
    dtype = np.dtype(dtype or out.dtype)
    plan = engine.plan
    carries = store.Carries(indices, engine.carry_budget, scratch)

    def write(i: int, pred: np.ndarray) -> int:
        out[(slice(None), *plan.core(i))] = _quantise(pred, dtype)
        if on_done is not None:
            on_done(i)
        return math.prod(s.stop - s.start for s in plan.core(i))

    try:
        with block_bars(progress, rate=True) as start, ThreadPoolExecutor(1, "pytc-read") as reader, \
                ThreadPoolExecutor(1, "pytc-write") as writer:  # fmt: skip
            advance = start("predict", len(indices))
            next_input, pending = reader.submit(engine.read_block, indices[0]), None
            for k, i in enumerate(indices):
                x = next_input.result()
                if k + 1 < len(indices):
                    next_input = reader.submit(engine.read_block, indices[k + 1])
                pred = engine.predict(i, x, carries)
                del x
                if pending is not None:
                    advance(pending.result())
                pending = writer.submit(write, i, pred)
            advance(pending.result())
    finally:
        carries.close()


def predict_volume(model: "torch.nn.Module", image, cfg: "PytcConfig", output=None,
                   device: "torch.device | str | None" = None, progress: bool = True):  # fmt: skip
    """Sliding-window prediction of a whole volume, block by block (see the module docs).

    Args:
        model: A network honouring the registry's output contract (logits, one tensor in eval mode);
            moved to ``device`` and put in eval mode.
        image: Array-like (numpy, h5py, zarr, :class:`pytc.io.Volume`): (Z, Y, X) or (C, Z, Y, X) for a
            3D model; (Y, X), a (Z, Y, X) stack of sections or (C, Z, Y, X) for a 2D one. Read one
            block (plus the windows reaching past it) at a time.
        cfg: The config the model was trained with (``data``, ``model``, ``inference``, precision
            from ``training.precision``).
        output: Writable array-like of shape (C, Z, Y, X) (numpy, zarr, h5py, a
            :class:`pytc.io.VolumeWriter`); uint8 outputs get ``round(p * 255)``. ``None``: a new
            float32 numpy array.
        device: Where the network runs; ``None`` = ``select_device(system.num_gpus)``.
        progress: Show a transient progress bar on stderr (when it is a terminal).

    Returns:
        ``output`` (or the new float32 array) holding activated predictions.

    Raises:
        DataError: The image does not fit the model (dimensions, channels) or ``output`` has the
            wrong shape. ConfigError: bad window/block sizes or an impossible TTA for affinities.

    Example:
        >>> prob = predict_volume(model, np.zeros((32, 64, 64), np.uint8), cfg, progress=False)  # doctest: +SKIP
        >>> prob.shape  # doctest: +SKIP
        (1, 32, 64, 64)
    """
    import torch

    from pytc.runtime import select_device

    device = torch.device(device) if device is not None else select_device(cfg.system.num_gpus)
    engine = _Engine(model, image, cfg, device)
    if output is None:
        output = np.zeros(engine.out_shape, np.float32)
    elif tuple(output.shape) != engine.out_shape:
        raise DataError(f"output has shape {tuple(output.shape)}; this prediction needs {engine.out_shape}")
    dtype = _check_output_dtype(output.dtype, cfg.data.targets)
    _run_blocks(engine, range(len(engine.plan)), output, progress, dtype=dtype)
    return output


# ---------------------------------------------------------------------------------------- infer --
def infer(ckpt: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike,
          overrides: Optional[list[str]] = None, force: bool = False, progress: bool = True,
          resume: bool = True, dtype: Optional[str] = None) -> dict:  # fmt: skip
    """Predict a volume file with a checkpoint and write a prediction store (resumable, multi-process).

    Args:
        ckpt: Checkpoint folder, ``last``/``best`` pointer or run directory; its ``config.yaml``
            is the config.
        input: Volume address (``raw.h5:main``, ``raw.zarr``, ``stack.tif``, ...).
        output: ``out.zarr`` (default format; a path without suffix gets ``.zarr``),
            ``out.zarr/array`` or ``out.h5:dataset``. Attributes: see "Prediction stores" in
            docs/architecture.md.
        overrides: ``section.key=value`` strings applied on top of the checkpoint's config
            (``inference.*``, ``system.*``, ``training.precision``, ...; not ``model.*``).
        force: Replace an existing output.
        progress: Show a progress bar (rank 0, terminals only).
        resume: Reuse the finished blocks of an interrupted run with the same arguments (a partial
            store written with another input, checkpoint or config is refused); False discards them.
        dtype: ``uint8``, ``float16`` or ``float32``; overrides ``inference.output_dtype``.

    Returns:
        Summary: ``output, shape, dtype, channels, blocks, blocks_skipped`` (finished by an earlier
        run), ``blocks_computed`` (by this process), ``windows`` (of the whole-volume grid),
        ``windows_computed`` (network evaluations by this process: each window once, plus the
        partial sums recomputed at the edges of its share), ``processes, rank, restarted`` (a partial store
        without a record of its arguments was discarded), ``device, precision, tta`` (passes per window),
        ``seconds`` and ``voxels_per_s`` (voxels predicted by all processes per second, end to end).

    Raises:
        OutputExistsError: the output exists and ``force`` is False.
        CheckpointError / ConfigError / VolumeError / DataError: bad checkpoint (also NaN weights),
            override (also a window too large for memory), input (also values beyond the compute
            dtype) or output (one line each); a non-finite prediction, naming its block.
        VolumeError: a partial store of this output was written with another input, checkpoint or
            config (naming which; ``resume=False`` starts over), or the disk is full.
        LockedError: another process is writing this output (checked before the model is loaded).
    """
    from pytc.config import load_config, parse_overrides
    from pytc.engine.checkpoint import CONFIG, load_checkpoint_for_inference, resolve_checkpoint
    from pytc.io import check_not_input, check_writable, create_volume, disk_errors, open_volume, output_exists, parse_spec
    from pytc.runtime import setup_threads

    start = time.perf_counter()
    out_spec = store.output_spec(output)
    check_not_input(out_spec, [input])  # --force must never replace the volume being predicted
    if not force and output_exists(out_spec):
        raise OutputExistsError(f"{out_spec} exists; pass --force to overwrite")
    check_writable(parse_spec(out_spec).path)  # before the model is loaded and the input scanned
    store.check_output_free(out_spec)  # likewise: a second run of an output being written stops here
    folder = resolve_checkpoint(ckpt)
    saved, model = load_checkpoint_for_inference(folder)
    _check_weights(model, folder)
    cfg = load_config(folder / CONFIG, [*(overrides or []), *([f"inference.output_dtype={dtype}"] if dtype else [])])
    if cfg.model != saved.model:
        raise ConfigError("model.* settings come from the checkpoint (its weights fix the network); drop the "
                          "model.* overrides")
    out_dtype = _check_output_dtype(cfg.inference.output_dtype, cfg.data.targets)
    store.check_window_fits(cfg)
    if parse_spec(out_spec).format == "hdf5":
        store.h5_compression(cfg, explicit="compression" in parse_overrides(overrides).get("inference", {}))
    dist = store.Dist(cfg.system.num_gpus)
    if dist.world > 1 and parse_spec(out_spec).format != "zarr":
        raise VolumeError(f"{dist.world} processes write one store side by side only in Zarr; give a .zarr output")
    setup_threads(max(1, cfg.system.num_cpus // dist.world))  # processes share the machine's cores
    if dist.device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # fixed window size: let cuDNN pick its fastest kernels

    with open_volume(input) as vol:
        engine = _Engine(model, vol, cfg, dist.device, stats=None, name=f"input {vol.spec}")
        _check_input_values(vol, f"input {vol.spec}", cfg.data.normalize, engine.precision)  # before any output
        plan = engine.plan
        if any(b < min(w, n) for b, w, n in zip(plan.block, plan.window, plan.shape)) and dist.rank == 0:
            log.warning(f"inference.block_size {list(plan.block)} is smaller than the window {list(plan.window)}: "
                        "each block hands most of its windows' sums to its neighbours (slow, many small files); "
                        "use blocks at least the window")
        chunks = (1, *output_chunks(engine.plan.block, engine.plan.shape))
        layout = dict(shape=engine.out_shape, dtype=out_dtype, chunks=chunks, compression=cfg.inference.compression,
                      voxel_size=vol.voxel_size, force=force, resumable=True)
        fingerprint = store.fingerprint(folder, vol, cfg, layout)
        writer, restarted = None, False
        try:
            if dist.rank == 0:  # prepare the partial store: reuse it, or start it over
                writer = create_volume(out_spec, **layout)  # holds the output's lock: a second run stops here
                run = store.read_run(writer) if writer.resumed else None
                if run is not None and resume and store.changed(run, fingerprint):
                    # Its blocks would be mixed into this output: refuse, and let the user choose.
                    done_before = sum(1 for p in (writer.record_dir / store.DONE_DIR).glob("[0-9]*"))
                    store.refuse_changed(writer, store.changed(run, fingerprint), vol.spec, done_before)
                if writer.resumed and (not resume or run is None):
                    restarted = resume
                    if resume:
                        log.warning(f"{writer.partial_path} has no record of its arguments; starting it over")
                    writer.abort()
                    writer, run = create_volume(out_spec, **layout), None
                if run is None:
                    with disk_errors(out_spec):
                        writer.set_attrs(store.store_attrs(cfg, engine.kinds, vol, out_dtype))
                        (writer.record_dir / store.DONE_DIR).mkdir(exist_ok=True)
                    run = {"fingerprint": fingerprint, "stats": store.zscore_stats(cfg, vol), "blocks": len(engine.plan)}
                    store.write_run(writer, run)
            dist.barrier()
            if dist.rank != 0:  # open the store rank 0 prepared (and holds the output's lock for)
                writer = create_volume(out_spec, **layout, lock=False)
                run = store.read_run(writer)
                if not writer.resumed or run is None or run["fingerprint"] != fingerprint:
                    raise RuntimeError(f"rank {dist.rank} found no prepared store at {writer.partial_path}")
            engine.stats = tuple(run["stats"]) if run["stats"] is not None else None
            done_dir = writer.record_dir / store.DONE_DIR
            done = {int(p.name) for p in done_dir.iterdir() if p.name.isdigit()}
            n = len(engine.plan)  # each process takes a contiguous run of blocks: most carries stay in it
            mine = [i for i in range(dist.rank * n // dist.world, (dist.rank + 1) * n // dist.world) if i not in done]
            scratch = writer.record_dir / store.CARRY_DIR / f"rank{dist.rank}"
            shutil.rmtree(scratch, ignore_errors=True)  # carries of an interrupted run are not reused

            def mark(i: int) -> None:
                with disk_errors(out_spec):  # HDF5 writes its buffered chunks here
                    writer.flush()  # the block's data is durable before it is marked finished
                    store.mark_done(done_dir, i)

            _run_blocks(engine, mine, writer, progress and dist.rank == 0, on_done=mark, dtype=out_dtype,
                        scratch=scratch)
            dist.barrier()
            if dist.rank == 0:
                missing = len(engine.plan) - sum(1 for p in done_dir.iterdir() if p.name.isdigit())
                if missing:
                    raise RuntimeError(f"{missing} block(s) of {writer.partial_path} are not marked finished")
                writer.commit()
            dist.barrier()  # every process returns once the output has its final name
        finally:
            if writer is not None:
                with disk_errors(out_spec):  # closing flushes what HDF5 still buffers
                    writer.suspend()  # keeps the finished blocks after an error; nothing after a commit

    seconds = time.perf_counter() - start
    todo = [i for i in range(len(engine.plan)) if i not in done]  # by all processes
    voxels = sum(math.prod(s.stop - s.start for s in engine.plan.core(i)) for i in todo)
    return {
        "output": out_spec, "shape": list(engine.out_shape), "dtype": str(out_dtype), "channels": engine.kinds,
        "blocks": len(engine.plan), "blocks_skipped": len(done), "blocks_computed": len(mine),
        "windows": engine.plan.count_windows(), "windows_computed": engine.windows_run,
        "processes": dist.world, "rank": dist.rank, "restarted": restarted, "device": str(dist.device),
        "precision": engine.precision, "tta": len(engine.augs), "seconds": round(seconds, 3),
        "voxels_per_s": float(voxels / seconds) if seconds > 0 else 0.0,
    }
