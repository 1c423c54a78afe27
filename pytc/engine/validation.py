"""Validation during training: :func:`validate` (metrics over the validation volumes) and its preview PNG.

Validation is sharded: volume ``i`` is predicted by process ``i % num_processes``; each process
turns its volumes into rows of sums (loss, intersection, union, ...), ``gather_for_metrics``
collects the rows and every process computes the same metrics (so all stop early together).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from accelerate import Accelerator

    from pytc.config import PytcConfig


def validate(accelerator: "Accelerator", model, criterion, volumes: list[dict], cfg: "PytcConfig",
             preview: Optional[Path] = None) -> dict:
    """Sliding-window prediction of this process's share of ``volumes``; metrics over all of them.

    Metrics pool voxels over volumes: IoU and Dice of ``sigmoid(channel 0) > 0.5`` against target
    channel 0 (the binary-like first target), and the mean per-volume loss. Masked voxels are ignored.
    ``preview`` (main process, volume 0): a PNG of the middle section, image | label | prediction.
    """
    import torch
    from monai.inferers import sliding_window_inference

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = volumes[rank::world]
    rows = torch.zeros(math.ceil(len(volumes) / world), 6, device=accelerator.device)  # valid, loss, I, U, P, T
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i, vol in enumerate(mine):
            image = torch.as_tensor(vol["image"], device=accelerator.device)
            target = torch.as_tensor(vol["target"], device=accelerator.device)
            mask = torch.as_tensor(vol["mask"], device=accelerator.device) if "mask" in vol else None
            if cfg.model.spatial_dims == 2:  # a stack of sections: slide a 2D window over each z
                inputs, target = image.transpose(0, 1), target.transpose(0, 1)
                mask = mask.transpose(0, 1) if mask is not None else None
            else:
                inputs, target, mask = image[None], target[None], mask[None] if mask is not None else None
            with accelerator.autocast():  # the model in mixed precision, the loss below in float32
                logits = sliding_window_inference(
                    inputs, roi_size=list(cfg.data.patch_size), sw_batch_size=cfg.inference.sw_batch_size,
                    predictor=model, overlap=cfg.inference.overlap, mode=cfg.inference.blending,
                ).float()
            loss, _ = criterion(logits, target, mask)
            pred = (logits[:, 0] > 0).float()  # sigmoid(x) > 0.5  <=>  x > 0
            truth = (target[:, 0] > 0.5).float()
            valid = mask[:, 0] > 0 if mask is not None else torch.ones_like(pred, dtype=torch.bool)
            pred, truth = pred * valid, truth * valid
            inter = (pred * truth).sum()
            rows[i] = torch.stack([torch.ones_like(inter), loss.float(), inter, pred.sum() + truth.sum() - inter,
                                   pred.sum(), truth.sum()])
            if preview is not None and rank == 0 and i == 0:
                _write_preview(preview, inputs, target, logits)
    model.train(was_training)
    rows = accelerator.gather_for_metrics(rows)
    rows = rows[rows[:, 0] > 0].double().sum(0)
    n, loss, inter, union, psum, tsum = rows.tolist()
    return {
        "val/loss": loss / max(n, 1),
        "val/iou": inter / union if union > 0 else 1.0,  # nothing predicted, nothing there: perfect
        "val/dice": 2 * inter / (psum + tsum) if psum + tsum > 0 else 1.0,
    }


def _write_preview(path: Path, image, target, logits) -> None:
    """image | label | prediction of the middle section, side by side, as an 8-bit PNG."""
    import numpy as np
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
