"""The demo's figure: one test section as image | ground truth | prediction | instances
(:func:`write_figure`), instances coloured after the ground-truth objects they match."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import numpy as np

CAPTION = 14  # pixels above each panel for its caption
_GAP = 4


def write_figure(path: str | os.PathLike, test_h5: str | os.PathLike, label_key: str,
                 pred: str | os.PathLike, seg: str | os.PathLike, z: Optional[int] = None, scale: int = 2) -> Path:
    """Save the section ``z`` (default: the middle) as image | ground truth | prediction | instances.

    Ground truth and instances are coloured per id over the image, each predicted instance in the
    colour of the ground-truth object it mostly covers (in this section), so matching colours mean
    found objects and new colours false ones; the prediction panel shows the
    foreground probability (binary channel) or, for affinities, the mean short-range affinity
    (dark = boundary). Each panel is the section scaled by ``scale`` (nearest neighbour) under a
    12-pixel caption; panels are 4 pixels apart. Written atomically.

    Returns:
        The path of the PNG (RGB, ``4 * X * scale + 12`` wide, ``Y * scale + CAPTION`` high).
    """
    import numpy as np

    from pytc.io import channel_kinds_attr, open_volume

    with open_volume(f"{test_h5}:image") as img_vol:
        z = img_vol.shape[0] // 2 if z is None else z
        image = np.asarray(img_vol[z], dtype=np.float32) / 255.0
    with open_volume(f"{test_h5}:{label_key}") as gt_vol:
        gt = np.asarray(gt_vol[z])
    with open_volume(pred) as pred_vol:
        kinds = channel_kinds_attr(pred_vol.attrs) or ["binary"]
        prob_scale = float(pred_vol.attrs.get("pytc_scale", 1.0))
        if "binary" in kinds:
            prob = np.asarray(pred_vol[kinds.index("binary"), z], np.float32)
        else:  # affinities: the mean of the first three channels (z, y, x neighbours)
            prob = np.asarray(pred_vol[:3, z], np.float32).mean(0)
        prob /= prob_scale
    with open_volume(seg) as seg_vol:
        instances = np.asarray(seg_vol[z])
    grey = np.repeat(image[..., None], 3, axis=-1)
    shown = _match_ids(instances, gt)
    panels = [grey, _overlay(image, gt), np.repeat(np.clip(prob, 0, 1)[..., None], 3, -1), _overlay(image, shown)]
    captions = ["image", "ground truth", "prediction", "instances"]
    return _save_panels(Path(path), panels, captions, scale)


def _match_ids(pred: "np.ndarray", gt: "np.ndarray") -> "np.ndarray":
    """``pred`` relabelled with the ground-truth id each instance mostly overlaps (first come, first
    served; an instance over background or over an id already taken gets a fresh id)."""
    import numpy as np

    out = np.zeros(pred.shape, np.int64)
    fresh = int(gt.max()) + 1
    taken: set[int] = set()
    ids, sizes = np.unique(pred[pred > 0], return_counts=True)
    for i in ids[np.argsort(-sizes, kind="stable")]:  # big instances choose first
        where = pred == i
        under, counts = np.unique(gt[where], return_counts=True)
        best = int(under[np.argmax(counts)])
        if best == 0 or best in taken:
            best, fresh = fresh, fresh + 1
        taken.add(best)
        out[where] = best
    return out


def _colours(labels: "np.ndarray") -> "np.ndarray":
    """A stable, distinct RGB colour per id (golden-ratio hues), black for 0."""
    import numpy as np

    ids = labels.astype(np.uint64)
    hue = (ids * np.uint64(2654435761) % np.uint64(1000)).astype(np.float32) / 1000.0
    rgb = np.stack([_hue_channel(hue, shift) for shift in (0.0, 2 / 3, 1 / 3)], axis=-1)
    rgb[labels == 0] = 0
    return rgb


def _hue_channel(hue: "np.ndarray", shift: float) -> "np.ndarray":
    import numpy as np

    # Fully saturated HSV → RGB, brightened so colours stay visible over a grey image.
    return np.clip(np.abs(((hue + shift) % 1.0) * 6 - 3) - 1, 0, 1) * 0.75 + 0.25


def _overlay(image: "np.ndarray", labels: "np.ndarray", alpha: float = 0.55) -> "np.ndarray":
    import numpy as np

    grey = np.repeat(image[..., None], 3, axis=-1)
    mask = (labels > 0)[..., None]
    return np.where(mask, (1 - alpha) * grey + alpha * _colours(labels), grey)


def _save_panels(path: Path, panels: list, captions: list, scale: int) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = panels[0].shape[:2]
    sheet = Image.new("RGB", (len(panels) * w * scale + (len(panels) - 1) * _GAP, h * scale + CAPTION), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        tile = Image.fromarray((np.clip(panel, 0, 1) * 255).astype(np.uint8), "RGB")
        x = i * (w * scale + _GAP)
        sheet.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (x, CAPTION))
        draw.text((x + 2, 1), caption, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    from pytc.io import write_atomic

    return write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
