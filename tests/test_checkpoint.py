"""Checkpoints: contents, atomic folders, top-k/pointers, safe loading, incompatible weights."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pytc.config import dump_config, load_config
from pytc.engine import checkpoint as ckpt
from pytc.engine import fit
from pytc.errors import CheckpointError
from pytc.models import build_model
from test_engine import tiny_cfg, write_blobs  # tests/ is on sys.path (pytest's default rootdir import)

TINY = ["data.patch_size=[16,32,32]", "model.architecture=monai_unet", "model.filters=[4,8,16]"]


def tiny_model_cfg(*overrides: str):
    return load_config(None, [*TINY, *overrides])


def save_fake(ckpt_dir: Path, step: int, metrics: dict, cfg=None, model=None) -> Path:
    """A real checkpoint folder of an untrained tiny model, with the given metrics."""
    cfg = cfg or tiny_model_cfg()
    model = model or build_model(cfg.model)
    return ckpt.save_checkpoint(ckpt_dir, step, weights=model.state_dict(), config_yaml=dump_config(cfg),
                                training_state={"step": step}, meta={"metrics": metrics})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------------------


def test_a_trained_checkpoint_is_self_contained(tmp_path):
    h5 = write_blobs(tmp_path / "blobs.h5")
    cfg = tiny_cfg(h5, "training.max_steps=2", "training.val_check_interval=1", "training.ema_decay=0.5",
                   "checkpoint.every_n_steps=1", "checkpoint.save_top_k=1")
    out = fit(cfg, run_dir=tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    folder = ckpt.resolve_checkpoint(ckpts / "last")
    assert folder.name == "step-000002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "meta.json", "model.safetensors", "model_raw.safetensors", "training_state.pt"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 2 and meta["ema"] is True and set(meta["metrics"]) >= {"loss", "val/loss", "val/iou"}
    state = torch.load(folder / "training_state.pt", weights_only=True)  # plain data only
    assert {"step", "optimizer", "scheduler", "rng", "early_stopping", "ema_n_averaged"} <= set(state)
    # The raw weights are the optimizer's; model.safetensors holds the EMA (what inference uses).
    raw = ckpt.load_weights(folder / "model_raw.safetensors")
    assert all(torch.equal(raw[k], v) for k, v in out["model"].state_dict().items())
    ema = ckpt.load_weights(folder / "model.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)

    best = ckpt.resolve_checkpoint(ckpts / "best")
    for where in (ckpts / "best", ckpts / "last", tmp_path / "run", best):
        loaded_cfg, model = ckpt.load_checkpoint_for_inference(where)
        assert loaded_cfg == cfg and not model.training
    _, model = ckpt.load_checkpoint_for_inference(ckpts / "last")
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)


def test_top_k_and_pointers(tmp_path):
    scores = {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.6}
    for step, score in scores.items():
        save_fake(tmp_path, step, {"val/loss": score})
        ckpt.update_pointers_and_prune(tmp_path, "val/loss", "min", save_top_k=2, save_last=True)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000003", "step-000004"]
    assert (tmp_path / "best").read_text().strip() == "step-000002"
    assert (tmp_path / "last").read_text().strip() == "step-000004"
    assert ckpt.would_enter_top_k(tmp_path, "val/loss", "min", 2, 0.35)
    assert not ckpt.would_enter_top_k(tmp_path, "val/loss", "min", 2, 0.45)
    # mode=max ranks the other way; unscored checkpoints never become best
    save_fake(tmp_path, 5, {})
    ckpt.update_pointers_and_prune(tmp_path, "val/loss", "max", save_top_k=1, save_last=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000004"]
    assert (tmp_path / "best").read_text().strip() == "step-000004" and not (tmp_path / "last").exists()


def test_temporary_and_incomplete_folders_are_never_resumed(tmp_path):
    run = tmp_path
    ckpts = run / "checkpoints"
    good = save_fake(ckpts, 2, {})
    # A finished-looking folder under a temporary name (killed just before the rename) …
    stale = ckpts / f".tmp-step-000005-{dead_pid()}"
    live = ckpts / f".tmp-step-000006-{os.getppid()}"  # … and one a live process is still writing
    for temp in (stale, live):
        temp.mkdir()
        for f in good.iterdir():
            (temp / f.name).write_bytes(f.read_bytes())
    # … and a final-named folder without meta.json (written by hand or by a foreign tool).
    incomplete = ckpts / "step-000007"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())

    assert ckpt.find_resume_checkpoint(run) == good
    assert not ckpt.is_complete(incomplete) and not ckpt.is_complete(stale)
    with pytest.raises(CheckpointError, match="incomplete .no meta.json"):
        ckpt.resolve_checkpoint(incomplete)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.resolve_checkpoint(ckpts / "step-000099")
    assert ckpt.clean_stale(ckpts) == [stale]
    assert live.exists() and not stale.exists()


def test_a_dangling_pointer_is_an_error(tmp_path):
    save_fake(tmp_path, 1, {})
    ckpt.write_pointer(tmp_path, "best", tmp_path / "step-000003")
    with pytest.raises(CheckpointError, match="points to step-000003, which is missing"):
        ckpt.resolve_checkpoint(tmp_path / "best")


def test_a_folder_that_is_no_checkpoint_is_not_called_incomplete(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint or run folder \(no checkpoints/, config.yaml or "
                                              r"model.safetensors\); give RUN, RUN/checkpoints/best"):
        ckpt.resolve_checkpoint(tmp_path)


def test_a_missing_pointer_names_what_the_run_has(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="run directory .* has no complete checkpoint yet"):
        ckpt.resolve_checkpoint(run)
    with pytest.raises(CheckpointError, match="has no complete checkpoint yet; train longer"):
        ckpt.resolve_checkpoint(ckpts / "best")
    save_fake(ckpts, 3, {})
    ckpt.write_pointer(ckpts, "last", ckpts / "step-000003")
    (run / "config.yaml").write_text(dump_config(tiny_model_cfg()))  # no val_image, no val_z_range
    with pytest.raises(CheckpointError) as err:
        ckpt.resolve_checkpoint(ckpts / "best")
    assert str(err.value) == f"no best checkpoint in {ckpts}: the run had no validation; use {ckpts / 'last'} or {run}"
    (run / "config.yaml").write_text(dump_config(tiny_model_cfg("data.val_z_range=[0,8]")))
    with pytest.raises(CheckpointError, match="no validation has scored a checkpoint yet; use .*last"):
        ckpt.resolve_checkpoint(ckpts / "best")
    (ckpts / "last").unlink()  # checkpoint.save_last off and nothing ranked: the newest folder is named
    with pytest.raises(CheckpointError, match=r"no last checkpoint .*save_last is off\); use .*step-000003"):
        ckpt.resolve_checkpoint(ckpts / "last")
    with pytest.raises(CheckpointError, match="has no checkpoints/best or checkpoints/last; use .*step-000003"):
        ckpt.resolve_checkpoint(run)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this would run code: create the marker file
        return (Path.touch, (self.marker,))


def test_a_training_state_with_code_is_refused_not_executed(tmp_path):
    folder = save_fake(tmp_path / "run" / "checkpoints", 3, {})
    marker = tmp_path / "pwned"
    torch.save({"format": ckpt.STATE_FORMAT, "step": 3, "payload": _Exploit(marker)}, folder / ckpt.STATE)
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "control")))  # the payload does run when unpickled …
    assert (tmp_path / "control").exists()
    with pytest.raises(CheckpointError, match="refusing to load .*it was not executed") as err:
        ckpt.load_training_state(folder)  # … but not here
    assert "\n" not in str(err.value) and not marker.exists()
    cfg = load_config(None, [*TINY, "data.train_image=x.h5:raw", "data.train_label=x.h5:label"])
    with pytest.raises(CheckpointError, match="refusing to load"):
        fit(cfg, run_dir=tmp_path / "run", resume="auto")
    assert not marker.exists()


def test_weights_of_another_architecture_are_a_one_line_error(tmp_path):
    folder = save_fake(tmp_path, 1, {})
    other = tiny_model_cfg("model.filters=[8,16,32]")
    (folder / "config.yaml").write_text(dump_config(other))  # config and weights disagree now
    with pytest.raises(CheckpointError, match=r"does not fit this model \(\d+ shape mismatch") as err:
        ckpt.load_checkpoint_for_inference(folder)
    assert "\n" not in str(err.value)
    (folder / "config.yaml").write_text(dump_config(tiny_model_cfg("model.architecture=monai_basic_unet3d",
                                                                   "model.filters=[4,4,8,8,16]")))
    with pytest.raises(CheckpointError, match="missing weight"):
        ckpt.load_checkpoint_for_inference(folder)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(ckpt.capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_config_yaml_in_a_checkpoint_is_the_resolved_config(tmp_path):
    cfg = tiny_model_cfg("model.out_channels=2", "data.targets=[{name: binary}, {name: contour}]")
    folder = save_fake(tmp_path, 1, {}, cfg=cfg)
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["out_channels"] == 2
    loaded, model = ckpt.load_checkpoint_for_inference(folder)
    assert loaded == cfg and model(torch.zeros(1, 1, 16, 32, 32)).shape == (1, 2, 16, 32, 32)


def test_resuming_with_another_model_is_refused(tmp_path):
    save_fake(tmp_path / "run" / "checkpoints", 2, {})
    cfg = load_config(None, ["data.patch_size=[16,32,32]", "model.architecture=monai_unet", "model.filters=[8,16,32]",
                             "data.train_image=x.h5:raw", "data.train_label=x.h5:label"])
    with pytest.raises(CheckpointError, match="trained with other model settings"):
        fit(cfg, run_dir=tmp_path / "run", resume="auto")
    with pytest.raises(CheckpointError, match="not found"):
        fit(cfg, run_dir=tmp_path / "other", resume=tmp_path / "run" / "checkpoints" / "step-000009")
