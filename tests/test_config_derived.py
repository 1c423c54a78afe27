"""Values derived from a config in one place: as_zyx, window_size, inference_precision."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pytc.config import as_zyx, config_from_dict, dump_config, inference_precision, load_config, window_size
from pytc.errors import ConfigError


def test_as_zyx_keeps_3d_and_lifts_2d():
    assert as_zyx((16, 64, 64), 3) == (16, 64, 64)
    assert as_zyx([64, 32], 2) == (1, 64, 32)
    assert all(type(s) is int for s in as_zyx([64.0, 32.0], 2))


@pytest.mark.parametrize(("sizes", "dims", "want"), [([64, 64], 3, "(Z, Y, X)"), ([8, 64, 64], 2, "(Y, X)")])
def test_as_zyx_refuses_sizes_that_do_not_fit_the_model(sizes, dims, want):
    message = f"inference.window_size {sizes} does not fit the {dims}D model; give {dims} sizes as {want}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        as_zyx(sizes, dims, key="inference.window_size")


def test_window_size_of_a_2d_config_is_the_patch_and_lifts_to_one_section():
    cfg = config_from_dict({"data": {"patch_size": [64, 64]}})
    assert window_size(cfg) == (64, 64)
    assert as_zyx(window_size(cfg), cfg.model.spatial_dims) == (1, 64, 64)


def test_window_size_prefers_inference_window_size():
    cfg = load_config(None, ["data.patch_size=[16,64,64]"])
    assert window_size(cfg) == (16, 64, 64)
    cfg = load_config(None, ["data.patch_size=[16,64,64]", "inference.window_size=[32,128,128]"])
    assert window_size(cfg) == (32, 128, 128)


def test_inference_precision_follows_training_unless_set():
    assert inference_precision(load_config(None)) == "32"  # both defaults
    assert inference_precision(load_config(None, ["training.precision=bf16-mixed"])) == "bf16-mixed"
    cfg = load_config(None, ["training.precision=bf16-mixed", "inference.precision=16-mixed"])
    assert inference_precision(cfg) == "16-mixed"
    assert cfg.training.precision == "bf16-mixed"


def test_inference_precision_as_yaml_int(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  precision: bf16-mixed\ninference:\n  precision: 16\n")
    with pytest.raises(ConfigError, match=r"inference\.precision: Input should be '32', '16-mixed' or 'bf16-mixed'"):
        load_config(path)  # 16 is not a precision: 16-mixed is
    path.write_text("training:\n  precision: bf16-mixed\ninference:\n  precision: 32\n")
    cfg = load_config(path)
    assert cfg.inference.precision == "32"
    assert inference_precision(cfg) == "32"


def test_inference_precision_typo_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"inference\.precision: .* did you mean 'bf16-mixed'\?"):
        load_config(None, ["inference.precision=bf16mixed"])


def test_unset_inference_precision_stays_null_in_the_dumped_config(tmp_path: Path):
    cfg = load_config(None, ["training.precision=16-mixed"])
    assert cfg.inference.precision is None
    dumped = dump_config(cfg)
    assert yaml.safe_load(dumped)["inference"]["precision"] is None
    path = tmp_path / "run.yaml"
    path.write_text(dumped)
    # A training precision edited in the dumped config still reaches inference.
    edited = load_config(path, ["training.precision=bf16-mixed"])
    assert inference_precision(edited) == "bf16-mixed"
