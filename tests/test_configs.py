"""Every shipped config loads, says what data it expects, and its model, targets and decoder fit together.

Each config's model is built at a reduced input size (the real patches are GPU-sized) and run
forward once; the sigmoid of that output, taken as a prediction with the config's channel kinds and
offsets, must decode with the config's decoder — so a config whose out_channels, targets and
decoding method disagree fails here, not after hours of training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pytc.config import load_config
from pytc.data.targets import channel_kinds, check_out_channels, target_channels

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))

# Smallest cheap input per architecture: BasicUNet pools 4 times and needs > 1 voxel at 1/16;
# MedNeXt needs multiples of 16; a 4-level MONAI UNet multiples of 8.
SMALL_INPUT = {
    "monai_basic_unet3d": [16, 16, 32],
    "monai_unet": [16, 16, 16],
    "mednext": [16, 16, 32],
    "mednext_custom": [16, 16, 32],
    "monai_dynunet": [16, 32, 32],  # at 40×4×4 nm: y/x halved three times, z once
}


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return lines


def test_the_expected_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"lucchi.yaml", "mednext_lucchi.yaml", "mednext_custom.yaml", "mitoem_bc.yaml", "snemi_affinity.yaml",
            "demo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_has_a_header_comment(path):
    header = _header(path)
    assert header and len(" ".join(header)) > 40, f"{path.name} needs a header comment saying what it is for"
    own_keys = path.read_text()
    if "train_image:" in own_keys:  # a config that names data must say what data and where it comes from
        text = " ".join(header)
        assert "Data:" in text, f"{path.name}: the header should have a 'Data:' line (shape, format, voxel size)"
        assert "http" in text or "synth" in text, f"{path.name}: the header should say where the data comes from"
        assert "nm" in text or "voxel" in text, f"{path.name}: the header should give the voxel size"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_runs_and_decodes(path):
    from pytc.decode import decode
    from pytc.models import build_model

    cfg = load_config(path)
    arch = cfg.model.architecture
    assert arch in SMALL_INPUT, f"add a small input size for {arch} to SMALL_INPUT"
    size = SMALL_INPUT[arch]
    check_out_channels(cfg.model.out_channels, cfg.data.targets, cfg.model.spatial_dims)
    small = load_config(path, [f"data.patch_size={size}"])
    assert small.model.input_size == size and small.model.architecture == arch
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused options: see test_config_sets_only_options_its_network_uses
        net = build_model(small.model)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(1, cfg.model.in_channels, *size))
    assert tuple(out.shape) == (1, target_channels(cfg.data.targets), *size)

    # The decoder the config names accepts what this model predicts.
    kinds = channel_kinds(cfg.data.targets)
    offsets = [o for t in cfg.data.targets if t.name == "affinity" for o in t.offsets] or None
    params = cfg.decoding.model_dump(exclude={"method"})
    labels = decode(torch.sigmoid(out[0]).numpy(), cfg.decoding.method, channels=kinds, offsets=offsets, **params)
    for seg in labels.values() if isinstance(labels, dict) else [labels]:
        assert seg.shape == tuple(size) and seg.dtype in (np.uint32, np.uint64)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_sets_only_options_its_network_uses(path):
    from pytc.models import build_model

    cfg = load_config(path, [f"data.patch_size={SMALL_INPUT[load_config(path).model.architecture]}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "model.X is not used by ARCH and has no effect"
        with torch.device("meta"):
            build_model(cfg.model)


@pytest.mark.parametrize("path", [p for p in CONFIGS if "train_image:" in p.read_text()], ids=lambda p: p.name)
def test_config_trains_on_your_own_volume_with_only_the_train_paths_overridden(path, tmp_path):
    """The recipe `pytc train CONFIG data.train_image=... data.train_label=...` needs no other data:
    validation comes from a held-out z-range of that volume (or there is none), never from dataset
    paths the user does not have. Patches are shrunk; the config's validation setting is kept."""
    import h5py

    from pytc.data.dataset import load_val_volumes
    from pytc.data.volumes import load_train_volumes
    from pytc.synth import make_em_volume

    vol = make_em_volume((64, 32, 32), seed=0)
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["raw"], f["ids"] = vol.image, vol.mito_instances
    mine = tmp_path / "mine.h5"
    cfg = load_config(path, [f"data.train_image={mine}:raw", f"data.train_label={mine}:ids", "data.patch_size=[16,32,32]"])
    assert cfg.data.val_image is None, f"{path.name}: validation volumes the user lacks; use data.val_z_range"
    train = load_train_volumes(cfg)
    held_out = cfg.data.val_z_range or [0, 0]
    for region in train.regions:  # training never samples the validation sections
        assert region.z1 <= held_out[0] or region.z0 >= held_out[1]
    val = load_val_volumes(cfg)
    assert len(val) == (cfg.data.val_z_range is not None)
    if val:
        assert val[0]["label"].shape == (held_out[1] - held_out[0], 32, 32)
