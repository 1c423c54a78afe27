"""Validation during training predicts through pytc infer's block predictor and scores as pytc evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pytc.cli import app
from pytc.config import load_config
from pytc.engine import fit

from test_engine import TINY, read_metrics, write_blobs


@pytest.mark.parametrize("overrides", [
    ["data.normalize=zscore"],  # statistics of the whole validation volume, passed in
    ["data.normalize=unit", "inference.output_dtype=float16", "inference.overlap=0.5", "inference.block_size=[16,32,32]"],
])  # fmt: skip
def test_validation_scores_are_what_pytc_infer_and_pytc_evaluate_give(tmp_path, overrides):
    train = write_blobs(tmp_path / "train.h5", seed=0)
    val = write_blobs(tmp_path / "val.h5", shape=(24, 48, 40), seed=1)  # another volume, not a multiple of the window
    cfg = load_config(None, [
        f"data.train_image={train}:raw", f"data.train_label={train}:label",
        f"data.val_image={val}:raw", f"data.val_label={val}:label",
        *TINY, "training.max_steps=30", "training.val_check_interval=30", *overrides,
    ])  # fmt: skip
    fit(cfg, run_dir=tmp_path / "run")
    logged = [row for row in read_metrics(tmp_path / "run") if "val/iou" in row][-1]
    assert logged["step"] == 30 and 0.05 < logged["val/iou"] < 1.0  # a real, imperfect prediction

    runner = CliRunner()
    pred, report = tmp_path / "pred.zarr", tmp_path / "scores.json"
    done = runner.invoke(app, ["infer", "--ckpt", str(tmp_path / "run"), "-i", f"{val}:raw", "-o", str(pred)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["evaluate", str(pred), f"{val}:label", "--json", str(report)])
    assert done.exit_code == 0, done.output
    scores = json.loads(report.read_text())["metrics"]
    assert logged["val/iou"] == pytest.approx(scores["iou"], rel=1e-12)
    assert logged["val/dice"] == pytest.approx(scores["dice"], rel=1e-12)


def test_a_masked_holdout_ignores_the_masked_voxels(tmp_path):
    # val_z_range of a masked training volume: masked voxels count neither as hits nor as misses.
    import h5py
    import torch
    from accelerate import Accelerator

    from pytc.data.dataset import load_val_volumes
    from pytc.engine import validate
    from pytc.engine.train import _release
    from pytc.losses import build_loss
    from pytc.models import build_model

    h5 = write_blobs(tmp_path / "blobs.h5")
    with h5py.File(h5, "a") as f:
        mask = np.ones(f["label"].shape, np.uint8)
        mask[:, :, 32:] = 0
        f["mask"] = mask
    common = [f"data.train_image={h5}:raw", f"data.train_label={h5}:label", "data.val_z_range=[16,32]", *TINY]
    cfg = load_config(None, [*common, f"data.train_mask={h5}:mask"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    accelerator = Accelerator(cpu=True)
    try:
        volumes = load_val_volumes(cfg)
        masked = validate(accelerator, model, build_loss(cfg.model, cfg.data.targets), volumes, cfg)
        volumes[0]["mask"][:] = 1
        unmasked = validate(accelerator, model, build_loss(cfg.model, cfg.data.targets), volumes, cfg)
    finally:
        _release(accelerator)
    # The same prediction scored by pytc.metrics with the masked voxels as an ignored label.
    from pytc.inference import predict_volume
    from pytc.metrics import evaluate

    holdout = volumes[0]
    prob = predict_volume(model, holdout["image"], cfg, stats=holdout["stats"], progress=False)
    ignored = np.where(mask[16:32] > 0, holdout["label"], 255)
    expected = evaluate(prob[0], ignored, threshold=0.5, ignore_label=255)
    assert masked["val/iou"] == pytest.approx(expected["iou"], rel=1e-9)
    assert masked["val/dice"] == pytest.approx(expected["dice"], rel=1e-9)
    assert unmasked["val/iou"] == pytest.approx(evaluate(prob[0], holdout["label"], threshold=0.5)["iou"], rel=1e-9)
    assert masked["val/iou"] != unmasked["val/iou"]
