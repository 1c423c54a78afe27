"""monai_dynunet: the voxel-size planner, explicit levels, the output contract, config keys, training."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from pydantic import ValidationError
from test_engine import TINY, read_metrics, write_blobs  # tests/ is on sys.path (pytest's default rootdir import)
from typer.testing import CliRunner

from pytc.config import PytcConfig, load_config
from pytc.errors import ConfigError, ModelError
from pytc.models import build_model, get_architecture, list_architectures
from pytc.models.dynunet import dynunet_levels, plan_dynunet


def _model(patch: list[int], **model):
    return PytcConfig.model_validate(
        {"model": {"architecture": "monai_dynunet", **model}, "data": {"patch_size": patch}}
    ).model


# --------------------------------------------------------------------------------------------
# The planner (expected lists worked out by hand from the rule in plan_dynunet's docstring)


def test_plan_serial_section_em_strides_yx_until_z_is_no_longer_coarse():
    # 40x4x4 nm, patch 16x128x128, 5 levels. Level 0: z (40) > 2 * 4, so kernel [1,3,3], stride 1.
    # Level 1: z still coarse -> stride [1,2,2], spacing [40,8,8], size [16,64,64]; 40 > 16: kernel [1,3,3].
    # Level 2: stride [1,2,2], spacing [40,16,16], size [16,32,32]; 40 > 32: kernel [1,3,3].
    # Level 3: 40 > 2 * 16, z not halved: stride [1,2,2], spacing [40,32,32], size [16,16,16];
    #          40 <= 64: kernel [3,3,3].
    # Level 4: every axis within 2x of the finest and >= 4 voxels after halving: stride [2,2,2], kernel [3,3,3].
    kernels, strides = plan_dynunet([16, 128, 128], [40, 4, 4], 5)
    assert strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]


def test_plan_isotropic_halves_every_axis():
    kernels, strides = plan_dynunet([64, 128, 128], None, 5)
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert kernels == [[3, 3, 3]] * 5
    assert plan_dynunet([64, 128, 128], [8, 8, 8], 5) == (kernels, strides)  # equal spacing = isotropic


def test_plan_respects_the_minimum_size_and_stops_early():
    # 40x4x4 nm, patch 8x128x128, 6 levels: levels 1-3 as above ([1,2,2], size [8,16,16], spacing
    # [40,32,32]); level 4 halves all axes (z 8 -> 4 is allowed): size [4,8,8], spacing [80,64,64];
    # level 5: z would drop to 2 < 4, so only y/x: stride [1,2,2], size [4,4,4], spacing [80,128,128],
    # kernel [3,3,3] (80 <= 2 * 128 ... and 128 <= 2 * 80).
    kernels, strides = plan_dynunet([8, 128, 128], [40, 4, 4], 6)
    assert strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    # Isotropic 32^3: 32 -> 16 -> 8 -> 4; a fifth level would leave 2 voxels, so only 4 levels.
    assert plan_dynunet([32, 32, 32], None, 5)[1] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    # An odd size is never halved (the transposed convolution could not restore it).
    assert plan_dynunet([12, 64], None, 4)[1] == [[1, 1], [2, 2], [1, 2], [1, 2]]


def test_plan_refuses_a_voxel_size_that_does_not_fit():
    with pytest.raises(ModelError, match="one positive value per axis"):
        plan_dynunet([16, 64, 64], [40, 4], 5)


# --------------------------------------------------------------------------------------------
# Config keys and explicit levels


def test_explicit_strides_and_kernels_win_over_the_plan():
    kernels, strides = [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    cfg = _model([16, 32, 32], voxel_size=[40, 4, 4], kernel_size=kernels, strides=strides, filters=[4, 8, 16])
    assert dynunet_levels(cfg) == (kernels, strides, [4, 8, 16])
    net = build_model(cfg)
    assert [list(s) for s in net.strides] == strides and [list(k) for k in net.kernel_size] == kernels


def test_planned_levels_use_the_first_filters():
    cfg = _model([32, 32, 32], filters=[4, 8, 16, 32, 64])  # 4 levels fit 32^3
    assert dynunet_levels(cfg)[2] == [4, 8, 16, 32]


@pytest.mark.parametrize(
    ("settings", "patch", "match"),
    [
        ({"strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "kernel_size": [[3, 3, 3]] * 3, "filters": [4, 8, 16]},
         [10, 32, 32], r"multiple of that.*\[10, 32, 32\]; use e.g. \[8, 32, 32\]"),
        ({"strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2]], "kernel_size": [[3, 3, 3]] * 3, "filters": [4, 8, 16]},
         [32, 32, 32], r"strides\[0\] must be all 1"),
        ({"strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "kernel_size": [[3, 3, 3]] * 3, "filters": [4, 8]},
         [32, 32, 32], "one filter count per level"),
        ({"strides": [[1, 1], [2, 2], [2, 2]], "kernel_size": [[3, 3]] * 3, "filters": [4, 8, 16]},
         [32, 32, 32], "needs 3 values"),
        ({"voxel_size": [40, 4]}, [32, 32, 32], "one positive value per axis"),
        ({}, [4, 8, 8], r"only 2 levels.*larger patch"),
    ],
)
def test_levels_that_cannot_be_built_raise_model_error(settings, patch, match):
    with pytest.raises(ModelError, match=match):
        build_model(_model(patch, **settings))


def test_config_keys_are_strict():
    with pytest.raises(ConfigError, match="did you mean model.voxel_size"):
        load_config(None, ["model.architecture=monai_dynunet", "model.voxel_sise=[40,4,4]"])
    with pytest.raises(ValidationError, match="extra"):
        PytcConfig.model_validate({"model": {"architecture": "monai_dynunet", "stride": [[1, 1, 1]]}})
    with pytest.raises(ValidationError, match="give both kernel_size and strides"):
        PytcConfig.model_validate({"model": {"strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}})
    with pytest.raises(ValidationError, match="must be positive"):
        PytcConfig.model_validate({"model": {"voxel_size": [40, 0, 4]}})


# --------------------------------------------------------------------------------------------
# The output contract, the registry, the CLI


def test_eval_returns_logits_and_train_returns_the_deep_supervision_list():
    cfg = _model([16, 64, 64], voxel_size=[40, 4, 4], filters=[4, 8, 16, 32], out_channels=2, deep_supervision=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key set here is one monai_dynunet uses
        net = build_model(cfg)
    x = torch.randn(2, 1, 16, 64, 64)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 16, 64, 64)
    net.train()
    outs = net(x)
    # strides [1,1,1], [1,2,2], [1,2,2], [1,2,2]: heads on every decoder level but the lowest, full first.
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 16, 64, 64), (2, 2, 16, 32, 32), (2, 2, 16, 16, 16)]
    sum(o.mean() for o in outs).backward()
    copy.deepcopy(net)  # the stored heads were released: EMA copies and checkpoints still work
    without = build_model(_model([16, 64, 64], voxel_size=[40, 4, 4], filters=[4, 8, 16, 32], out_channels=2))
    assert isinstance(without.train()(x), torch.Tensor)
    # Weights trained with deep supervision load into the plain network: only the heads are extra.
    result = without.load_state_dict(net.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all("super_head" in k or "deep_supervision" in k for k in result.unexpected_keys)


def test_registry_lists_it_with_deep_supervision():
    import pytc.cli

    assert "monai_dynunet" in list_architectures("monai_*")
    assert get_architecture("monai_dynunet").deep_supervision
    result = CliRunner().invoke(pytc.cli.app, ["list-archs", "*dynunet"])
    assert result.exit_code == 0, result.output
    assert "monai_dynunet" in result.output and "mednext" not in result.output


def test_config_show_prints_the_levels():
    import pytc.cli

    args = ["config", "show", "model.architecture=monai_dynunet", "model.voxel_size=[40,4,4]", "data.patch_size=[16,128,128]"]
    result = CliRunner().invoke(pytc.cli.app, args)
    assert result.exit_code == 0, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("# monai_dynunet levels (planned for voxel_size [40.0, 4.0, 4.0])")
    assert "strides [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]" in last
    result = CliRunner().invoke(pytc.cli.app, ["config", "show", "model.architecture=monai_unet"])
    assert "monai_dynunet" not in result.output


# --------------------------------------------------------------------------------------------
# Training


def test_fit_trains_an_anisotropic_deep_supervised_dynunet(tmp_path):
    from pytc.engine import fit

    h5 = write_blobs(tmp_path / "blobs.h5")
    overrides = [
        f"data.train_image={h5}:raw", f"data.train_label={h5}:label", *TINY,
        "model.architecture=monai_dynunet", "model.filters=[4,8,16]", "model.voxel_size=[30,6,6]",
        "model.deep_supervision=true", "training.max_steps=6",
    ]
    out = fit(load_config(None, overrides), run_dir=tmp_path / "run")
    assert out["step"] == 6
    losses = [ln for ln in read_metrics(tmp_path / "run") if "loss" in ln]
    assert len(losses) == 6 and all(ln["loss"] == ln["loss"] for ln in losses)  # finite, not NaN
    assert {"loss/scale0", "loss/scale1"} <= losses[0].keys()  # both outputs of 3 levels are supervised
    # patch 16x32x32 at 30x6x6 nm: y/x halved twice, z kept (30 > 2 * 6, then > 2 * 12).
    assert [list(s) for s in out["model"].strides] == [[1, 1, 1], [1, 2, 2], [1, 2, 2]]


# --------------------------------------------------------------------------------------------
# rsunet: upstream's name, mapped to a DynUNet with 1x2x2 down-sampling


def test_rsunet_halves_only_y_and_x_with_flat_kernels_at_the_input():
    from pytc.models.dynunet import rsunet_levels

    cfg = PytcConfig.model_validate({"model": {"architecture": "rsunet", "filters": [8, 16, 32, 64, 128]},
                                     "data": {"patch_size": [16, 128, 128]}}).model  # fmt: skip
    kernels, strides, filters = rsunet_levels(cfg)
    assert strides == [[1, 1, 1]] + [[1, 2, 2]] * 4  # z keeps all 16 sections at every level
    assert kernels == [[1, 3, 3]] + [[3, 3, 3]] * 4 and filters == [8, 16, 32, 64, 128]
    net = build_model(cfg).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 128, 128)).shape == (1, 1, 16, 128, 128)
    assert "rsunet" in list_architectures() and get_architecture("rsunet").deep_supervision


def test_rsunet_refuses_a_patch_its_levels_cannot_halve_and_gives_heads_with_deep_supervision():
    bad = PytcConfig.model_validate({"model": {"architecture": "rsunet", "filters": [4, 8, 16, 32]},
                                     "data": {"patch_size": [8, 36, 36]}}).model  # fmt: skip
    with pytest.raises(ModelError, match=r"rsunet: its \(1, 2, 2\) levels down-sample by \[1, 8, 8\].*use e\.g\. "
                                          r"\[8, 32, 32\]"):
        build_model(bad)
    cfg = PytcConfig.model_validate({"model": {"architecture": "rsunet", "filters": [4, 8, 16, 32],
                                               "deep_supervision": True}, "data": {"patch_size": [8, 32, 32]}}).model
    outs = build_model(cfg).train()(torch.randn(1, 1, 8, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 32, 32), (8, 16, 16), (8, 8, 8)]  # z never halved
