"""Patch sampling for training, and whole volumes for validation.

Every training sample is a pure function of ``(system.seed, index)`` (see "Reproducible
sampling" in docs/architecture.md): :class:`PatchDataset` seeds its NumPy generator and the
augmentation chain from those two numbers, and :class:`StepSampler` hands each process and each
micro-batch its own indices. Worker count, process count and resuming from a checkpoint therefore
never change which patches a step sees.

Example:
    >>> from pytc.config import load_config
    >>> cfg = load_config("configs/lucchi.yaml")                   # doctest: +SKIP
    >>> loader = build_train_loader(cfg, start_step=0)             # doctest: +SKIP
    >>> batch = next(iter(loader))                                 # doctest: +SKIP
    >>> batch["image"].shape, batch["target"].shape                # doctest: +SKIP
    (torch.Size([2, 1, 64, 128, 128]), torch.Size([2, 1, 64, 128, 128]))
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

from pytc.config import as_zyx
from pytc.data.intensity import VolumeStats, normalization_stats, normalize_image, raise_if_not_finite, volume_stats
from pytc.data.volumes import (
    GIB,
    TrainVolumes,
    as_list,
    check_label_values,
    crop_box,
    holdout_spans,
    load_train_volumes,
    open_pairs,
)
from pytc.data.targets import build_targets
from pytc.errors import DataError

__all__ = [
    "PatchDataset",
    "StepSampler",
    "build_train_loader",
    "load_val_volumes",
    "load_train_volumes",
    "normalize_image",
    "normalization_stats",
    "volume_stats",
    "VolumeStats",
]

_SEED_MOD = 2**64  # SeedSequence entropy must be non-negative; a negative system.seed wraps around


class PatchDataset(torch.utils.data.Dataset):
    """Random training patches; ``dataset[i]`` depends only on ``(cfg.system.seed, i)``.

    Any non-negative index is a sample (there is no length: the sampler is infinite). With
    probability ``data.foreground_fraction`` a patch is placed to contain a labelled voxel,
    using a coarse foreground scan made once when the volumes are loaded.

    Args:
        cfg: the full :class:`~pytc.config.PytcConfig`.
        volumes: already loaded training volumes (default: :func:`load_train_volumes`).

    Returns (per item):
        ``{"image": float32 (in_channels, *patch), "target": float32 (C, *patch)}`` plus
        ``"mask": float32 (1, *patch)`` when ``data.train_mask`` is set (the same keys for every item).
    """

    def __init__(self, cfg, volumes: Optional[TrainVolumes] = None):
        from pytc.data.augment import build_augmentation

        self.volumes = volumes if volumes is not None else load_train_volumes(cfg)
        self.seed = int(cfg.system.seed) % _SEED_MOD
        self.normalize = cfg.data.normalize
        self.foreground_fraction = cfg.data.foreground_fraction
        self.targets = list(cfg.data.targets)
        self.spatial_dims = self.volumes.spatial_dims
        if cfg.model.in_channels > 1 and cfg.data.augment.enabled:
            from pytc.errors import ConfigError

            raise ConfigError(f"augmentation handles single-channel images; with model.in_channels="
                              f"{cfg.model.in_channels} set data.augment.enabled=false")
        self.aug = build_augmentation(cfg.data.augment, self.spatial_dims, restore_ids=False)  # targets need the partition only
        regions = self.volumes.regions
        self._weights = _probabilities([r.size for r in regions])
        self._fg = [i for i, r in enumerate(regions) if len(r.fg_cells)]
        self._fg_weights = _probabilities([regions[i].size for i in self._fg])

    def position(self, index: int) -> tuple[int, tuple[int, int, int], int]:
        """Where sample ``index`` comes from: (region number, view start (z, y, x), augmentation seed)."""
        rng = np.random.default_rng([self.seed, int(index)])
        patch = self.volumes.patch
        want_fg = rng.random() < self.foreground_fraction
        if want_fg and self._fg:
            r = self._fg[rng.choice(len(self._fg), p=self._fg_weights)]
            region = self.volumes.regions[r]
            cell = region.fg_cells[rng.integers(len(region.fg_cells))]
            first, end = (region.z0, 0, 0), (region.z1, *region.shape[1:])
            start = []
            for c, size, p, lo_r, hi_r in zip(cell, region.cell, patch, first, end):
                size = min(size, hi_r - c)  # the last cell along an axis may be clipped
                lo, hi = max(lo_r, c + size - p), min(c, hi_r - p)  # patch starts that contain the cell
                start.append(int(rng.integers(lo, hi + 1)))
        else:
            r = int(rng.choice(len(self._weights), p=self._weights))
            region = self.volumes.regions[r]
            first = (region.z0, 0, 0)
            start = [int(rng.integers(lo, lo + s - p + 1)) for lo, s, p in zip(first, region.shape, patch)]
        return r, tuple(start), int(rng.integers(2**32 - 1))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r, start, aug_seed = self.position(index)
        region = self.volumes.regions[r]
        box = tuple(slice(s, s + p) for s, p in zip(start, self.volumes.patch))
        image = region.image.read(box)
        label = region.label.read(box)
        mask = region.mask.read(box) if region.mask is not None else None
        if self.spatial_dims == 2:  # (C, 1, Y, X) → (C, Y, X)
            image, label = image[:, 0], label[0]
            mask = mask[0] if mask is not None else None
        sample = {
            "image": normalize_image(image, self.normalize, stats=region.stats),
            # integral float labels were accepted at load time; ids must be integers from here on
            "label": label[None] if np.issubdtype(label.dtype, np.integer) else label[None].astype(np.int64),
        }
        if mask is not None:
            sample["mask"] = (mask[None] > 0).astype(np.float32)
        if self.aug is not None:
            self.aug.set_random_state(seed=aug_seed)
            sample = self.aug(sample)
        label = np.asarray(sample["label"])[0]  # the same partition (ids renumbered when augmented)
        out = {
            "image": _tensor(sample["image"]),
            "target": torch.from_numpy(build_targets(label, self.targets)),
        }
        if mask is not None:
            out["mask"] = _tensor(sample["mask"])
        return out

def _tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


def _probabilities(sizes: list[int]) -> np.ndarray:
    total = float(sum(sizes))
    return np.array([s / total for s in sizes]) if sizes else np.zeros(0)


class StepSampler(torch.utils.data.Sampler):
    """Infinite sampler: micro-batch ``b`` of process ``p`` of ``P`` gets indices
    ``(b * P + p) * batch_size + j`` for ``j < batch_size``, starting at ``b = start_micro_batch``.

    So the indices of a micro-batch depend only on its number and rank, never on where the loader
    started or how many workers fetch them.
    """

    def __init__(self, batch_size: int, start_micro_batch: int = 0, process_index: int = 0, num_processes: int = 1):
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
        if start_micro_batch < 0 or batch_size < 1:
            raise ValueError(f"need start_micro_batch >= 0 and batch_size >= 1, got {start_micro_batch}, {batch_size}")
        self.batch_size, self.start = batch_size, start_micro_batch
        self.process_index, self.num_processes = process_index, num_processes

    def indices(self, micro_batch: int) -> range:
        base = (micro_batch * self.num_processes + self.process_index) * self.batch_size
        return range(base, base + self.batch_size)

    def __iter__(self):
        b = self.start
        while True:
            yield from self.indices(b)
            b += 1


def _worker_init(_worker_id: int) -> None:
    # Workers are already parallel; intra-op threads in each would oversubscribe the CPU cores.
    torch.set_num_threads(1)


def build_train_loader(
    cfg,
    start_step: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    dataset: Optional[PatchDataset] = None,
) -> torch.utils.data.DataLoader:
    """An endless DataLoader of training batches for one process.

    Sharding is done here, by the sampler: pass each process its ``process_index`` and
    ``num_processes`` and do NOT pass the loader through ``accelerator.prepare`` (that would shard
    and reseed it a second time); move batches to the device yourself. Resuming at optimizer step
    ``start_step`` yields exactly the batches a run from step 0 would have seen from that step on,
    whatever ``data.num_workers``.

    Args:
        cfg: the full config (data.batch_size, num_workers, ..., training.accumulate_grad_batches).
        start_step: optimizer step to start at (micro-batch ``start_step * accumulate_grad_batches``).
        process_index: this process's rank.
        num_processes: number of processes (world size).
        dataset: a :class:`PatchDataset` to reuse (default: built from ``cfg``).

    Returns:
        A DataLoader yielding dicts of batched tensors (see :class:`PatchDataset`); it never ends.
    """
    data = cfg.data
    sampler = StepSampler(
        data.batch_size, start_step * cfg.training.accumulate_grad_batches, process_index, num_processes
    )
    workers = data.num_workers
    return torch.utils.data.DataLoader(
        dataset if dataset is not None else PatchDataset(cfg),
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0 and data.persistent_workers,
        pin_memory=data.pin_memory and torch.cuda.is_available(),
        worker_init_fn=_worker_init if workers > 0 else None,
    )


def load_val_volumes(cfg) -> list[dict]:
    """Validation volumes with their targets, for validation through the block predictor.

    From ``data.val_image``/``data.val_label`` (each with the statistics of its whole image, as
    ``pytc infer`` computes them) or from ``data.val_z_range`` of the first training volume (with
    that volume's statistics, like training). A volume whose image is larger than
    ``data.cache_budget_gb`` is cropped to a centred box within the budget (never smaller than one
    patch) with a warning.

    Returns:
        One dict per volume: ``"name"`` (str), ``"image"`` as stored (in_channels, *spatial),
        ``"stats"`` its z-score statistics (None unless ``data.normalize`` is zscore),
        ``"target"`` float32 (C, *spatial), ``"label"`` int64 (*spatial) and, for a held-out range
        of a masked training volume, ``"mask"`` float32 (1, *spatial). ``spatial`` is (Z, Y, X);
        for 2D configs it is a stack of sections (Z = 1 for a 2D image) with targets built per
        section, so slide a 2D window over each z.
    """
    data = cfg.data
    spatial_dims = cfg.model.spatial_dims
    patch = as_zyx(data.patch_size, spatial_dims, "data.patch_size")
    if data.val_image is not None:
        if data.val_z_range is not None:
            raise DataError("data.val_image and data.val_z_range are both set; validate on one or the other")
        triples = open_pairs(
            as_list(data.val_image), as_list(data.val_label), [], cfg.model.in_channels, spatial_dims, "val"
        )
        jobs = [(img, lab, None, 0, lab.spatial_shape[0]) for img, lab, _ in triples]
    elif data.val_z_range is not None:
        # The held-out slab of the first training volume, normalised with that volume's statistics.
        img, lab, mask = open_pairs(
            as_list(data.train_image)[:1], as_list(data.train_label)[:1], as_list(data.train_mask)[:1],
            cfg.model.in_channels, spatial_dims, "train",
        )[0]
        holdout_spans(data, lab, patch)  # the same range checks as training
        jobs = [(img, lab, mask, *data.val_z_range)]
    else:
        return []
    out = []
    for image, label, mask, z0, z1 in jobs:
        full = (z1 - z0, *label.spatial_shape[1:])
        max_voxels = max(1, int(data.cache_budget_gb * GIB) // (image.dtype.itemsize * image.shape[0]))
        crop = crop_box(full, max_voxels, patch)
        kept = tuple(c.stop - c.start for c in crop)
        if kept != full:
            warnings.warn(
                f"validation volume {image.spec} {full} is larger than data.cache_budget_gb; "
                f"validating on its centre {kept}",
                stacklevel=2,
            )
        box = (slice(crop[0].start + z0, crop[0].stop + z0), crop[1], crop[2])
        stats = normalization_stats(image.raw, data.normalize)  # the whole volume's, as inference computes them
        lab = label.read(box)
        check_label_values(lab, label.spec)
        if not (lab > 0).any():
            warnings.warn(f"validation label {label.spec} has no labelled voxels", stacklevel=2)
        lab = lab.astype(np.int64)
        raw = image.read(box)
        raise_if_not_finite(raw, f"image {image.spec}", [0, *(b.start for b in box)])
        item = {
            "name": image.spec if (z0, z1) == (0, label.spatial_shape[0]) else f"{image.spec}[z {z0}:{z1}]",
            "image": raw,  # normalised by the block predictor, as pytc infer does
            "stats": stats,
            "target": _volume_targets(lab, data.targets, spatial_dims),
            "label": lab,
        }
        if mask is not None:
            item["mask"] = (mask.read(box)[None] > 0).astype(np.float32)
        for src in (image, label, mask):
            if src is not None:
                src.release()
        out.append(item)
    return out


def _volume_targets(label: np.ndarray, targets, spatial_dims: int) -> np.ndarray:
    if spatial_dims == 3:
        return build_targets(label, targets)
    return np.stack([build_targets(section, targets) for section in label], axis=1)  # (C, Z, Y, X)
