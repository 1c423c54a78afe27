"""The block predictor: sliding-window prediction of a volume of any size, one output block at a time.

:class:`BlockPredictor` reads a block of the input (plus the windows reaching past it), normalises
it as in training (``data.normalize``, with statistics of the whole volume, passed in), runs the
network on the windows the block owns (:class:`pytc.inference.tta.WindowPredictor`: activation and
TTA per window) and blends them into the block's prediction in :meth:`BlockPredictor.predict`:
``sum_W g·p_W / sum_W g`` with MONAI's importance map ``g`` (``inference.blending``: gaussian or
constant), adding the partial sums carried from earlier blocks (:mod:`pytc.inference.grid`).
:func:`run_blocks` drives it over blocks with a reader and a writer thread; :func:`predict_volume`
is the array-to-array entry point. ``pytc infer`` (:func:`pytc.inference.infer`) and validation
during training (:func:`pytc.engine.validate`) both predict through here.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

from pytc.errors import DataError
from pytc.inference.carries import Carries
from pytc.inference.checks import COMPUTE_MAX, check_output_dtype, check_range, check_window_memory, spatial_sizes
from pytc.inference.grid import BlockPlan, intersect, relative
from pytc.inference.tta import WindowPredictor, affinity_layout, build_augs
from pytc.progress import block_bars

if TYPE_CHECKING:
    import torch

    from pytc.config import PytcConfig


class InputView:
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



class BlockPredictor:
    """What one prediction needs: the input view, the window/block plan, the normalisation
    statistics and the window predictor; :meth:`predict` blends the windows of one block.

    Args:
        model: The network (logits out); moved to ``device`` and put in eval mode.
        image: Array-like input (see :class:`InputView`).
        cfg: The run's config: ``data`` (normalisation, targets), ``model``, ``inference`` (window,
            block, overlap, blending, TTA, precision).
        device: Where the network runs.
        stats: (mean, std) of the whole input for ``data.normalize: zscore``
            (:func:`pytc.data.volumes.normalization_stats`), else None. It may be set later through
            :attr:`stats`, but before the first read.
        name: How messages name the input.
    """

    def __init__(self, model, image, cfg: "PytcConfig", device: "torch.device", stats: Optional[Sequence[float]],
                 name: str = "the input"):  # fmt: skip
        import torch
        from monai.data.utils import compute_importance_map

        from pytc.config import inference_precision, window_size
        from pytc.data.targets import channel_kinds, check_out_channels
        from pytc.runtime import autocast_dtype, resolve_precision

        check_out_channels(cfg.model.out_channels, cfg.data.targets)
        inference, dims = cfg.inference, cfg.model.spatial_dims
        self.cfg, self.device, self.kinds, self.name = cfg, device, channel_kinds(cfg.data.targets), name
        self.view = InputView(image, cfg.model.in_channels, dims, name)
        window = spatial_sizes(window_size(cfg), dims, "inference.window_size")
        block = spatial_sizes(inference.block_size, dims, "inference.block_size")
        check_window_memory(window, cfg, device)  # before the window weights are allocated
        self.plan = BlockPlan(self.view.shape, window, block, inference.overlap)
        offsets, groups = affinity_layout(cfg.data.targets)
        flips = inference.tta_flips if dims == 3 else [[a for a in f if a != 0] for f in inference.tta_flips]
        self.augs = build_augs(flips, inference.tta_rot90, self.kinds, offsets, groups)  # 2D: z flips dropped
        self.precision = resolve_precision(inference_precision(cfg), device)
        model = model.to(device).eval()
        self.window_predictor = WindowPredictor(model, self.kinds, self.augs, dims, autocast_dtype(self.precision), device)
        self.stats = stats
        self.importance = compute_importance_map(window, mode=inference.blending, sigma_scale=0.125, device=device,
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

        if self.cfg.data.normalize == "zscore" and self.stats is None:
            raise ValueError("z-score normalisation needs the whole volume's statistics: pass stats")
        raw = self.view.read(box)
        origin = [0, *(r.start for r in box)]
        raise_if_not_finite(raw, self.name, origin)  # NaN would spread over windows
        if raw.dtype.kind == "f":  # normalising casts to float32 first
            check_range(raw, self.name, origin, *COMPUTE_MAX["32"][::-1])
        x = normalize_image(raw, self.cfg.data.normalize, source_dtype=self.view.dtype, stats=self.stats)
        if self.precision != "32":  # under autocast the network computes in a narrower dtype
            dtype_name, limit = COMPUTE_MAX.get(self.precision, COMPUTE_MAX["32"])
            check_range(x, f"{self.name} (normalised)", origin, limit, dtype_name)
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
            y = self.window_predictor(win)
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

        plan, core = self.plan, self.plan.core(index)
        with torch.inference_mode():
            own, extent = None, plan.extent(index)
            if x is not None:
                own = self._accumulate(index, extent, x)
                for receiver in plan.receivers(index):
                    if receiver in carries.wanted:
                        part = own[(slice(None), *relative(intersect(extent, plan.core(receiver)), extent))]
                        carries.put(receiver, index, part.cpu().numpy() if part.is_cuda else part.clone().numpy())
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



def quantise(pred: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.rint(np.clip(pred, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pred.astype(dtype, copy=False)


def run_blocks(predictor: BlockPredictor, indices: Iterable[int], out, progress: bool,
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
    plan = predictor.plan
    carries = Carries(indices, predictor.carry_budget, scratch)

    def write(i: int, pred: np.ndarray) -> int:
        out[(slice(None), *plan.core(i))] = quantise(pred, dtype)
        if on_done is not None:
            on_done(i)
        return math.prod(s.stop - s.start for s in plan.core(i))

    try:
        with block_bars(progress, rate=True) as start, ThreadPoolExecutor(1, "pytc-read") as reader, \
                ThreadPoolExecutor(1, "pytc-write") as writer:  # fmt: skip
            advance = start("predict", len(indices))
            next_input, pending = reader.submit(predictor.read_block, indices[0]), None
            for k, i in enumerate(indices):
                x = next_input.result()
                if k + 1 < len(indices):
                    next_input = reader.submit(predictor.read_block, indices[k + 1])
                pred = predictor.predict(i, x, carries)
                del x
                if pending is not None:
                    advance(pending.result())
                pending = writer.submit(write, i, pred)
            advance(pending.result())
    finally:
        carries.close()


def predict_volume(model: "torch.nn.Module", image, cfg: "PytcConfig", output=None,
                   device: "torch.device | str | None" = None, progress: bool = True,
                   stats: Optional[Sequence[float]] = None):  # fmt: skip
    """Sliding-window prediction of a whole volume, block by block (see the module docs).

    Args:
        model: A network honouring the registry's output contract (logits, one tensor in eval mode);
            moved to ``device`` and put in eval mode.
        image: Array-like (numpy, h5py, zarr, :class:`pytc.io.Volume`): (Z, Y, X) or (C, Z, Y, X) for a
            3D model; (Y, X), a (Z, Y, X) stack of sections or (C, Z, Y, X) for a 2D one. Read one
            block (plus the windows reaching past it) at a time.
        cfg: The config the model was trained with (``data``, ``model``, ``inference``; precision
            from :func:`pytc.config.inference_precision`).
        output: Writable array-like of shape (C, Z, Y, X) (numpy, zarr, h5py, a
            :class:`pytc.io.VolumeWriter`); uint8 outputs get ``round(p * 255)``. ``None``: a new
            float32 numpy array.
        device: Where the network runs; ``None`` = ``select_device(system.num_gpus)``.
        progress: Show a transient progress bar on stderr (when it is a terminal).
        stats: z-score statistics for ``data.normalize: zscore``; None: computed here over the
            whole image (:func:`pytc.data.volumes.normalization_stats`), as ``pytc infer`` does.

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

    from pytc.data.volumes import normalization_stats
    from pytc.runtime import select_device

    device = torch.device(device) if device is not None else select_device(cfg.system.num_gpus)
    if stats is None:
        stats = normalization_stats(image, cfg.data.normalize)
    predictor = BlockPredictor(model, image, cfg, device, stats)
    if output is None:
        output = np.zeros(predictor.out_shape, np.float32)
    elif tuple(output.shape) != predictor.out_shape:
        raise DataError(f"output has shape {tuple(output.shape)}; this prediction needs {predictor.out_shape}")
    dtype = check_output_dtype(output.dtype, cfg.data.targets)
    run_blocks(predictor, range(len(predictor.plan)), output, progress, dtype=dtype)
    return output
