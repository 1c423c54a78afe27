"""Model registry: every architecture builds and runs with its defaults, the output contract, errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import pytest
import torch
from typer.testing import CliRunner

from pytc.config import ModelConfig, PytcConfig
from pytc.errors import ModelError
from pytc.models import (
    architecture_table,
    build_model,
    count_parameters,
    get_architecture,
    list_architectures,
)
from pytc.models.registry import geometry

ALL = [
    "mednext", "mednext_custom", "monai_basic_unet3d", "monai_dynunet", "monai_swin_unetr", "monai_unet", "monai_unetr",
    "rsunet",
]
SMALL = 32  # a small cube every architecture but SwinUNETR accepts
# SwinUNETR needs multiples of 32 and more than one voxel at 1/32 (instance norm), so not 32³.
SMALLEST = {"monai_swin_unetr": [SMALL, SMALL, 2 * SMALL]}


def _default_model(architecture: str, patch: list[int], **model) -> ModelConfig:
    """``PytcConfig().model`` for ``architecture``, built for a small patch (the normal config path)."""
    return PytcConfig.model_validate(
        {"model": {"architecture": architecture, **model}, "data": {"patch_size": patch}}
    ).model


def _forward(net: torch.nn.Module, shape: tuple[int, ...], train: bool = False):
    net.train(train)
    with torch.no_grad():
        return net(torch.randn(*shape))


def test_registry_lists_all_eight():
    assert list_architectures() == ALL
    assert list_architectures("mednext*") == ["mednext", "mednext_custom"]
    assert list_architectures("monai_*unetr") == ["monai_swin_unetr", "monai_unetr"]
    assert list_architectures("nothing*") == []


@pytest.mark.parametrize("name", ALL)
def test_every_architecture_builds_with_defaults_and_runs(name):
    patch = SMALLEST.get(name, [SMALL] * 3)
    cfg = _default_model(name, patch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default settings must not trigger "unused option" warnings
        net = build_model(cfg)
    out = _forward(net, (2, cfg.in_channels, *patch))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, cfg.out_channels, *patch)


@pytest.mark.parametrize("name", ALL)
def test_2d_variants(name):
    cfg = _default_model(name, [SMALL, 2 * SMALL], out_channels=3)
    assert cfg.spatial_dims == 2
    out = _forward(build_model(cfg), (1, 1, SMALL, 2 * SMALL))
    assert out.shape == (1, 3, SMALL, 2 * SMALL)


def test_bare_model_config_defaults_to_3d_default_patch():
    assert geometry(ModelConfig()) == (3, [64, 128, 128])
    assert geometry(ModelConfig(spatial_dims=2)) == (2, [128, 128])
    assert geometry(ModelConfig(input_size=[16, 16])) == (2, [16, 16])


def test_mednext_deep_supervision_returns_list_full_resolution_first():
    cfg = _default_model("mednext", [SMALL] * 3, deep_supervision=True, out_channels=2)
    net = build_model(cfg)
    outs = _forward(net, (1, 1, SMALL, SMALL, SMALL), train=True)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 2, s, s, s) for s in (32, 16, 8, 4, 2)]
    # eval mode: one full-resolution tensor, even with deep supervision on
    assert _forward(net, (1, 1, SMALL, SMALL, SMALL)).shape == (1, 2, SMALL, SMALL, SMALL)
    # train without deep supervision: one tensor too
    plain = build_model(_default_model("mednext", [SMALL] * 3))
    assert isinstance(_forward(plain, (1, 1, SMALL, SMALL, SMALL), train=True), torch.Tensor)
    # the list-conversion survives a deep copy (EMA) and keeps MONAI's state-dict keys
    assert isinstance(_forward(copy.deepcopy(net), (1, 1, SMALL, SMALL, SMALL), train=True), list)
    assert "stem.weight" in net.state_dict()


def test_mednext_custom_non_default_settings():
    cfg = _default_model(
        "mednext_custom",
        [SMALL] * 3,
        mednext_base_channels=8,
        mednext_exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2],
        mednext_block_counts=[1, 1, 2, 2, 3, 2, 2, 1, 1],
        mednext_kernel_size=5,
        mednext_grn=True,
        deep_supervision=True,
    )
    net = build_model(cfg)
    assert net.stem.out_channels == 8
    assert [len(stage) for stage in net.enc_stages] == [1, 1, 2, 2]
    assert len(net.bottleneck) == 3
    assert net.bottleneck[0].conv1.kernel_size == (5, 5, 5)
    assert any("global_resp_gamma" in n for n, _ in net.named_parameters())
    outs = _forward(net, (1, 1, SMALL, SMALL, SMALL), train=True)
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]
    # one expansion ratio for all nine stages is accepted too
    assert count_parameters(_default_model("mednext_custom", [SMALL] * 3, mednext_exp_r=3)) > count_parameters(
        _default_model("mednext_custom", [SMALL] * 3)
    )


def test_mednext_presets_grow():
    counts = [count_parameters(_default_model("mednext", [SMALL] * 3, mednext_size=s)) for s in "SBML"]
    assert counts == sorted(counts)
    assert abs(counts[0] - 5.6e6) / 5.6e6 < 0.05


def test_unknown_architecture_lists_names_and_suggests():
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(architecture="mednxt"))
    message = str(err.value)
    assert "did you mean 'mednext'" in message
    assert all(name in message for name in ALL)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"architecture": "monai_basic_unet3d", "filters": [16, 32, 64, 128]}, "5 entries .* or 6"),
        ({"architecture": "monai_unetr", "input_size": [40, 48, 48]}, "divisible by 16"),
        ({"architecture": "monai_unetr", "hidden_size": 100, "input_size": [32] * 3}, "num_heads"),
        ({"architecture": "monai_swin_unetr", "input_size": [48, 64, 64]}, r"divisible by 32 .* \[64, 64, 64\]"),
        ({"architecture": "monai_swin_unetr", "input_size": [32] * 3}, r"single voxel.*\[32, 32, 64\]"),
        ({"architecture": "monai_basic_unet3d", "input_size": [20, 24, 31]}, "too small"),
        ({"architecture": "monai_swin_unetr", "feature_size": 20, "input_size": [32, 32, 64]}, "divisible by 12"),
        ({"architecture": "monai_unet", "input_size": [24, 32, 32]}, "divisible by 16"),
        ({"architecture": "mednext", "input_size": [24, 32, 32]}, "divisible by 16"),
        ({"architecture": "mednext_custom", "mednext_exp_r": [2, 2, 2], "input_size": [32] * 3}, "9 values"),
        ({"architecture": "monai_unet", "spatial_dims": 2, "input_size": [32] * 3}, "spatial_dims 2"),
        ({"architecture": "monai_unet", "deep_supervision": True}, "mednext, mednext_custom"),
    ],
)
def test_bad_settings_raise_model_error(settings, match):
    with pytest.raises(ModelError, match=match):
        build_model(ModelConfig(**settings))


def test_basic_unet_takes_upstream_six_filters():
    cfg = ModelConfig(architecture="monai_basic_unet3d", filters=[32, 64, 128, 256, 512, 1024])
    five = ModelConfig(architecture="monai_basic_unet3d", filters=[32, 64, 128, 256, 512])
    assert count_parameters(cfg) > count_parameters(five)


def test_unused_option_warns_but_builds():
    cfg = _default_model("mednext", [SMALL] * 3, dropout=0.2, filters=[8, 16])
    with pytest.warns(UserWarning) as record:
        net = build_model(cfg)
    messages = sorted(str(w.message) for w in record)
    assert messages == [
        "model.dropout=0.2 is not used by mednext and has no effect",
        "model.filters=[8, 16] is not used by mednext and has no effect",
    ]
    assert isinstance(net, torch.nn.Module)


def test_architecture_table_rows():
    rows = architecture_table("monai_unet*")
    assert [r["name"] for r in rows] == ["monai_unet", "monai_unetr"]
    assert rows[0]["family"] == get_architecture("monai_unet").family
    assert all(isinstance(r["params"], int) and r["params"] > 1e6 for r in rows)


def test_cli_list_archs_json_and_table():
    import pytc.cli

    runner = CliRunner()
    result = runner.invoke(pytc.cli.app, ["list-archs", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert sorted(rows) == ALL
    assert abs(rows["mednext"]["params"] - 5.6e6) / 5.6e6 < 0.05

    result = runner.invoke(pytc.cli.app, ["list-archs", "mednext*"])
    assert result.exit_code == 0, result.output
    assert "mednext_custom" in result.output and "monai_unet" not in result.output
    assert "5.6M" in result.output


def test_importing_models_does_not_import_torch():
    code = (
        "import sys, pytc.models, pytc.commands.list_archs\n"
        "assert len(pytc.models.list_architectures()) == 8\n"
        "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
