"""Validation during training: :func:`validate` (metrics over the validation volumes) and its preview PNG.

Each validation volume is predicted by the block predictor of ``pytc infer``
(:class:`pytc.inference.BlockPredictor`: the same window grid, blending, normalisation with the
whole volume's statistics, TTA and inference precision), stored as ``inference.output_dtype``
would store it and scored as ``pytc evaluate`` scores it (:func:`pytc.metrics.confusion_counts`:
the first binary channel above 0.5 against ``label > 0``). So ``val/iou`` and ``val/dice`` are the
numbers ``pytc infer`` + ``pytc evaluate`` give on that volume.

Validation is sharded: volume ``i`` is predicted by process ``i % num_processes``; each process
turns its volumes into rows of sums (loss, true/false positives, false negatives), and
``gather_for_metrics`` collects the rows so that every process computes the same metrics (and all
stop early together).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator

    from pytc.config import PytcConfig

THRESHOLD = 0.5  # pytc evaluate's default probability threshold
_IGNORE = -1  # label value of masked voxels (labels are >= 0), left out of the counts


class _Stored:
    """A prediction in memory as a prediction store presents it to :mod:`pytc.metrics` (its
    channels and scale attributes), so that validation scores it exactly as ``pytc evaluate``."""

    def __init__(self, array: np.ndarray, kinds: list[str]):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.attrs = {"pytc_channels": list(kinds), "pytc_scale": 255 if array.dtype == np.uint8 else 1}

    def __getitem__(self, sel):
        return self.array[sel]


def validate(accelerator: "Accelerator", model, criterion, volumes: list[dict], cfg: "PytcConfig",
             preview: Optional[Path] = None) -> dict:
    """Predict this process's share of ``volumes`` as ``pytc infer`` would; metrics over all of them.

    Metrics pool voxels over volumes: IoU and Dice of the stored prediction's first binary channel
    (channel 0 if none) above 0.5 against ``label > 0``, as ``pytc evaluate`` computes them, and the
    mean per-volume loss of the blended prediction (the criterion on logits recovered from the
    blended probabilities). Masked voxels are ignored.
    ``preview`` (main process, volume 0): a PNG of the middle section, image | label | prediction.
    """
    import torch

    from pytc.choices import BINARY_KINDS
    from pytc.inference import BlockPredictor, quantise, run_blocks
    from pytc.inference.checks import check_output_dtype
    from pytc.metrics import confusion_counts

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = volumes[rank::world]
    rows = torch.zeros(math.ceil(len(volumes) / world), 5, dtype=torch.float64,  # valid, loss, tp, fp, fn: exact
                       device=accelerator.device)  # counts up to 2**53
    network = accelerator.unwrap_model(model)
    was_training = network.training
    out_dtype = check_output_dtype(cfg.inference.output_dtype, cfg.data.targets)
    try:
        for i, vol in enumerate(mine):
            predictor = BlockPredictor(network, vol["image"], cfg, accelerator.device, vol.get("stats"),
                                       name=f"validation volume {vol['name']}")  # fmt: skip
            prob = np.zeros(predictor.out_shape, np.float32)
            run_blocks(predictor, range(len(predictor.plan)), prob, progress=False)
            label = vol["label"] if "mask" not in vol else np.where(vol["mask"][0] > 0, vol["label"], _IGNORE)
            counts = confusion_counts(_Stored(quantise(prob, out_dtype), predictor.kinds), label, THRESHOLD,
                                      ignore_label=_IGNORE if "mask" in vol else None)  # fmt: skip
            logits = torch.from_numpy(prob)
            binary = [c for c, kind in enumerate(predictor.kinds) if kind in BINARY_KINDS]
            logits[binary] = torch.logit(logits[binary], eps=1e-6)  # what the loss expects: logits
            target = torch.as_tensor(vol["target"])
            mask = torch.as_tensor(vol["mask"]) if "mask" in vol else None
            if cfg.model.spatial_dims == 2:  # a stack of sections: the loss sees (Z, C, Y, X)
                logits, target = logits.transpose(0, 1), target.transpose(0, 1)
                mask = mask.transpose(0, 1) if mask is not None else None
            else:
                logits, target, mask = logits[None], target[None], mask[None] if mask is not None else None
            with torch.no_grad():
                loss, _ = criterion(logits.to(accelerator.device), target.to(accelerator.device),
                                    mask.to(accelerator.device) if mask is not None else None)  # fmt: skip
            rows[i] = torch.tensor([1.0, float(loss), counts["tp"], counts["fp"], counts["fn"]], device=rows.device)
            if preview is not None and rank == 0 and i == 0:
                image = torch.as_tensor(np.asarray(vol["image"], np.float32))
                image = image.transpose(0, 1) if cfg.model.spatial_dims == 2 else image[None]
                _write_preview(preview, image, target, logits)
    finally:
        network.train(was_training)
    rows = accelerator.gather_for_metrics(rows)
    rows = rows[rows[:, 0] > 0].sum(0)
    n, loss, tp, fp, fn = rows.tolist()
    return {
        "val/loss": loss / max(n, 1),
        "val/iou": tp / (tp + fp + fn) if tp + fp + fn > 0 else 1.0,  # nothing predicted, nothing there: perfect
        "val/dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 1.0,
    }


def _write_preview(path: Path, image, target, logits) -> None:
    """image | label | prediction of the middle section, side by side, as an 8-bit PNG."""
    from PIL import Image

    from pytc.io import write_atomic

    def section(x):  # (N, C, [Z,] Y, X) → middle (Y, X) of channel 0
        x = x[:, 0].float().cpu().numpy()
        return x[x.shape[0] // 2] if x.ndim == 3 else x[0, x.shape[1] // 2]

    img = section(image)
    lo, hi = float(img.min()), float(img.max())
    panels = [(img - lo) / (hi - lo if hi > lo else 1.0), section(target) > 0.5, 1 / (1 + np.exp(-section(logits)))]
    gap = np.ones((img.shape[0], 2))
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((np.clip(strip, 0, 1) * 255).astype(np.uint8))
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
