"""Config loading: strict keys, types, _base_ chains, env and CLI overrides, dump round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pytc.config import (
    PytcConfig,
    config_from_dict,
    config_schema,
    default_run_dir,
    dump_config,
    iter_fields,
    load_config,
    load_config_with_sources,
    parse_overrides,
)
from pytc.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# The upstream guide's lucchi.yaml, verbatim: its vocabulary must load unchanged.
UPSTREAM_LUCCHI = """
system:
  num_gpus: 1
  num_cpus: 4
  seed: 42

model:
  architecture: monai_basic_unet3d
  in_channels: 1
  out_channels: 2
  filters: [32, 64, 128, 256, 512, 1024]
  dropout: 0.1
  loss_functions:
    - DiceLoss
    - BCEWithLogitsLoss
  loss_weights: [1.0, 1.0]

data:
  train_image: "datasets/lucchi/train_image.h5"
  train_label: "datasets/lucchi/train_label.h5"
  patch_size: [128, 128, 128]
  batch_size: 2
  num_workers: 4

optimizer:
  name: AdamW
  lr: 1e-4
  weight_decay: 1e-4

scheduler:
  name: CosineAnnealingLR
  warmup_epochs: 5
  min_lr: 1e-6

training:
  max_epochs: 100
  precision: "16-mixed"
  gradient_clip_val: 1.0
  accumulate_grad_batches: 4

checkpoint:
  monitor: "val/loss"
  mode: "min"
  save_top_k: 3
  save_last: true

early_stopping:
  monitor: "val/loss"
  patience: 10
  mode: "min"
"""


def test_upstream_lucchi_example_loads_as_written(tmp_path):
    cfg = load_config(_write(tmp_path / "lucchi.yaml", UPSTREAM_LUCCHI))
    assert cfg.model.out_channels == 2
    assert cfg.model.architecture == "monai_basic_unet3d"
    assert cfg.model.filters == [32, 64, 128, 256, 512, 1024]
    assert cfg.model.loss_functions == ["DiceLoss", "BCEWithLogitsLoss"]
    assert cfg.optimizer.lr == pytest.approx(1e-4)  # YAML 1.1 reads `1e-4` as a string
    assert cfg.training.precision == "16-mixed"
    assert cfg.training.gradient_clip_val == 1.0
    assert cfg.scheduler.warmup_epochs == 5
    assert cfg.checkpoint.save_top_k == 3 and cfg.early_stopping.patience == 10
    # Network geometry resolved from the patch size.
    assert cfg.model.spatial_dims == 3 and cfg.model.input_size == [128, 128, 128]


def test_mednext_configs_inherit_through_base():
    s = load_config(CONFIGS / "mednext_lucchi.yaml")
    assert (s.model.architecture, s.model.mednext_size, s.model.mednext_kernel_size) == ("mednext", "S", 3)
    assert s.model.deep_supervision is True and s.scheduler.name == "constant"
    assert s.optimizer.lr == pytest.approx(1e-3)
    assert s.data.patch_size == [128, 128, 128]  # from lucchi.yaml
    c = load_config(CONFIGS / "mednext_custom.yaml")
    assert c.model.architecture == "mednext_custom"
    assert c.model.mednext_exp_r == [2, 3, 4, 4, 4, 4, 4, 3, 2]
    assert c.model.mednext_block_counts == [3, 4, 8, 8, 8, 8, 8, 4, 3]
    assert c.model.mednext_grn is True and c.model.mednext_kernel_size == 7
    assert c.scheduler.name == "constant"  # two levels up the chain


def test_unknown_key_names_full_path_and_suggests(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  bach_size: 4\n")
    with pytest.raises(ConfigError, match=r"data\.bach_size: unknown key — did you mean data\.batch_size\?"):
        load_config(cfg)


def test_unknown_section_suggests(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "optimiser:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optimiser: unknown key — did you mean optimizer\?"):
        load_config(cfg)


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "early_stopping:\n  zzz: 1\n")
    with pytest.raises(ConfigError, match=r"early_stopping\.zzz: unknown key \(valid keys: enabled, monitor"):
        load_config(cfg)


def test_wrong_type_names_key_expected_and_given(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    msg = str(err.value)
    assert "data.batch_size" in msg and "valid integer" in msg and "'many'" in msg
    assert "\n" not in msg


def test_union_type_error_reported_once_with_types():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.train_image=[1, 2]"])
    assert str(err.value) == "override 'data.train_image=[1, 2]': data.train_image: expected str | list[str] | null, got [1, 2]"


def test_choice_error_lists_choices():
    with pytest.raises(ConfigError, match=r"training\.precision: Input should be '32', '16-mixed' or 'bf16-mixed'"):
        load_config(None, ["training.precision=fp8"])


def test_default_run_dir_is_runs_slash_config_name_unless_output_dir_is_set(tmp_path):
    (tmp_path / "mito.yaml").write_text("data:\n  batch_size: 2\n")
    cfg = load_config(tmp_path / "mito.yaml")
    assert default_run_dir(cfg, tmp_path / "mito.yaml") == Path("runs/mito")
    assert default_run_dir(load_config(None)) == Path("runs/pytc")  # built in code: no file to name it after
    chosen = load_config(tmp_path / "mito.yaml", ["system.output_dir=/scratch/here"])
    assert default_run_dir(chosen, tmp_path / "mito.yaml") == Path("/scratch/here")


def test_a_near_miss_of_a_choice_gets_a_did_you_mean():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.precision=bf16mixed"])
    assert str(err.value).endswith("got 'bf16mixed' — did you mean 'bf16-mixed'?")


def _choice_literals_outside_choices() -> list[str]:
    """``file:line`` of every tuple/list/set literal that spells out one of pytc.choices' sets again."""
    import ast
    from typing import get_args

    from pytc.choices import BINARY_KINDS, PRECISIONS, VAL_METRICS, TargetKind

    sets = [set(PRECISIONS), set(BINARY_KINDS), set(get_args(TargetKind)), set(VAL_METRICS)]
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted([*(root / "pytc").rglob("*.py"), *(root / "commands").rglob("*.py")]):
        if path.name == "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            items = getattr(node, "elts", None) if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
            if items and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items):
                if {e.value for e in items} in sets:
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_each_set_of_choices_is_written_once_in_pytc_choices():
    assert _choice_literals_outside_choices() == []


def test_tests_import_hard_dependencies_plainly():
    """A broken install of a [project] dependency fails the tests; only optional packages may skip them."""
    import ast
    import importlib.metadata
    import tomllib

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    hard = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    owners = importlib.metadata.packages_distributions()
    skipped = []
    for path in sorted((root / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                module = node.args[0].value.split(".")[0]
                dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
                if dists & hard:
                    skipped.append(f"{path.name}:{node.lineno} {module}")
    assert skipped == []


def test_precision_given_as_int_is_accepted():
    assert load_config(None, ["training.precision=32"]).training.precision == "32"


def test_loss_weights_must_match_losses():
    with pytest.raises(ConfigError, match="loss_weights has 1 entries but loss_functions has 2"):
        load_config(None, ["model.loss_weights=[1.0]"])


def test_cli_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(
        CONFIGS / "lucchi.yaml",
        ["data.batch_size=8", "model.filters=[16,32,64]", "training.precision=bf16-mixed", "data.train_image=x.h5:raw"],
    )
    assert cfg.data.batch_size == 8
    assert cfg.model.filters == [16, 32, 64]
    assert cfg.training.precision == "bf16-mixed"
    assert cfg.data.train_image == "x.h5:raw"


def test_override_of_missing_key_suggests():
    with pytest.raises(ConfigError, match=r"training\.max_epoch: unknown key — did you mean training\.max_epochs\?"):
        load_config(CONFIGS / "lucchi.yaml", ["training.max_epoch=3"])


@pytest.mark.parametrize("bad", ["data.batch_size", "=3", "data..x=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides([bad])


def test_base_chain_relative_paths_and_precedence(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "root.yaml", "data:\n  batch_size: 1\n  num_workers: 7\noptimizer:\n  lr: 0.5\n")
    _write(tmp_path / "sub" / "mid.yaml", "_base_: ../root.yaml\ndata:\n  batch_size: 2\n")
    leaf = _write(tmp_path / "sub" / "leaf.yaml", "_base_: mid.yaml\ndata:\n  batch_size: 3\n")
    cfg = load_config(leaf)
    assert cfg.data.batch_size == 3  # the file beats its bases
    assert cfg.data.num_workers == 7 and cfg.optimizer.lr == 0.5  # inherited through two levels


def test_base_list_later_entries_win(tmp_path):
    _write(tmp_path / "a.yaml", "data:\n  batch_size: 1\n  num_workers: 1\n")
    _write(tmp_path / "b.yaml", "data:\n  batch_size: 2\n")
    cfg = load_config(_write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n"))
    assert (cfg.data.batch_size, cfg.data.num_workers) == (2, 1)


def test_base_cycle_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(_write(tmp_path / "a.yaml", "_base_: nope.yaml\n"))


def test_env_overrides_sit_between_file_and_cli(tmp_path, monkeypatch):
    cfg_file = _write(tmp_path / "c.yaml", "data:\n  batch_size: 2\n  num_workers: 3\n")
    monkeypatch.setenv("PYTC_DATA__BATCH_SIZE", "4")
    monkeypatch.setenv("PYTC_MODEL__FILTERS", "[8, 16]")
    cfg = load_config(cfg_file)
    assert cfg.data.batch_size == 4 and cfg.data.num_workers == 3 and cfg.model.filters == [8, 16]
    assert load_config(cfg_file, ["data.batch_size=9"]).data.batch_size == 9


def test_load_config_with_sources_names_what_set_each_key(tmp_path, monkeypatch):
    cfg_file = _write(tmp_path / "c.yaml", "data:\n  batch_size: 2\n")
    monkeypatch.setenv("PYTC_DATA__BATCH_SIZE", "4")
    monkeypatch.setenv("PYTC_MODEL__FILTERS", "[8, 16]")
    cfg, sources = load_config_with_sources(cfg_file, ["data.batch_size=9"])
    assert cfg == load_config(cfg_file, ["data.batch_size=9"]) and cfg.data.batch_size == 9
    assert sources == {"data.batch_size": "override 'data.batch_size=9'",  # the override wins over the variable
                       "model.filters": "environment variable PYTC_MODEL__FILTERS"}


def test_env_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("PYTC_DATA__BACH_SIZE", "4")
    with pytest.raises(ConfigError, match=r"data\.bach_size: unknown key — did you mean data\.batch_size\?"):
        load_config(None)


def test_errors_name_where_the_bad_value_came_from(monkeypatch):
    # The file is not blamed for what an environment variable or a command-line override set.
    monkeypatch.setenv("PYTC_DATA__BACH_SIZE", "4")
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "lucchi.yaml", ["inference.overlap=1.0"])
    assert str(err.value) == (
        "environment variable PYTC_DATA__BACH_SIZE: data.bach_size: unknown key — did you mean data.batch_size?; "
        "override 'inference.overlap=1.0': inference.overlap: Input should be less than 1, got 1.0")
    monkeypatch.delenv("PYTC_DATA__BACH_SIZE")
    with pytest.raises(ConfigError, match=r"^override 'inference.tta_flips=\[1,2\]': inference.tta_flips\[0\]"):
        load_config(CONFIGS / "lucchi.yaml", ["inference.tta_flips=[1,2]"])
    with pytest.raises(ConfigError, match=r"^my.yaml: data.batch_size: Input should be greater than or equal to 1"):
        config_from_dict({"data": {"batch_size": 0}}, origin="my.yaml")  # a value from the file names the file
    with pytest.raises(ConfigError, match="list items cannot be set one by one; give the whole list"):
        parse_overrides(["data.targets[0].name=contour"])


def test_a_section_wide_error_is_not_blamed_on_an_override(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  val_image: v.h5:image\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(cfg))}: data: "):
        load_config(cfg, ["data.batch_size=2"])


def test_python_object_tags_are_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _write(
        tmp_path / "evil.yaml",
        f"data: !!python/object/apply:os.system ['touch {marker}']\n",
    )
    with pytest.raises(ConfigError, match="Python object tags are not allowed"):
        load_config(evil)
    assert not marker.exists()


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path / "bad.yaml", "data: [1, 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_dump_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "mednext_custom.yaml", ["data.batch_size=5", "inference.tta_flips=[[0], [1, 2]]"])
    text = dump_config(cfg)
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg
    # ...and through a file, as `pytc config show > run.yaml` would be used.
    assert load_config(_write(tmp_path / "dumped.yaml", text)) == cfg


def test_assignment_is_validated():
    cfg = PytcConfig()
    with pytest.raises(Exception):
        cfg.data.batch_size = "x"


def test_schema_documents_every_key():
    schema = config_schema()
    sections = set(schema["properties"])
    assert sections == {
        "system", "model", "data", "optimizer", "scheduler", "training", "checkpoint",
        "early_stopping", "logging", "inference", "decoding", "evaluation",
    }
    fields = list(iter_fields())
    assert len(fields) > 60
    missing = [key for key, _, desc in fields if not desc]
    assert missing == []
    assert ("data.batch_size", 2, "Patches per step per process.") in fields
    json.dumps(schema)  # serialisable for editors


def test_readme_config_reference_is_in_sync():
    from conftest import docs_script

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert docs_script("update_readme").render(text) == text, "README config reference is stale: run `make docs`"


def test_dumped_config_keeps_the_network_following_the_patch_size(tmp_path):
    dumped = _write(tmp_path / "d.yaml", dump_config(load_config(CONFIGS / "lucchi.yaml")))
    cfg = load_config(dumped, ["data.patch_size=[32,64,64]"])
    assert cfg.model.input_size == [32, 64, 64] and cfg.model.spatial_dims == 3
    cfg2d = load_config(dumped, ["data.patch_size=[256,256]"])
    assert cfg2d.model.spatial_dims == 2 and cfg2d.model.input_size == [256, 256]
    # An explicit input size that differs from the patch is kept.
    explicit = load_config(CONFIGS / "lucchi.yaml", ["model.input_size=[64,64,64]"])
    assert load_config(_write(tmp_path / "e.yaml", dump_config(explicit))) == explicit
